//! People and consent over MQTT, end to end: the CRM's retained record,
//! the app's consent changes with durable receipts, check-ins that must be
//! the sender's own, and erasure.

use std::time::Duration;

use e2e::{Mosquitto, MosquittoOptions, Phone, PhoneOptions, PublishProperties, QoS, Site, site};
use firmware_sim::{Scenario, Shopper, Simulation, Stop, StoreSpec};

const SEED: u64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crm_record_consent_withdrawal_receipts_checkins_and_erasure() -> anyhow::Result<()> {
    let broker = Mosquitto::start(MosquittoOptions::default())?;
    let mut site = Site::new(broker.port(), &site::laptop_site())?;
    let path = vec![
        Stop::new("entrance", 5),
        Stop::new("laptops", 60),
        Stop::new("headphones", 60),
        Stop::new("laptops", 60),
    ];
    let scenario = Scenario::new(SEED).with_shopper(
        Shopper::new(1, SEED)
            .with_interests(&["laptops"])
            .with_path(path),
    );
    let record = scenario.people_jsonl().lines().next().unwrap().to_string();
    let gateway = site.start()?;

    let app = Phone::connect(PhoneOptions::new(
        broker.port(),
        "app-r-1",
        site.topic("receipts/r-1/#"),
    ))
    .await?;
    let phone = Phone::connect(PhoneOptions::new(
        broker.port(),
        "phone-r-1",
        site.topic("nudges/r-1"),
    ))
    .await?;
    let ops = Phone::connect(PhoneOptions::new(
        broker.port(),
        "ops",
        site.topic("gateway/errors"),
    ))
    .await?;
    let crm = Phone::connect(PhoneOptions::new(broker.port(), "crm", "")).await?;

    // The back office publishes the person, retained, after the gateway started.
    crm.publish_acked(
        "retail/crm/people/p-1",
        record.as_bytes(),
        true,
        PublishProperties::default(),
    )
    .await?;
    let metric = |series: &str| site.metric(series).unwrap_or(0);
    e2e::wait_until(Duration::from_secs(10), || {
        metric("gateway_incoming_total{kind=\"crm_person\"}") >= 1
    })
    .await?;

    let start = e2e::site::now_ms();
    let mut sim = Simulation::new(StoreSpec::small_store(), scenario, start, SEED)?;
    site::send(sim.next_batch(start + 100_000), site.udp, 20.0).await?;
    let first = phone
        .wait_for(1, Duration::from_secs(20))
        .await
        .map_err(|e| e.context(gateway.logs()))?;
    assert_eq!(first[0].json()?["kind"], "compare");

    // A malformed change is refused by field, on the errors topic, and changes nothing.
    app.publish(
        "retail/store-e2e/consent/r-1",
        br#"{"id": "c-0", "consent": {"spam": true}}"#.to_vec(),
        QoS::AtLeastOnce,
        false,
    )
    .await?;
    let errors = ops.wait_for(1, Duration::from_secs(10)).await?;
    let error = errors[0].json()?;
    assert_eq!(error["field"], "consent.spam");
    assert_eq!(error["topic"], "retail/store-e2e/consent/r-1");
    assert!(
        !errors[0].payload_str().contains("true"),
        "the report never echoes the content"
    );

    // Withdraw product_info, asking for the receipt on our own response topic.
    let props = PublishProperties {
        response_topic: Some("retail/store-e2e/receipts/r-1/req-1".into()),
        correlation_data: Some(b"corr-1".to_vec().into()),
        ..Default::default()
    };
    app.publish_with_properties(
        "retail/store-e2e/consent/r-1",
        br#"{"id": "c-1", "consent": {"product_info": false}}"#.to_vec(),
        QoS::AtLeastOnce,
        false,
        props,
    )
    .await?;
    let receipts = app
        .wait_for(2, Duration::from_secs(10))
        .await
        .map_err(|e| e.context(gateway.logs()))?;
    for receipt in &receipts {
        assert_eq!(
            receipt.json()?,
            serde_json::json!({"id": "c-1", "status": "saved"})
        );
    }
    let on_response = receipts
        .iter()
        .find(|r| r.topic.ends_with("/req-1"))
        .expect("receipt on the response topic");
    assert_eq!(
        on_response.correlation_data.as_deref(),
        Some(&b"corr-1"[..])
    );

    // The shopper goes back to the laptops: no product nudge any more.
    site::send(sim.next_batch(start + 260_000), site.udp, 20.0).await?;
    e2e::wait_until(Duration::from_secs(15), || {
        metric("gateway_nudges_held_total{reason=\"no_consent\"}") >= 1
    })
    .await
    .map_err(|e| e.context(gateway.logs()))?;
    assert_eq!(phone.received().len(), 1, "nothing after the withdrawal");

    // A check-in carrying somebody else's identifier is refused and counted.
    let forged = r#"{"rotating_id": "00000000000000000000000000000000", "at_ms": 1795334400123, "beacons": []}"#;
    app.publish(
        "retail/store-e2e/checkin/r-1",
        forged.as_bytes().to_vec(),
        QoS::AtLeastOnce,
        false,
    )
    .await?;
    e2e::wait_until(Duration::from_secs(10), || {
        metric("gateway_checkins_rejected_total") >= 1
    })
    .await?;

    // Erasure from the app: receipt, then the person is gone.
    app.publish(
        "retail/store-e2e/consent/r-1",
        br#"{"id": "c-9", "forget": true}"#.to_vec(),
        QoS::AtLeastOnce,
        false,
    )
    .await?;
    let receipts = app.wait_for(3, Duration::from_secs(10)).await?;
    assert_eq!(
        receipts.last().unwrap().json()?,
        serde_json::json!({"id": "c-9", "status": "forgotten"})
    );
    e2e::wait_until(Duration::from_secs(10), || {
        metric("gateway_people_erased_total") >= 1
    })
    .await?;
    drop(gateway);
    let show = site.cli(&["people", "show", "p-1"])?;
    assert!(
        !show.status.success(),
        "erased: {}",
        String::from_utf8_lossy(&show.stdout)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_retained_crm_message_erases_and_a_mismatched_record_is_refused()
-> anyhow::Result<()> {
    let broker = Mosquitto::start(MosquittoOptions::default())?;
    let mut site = Site::new(broker.port(), &site::laptop_site())?;
    site.import_people(r#"{"person": "p-1", "recipient": "r-1", "consent": {"proximity": true}}"#)?;
    let gateway = site.start()?;
    let ops = Phone::connect(PhoneOptions::new(
        broker.port(),
        "ops",
        site.topic("gateway/errors"),
    ))
    .await?;
    let crm = Phone::connect(PhoneOptions::new(broker.port(), "crm", "")).await?;

    crm.publish_acked(
        "retail/crm/people/p-2",
        br#"{"person": "p-3", "recipient": "r-3"}"#,
        true,
        PublishProperties::default(),
    )
    .await?;
    let errors = ops
        .wait_for(1, Duration::from_secs(10))
        .await
        .map_err(|e| e.context(gateway.logs()))?;
    assert_eq!(errors[0].json()?["field"], "person");

    // Clearing a record the gateway never held erases nobody.
    crm.publish_acked(
        "retail/crm/people/p-404",
        b"",
        true,
        PublishProperties::default(),
    )
    .await?;
    crm.publish_acked(
        "retail/crm/people/p-1",
        b"",
        true,
        PublishProperties::default(),
    )
    .await?;
    e2e::wait_until(Duration::from_secs(10), || {
        site.metric("gateway_people_erased_total").unwrap_or(0) >= 1
    })
    .await?;
    assert_eq!(site.metric("gateway_people_erased_total")?, 1);
    drop(gateway);
    assert!(!site.cli(&["people", "show", "p-1"])?.status.success());
    assert!(
        !site.cli(&["people", "show", "p-3"])?.status.success(),
        "the refused record changed nothing"
    );
    Ok(())
}

/// Wait until the running gateway has read `n` CRM records.
async fn records_seen(site: &Site, n: u64) -> anyhow::Result<()> {
    e2e::wait_until(Duration::from_secs(10), || {
        site.metric("gateway_incoming_total{kind=\"crm_person\"}")
            .unwrap_or(0)
            >= n
    })
    .await
}

/// "Newest word wins, and a withdrawal sticks": the CRM's retained record
/// comes again after every republish and every fresh session. It must not
/// switch a withdrawn purpose back on, nor bring a forgotten person back;
/// a re-enrolment dated after the erasure is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_republished_crm_record_neither_undoes_a_withdrawal_nor_resurrects_the_forgotten()
-> anyhow::Result<()> {
    let broker = Mosquitto::start(MosquittoOptions::default())?;
    let mut site = Site::new(broker.port(), &site::laptop_site())?;
    let stamp = |at: chrono::DateTime<chrono::Utc>| at.to_rfc3339();
    let record_at = |at: chrono::DateTime<chrono::Utc>| {
        format!(
            r#"{{"person": "p-1", "recipient": "r-1", "updated_at": "{}", "identities": [{{"kind": "email", "value": "ana@example.com"}}],
                "consent": {{"proximity": true, "product_info": true, "offers": true, "thanks": true, "feedback": true}}}}"#,
            stamp(at)
        )
    };
    let old_record = record_at(chrono::Utc::now() - chrono::Duration::hours(1));
    let mut gateway = site.start()?;
    let app = Phone::connect_to(broker.port(), "app-r-1", &site.topic("receipts/r-1")).await?;
    let ops = Phone::connect_to(broker.port(), "ops", &site.topic("gateway/errors")).await?;
    let back_office =
        Phone::connect_to(broker.port(), "back-office", &site.topic("erasures")).await?;
    let crm = Phone::connect_to(broker.port(), "crm", "").await?;
    let publish_record = |payload: String| {
        let crm = &crm;
        async move {
            crm.publish_acked(
                "retail/crm/people/p-1",
                payload.as_bytes(),
                true,
                PublishProperties::default(),
            )
            .await
        }
    };

    publish_record(old_record.clone()).await?;
    records_seen(&site, 1).await?;
    app.publish(
        &site.topic("consent/r-1"),
        br#"{"id": "c-1", "consent": {"offers": false}}"#.to_vec(),
        QoS::AtLeastOnce,
        false,
    )
    .await?;
    app.wait_for(1, Duration::from_secs(10))
        .await
        .map_err(|e| e.context(gateway.logs()))?;

    // The routine republish of the same (older) record.
    publish_record(old_record.clone()).await?;
    records_seen(&site, 2).await?;
    drop(gateway);
    let show = site.cli(&["people", "show", "p-1"])?;
    let shown = String::from_utf8_lossy(&show.stdout).to_string();
    assert!(show.status.success(), "{shown}");
    assert!(
        shown.contains(r#""offers": false"#),
        "the republished record switched offers back on: {shown}"
    );
    assert!(shown.contains(r#""product_info": true"#), "{shown}");

    gateway = site.start()?;
    e2e::wait_until(Duration::from_secs(10), || {
        site.admin_get("/readyz")
            .is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
    })
    .await
    .map_err(|e| e.context(gateway.logs()))?;
    app.publish(
        &site.topic("consent/r-1"),
        br#"{"id": "c-9", "forget": true}"#.to_vec(),
        QoS::AtLeastOnce,
        false,
    )
    .await?;
    let receipts = app
        .wait_for(2, Duration::from_secs(10))
        .await
        .map_err(|e| e.context(gateway.logs()))?;
    assert_eq!(receipts[1].json()?["status"], "forgotten");
    let notices = back_office.wait_for(1, Duration::from_secs(10)).await?;
    let notice = notices[0].json()?;
    assert_eq!(notice["person"], "p-1");
    assert!(notice["erased_at"].as_str().is_some(), "{notice}");

    // The back office has not cleared its record yet and republishes it.
    publish_record(old_record.clone()).await?;
    let errors = ops
        .wait_for(1, Duration::from_secs(10))
        .await
        .map_err(|e| e.context(gateway.logs()))?;
    let error = errors[0].json()?;
    assert_eq!(error["field"], "updated_at", "{error}");
    assert!(
        !errors[0].payload_str().contains("ana@example.com"),
        "no content in the report"
    );
    drop(gateway);
    assert!(
        !site.cli(&["people", "show", "p-1"])?.status.success(),
        "the forgotten person came back"
    );

    // A fresh session (a new client id: the broker holds no session for
    // it): the broker hands over the retained record, still old, refused.
    let text = std::fs::read_to_string(&site.config_path)?;
    std::fs::write(
        &site.config_path,
        text.replacen(
            "keep_alive_s = 5",
            "keep_alive_s = 5\nclient_id = \"gateway-fresh\"",
            1,
        ),
    )?;
    gateway = site.start()?;
    e2e::wait_until(Duration::from_secs(10), || {
        site.metric("gateway_people_refused_erased_total")
            .unwrap_or(0)
            >= 1
    })
    .await
    .map_err(|e| e.context(gateway.logs()))?;
    // A re-enrolment, dated after the erasure, is taken.
    tokio::time::sleep(Duration::from_millis(20)).await;
    publish_record(record_at(chrono::Utc::now())).await?;
    records_seen(&site, 2).await?;
    drop(gateway);
    let show = site.cli(&["people", "show", "p-1"])?;
    assert!(show.status.success(), "the re-enrolment was refused");
    Ok(())
}
