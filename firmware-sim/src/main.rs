//! `firmware-sim`: write people and capture files, or stream sightings over
//! UDP to a running gateway.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use firmware_sim::{
    DEFAULT_START_UNIX_MS, Scenario, Simulation, StoreSpec, output, write_capture_file,
    write_people_file, write_truth_file,
};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "firmware-sim", version, about = "Digital twin of a shop floor")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the demo scenario's person records (JSON Lines).
    People {
        #[arg(long, default_value_t = 7)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a capture file of sighting records and its ground truth.
    Capture {
        #[command(flatten)]
        run: RunArgs,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
        duration: Duration,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        truth: Option<PathBuf>,
    },
    /// Send sighting records over UDP, one per datagram.
    Udp {
        #[command(flatten)]
        run: RunArgs,
        #[arg(long)]
        target: SocketAddr,
        /// 1 = real time, 10 = ten times faster, 0 = as fast as possible.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Stop after this much simulated time (default: until Ctrl-C).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
    },
}

#[derive(Args)]
struct RunArgs {
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Store spec TOML (default: the built-in small store).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Simulated start time in Unix milliseconds, or "now".
    #[arg(long, default_value_t = DEFAULT_START_UNIX_MS.to_string())]
    start: String,
}

impl RunArgs {
    fn simulation(&self) -> anyhow::Result<Simulation> {
        let spec = match &self.store {
            Some(path) => StoreSpec::from_file(path)?,
            None => StoreSpec::small_store(),
        };
        let start = parse_start(&self.start)?;
        Ok(Simulation::new(
            spec,
            Scenario::small_demo(self.seed),
            start,
            self.seed,
        )?)
    }
}

/// The binary may read the clock to start "now"; the model itself never does.
fn parse_start(text: &str) -> anyhow::Result<i64> {
    if text == "now" {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("system clock is before 1970")?;
        return i64::try_from(now.as_millis()).context("system clock out of range");
    }
    text.parse()
        .with_context(|| format!("--start: {text:?} is neither Unix milliseconds nor \"now\""))
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::People { seed, out } => {
            let n = write_people_file(&out, &Scenario::small_demo(seed))?;
            eprintln!("wrote {n} person records to {}", out.display());
        }
        Command::Capture {
            run,
            duration,
            out,
            truth,
        } => {
            let mut sim = run.simulation()?;
            let end = sim.start_unix_ms().saturating_add(duration_ms(duration));
            let records = sim.next_batch(end);
            let n = write_capture_file(&out, records)?;
            eprintln!("wrote {n} sighting records to {}", out.display());
            if let Some(path) = truth {
                let n = write_truth_file(&path, &sim.ground_truth(end))?;
                eprintln!("wrote {n} ground truth records to {}", path.display());
            }
        }
        Command::Udp {
            run,
            target,
            speed,
            duration,
        } => {
            let sim = run.simulation()?;
            let end = duration
                .map(|d| sim.start_unix_ms().saturating_add(duration_ms(d)))
                .unwrap_or(i64::MAX);
            let cancel = CancellationToken::new();
            let on_ctrl_c = cancel.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    on_ctrl_c.cancel();
                }
            });
            let records = sim.take_while(move |r| r.at_ms < end);
            let report = output::send_udp(records, target, speed, cancel).await?;
            eprintln!(
                "sent {} records to {target} in {:.1} s{}",
                report.records_sent,
                report.duration.as_secs_f64(),
                if report.cancelled {
                    " (interrupted)"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the chain of causes, each said once, newlines flattened.
            let mut message = String::new();
            for cause in err.chain().map(|c| c.to_string()) {
                if !message.contains(&cause) {
                    if !message.is_empty() {
                        message.push_str(": ");
                    }
                    message.push_str(&cause);
                }
            }
            let message = message.replace('\n', " ");
            eprintln!("firmware-sim: error: {message}");
            ExitCode::FAILURE
        }
    }
}
