//! Chain-wide caps end to end (docs/design.md, chain-wide caps): two real
//! gateways, two stores of one chain, on one real Mosquitto. The same
//! person is enrolled in both (`people import`); with `[caps.chain]
//! per_day = 1`, a thank-you sent in store A holds the one B would send
//! (reason `chain_per_day`, from B's own metrics), a consent withdrawal
//! in A is applied in B, and a forget in A erases the person in B, where
//! an old CRM record cannot bring them back.

use std::time::Duration;

use e2e::{Mosquitto, MosquittoOptions, Phone, PhoneOptions, PublishProperties, Site, Workdir};

const STORE_A: &str = e2e::site::STORE_ID;
const STORE_B: &str = "store-b";

fn extra(secret_file: &std::path::Path) -> String {
    [
        e2e::site::THANK_YOU,
        e2e::site::LOOSE_CAPS,
        &e2e::site::chain_caps(1, secret_file),
    ]
    .concat()
}

/// Forgotten by an operator in store A while its gateway is stopped.
const SECOND: &str = r#"{"person": "p-2", "recipient": "r-2", "updated_at": "2026-01-05T09:00:00Z", "consent": {"proximity": true}}"#;

/// Enrolled long ago (the CRM's record), with consent to thank-yous.
const PERSON: &str = r#"{"person": "p-1", "recipient": "r-1", "updated_at": "2026-01-05T09:00:00Z", "identities": [{"kind": "email", "value": "ana@example.com"}], "consent": {"proximity": true, "thanks": true}}"#;

/// `instance` is valid against `schemas/<name>.schema.json`.
fn assert_schema(name: &str, instance: &serde_json::Value) {
    let path = format!(
        "{}/../schemas/{name}.schema.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{name}: {instance}: {errors:?}");
}

