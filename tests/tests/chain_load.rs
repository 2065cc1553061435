//! `firmware-sim chain-load` (the chain bench's load, `bench/chain.sh`)
//! against a real gateway with `[caps.chain]`: every entry it publishes is
//! valid against `schemas/chain-decision.schema.json`, and the gateway
//! folds every one (none refused), so the bench measures folds, not
//! refusals. With the chain secret, entries about a person the gateway
//! knows hold that person's nudge there.

use std::process::Command;
use std::time::Duration;

use e2e::{Mosquitto, MosquittoOptions, Phone, PhoneOptions, Site, Workdir};

const SECRET: &str = "3b7e1f0c9a2d4e6f8a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5\n";

fn site_extra(secret: &std::path::Path) -> String {
    [
        e2e::site::THANK_YOU,
        e2e::site::LOOSE_CAPS,
        &e2e::site::chain_caps(2, secret),
    ]
    .concat()
}

/// `p-100000`, the first person the chain load names, with an e-mail the
/// till can name and consent to thank-yous.
const PERSON: &str = r#"{"person": "p-100000", "recipient": "r-100000", "identities": [{"kind": "email", "value": "p100000@example.com"}], "consent": {"proximity": true, "thanks": true}}"#;

fn schema_errors(instance: &serde_json::Value) -> Vec<String> {
    let path = format!(
        "{}/../schemas/chain-decision.schema.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    validator
        .iter_errors(instance)
        .map(|e| e.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_load_is_what_a_gateway_folds_and_counts() -> anyhow::Result<()> {
    let broker = Mosquitto::start(MosquittoOptions::default())?;
    let secrets = Workdir::new("chain-secret")?;
    let secret = secrets.write("chain-secret", SECRET)?;
    let mut site = Site::new(broker.port(), &site_extra(&secret))?;
    site.import_people(PERSON)?;
    let gateway = site.start()?;
    e2e::wait_until(Duration::from_secs(15), || {
        site.admin_get("/readyz")
            .is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
    })
    .await?;
    let watch = Phone::connect(PhoneOptions::new(
        broker.port(),
        "chain-watch",
        "retail/chain/decisions/+",
    ))
    .await?;
    let phone = Phone::connect(PhoneOptions::new(
        broker.port(),
        "phone",
        site.topic("nudges/+"),
    ))
    .await?;

    // 600 entries from 1,000 stores about one person (the one enrolled).
    let out = Command::new(e2e::firmware_sim_bin()?)
        .args([
            "chain-load",
            "--broker",
            &format!("127.0.0.1:{}", broker.port()),
        ])
        .args([
            "--rate",
            "300",
            "--duration",
            "2s",
            "--people",
            "1",
            "--json",
        ])
        .arg("--secret-file")
        .arg(&secret)
        .output()?;
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(report["published"], 600, "{report}");
    assert_eq!(report["acked"], 600, "{report}");

    let heard = watch.wait_for(600, Duration::from_secs(15)).await?;
    for entry in &heard {
        assert!(entry.topic.starts_with("retail/chain/decisions/chain-"));
        let errors = schema_errors(&entry.json()?);
        assert!(errors.is_empty(), "{}: {errors:?}", entry.payload_str());
    }
    let metric = |series: &str| site.metric(series).unwrap_or(0);
    e2e::wait_until(Duration::from_secs(30), || {
        metric("gateway_chain_entries_total{direction=\"in\",outcome=\"folded\"}") >= 600
    })
    .await
    .map_err(|e| e.context(gateway.logs()))?;
    assert_eq!(
        metric("gateway_chain_entries_total{direction=\"in\",outcome=\"refused\"}"),
        0
    );

    // The person is known here: the chain's 600 sends today hold the
    // thank-you their purchase here would have brought.
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    watch
        .publish_acked(
            &site.topic("purchases"),
            format!(
                r#"{{"identity": {{"kind": "email", "value": "p100000@example.com"}}, "items": ["sku-1"], "at": "{now}"}}"#
            ),
            false,
            Default::default(),
        )
        .await?;
    e2e::wait_until(Duration::from_secs(15), || {
        metric("gateway_nudges_held_total{reason=\"chain_per_day\"}") >= 1
    })
    .await
    .map_err(|e| e.context(gateway.logs()))?;
    phone.expect_exactly(0, Duration::from_millis(500)).await?;
    Ok(())
}
