//! `fuzz-topics [--messages N] [--seed S] [--show-metrics]`: a fuzz run over every topic the
//! gateway reads (see `e2e::flood::fuzz_run`), against a real Mosquitto
//! and a real `gateway run` on loopback, both started and stopped here.
//! Run it through `scripts/fuzz-topics`, which builds both binaries.

use anyhow::{Context, Result, bail};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let (mut messages, mut seed, mut show_metrics) = (1_000_000u64, 1u64, false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> Result<u64> {
            args.next()
                .with_context(|| format!("{name} needs a value"))?
                .parse()
                .with_context(|| format!("{name} must be a whole number"))
        };
        match arg.as_str() {
            "--messages" => messages = value("--messages")?,
            "--seed" => seed = value("--seed")?,
            "--show-metrics" => show_metrics = true,
            "-h" | "--help" => {
                println!("fuzz-topics [--messages N (1000000)] [--seed S (1)] [--show-metrics]");
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    let report = e2e::flood::fuzz_run(messages, seed).await?;
    if show_metrics {
        println!("{}", report.metrics_after);
    }
    println!("{report}");
    Ok(())
}
