//! What a sender puts in a message never becomes a metric series: 10,000
//! messages, each with a key and a topic level never seen before, on
//! every topic the gateway reads, leave `/metrics` as it was.

use e2e::flood::{self, TOPIC_KINDS};
use e2e::{Mosquitto, MosquittoOptions, Phone, Site, site};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_junk_keys_and_names_leave_the_metrics_as_they_were() -> anyhow::Result<()> {
    let broker = Mosquitto::start(MosquittoOptions::default().flood())?;
    let mut site = Site::new(
        broker.port(),
        &[site::THREE_ZONES, flood::SCANNER_SOURCES].concat(),
    )?;
    site.import_people(&flood::people(3))?;
    let gateway = site.start()?;
    let sender = Phone::connect_to(broker.port(), "junk-sender", "").await?;
    flood::wait_subscribed(&site, &sender)
        .await
        .map_err(|e| e.context(gateway.logs()))?;

    // A first round makes every series the junk can reach exist already.
    let warm_up = flood::distinct_junk(&site, 4 * TOPIC_KINDS.len());
    flood::publish_paced(&site, &sender, warm_up)
        .await
        .map_err(|e| e.context(gateway.logs()))?;
    let before = site.admin_get("/metrics")?;

    let junk: Vec<_> = flood::distinct_junk(&site, 10_000 + 4 * TOPIC_KINDS.len())
        .into_iter()
        .skip(4 * TOPIC_KINDS.len())
        .collect();
    let sent = flood::publish_paced(&site, &sender, junk)
        .await
        .map_err(|e| e.context(gateway.logs()))?;
    assert_eq!(sent, 10_000);
    let after = site.admin_get("/metrics")?;

    let (series_before, series_after) = (flood::series(&before), flood::series(&after));
    let new: Vec<_> = series_after.difference(&series_before).collect();
    // A fixed series may first appear under load (`replies_dropped_total`
    // when error reports outrun delivery); none may carry what was sent.
    assert!(new.len() <= 3, "{} new series: {new:#?}", new.len());
    assert!(!after.contains("junk-"), "a sent name reached /metrics");
    // Only counter values grew (a few more digits each).
    assert!(
        after.len() <= before.len() + 1024,
        "/metrics grew from {} to {} bytes",
        before.len(),
        after.len()
    );
    assert!(
        after.contains("gateway_incoming_rejected_total{kind=\"consent\",field=\"unknown_field\"}"),
        "{after}"
    );

    // The report on gateway/errors still names an unknown key, cut short:
    // a 12 KiB key does not come back whole.
    let ops = Phone::connect_to(broker.port(), "ops", &site.topic("gateway/errors")).await?;
    // Error reports are capped per second; the flood used this second's.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let long_key = "k".repeat(12 * 1024);
    sender
        .publish(
            &site.topic("consent/r-1"),
            format!(r#"{{"{long_key}": 1}}"#),
            e2e::QoS::AtLeastOnce,
            false,
        )
        .await?;
    let reports = ops
        .wait_for(1, std::time::Duration::from_secs(10))
        .await
        .map_err(|e| e.context(gateway.logs()))?;
    let report = reports[0].json()?;
    let field = report["field"].as_str().unwrap_or_default();
    assert!(
        field.starts_with("kkkk") && field.chars().count() <= 65,
        "{report}"
    );
    assert_eq!(report["reason"], "unknown field");
    assert!(
        reports[0].payload.len() < 512,
        "{} bytes",
        reports[0].payload.len()
    );
    Ok(())
}
