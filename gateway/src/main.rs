//! The `gateway` binary. `anyhow` lives here only; every module below
//! returns typed errors.

use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::Parser;
use gateway::cli::{self, Cli, CliError, Command, LogFormat, PeopleCommand};
use tokio_util::sync::CancellationToken;

fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // Colours only for a person at a terminal: journald and log files
    // would keep the escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Cancel on SIGINT or SIGTERM: one token stops every task.
fn cancel_on_signals() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        cancel.cancel();
    });
    Ok(token)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn dispatch(cli: Cli) -> anyhow::Result<Result<String, CliError>> {
    let config_path = cli.config.as_deref();
    Ok(match cli.command {
        Command::Run { record } => {
            init_logging(cli.log_format, "info,rumqttc=warn");
            let config = match cli::require_run_config(config_path) {
                Ok(c) => c,
                Err(e) => return Ok(Err(e)),
            };
            let rt = runtime()?;
            rt.block_on(async {
                let cancel = cancel_on_signals()?;
                anyhow::Ok(
                    match gateway::daemon::run(
                        config,
                        gateway::daemon::RunOptions {
                            config_path: config_path.map(Into::into),
                            record,
                        },
                        cancel,
                        None,
                    )
                    .await
                    {
                        Ok(summary) => Ok(format!("gateway stopped: {summary:?}")),
                        Err(e) => Err(CliError::new(e.to_string())),
                    },
                )
            })?
        }
        Command::Demo {
            run_for,
            speed,
            seed,
        } => {
            init_logging(cli.log_format, "warn,rumqttd=off,rumqttc=off");
            if !(speed.is_finite() && speed > 0.0) {
                return Ok(Err(CliError {
                    message: format!("--speed: must be a number > 0, got {speed}"),
                    code: 2,
                }));
            }
            let rt = runtime()?;
            rt.block_on(async {
                let cancel = cancel_on_signals()?;
                let out: Arc<Mutex<dyn Write + Send>> = Arc::new(Mutex::new(std::io::stdout()));
                let options = gateway::demo::DemoOptions {
                    run_for,
                    speed,
                    seed,
                };
                anyhow::Ok(
                    gateway::demo::run(options, cancel, out)
                        .await
                        .map(|_| String::new())
                        .map_err(|e| CliError::new(e.to_string())),
                )
            })?
        }
        Command::Decode { hex, company_id } => cli::decode(
            &hex,
            company_id,
            std::io::stdin().lock(),
            std::io::stdout().lock(),
        )
        .map(|()| String::new()),
        Command::CheckConfig { file } => cli::check_config(&file),
        Command::Config(cli::ConfigCommand::Show) => {
            gateway::config::effective_toml(config_path).map_err(CliError::from)
        }
        Command::People(command) => {
            init_logging(cli.log_format, "warn");
            let config = match cli::require_config(config_path) {
                Ok(c) => c,
                Err(e) => return Ok(Err(e)),
            };
            match command {
                PeopleCommand::Import { file, partial } => {
                    cli::people::import(&config, &file, partial)
                }
                PeopleCommand::Show { person } => cli::people::show(&config, &person),
                PeopleCommand::Export { person } => cli::people::export(&config, &person),
                PeopleCommand::Forget { person } => cli::people::forget(&config, &person),
            }
        }
        Command::Explain { id } => match cli::require_config(config_path) {
            Ok(config) => cli::people::explain(&config, &id),
            Err(e) => Err(e),
        },
        Command::Simulate {
            capture,
            people,
            chain_decisions,
            json,
            svg,
        } => match cli::require_config(config_path) {
            Ok(config) => cli::simulate(
                &config,
                &capture,
                &people,
                chain_decisions.as_deref(),
                json,
                svg.as_deref(),
            ),
            Err(e) => Err(e),
        },
        Command::EvalPresence {
            capture,
            truth,
            json,
            people_only,
            radio_map,
            no_radio_map,
        } => match cli::require_config(config_path) {
            Ok(config) => {
                let map = match (&radio_map, no_radio_map) {
                    (Some(path), _) => cli::MapChoice::File(path),
                    (None, true) => cli::MapChoice::Without,
                    (None, false) => cli::MapChoice::Site,
                };
                cli::eval_presence(&config, &capture, &truth, json, people_only, map)
            }
            Err(e) => Err(e),
        },
        Command::Calibrate {
            capture,
            truth,
            out,
            tune,
            flip_penalty_s,
        } => match cli::require_config(config_path) {
            Ok(config) => cli::calibrate(
                &config,
                &cli::CalibrateArgs {
                    captures: &capture,
                    truths: &truth,
                    out: &out,
                    tune,
                    flip_penalty_s,
                },
            ),
            Err(e) => Err(e),
        },
    })
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(Ok(output)) => {
            if !output.is_empty() {
                println!("{output}");
            }
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("gateway: {}", e.message);
            ExitCode::from(e.code.clamp(1, 255) as u8)
        }
        Err(e) => {
            eprintln!("gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// glibc gives each thread that allocates under contention its own arena
/// (up to 8 per core) and keeps their freed memory: with the runtime's
/// workers and blocking threads that was 12-27 MB of resident memory at
/// 100,000 people (bench/footprint.sh, BENCHMARKS.md §2) for no speed we
/// could measure. Two arenas, set before any thread starts, unless the
/// environment says otherwise (`MALLOC_ARENA_MAX`, which glibc reads).
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes no pointers; called before any other thread
    // exists, so no allocation races with the setting.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
