//! One recipient flooding its app topic is held to its rate; another
//! recipient is not affected.

use std::time::{Duration, Instant};

use e2e::flood;
use e2e::{Mosquitto, MosquittoOptions, Phone, QoS, Site, site};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_flooding_feedback_is_held_to_its_rate_and_another_is_not() -> anyhow::Result<()>
{
    let broker = Mosquitto::start(MosquittoOptions::default().flood())?;
    // The defaults: 60 a minute, a burst of 20.
    let mut site = Site::new(
        broker.port(),
        &[site::THREE_ZONES, flood::SCANNER_SOURCES].concat(),
    )?;
    site.import_people(&flood::people(2))?;
    let gateway = site.start()?;
    let flooder = Phone::connect_to(broker.port(), "flooder", "").await?;
    let app = Phone::connect_to(broker.port(), "app-r-2", "").await?;
    flood::wait_subscribed(&site, &app)
        .await
        .map_err(|e| e.context(gateway.logs()))?;
    let ops = Phone::connect_to(broker.port(), "ops", &site.topic("gateway/errors")).await?;

    // Feedback for nudges never sent: each one read is refused by field.
    let feedback = |i: usize| format!(r#"{{"nudge_id": "n-{i}", "answer": "yes"}}"#);
    let started = Instant::now();
    let flood: Vec<_> = (0..300)
        .map(|i| (site.topic("feedback/r-1"), feedback(i).into_bytes()))
        .collect();
    flood::publish_paced(&site, &flooder, flood)
        .await
        .map_err(|e| e.context(gateway.logs()))?;
    // Only after the flood: had the gateway not acked the messages it
    // dropped, the broker would have stopped sending it anything.
    for i in 0..5 {
        app.publish(
            &site.topic("feedback/r-2"),
            feedback(1000 + i),
            QoS::AtLeastOnce,
            false,
        )
        .await?;
    }
    let metric = |series: &str| site.metric(series).unwrap_or(0);
    e2e::wait_until(Duration::from_secs(10), || {
        metric("gateway_incoming_total{kind=\"feedback\"}") >= 305
    })
    .await
    .map_err(|e| e.context(gateway.logs()))?;
    let elapsed_s = started.elapsed().as_secs() + 1;

    let limited = metric("gateway_incoming_rate_limited_total{kind=\"feedback\"}");
    let read_for_r1 = 300 - limited;
    assert!(
        read_for_r1 >= 20 && read_for_r1 <= 20 + elapsed_s,
        "{read_for_r1} of r-1's 300 read in {elapsed_s} s"
    );
    // Every message that was read got its report (or one counted as
    // dropped or over the per-second cap of reports); r-2 all of its own.
    let of = |reports: &[e2e::Received], recipient: &str| {
        reports
            .iter()
            .filter(|r| r.payload_str().contains(&format!("feedback/{recipient}\"")))
            .count() as u64
    };
    e2e::wait_until(Duration::from_secs(10), || {
        let reports = ops.received();
        of(&reports, "r-2") == 5
            && of(&reports, "r-1")
                + metric("gateway_replies_dropped_total")
                + metric("gateway_error_reports_suppressed_total")
                >= read_for_r1
    })
    .await
    .map_err(|e| e.context(format!("{:#?}", ops.received().len())))?;
    for r in ops.received() {
        assert_eq!(r.json()?["field"], "nudge_id", "{}", r.payload_str());
    }
    // Logged, at a bounded rate: 5 lines in each second of the clock, and
    // a flood shorter than a second may straddle two of them (a CI run
    // logged 10 lines for a flood under a second).
    let logged = gateway
        .stderr()
        .matches("over its recipient's rate")
        .count() as u64;
    assert!(
        logged >= 1 && logged <= 5 * (elapsed_s + 1),
        "{logged} log lines in {elapsed_s} s"
    );
    Ok(())
}
