//! A short fuzz run over every topic the gateway reads (random bytes,
//! random JSON, mutated valid payloads): no panic, still answering, and
//! memory and /metrics bounded. `scripts/fuzz-topics` runs the long one.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_fuzz_messages_on_every_topic() -> anyhow::Result<()> {
    let report = e2e::flood::fuzz_run(20_000, 7).await?;
    eprintln!("{report}");
    assert_eq!(report.messages, 20_000);
    assert!(report.handled >= 20_000, "{report}");
    // Every series is one the code names, whatever was sent: a few dozen
    // metrics, each latency histogram 21 series (18 buckets, +Inf, sum,
    // count) whether or not it observed anything. 237 with the roll's two
    // histograms (`gateway_rotating_roll_*`).
    assert!(report.series_after <= 256, "{report}");
    assert!(report.metrics_bytes_after <= 32 * 1024, "{report}");
    assert!(
        report.rss_after_kib <= report.rss_before_kib + 64 * 1024,
        "{report}"
    );
    Ok(())
}