fn purchase() -> String {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    format!(
        r#"{{"identity": {{"kind": "email", "value": "ana@example.com"}}, "items": ["sku-123"], "at": "{now}"}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nudge_in_one_store_holds_the_next_in_another_and_a_forget_travels_the_chain()
-> anyhow::Result<()> {
    let broker = Mosquitto::start(MosquittoOptions::default())?;
    let secrets = Workdir::new("chain-secret")?;
    let secret = secrets.write(
        "chain-secret",
        "6f1c0a9d3e2b4c5a8f7e6d5c4b3a29180f1e2d3c4b5a69788796a5b4c3d2e1f0\n",
    )?;
    let mut a = Site::new(broker.port(), &extra(&secret))?;
    let mut b = Site::new(broker.port(), &extra(&secret))?;
    let people = format!("{PERSON}\n{SECOND}\n");
    a.import_people(&people)?;
    b.import_people(&people)?;
    let gateway_a = a.start()?;
    // The site file names store A; B's id (and so its client id and its
    // topics) comes from the environment.
    let gateway_b = b.start_with_env(&[], [("GATEWAY__STORE__ID", STORE_B)])?;
    let logs = |e: anyhow::Error| {
        e.context(format!(
            "--- A ---\n{}\n--- B ---\n{}\n--- B metrics ---\n{}",
            gateway_a.logs(),
            gateway_b.logs(),
            b.admin_get("/metrics").unwrap_or_default()
        ))
    };
    // Both ready: connected and subscribed (the chain's filter included).
    for site in [&a, &b] {
        e2e::wait_until(Duration::from_secs(15), || {
            site.admin_get("/readyz")
                .is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
        })
        .await
        .map_err(logs)?;
    }
    let phone = Phone::connect(PhoneOptions::new(
        broker.port(),
        "phone",
        "retail/+/nudges/r-1",
    ))
    .await?;
    let chain = Phone::connect(PhoneOptions::new(
        broker.port(),
        "chain-watch",
        "retail/chain/#",
    ))
    .await?;
    let till = Phone::connect(PhoneOptions::new(broker.port(), "till", "retail/till/none")).await?;

    // Store A: a purchase, a thank-you.
    till.publish_acked(
        &format!("retail/{STORE_A}/purchases"),
        purchase().as_bytes(),
        false,
        PublishProperties::default(),
    )
    .await?;
    let got = phone
        .wait_for(1, Duration::from_secs(15))
        .await
        .map_err(logs)?;
    assert_eq!(got[0].topic, format!("retail/{STORE_A}/nudges/r-1"));
    let nudge = got[0].json()?;
    // A tells the chain: the person's hash, never their id.
    let told = chain
        .wait_for(1, Duration::from_secs(15))
        .await
        .map_err(logs)?;
    assert_eq!(told[0].topic, format!("retail/chain/decisions/{STORE_A}"));
    let decision = told[0].json()?;
    assert_eq!(decision["v"], 1);
    assert_eq!(decision["kind"], "thanks");
    assert_eq!(decision["rule"], "thank-you");
    assert_eq!(decision["nudge_id"], nudge["id"], "{decision} vs {nudge}");
    assert_eq!(decision["person"].as_str().map(str::len), Some(32));
    assert!(!told[0].payload_str().contains("p-1") && !told[0].payload_str().contains("r-1"));
    assert_schema("chain-decision", &decision);
    // B folds it (and A ignores its own).
    e2e::wait_until(Duration::from_secs(15), || {
        b.metric("gateway_chain_entries_total{direction=\"in\",outcome=\"folded\"}")
            .unwrap_or(0)
            >= 1
            && a.metric("gateway_chain_entries_total{direction=\"in\",outcome=\"own\"}")
                .unwrap_or(0)
                >= 1
            && a.metric("gateway_chain_entries_total{direction=\"out\",outcome=\"acked\"}")
                .unwrap_or(0)
                >= 1
    })
    .await
    .map_err(logs)?;
    // The decision's entry was counted when it was queued with the
    // reservation, as erasures and consent changes are.
    assert_eq!(
        a.metric("gateway_chain_entries_total{direction=\"out\",outcome=\"queued\"}")?,
        1
    );

    // Store B, the same day: held by the chain's per_day, nothing sent.
    till.publish_acked(
        &format!("retail/{STORE_B}/purchases"),
        purchase().as_bytes(),
        false,
        PublishProperties::default(),
    )
    .await?;
    e2e::wait_until(Duration::from_secs(15), || {
        b.metric("gateway_nudges_held_total{reason=\"chain_per_day\"}")
            .unwrap_or(0)
            >= 1
    })
    .await
    .map_err(logs)?;
    phone.expect_exactly(1, Duration::from_millis(500)).await?;
    assert_eq!(b.metric("gateway_nudges_reserved_total")?, 0);

    // A consent change from the app in store A reaches B: thank-yous off.
    till.publish_acked(
        &format!("retail/{STORE_A}/consent/r-1"),
        br#"{"id": "c-thanks", "consent": {"thanks": false}}"#.as_slice(),
        false,
        PublishProperties::default(),
    )
    .await?;
    e2e::wait_until(Duration::from_secs(15), || {
        b.metric("gateway_consent_withdrawn_total{purpose=\"thanks\"}")
            .unwrap_or(0)
            >= 1
    })
    .await
    .map_err(logs)?;
    let told = chain
        .wait_for(2, Duration::from_secs(15))
        .await
        .map_err(logs)?;
    assert_eq!(told[1].topic, format!("retail/chain/consent/{STORE_A}"));
    let consent = told[1].json()?;
    assert_eq!(consent["consent"], serde_json::json!({"thanks": false}));
    assert_schema("chain-consent", &consent);

    // A forget from the app in store A: the person is erased in B too.
    till.publish_acked(
        &format!("retail/{STORE_A}/consent/r-1"),
        br#"{"id": "c-forget", "forget": true}"#.as_slice(),
        false,
        PublishProperties::default(),
    )
    .await?;
    e2e::wait_until(Duration::from_secs(15), || {
        b.metric("gateway_people_erased_total").unwrap_or(0) >= 1
    })
    .await
    .map_err(logs)?;
    // What A told the chain: the erasure, by the same person hash.
    let told = chain
        .wait_for(3, Duration::from_secs(15))
        .await
        .map_err(logs)?;
    assert_eq!(told[2].topic, format!("retail/chain/erasures/{STORE_A}"));
    let erasure = told[2].json()?;
    assert_eq!(erasure["person"], decision["person"]);
    assert_schema("chain-erasure", &erasure);
    // The CRM's old record, republished, does not bring them back in B.
    till.publish_acked(
        "retail/crm/people/p-1",
        PERSON.as_bytes(),
        false,
        PublishProperties::default(),
    )
    .await?;
    e2e::wait_until(Duration::from_secs(15), || {
        b.metric("gateway_people_refused_erased_total").unwrap_or(0) >= 1
    })
    .await
    .map_err(logs)?;
    // Nothing of B's garbage went back out: no chain message refused.
    assert_eq!(
        b.metric("gateway_chain_entries_total{direction=\"in\",outcome=\"refused\"}")?,
        0
    );

    for phone in [phone, chain, till] {
        phone.stop().await?;
    }
    let (mut gateway_a, mut gateway_b) = (gateway_a, gateway_b);
    gateway_a.stop(Duration::from_secs(10))?;
    gateway_b.stop(Duration::from_secs(10))?;
    // B's storage holds nobody of that id any more.
    let shown = b.cli(&["people", "show", "p-1"])?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&shown.stdout),
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(
        !text.contains("ana@example.com") && !text.contains("r-1"),
        "B still knows the person: {text}"
    );

    // An operator forgets p-2 in store A with the gateway stopped: the
    // erasure waits in A's chain outbox, goes out when A runs again, and
    // B erases p-2 too.
    let forgot = a.cli(&["people", "forget", "p-2"])?;
    assert!(
        forgot.status.success(),
        "{}",
        String::from_utf8_lossy(&forgot.stderr)
    );
    let gateway_b = b.start_with_env(&[], [("GATEWAY__STORE__ID", STORE_B)])?;
    let gateway_a = a.start()?;
    e2e::wait_until(Duration::from_secs(15), || {
        b.metric("gateway_people_erased_total").unwrap_or(0) >= 1
    })
    .await
    .map_err(|e| {
        e.context(format!(
            "--- A ---\n{}\n--- B ---\n{}",
            gateway_a.logs(),
            gateway_b.logs()
        ))
    })?;
    drop((gateway_a, gateway_b));
    Ok(())
}
