//! Nudge kinds beyond dwell, through the real daemon (issue "Relevant
//! nudges under hard, per-person limits"): a comparison drawn from the
//! catalog with "works with what you own", a feedback question on the way
//! out and the answer kept for the store, a thank-you after a purchase
//! reported by e-mail identity.

use std::time::Duration;

use e2e::{Mosquitto, MosquittoOptions, Phone, PhoneOptions, PublishProperties, QoS, Site, site};
use firmware_sim::{Scenario, Shopper, Simulation, Stop, StoreSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_items_feedback_on_exit_and_thanks_after_a_purchase() -> anyhow::Result<()> {
    let broker = Mosquitto::start(MosquittoOptions::default())?;
    let catalog = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/catalog-example.toml"
    );
    let extra = format!(
        r#"
[catalog]
path = "{catalog}"

{zones}
[[rules]]
id = "laptop-compare"
zone = "laptops"
dwell_s = 20
interest = "laptops"
kind = "compare"
title = "Comparing laptops?"
body = "The {{catalog.count}} models on this table, side by side."

[[rules]]
id = "how-was-it"
on = "exit"
kind = "feedback"
title = "How was your visit?"
body = "One tap: did you find what you came for?"
{thanks}{caps}{clock}visit_gap_ms = 20000
"#,
        zones = e2e::site::THREE_ZONES,
        thanks = e2e::site::THANK_YOU,
        caps = e2e::site::LOOSE_CAPS,
        clock = e2e::site::SIM_CLOCK,
    );
    let mut site = Site::new(broker.port(), &extra)?;
    let path = vec![
        Stop::new("entrance", 5),
        Stop::new("laptops", 40),
        Stop::new("entrance", 5),
    ];
    let scenario = Scenario::new(21).with_shopper(
        Shopper::new(1, 21)
            .with_interests(&["laptops"])
            .with_path(path),
    );
    let mut record: serde_json::Value =
        serde_json::from_str(scenario.people_jsonl().lines().next().unwrap())?;
    record["owns"] = serde_json::json!(["phone:pixel-8"]);
    record["identities"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"kind": "email", "value": "ana@example.com"}));
    site.import_people(&record.to_string())?;
    let gateway = site.start()?;
    let phone = Phone::connect(PhoneOptions::new(
        broker.port(),
        "phone",
        site.topic("nudges/r-1"),
    ))
    .await?;
    let till = Phone::connect(PhoneOptions::new(broker.port(), "till", "")).await?;

    let start = e2e::site::now_ms();
    let mut sim = Simulation::new(StoreSpec::small_store(), scenario, start, 21)?;
    site::send(sim.next_batch(start + 80_000), site.udp, 20.0).await?;
    let got = phone
        .wait_for(1, Duration::from_secs(20))
        .await
        .map_err(|e| e.context(gateway.logs()))?;
    let compare = got[0].json()?;
    assert_eq!(compare["kind"], "compare");
    assert_eq!(
        compare["body"], "The 4 models on this table, side by side.",
        "{compare}"
    );
    assert!(
        !compare.to_string().contains("99999"),
        "ratings print as written: {compare}"
    );
    let items = compare["items"].as_array().expect("comparison items");
    assert!(!items.is_empty() && items.len() <= 4);
    assert!(
        items
            .iter()
            .all(|i| i["name"].is_string() && i["price"].is_string() && i["rating"].is_number()),
        "{compare}"
    );
    assert!(
        items.iter().any(|i| i["compatible_with"]
            .as_array()
            .is_some_and(|c| c.contains(&serde_json::json!("phone:pixel-8")))),
        "{compare}"
    );

    // The shopper leaves: after the visit gap, the feedback question.
    let got = phone
        .wait_for(2, Duration::from_secs(60))
        .await
        .map_err(|e| e.context(gateway.logs()))?;
    let feedback = got[1].json()?;
    assert_eq!(feedback["kind"], "feedback", "{feedback}");
    let answer = serde_json::json!({"nudge_id": feedback["id"], "answer": "yes", "comment": "found it quickly"});
    phone
        .publish(
            "retail/store-e2e/feedback/r-1",
            answer.to_string().into_bytes(),
            QoS::AtLeastOnce,
            false,
        )
        .await?;
    e2e::wait_until(Duration::from_secs(10), || {
        site.metric("gateway_feedback_answers_total").unwrap_or(0) >= 1
    })
    .await?;

    // The till reports a purchase by e-mail: a thank-you, nothing asked.
    let purchase = format!(
        r#"{{"identity": {{"kind": "email", "value": "ana@example.com"}}, "items": ["sku-123"], "at": "{}"}}"#,
        chrono_now()
    );
    till.publish_acked(
        "retail/store-e2e/purchases",
        purchase.as_bytes(),
        false,
        PublishProperties::default(),
    )
    .await?;
    let got = phone
        .wait_for(3, Duration::from_secs(15))
        .await
        .map_err(|e| e.context(gateway.logs()))?;
    let thanks = got[2].json()?;
    assert_eq!(thanks["kind"], "thanks", "{thanks}");
    assert_eq!(thanks["stop"]["purpose"], "thanks");

    drop(gateway);
    let export = site.cli(&["people", "export", "p-1"])?;
    let export: serde_json::Value = serde_json::from_slice(&export.stdout)?;
    assert_eq!(export["feedback"][0]["answer"], "yes", "{export}");
    assert_eq!(export["feedback"][0]["comment"], "found it quickly");
    Ok(())
}

fn chrono_now() -> String {
    let secs = e2e::site::now_ms() / 1000;
    // RFC 3339 in UTC from Unix seconds, without another dependency.
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}
