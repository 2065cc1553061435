//! `firmware-sim`: write people and capture files, or stream sightings over
//! UDP to a running gateway.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use firmware_sim::hours::Hours;
use firmware_sim::spec::OpeningHours;
use firmware_sim::{
    DEFAULT_START_UNIX_MS, LoadConfig, Scenario, Simulation, StoreSpec, output, to_espresense,
    write_capture_file, write_jsonl_file, write_people_file, write_truth_file,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Write the gateway's site file for the store: its zones, its beacons
    /// and the presence settings its floor plan and radio give.
    Site {
        /// Store spec TOML (default: the built-in small store).
        #[arg(long)]
        store: Option<PathBuf>,
        /// Where to write it (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write a capture file of sighting records and its ground truth.
    Capture {
        #[command(flatten)]
        run: RunArgs,
        /// Simulated time to capture (with --days: N days instead).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
        duration: Duration,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        truth: Option<PathBuf>,
        /// `sightings`: sighting records (docs/design.md §7); `espresense`: what
        /// ESPresense room nodes would publish, `{"topic", "at_ms", "payload"}`.
        #[arg(long, value_enum, default_value_t = Format::Sightings)]
        format: Format,
        /// Also write the iOS check-ins, one `{"recipient", "topic_suffix",
        /// "payload"}` a line.
        #[arg(long)]
        checkins: Option<PathBuf>,
        /// Also write the scenario's person records.
        #[arg(long)]
        people: Option<PathBuf>,
    },
    /// Write a calibration walk: a staff tag through every zone and the
    /// hall (sighting records, all scanners) and the tag's ground truth.
    Walk {
        /// Store spec TOML (default: the built-in small store).
        #[arg(long)]
        store: Option<PathBuf>,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Simulated start time in Unix milliseconds, or "now".
        #[arg(long, default_value_t = DEFAULT_START_UNIX_MS.to_string())]
        start: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        truth: PathBuf,
    },
    /// Publish iOS check-ins and/or ESPresense reports to an MQTT v5 broker.
    Mqtt {
        #[command(flatten)]
        run: RunArgs,
        /// Broker `host:port` (plain TCP).
        #[arg(long, default_value = "127.0.0.1:1883")]
        broker: String,
        #[arg(long, default_value = "retail")]
        prefix: String,
        #[arg(long, value_enum, default_value_t = MqttFormat::Checkins)]
        format: MqttFormat,
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Simulated time to publish.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// Load test: adverts from many devices at a fixed rate over UDP
    /// (loopback targets only).
    Load {
        #[arg(long)]
        target: SocketAddr,
        /// Adverts per second.
        #[arg(long)]
        rate: u32,
        #[arg(long)]
        devices: u32,
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Share of devices that are strangers.
        #[arg(long, default_value_t = 0.9)]
        strangers: f64,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// The devices arrive evenly over this long instead of all at the
        /// start (each heard rate/devices times a second once arrived).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
        arrive_over: Duration,
        /// Write the enrolled shoppers' person records here.
        #[arg(long)]
        people: Option<PathBuf>,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Chain load: decisions of N other stores of the chain, published on
    /// `<prefix>/chain/decisions/<store>` at a total rate (loopback brokers
    /// only), as their bridges would bring them to one store's broker.
    ChainLoad {
        /// Broker `host:port` (plain TCP, loopback).
        #[arg(long)]
        broker: String,
        #[arg(long, default_value = "retail")]
        prefix: String,
        /// Other stores posting (`chain-0000`, ...).
        #[arg(long, default_value_t = 1000)]
        stores: u32,
        /// Entries per second, all stores together.
        #[arg(long)]
        rate: u32,
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Duration,
        /// People the entries are about: `p-100000` onwards, the enrolled
        /// shoppers of `firmware-sim load`.
        #[arg(long, default_value_t = 10_000)]
        people: u32,
        /// The chain secret's file (as the gateway's `chain.secret_file`):
        /// entries about people the gateway knows. Without it, people no
        /// gateway knows.
        #[arg(long)]
        secret_file: Option<PathBuf>,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
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

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Sightings,
    Espresense,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum MqttFormat {
    Checkins,
    Espresense,
    Both,
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
    /// Several store days with returning shoppers, nights skipped: starts
    /// at the opening of the start's local day (09:00–20:00 Europe/Berlin
    /// unless the store file has `[hours]`) and runs N days.
    #[arg(long)]
    days: Option<u32>,
    /// A crowd instead of the demo: N opted-in shoppers and 2N strangers,
    /// arriving over ten minutes, each through the entrance and two zones.
    #[arg(long, conflicts_with = "days")]
    shoppers: Option<u32>,
}

impl RunArgs {
    /// The simulation and, with `--days`, the simulated span to run.
    fn simulation(&self) -> anyhow::Result<(Simulation, Scenario, Option<i64>)> {
        let mut spec = match &self.store {
            Some(path) => StoreSpec::from_file(path)?,
            None => StoreSpec::small_store(),
        };
        let mut start = parse_start(&self.start)?;
        let mut span = None;
        let scenario = if let Some(days) = self.days {
            anyhow::ensure!(
                (1..=366).contains(&days),
                "--days: must be between 1 and 366"
            );
            let hours_spec = spec.hours.get_or_insert_with(OpeningHours::default).clone();
            let hours = Hours::new(&hours_spec).map_err(|e| anyhow::anyhow!("hours.{e}"))?;
            start = hours.opening_of_day(start);
            span = Some(i64::from(days) * 86_400_000);
            Scenario::returning_for(&spec, self.seed, days)
        } else if let Some(shoppers) = self.shoppers {
            anyhow::ensure!(
                (1..=10_000).contains(&shoppers),
                "--shoppers: must be between 1 and 10000"
            );
            Scenario::tour(&spec, self.seed, shoppers)
        } else if ["entrance", "laptops", "headphones"]
            .iter()
            .all(|z| spec.zone(z).is_some())
        {
            Scenario::small_demo(self.seed)
        } else {
            Scenario::tour(&spec, self.seed, 6)
        };
        let sim = Simulation::new(spec, scenario.clone(), start, self.seed)?;
        Ok((sim, scenario, span))
    }
}

/// `host:port` into its parts.
fn parse_broker(text: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = text
        .rsplit_once(':')
        .with_context(|| format!("--broker: {text:?} is not host:port"))?;
    let port = port
        .parse()
        .with_context(|| format!("--broker: {port:?} is not a port"))?;
    Ok((host.trim_matches(['[', ']']).to_owned(), port))
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
        Command::Site { store, out } => {
            let spec = match &store {
                Some(path) => StoreSpec::from_file(path)?,
                None => StoreSpec::small_store(),
            };
            let text = firmware_sim::site::site_toml(&spec);
            match out {
                Some(path) => {
                    std::fs::write(&path, text)
                        .with_context(|| format!("--out: cannot write {}", path.display()))?;
                    eprintln!(
                        "wrote the site file of {} to {}",
                        spec.store.id,
                        path.display()
                    );
                }
                None => print!("{text}"),
            }
        }
        Command::Walk {
            store,
            seed,
            start,
            out,
            truth,
        } => {
            let spec = match &store {
                Some(path) => StoreSpec::from_file(path)?,
                None => StoreSpec::small_store(),
            };
            let start = parse_start(&start)?;
            let walk = firmware_sim::calibration_walk(&spec, start, seed)?;
            let n = write_capture_file(&out, walk.records)?;
            eprintln!("wrote {n} sighting records to {}", out.display());
            let m = write_truth_file(&truth, &walk.truth)?;
            eprintln!(
                "wrote {m} ground truth records of tag {} ({:.1} min) to {}",
                walk.addr,
                (walk.end_ms - start) as f64 / 60_000.0,
                truth.display()
            );
        }
        Command::Capture {
            run,
            duration,
            out,
            truth,
            format,
            checkins,
            people,
        } => {
            let (mut sim, scenario, span) = run.simulation()?;
            let end = sim
                .start_unix_ms()
                .saturating_add(span.unwrap_or(duration_ms(duration)));
            let (records, checkin_records) = sim.next_batch_with_checkins(end);
            match format {
                Format::Sightings => {
                    let n = write_capture_file(&out, records)?;
                    eprintln!("wrote {n} sighting records to {}", out.display());
                }
                Format::Espresense => {
                    let n = write_jsonl_file(&out, to_espresense(&records))?;
                    eprintln!("wrote {n} ESPresense reports to {}", out.display());
                }
            }
            if let Some(path) = checkins {
                let n = write_jsonl_file(&path, checkin_records)?;
                eprintln!("wrote {n} check-ins to {}", path.display());
            }
            if let Some(path) = people {
                let n = write_people_file(&path, &scenario)?;
                eprintln!("wrote {n} person records to {}", path.display());
            }
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
            let (sim, _, span) = run.simulation()?;
            let duration = duration.or(span.map(|ms| Duration::from_millis(ms.unsigned_abs())));
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
        Command::Mqtt {
            run,
            broker,
            prefix,
            format,
            speed,
            duration,
        } => {
            let (host, port) = parse_broker(&broker)?;
            let (mut sim, _, span) = run.simulation()?;
            let end = sim
                .start_unix_ms()
                .saturating_add(span.unwrap_or(duration_ms(duration)));
            let store = sim.spec().store.id.clone();
            let (records, checkins) = sim.next_batch_with_checkins(end);
            let mut messages = Vec::new();
            if format != MqttFormat::Espresense {
                messages.extend(output::checkin_messages(checkins, &prefix, &store)?);
            }
            if format != MqttFormat::Checkins {
                messages.extend(output::espresense_messages(to_espresense(&records))?);
            }
            messages.sort_by_key(|m| m.at_ms);
            let cancel = CancellationToken::new();
            let on_ctrl_c = cancel.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    on_ctrl_c.cancel();
                }
            });
            let report = output::publish_mqtt(messages, &host, port, speed, cancel).await?;
            eprintln!(
                "published {} messages to {broker} ({} acknowledged) in {:.1} s{}",
                report.published,
                report.acked,
                report.duration.as_secs_f64(),
                if report.cancelled {
                    " (interrupted)"
                } else {
                    ""
                }
            );
        }
        Command::ChainLoad {
            broker,
            prefix,
            stores,
            rate,
            duration,
            people,
            secret_file,
            seed,
            json,
        } => {
            let (host, port) = parse_broker(&broker)?;
            let host = host
                .parse()
                .with_context(|| format!("--broker: {host:?} is not an IP address"))?;
            let secret = match &secret_file {
                Some(path) => Some(firmware_sim::chain_load::secret_from_file_text(
                    &std::fs::read_to_string(path).with_context(|| {
                        format!("--secret-file: cannot read {}", path.display())
                    })?,
                )),
                None => None,
            };
            let config = firmware_sim::ChainLoadConfig {
                host,
                port,
                prefix,
                stores,
                rate,
                duration,
                people,
                first_person: firmware_sim::chain_load::FIRST_LOAD_PERSON,
                secret,
                seed,
            };
            config.validate()?;
            let stop = Arc::new(AtomicBool::new(false));
            let on_ctrl_c = Arc::clone(&stop);
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    on_ctrl_c.store(true, Ordering::Relaxed);
                }
            });
            let report = firmware_sim::run_chain_load(&config, stop).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{report}");
            }
        }
        Command::Load {
            target,
            rate,
            devices,
            duration,
            strangers,
            seed,
            arrive_over,
            people,
            json,
        } => {
            let config = LoadConfig {
                target,
                rate,
                devices,
                duration,
                strangers,
                seed,
                arrive_over,
            };
            config.validate()?;
            if let Some(path) = people {
                let n = write_people_file(&path, &config.scenario())?;
                eprintln!("wrote {n} person records to {}", path.display());
            }
            let stop = Arc::new(AtomicBool::new(false));
            let on_ctrl_c = Arc::clone(&stop);
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    on_ctrl_c.store(true, Ordering::Relaxed);
                }
            });
            let report = tokio::task::spawn_blocking(move || firmware_sim::run_load(&config, stop))
                .await
                .context("load generator thread")??;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{report}");
            }
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
