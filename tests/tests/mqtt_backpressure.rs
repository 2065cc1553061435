//! The MQTT intake under a flood faster than the pipeline: what the
//! gateway holds between the socket and the pipeline, and its acks, stay
//! bounded, every message is read and acknowledged, and it still answers.
//!
//! Before the fix the task polling rumqttc stopped while it waited for
//! room in the pipeline, acks found rumqttc's request channel full, and
//! each one became a spawned task holding the whole message: a flood of
//! large messages grew the gateway by their total size (and flume's
//! waiter list made each ack O(waiting acks)).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use e2e::flood::{FUZZ_SITE_REST, SCANNER_SOURCES, handled, people, vm_rss_kib, wait_subscribed};
use e2e::{Mosquitto, MosquittoOptions, Phone, PhoneOptions, QoS, Site};

const MESSAGES: u64 = 10_000;
/// Over the gateway's 16 KiB payload limit: read, refused at once, acked.
const PAYLOAD_BYTES: usize = 30_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaced_flood_of_large_messages_keeps_the_gateway_bounded_and_acked() -> Result<()> {
    let broker = Mosquitto::start(MosquittoOptions::default().flood())?;
    let mut site = Site::new(
        broker.port(),
        &[e2e::site::THREE_ZONES, SCANNER_SOURCES, FUZZ_SITE_REST].concat(),
    )?;
    site.import_people(&people(5))?;
    let mut gateway = site.start()?;
    let flooder = Phone::connect_to(broker.port(), "flooder", "").await?;
    wait_subscribed(&site, &flooder).await?;
    let pid = gateway.pid();
    let base = handled(&site.admin_get("/metrics")?);
    let rss_before = vm_rss_kib(pid)?;
    let mut rss_max = rss_before;

    // As fast as the flooder's client takes them: 10,000 x 30 KB = 300 MB,
    // far more than the gateway may hold at once.
    let junk = vec![b'x'; PAYLOAD_BYTES];
    let topic = site.topic("consent/r-1");
    for i in 0..MESSAGES {
        flooder
            .publish(&topic, junk.clone(), QoS::AtLeastOnce, false)
            .await?;
        if i % 100 == 0 {
            rss_max = rss_max.max(vm_rss_kib(pid)?);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        rss_max = rss_max.max(vm_rss_kib(pid)?);
        let now = handled(&site.admin_get("/metrics")?) - base;
        if now >= MESSAGES {
            break;
        }
        if Instant::now() > deadline || !gateway.is_running() {
            bail!("the gateway read {now} of {MESSAGES} messages");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("gateway VmRSS (resident) {rss_before} KiB before, {rss_max} KiB at most");
    // At most RECEIVE_MAXIMUM waiting plus the pipeline's channel (320
    // messages, 9.6 MB) and allocator slack; the whole flood is 300 MB.
    assert!(
        rss_max <= rss_before + 48 * 1024,
        "gateway VmRSS (resident) {rss_before} KiB before, {rss_max} KiB at most"
    );

    // Still answering: a valid consent change gets its receipt.
    let app = Phone::connect(PhoneOptions::new(
        broker.port(),
        "app-r-2",
        site.topic("receipts/r-2"),
    ))
    .await?;
    app.publish_acked(
        &site.topic("consent/r-2"),
        r#"{"id": "after-flood", "consent": {"offers": true}}"#,
        false,
        Default::default(),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !app
        .received()
        .iter()
        .any(|r| r.topic.ends_with("receipts/r-2") && r.payload_str().contains("after-flood"))
    {
        if Instant::now() > deadline {
            bail!("no receipt after the flood");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every message was acknowledged: after a restart (same session) the
    // broker delivers none of them again.
    gateway.stop(Duration::from_secs(10))?;
    let _restarted = site.start()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while site.metric("gateway_mqtt_connected").unwrap_or(0) != 1 {
        if Instant::now() > deadline {
            bail!("the restarted gateway did not connect");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connected = Instant::now();
    // The redelivery of a session's unacked messages follows its CONNACK
    // at once; a receipt round trip on the same connection orders after it.
    app.publish_acked(
        &site.topic("consent/r-2"),
        r#"{"id": "after-restart", "consent": {"offers": false}}"#,
        false,
        Default::default(),
    )
    .await?;
    while !app
        .received()
        .iter()
        .any(|r| r.payload_str().contains("after-restart"))
    {
        if connected.elapsed() > Duration::from_secs(30) {
            bail!("no receipt after the restart");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let redelivered = site.metric("gateway_incoming_total{kind=\"consent\"}")?;
    assert_eq!(
        redelivered,
        1,
        "the broker delivered {} flood messages again",
        redelivered.saturating_sub(1)
    );
    Ok(())
}
