//! In-process fuzzing of every parser of incoming messages (the app's and
//! the till's messages, CRM records, sighting records, scanner feeds):
//! arbitrary text and mutations of valid payloads never panic, every error
//! names a field and a reason, and the field's metric label is one of the
//! fixed set. `scripts/fuzz-topics` does the same through a real broker
//! and daemon.

use gateway::identity::{CheckIn, ConsentChange, Feedback, PersonRecord, Purchase};
use gateway::io::scanners;
use gateway::sighting::Sighting;
use gateway::telemetry::{INCOMING_FIELDS, field_label};
use proptest::prelude::*;

const VALID: &[&str] = &[
    r#"{"id": "c-1", "consent": {"product_info": true}, "interests": ["laptops"], "at": "2026-11-23T10:20:00Z"}"#,
    r#"{"id": "c-2", "forget": true}"#,
    r#"{"rotating_id": "00112233445566778899aabbccddeeff", "at_ms": 1795334400123, "beacons": [{"uuid": "426c7565-4368-6172-6d42-6561636f6e73", "major": 1, "minor": 1, "rssi": -60}]}"#,
    r#"{"nudge_id": "n-1", "answer": "yes", "comment": "fine"}"#,
    r#"{"person": "p-1", "items": ["sku-1"], "at": "2026-11-23T10:20:00Z"}"#,
    r#"{"person": "p-1", "recipient": "r-1", "identities": [{"kind": "app", "key": "000102030405060708090a0b0c0d0e0f"}, {"kind": "email", "value": "a@b.c"}], "consent": {"proximity": true}, "interests": ["laptops"]}"#,
    r#"{"scanner": "node-1", "at_ms": 1795334400123, "addr": "aa:bb:cc:dd:ee:01", "rssi": -61, "adv": "0201061aff4c000215426c7565436861726d426561636f6e730001000ac5"}"#,
    r#"{"id": "iBeacon:426c7565-4368-6172-6d42-6561636f6e73-1-1", "rssi": -61, "rssi@1m": -59, "distance": 1.2}"#,
    r#"{"id": "AA:BB:CC:DD:EE:01", "rssi": -70, "manufacturerdata": "4c000215426c7565436861726d426561636f6e730001000ac5"}"#,
];

/// A valid payload with a few bytes replaced, removed or repeated.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (
        0..VALID.len(),
        prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..6),
    )
        .prop_map(|(which, edits)| {
            let mut bytes = VALID[which].as_bytes().to_vec();
            for (at, op, byte) in edits {
                if bytes.is_empty() {
                    break;
                }
                let at = at.index(bytes.len());
                match op {
                    0 => bytes[at] = byte,
                    1 => {
                        bytes.remove(at);
                    }
                    _ => {
                        let piece: Vec<u8> = bytes[at..].iter().take(8).copied().collect();
                        bytes.splice(at..at, piece);
                    }
                }
            }
            bytes
        })
}

fn payloads() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        any::<String>().prop_map(String::into_bytes),
        mutated(),
        mutated(),
    ]
}

fn check_field(field: &str, reason: &str) -> Result<(), TestCaseError> {
    prop_assert!(!field.is_empty() && !reason.is_empty());
    let label = field_label(field);
    prop_assert!(label == "unknown_field" || INCOMING_FIELDS.contains(&label));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn app_and_crm_parsers_never_panic_and_name_a_field(payload in payloads(), recipient in "[a-z0-9-]{0,70}|\\PC{0,20}") {
        let text = String::from_utf8_lossy(&payload);
        if let Err(e) = ConsentChange::from_json(&text, &recipient) {
            check_field(&e.field, &e.reason)?;
        }
        if let Err(e) = CheckIn::from_json(&text) {
            check_field(&e.field, &e.reason)?;
        }
        if let Err(e) = Feedback::from_json(&text) {
            check_field(&e.field, &e.reason)?;
        }
        if let Err(e) = Purchase::from_json(&text) {
            check_field(&e.field, &e.reason)?;
        }
        if let Err(e) = PersonRecord::from_json(&text) {
            check_field(&e.field, &e.reason)?;
        }
    }

    #[test]
    fn scanner_parsers_never_panic_and_name_a_field(payload in payloads(), node in "\\PC{0,20}") {
        let text = String::from_utf8_lossy(&payload);
        if let Err(e) = Sighting::from_json(&text) {
            prop_assert!(!e.field.is_empty());
        }
        let topics = [
            format!("retail/s1/scanners/{node}"),
            format!("espresense/devices/{node}/{node}"),
            format!("home/{node}/BTtoMQTT/AABBCCDDEE01"),
        ];
        if let Err(e) = scanners::parse_scanner_record(&topics[0], &payload) {
            prop_assert!(!e.field.is_empty());
        }
        if let Err(e) = scanners::parse_espresense(&topics[1], &payload, 1_795_334_400_000) {
            prop_assert!(!e.field.is_empty());
        }
        if let Err(e) = scanners::parse_openmqttgateway(&topics[2], &payload, 1_795_334_400_000) {
            prop_assert!(!e.field.is_empty());
        }
    }
}

#[test]
fn the_valid_examples_parse() {
    assert!(ConsentChange::from_json(VALID[0], "r-1").is_ok());
    assert!(ConsentChange::from_json(VALID[1], "r-1").is_ok());
    assert!(CheckIn::from_json(VALID[2]).is_ok());
    assert!(Feedback::from_json(VALID[3]).is_ok());
    assert!(Purchase::from_json(VALID[4]).is_ok());
    assert!(PersonRecord::from_json(VALID[5]).is_ok());
    assert!(
        scanners::parse_scanner_record("retail/s1/scanners/node-1", VALID[6].as_bytes()).is_ok()
    );
    assert!(
        scanners::parse_espresense(
            "espresense/devices/iBeacon:426c7565-4368-6172-6d42-6561636f6e73-1-1/laptops",
            VALID[7].as_bytes(),
            0
        )
        .is_ok()
    );
    assert!(
        scanners::parse_openmqttgateway("home/node1/BTtoMQTT/AABBCCDDEE01", VALID[8].as_bytes(), 0)
            .is_ok()
    );
}
