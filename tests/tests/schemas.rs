//! The JSON Schemas in `schemas/` (draft 2020-12) against real payloads: what
//! a running gateway publishes (nudge, status, receipt, error report), the
//! docs/design.md §5 examples of what it reads, and invalid payloads that both the
//! schema and the gateway's own parser must refuse, so the two cannot drift.

use std::path::PathBuf;
use std::time::Duration;

use e2e::{Mosquitto, MosquittoOptions, Phone, PhoneOptions, PublishProperties, QoS, Site, site};
use firmware_sim::{Scenario, Shopper, Simulation, Stop, StoreSpec};
use serde_json::{Value, json};

const SCHEMAS: [&str; 14] = [
    "nudge",
    "erasure-notice",
    "status",
    "receipt",
    "error-report",
    "person-record",
    "consent-change",
    "checkin",
    "feedback",
    "purchase",
    "sighting-record",
    "chain-decision",
    "chain-erasure",
    "chain-consent",
];

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas")
}

fn schema(name: &str) -> Value {
    let path = schema_dir().join(format!("{name}.schema.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn validator(name: &str) -> jsonschema::Validator {
    jsonschema::validator_for(&schema(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Every error of `instance` against schema `name`, as text.
fn errors(name: &str, instance: &Value) -> Vec<String> {
    validator(name)
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect()
}

fn assert_valid(name: &str, instance: &Value) {
    let errors = errors(name, instance);
    assert!(errors.is_empty(), "{name}: {instance}\n{errors:#?}");
}

/// The gateway's own parser for an incoming kind.
fn parses(name: &str, text: &str) -> Result<(), String> {
    use gateway::identity::{CheckIn, ConsentChange, Feedback, PersonRecord, Purchase};
    match name {
        "person-record" => PersonRecord::from_json(text)
            .map(drop)
            .map_err(|e| e.to_string()),
        "consent-change" => ConsentChange::from_json(text, "r-5f2c9a")
            .map(drop)
            .map_err(|e| e.to_string()),
        "checkin" => CheckIn::from_json(text)
            .map(drop)
            .map_err(|e| e.to_string()),
        "feedback" => Feedback::from_json(text)
            .map(drop)
            .map_err(|e| e.to_string()),
        "purchase" => Purchase::from_json(text)
            .map(drop)
            .map_err(|e| e.to_string()),
        "sighting-record" => gateway::sighting::Sighting::from_json(text)
            .map(drop)
            .map_err(|e| e.to_string()),
        other => panic!("no parser for {other}"),
    }
}

#[test]
fn every_schema_is_draft_2020_12_compiles_and_has_an_id() {
    let mut on_disk: Vec<String> = std::fs::read_dir(schema_dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".schema.json").map(str::to_string)
        })
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = SCHEMAS.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(on_disk, expected);
    for name in SCHEMAS {
        let s = schema(name);
        assert_eq!(
            s["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{name}"
        );
        assert!(
            s["$id"]
                .as_str()
                .unwrap()
                .ends_with(&format!("{name}.schema.json"))
        );
        assert!(
            jsonschema::meta::is_valid(&s),
            "{name} is not a valid schema"
        );
        validator(name);
        // The gateway rejects unknown fields everywhere: so do the schemas.
        assert_eq!(s["additionalProperties"], false, "{name}");
    }
}

/// docs/design.md §5's examples (the feedback id completed to a real one).
fn design_examples() -> Vec<(&'static str, Value)> {
    vec![
        (
            "person-record",
            json!({"person": "p-1001", "recipient": "r-5f2c9a", "timezone": null,
             "identities": [{"kind": "app", "key": "75c734c6dd1a782de7a965da5eb93125"},
                            {"kind": "email", "value": "ana@example.com"}],
             "consent": {"proximity": true, "product_info": true, "offers": false,
                         "thanks": true, "feedback": true},
             "interests": ["laptops", "headphones"],
             "owns": ["phone:pixel-8"]}),
        ),
        (
            "person-record",
            json!({"person": "p-1001", "recipient": "r-5f2c9a",
             "updated_at": "2026-11-23T09:00:00Z",
             "consent": {"proximity": true}}),
        ),
        (
            "consent-change",
            json!({"id": "c-7f3e", "consent": {"offers": false}, "at": "2026-11-23T10:15:00Z"}),
        ),
        ("consent-change", json!({"id": "c-8a01", "forget": true})),
        (
            "consent-change",
            json!({"id": "c-9", "interests": ["laptops"], "owns": []}),
        ),
        (
            "checkin",
            json!({"rotating_id": "8be6cd371c5c891604bfbe49df845096", "at_ms": 1795334400123_i64,
             "beacons": [{"uuid": "426c7565-4368-6172-6d42-6561636f6e73", "major": 1, "minor": 7, "rssi": -61}]}),
        ),
        (
            "feedback",
            json!({"nudge_id": "0193a5c2-7b1e-7c3a-9f00-0123456789ab", "answer": "yes", "comment": "found it quickly"}),
        ),
        ("feedback", json!({"nudge_id": "n-1", "answer": "no"})),
        (
            "purchase",
            json!({"identity": {"kind": "email", "value": "ana@example.com"}, "items": ["sku-123"], "at": "2026-11-23T10:20:00Z"}),
        ),
        (
            "purchase",
            json!({"person": "p-1001", "items": ["sku-1", "sku-2"], "at": "2026-11-23T10:20:00+01:00"}),
        ),
        (
            "sighting-record",
            json!({"scanner": "entrance", "addr": "7f:ff:fe:7e:0e:08", "rssi": -63, "adv": "0201061aff4c00", "at_ms": 1795334400123_i64}),
        ),
    ]
}

#[test]
fn incoming_examples_are_valid_and_the_gateway_accepts_them() {
    for (name, example) in design_examples() {
        assert_valid(name, &example);
        parses(name, &example.to_string())
            .unwrap_or_else(|e| panic!("gateway refused a valid {name}: {example}: {e}"));
    }
    // Records the simulator produces, as `people import` reads them.
    let scenario = Scenario::new(1)
        .with_shopper(Shopper::new(1, 1).with_interests(&["laptops"]))
        .with_shopper(Shopper::new(2, 1));
    for line in scenario.people_jsonl().lines() {
        assert_valid("person-record", &serde_json::from_str(line).unwrap());
    }
}

/// docs/design.md §10's chain payloads are valid; a field too many, a
/// person that is not the 32-hex hash, or another version are not.
#[test]
fn the_chain_payloads_of_the_design_match_their_schemas() {
    let person = "d7d8958469d7ad49398d29056543538d";
    let decision = json!({"v": 1, "person": person, "kind": "info", "rule": "laptop-dwell",
        "at_ms": 1795334400123_i64, "nudge_id": "0193a5c2-7c1e-7b3a-9f00-000000000001"});
    assert_valid("chain-decision", &decision);
    assert_valid(
        "chain-erasure",
        &json!({"v": 1, "person": person, "erased_at_ms": 1795334400123_i64}),
    );
    assert_valid(
        "chain-consent",
        &json!({"v": 1, "person": person, "consent": {"offers": false}, "at_ms": 1795334400123_i64}),
    );
    let mut extra = decision.clone();
    extra["zone"] = json!("laptops");
    let mut upper = decision.clone();
    upper["person"] = json!(person.to_uppercase());
    let mut v2 = decision.clone();
    v2["v"] = json!(2);
    for bad in [extra, upper, v2] {
        assert!(!errors("chain-decision", &bad).is_empty(), "{bad}");
    }
    assert!(
        !errors(
            "chain-consent",
            &json!({"v": 1, "person": person, "consent": {"spam": true}, "at_ms": 1795334400123_i64})
        )
        .is_empty()
    );
}

#[test]
fn invalid_payloads_fail_the_schema_and_the_gateway_alike() {
    let cases: Vec<(&str, Value)> = vec![
        // Unknown fields.
        (
            "person-record",
            json!({"person": "p-1", "recipient": "r-1", "email": "a@b"}),
        ),
        (
            "consent-change",
            json!({"id": "c-1", "consent": {"offers": false}, "extra": 1}),
        ),
        (
            "checkin",
            json!({"rotating_id": "8be6cd371c5c891604bfbe49df845096", "at_ms": 1795334400123_i64, "beacons": [], "gps": [1, 2]}),
        ),
        (
            "feedback",
            json!({"nudge_id": "n-1", "answer": "yes", "stars": 5}),
        ),
        (
            "purchase",
            json!({"person": "p-1", "items": ["a"], "at": "2026-11-23T10:20:00Z", "total": 3}),
        ),
        (
            "sighting-record",
            json!({"scanner": "s", "addr": "7f:ff:fe:7e:0e:08", "rssi": -63, "adv": "", "at_ms": 1, "name": "x"}),
        ),
        // Wrong types, ranges and shapes.
        (
            "person-record",
            json!({"person": "p/1", "recipient": "r-1"}),
        ),
        (
            "person-record",
            json!({"person": "p-1", "recipient": "r-1", "consent": {"spam": true}}),
        ),
        (
            "person-record",
            json!({"person": "p-1", "recipient": "r-1", "identities": [{"kind": "app", "key": "00"}]}),
        ),
        (
            "person-record",
            json!({"person": "p-1", "recipient": "r-1", "identities": [{"kind": "phone", "value": "1"}]}),
        ),
        ("consent-change", json!({"consent": {"offers": false}})),
        ("consent-change", json!({"id": "c-1"})),
        ("consent-change", json!({"id": "c-1", "consent": {}})),
        (
            "consent-change",
            json!({"id": "c-1", "consent": {"offers": "no"}}),
        ),
        ("consent-change", json!({"id": "c-1", "forget": false})),
        (
            "consent-change",
            json!({"id": "c-1", "forget": true, "consent": {"offers": true}}),
        ),
        ("consent-change", json!({"id": "c-1", "interests": null})),
        (
            "consent-change",
            json!({"id": "c-1", "consent": {"offers": true}, "at": "yesterday"}),
        ),
        (
            "checkin",
            json!({"rotating_id": "8be6", "at_ms": 1795334400123_i64, "beacons": []}),
        ),
        (
            "checkin",
            json!({"rotating_id": "8be6cd371c5c891604bfbe49df845096", "at_ms": 1795334400, "beacons": []}),
        ),
        (
            "checkin",
            json!({"rotating_id": "8be6cd371c5c891604bfbe49df845096", "at_ms": 1795334400123_i64,
            "beacons": [{"uuid": "426c7565-4368-6172-6d42-6561636f6e73", "major": 1, "minor": 7, "rssi": 5}]}),
        ),
        (
            "checkin",
            json!({"rotating_id": "8be6cd371c5c891604bfbe49df845096", "at_ms": 1795334400123_i64,
            "beacons": [{"uuid": "not-a-uuid", "major": 1, "minor": 7, "rssi": -50}]}),
        ),
        ("feedback", json!({"nudge_id": "n-1", "answer": ""})),
        ("feedback", json!({"nudge_id": "n-1", "answer": "a\u{1}b"})),
        ("feedback", json!({"nudge_id": "n 1", "answer": "yes"})),
        (
            "purchase",
            json!({"items": ["a"], "at": "2026-11-23T10:20:00Z"}),
        ),
        (
            "purchase",
            json!({"person": "p-1", "identity": {"kind": "card", "value": "1"}, "items": ["a"], "at": "2026-11-23T10:20:00Z"}),
        ),
        (
            "purchase",
            json!({"person": "p-1", "items": [], "at": "2026-11-23T10:20:00Z"}),
        ),
        ("purchase", json!({"person": "p-1", "items": ["a"]})),
        (
            "sighting-record",
            json!({"scanner": "", "addr": "7f:ff:fe:7e:0e:08", "rssi": -63, "adv": "", "at_ms": 1}),
        ),
        (
            "sighting-record",
            json!({"scanner": "s", "addr": "zz", "rssi": -63, "adv": "", "at_ms": 1}),
        ),
        (
            "sighting-record",
            json!({"scanner": "s", "addr": "7f:ff:fe:7e:0e:08", "rssi": -200, "adv": "", "at_ms": 1}),
        ),
        (
            "sighting-record",
            json!({"scanner": "s", "addr": "7f:ff:fe:7e:0e:08", "rssi": -63, "adv": "abc", "at_ms": 1}),
        ),
        (
            "sighting-record",
            json!({"scanner": "s", "addr": "7f:ff:fe:7e:0e:08", "rssi": -63, "adv": "", "at_ms": -1}),
        ),
        // Not an object at all.
        ("consent-change", json!(["c-1"])),
        ("checkin", json!("checkin")),
    ];
    for (name, payload) in cases {
        assert!(
            !errors(name, &payload).is_empty(),
            "schema {name} accepted {payload}"
        );
        assert!(
            parses(name, &payload.to_string()).is_err(),
            "gateway accepted invalid {name}: {payload}"
        );
    }
    // Outgoing schemas refuse what the gateway must never send.
    for (name, payload) in [
        ("receipt", json!({"id": "c-1", "status": "maybe"})),
        ("status", json!({"status": "online"})),
        (
            "error-report",
            json!({"topic": "t", "field": "f", "reason": "r", "payload": "{...}"}),
        ),
        ("nudge", json!({"id": "x", "kind": "spam"})),
    ] {
        assert!(
            !errors(name, &payload).is_empty(),
            "{name} accepted {payload}"
        );
    }
}

/// The harness's store and laptop rule, plus what this test adds.
fn site() -> String {
    [
        e2e::site::THREE_ZONES,
        e2e::site::LAPTOP_COMPARE,
        SITE_REST,
        e2e::site::LOOSE_CAPS,
        e2e::site::SIM_CLOCK,
    ]
    .concat()
}

const SITE_REST: &str = r#"

[[rules]]
id = "headphones-info"
zone = "headphones"
dwell_s = 20
kind = "info"
title = "Try before you buy"
body = "Every pair on this wall can be tried on; ask us for a fresh ear cushion."
"#;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// What a real gateway publishes, collected from the broker, validated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_a_running_gateway_publishes_matches_its_schema() -> anyhow::Result<()> {
    let broker = Mosquitto::start(MosquittoOptions::default())?;
    let mut site = Site::new(broker.port(), &site())?;
    let path = vec![
        Stop::new("entrance", 5),
        Stop::new("laptops", 45),
        Stop::new("headphones", 45),
        Stop::new("entrance", 5),
    ];
    let scenario = Scenario::new(3)
        .with_shopper(
            Shopper::new(1, 3)
                .with_interests(&["laptops"])
                .with_path(path.clone()),
        )
        .with_shopper(
            Shopper::new(2, 3)
                .with_interests(&["laptops"])
                .with_path(path),
        );
    site.import_people(&scenario.people_jsonl())?;
    let gateway = site.start()?;
    let watch =
        |id: &str, filter: String| Phone::connect(PhoneOptions::new(broker.port(), id, filter));
    let nudges = watch("phones", site.topic("nudges/+")).await?;
    let status = watch("ops-status", site.topic("gateway/status")).await?;
    let receipts = watch("app", site.topic("receipts/+")).await?;
    let erasures = watch("back-office", site.topic("erasures")).await?;
    let errors_seen = watch("ops-errors", site.topic("gateway/errors")).await?;

    let start = now_ms();
    let mut sim = Simulation::new(StoreSpec::small_store(), scenario, start, 3)?;
    site::send(sim.next_batch(start + 110_000), site.udp, 25.0).await?;
    let got = nudges
        .wait_for(4, Duration::from_secs(30))
        .await
        .map_err(|e| e.context(gateway.logs()))?;
    let kinds: std::collections::BTreeSet<String> = got
        .iter()
        .map(|r| r.json().unwrap()["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds.len(), 2, "both rule kinds: {kinds:?}");
    for nudge in &got {
        assert_valid("nudge", &nudge.json()?);
    }

    let online = status.wait_for(1, Duration::from_secs(5)).await?;
    assert_valid("status", &online[0].json()?);

    receipts
        .publish_acked(
            &site.topic("consent/r-1"),
            br#"{"id": "c-7f3e", "consent": {"offers": false}}"#.to_vec(),
            false,
            PublishProperties::default(),
        )
        .await?;
    receipts
        .publish(
            &site.topic("consent/r-2"),
            br#"{"id": "c-8a01", "forget": true}"#.to_vec(),
            QoS::AtLeastOnce,
            false,
        )
        .await?;
    let got = receipts.wait_for(2, Duration::from_secs(10)).await?;
    for receipt in &got {
        assert_valid("receipt", &receipt.json()?);
    }
    let statuses: Vec<String> = got
        .iter()
        .map(|r| r.json().unwrap()["status"].to_string())
        .collect();
    assert!(
        statuses.contains(&"\"forgotten\"".to_string()),
        "{statuses:?}"
    );
    let notices = erasures.wait_for(1, Duration::from_secs(10)).await?;
    assert_valid("erasure-notice", &notices[0].json()?);

    receipts
        .publish(
            &site.topic("checkin/r-1"),
            b"{not json".to_vec(),
            QoS::AtLeastOnce,
            false,
        )
        .await?;
    let reports = errors_seen.wait_for(1, Duration::from_secs(10)).await?;
    assert_valid("error-report", &reports[0].json()?);

    drop(gateway);
    let offline = status.wait_for(2, Duration::from_secs(10)).await?;
    let last = offline.last().unwrap().json()?;
    assert_eq!(last["status"], "offline");
    assert_valid("status", &last);
    Ok(())
}
