//! The twin's frames, read back by the gateway's own decoder, are the
//! beacons each shipped store file configures (issue "The store's digital
//! twin"); app tokens carry the configured company id.

use std::collections::BTreeMap;
use std::time::Duration;

use firmware_sim::spec::BeaconFrame;
use firmware_sim::{Scenario, Simulation, StoreSpec};
use gateway::decode::{DecodeOptions, Frame, decode};

fn expected(frame: &BeaconFrame, tx_power: i8) -> serde_json::Value {
    match frame {
        BeaconFrame::Ibeacon { uuid, major, minor } => {
            serde_json::json!({"kind": "ibeacon", "uuid": uuid.to_lowercase(), "major": major, "minor": minor, "measured_power": tx_power})
        }
        BeaconFrame::EddystoneUid {
            namespace,
            instance,
        } => {
            serde_json::json!({"kind": "eddystone_uid", "namespace": namespace.to_lowercase(), "instance": instance.to_lowercase()})
        }
        BeaconFrame::Altbeacon {
            manufacturer,
            id1,
            id2,
            id3,
        } => {
            serde_json::json!({"kind": "altbeacon", "manufacturer": manufacturer, "id1": id1.to_lowercase(), "id2": id2, "id3": id3})
        }
    }
}

/// The decoded frame's identifying fields (tx power aside for Eddystone and
/// AltBeacon, whose calibration bytes differ by format).
fn identity(frame: &Frame) -> Option<serde_json::Value> {
    let mut v = serde_json::to_value(frame).ok()?;
    let obj = v.as_object_mut()?;
    match obj.get("kind")?.as_str()? {
        "eddystone_uid" => {
            obj.remove("tx_power");
        }
        "altbeacon" => {
            obj.remove("reference_rssi");
            obj.remove("mfg_reserved");
        }
        "eddystone_tlm" | "app_token" => return None,
        _ => {}
    }
    Some(v)
}

fn check_store(spec: StoreSpec, scenario: Scenario) {
    let by_addr: BTreeMap<String, serde_json::Value> = spec
        .beacons
        .iter()
        .map(|b| (b.addr.to_lowercase(), expected(&b.frame, b.tx_power_1m)))
        .collect();
    let mut sim = Simulation::new(
        spec.clone(),
        scenario,
        firmware_sim::DEFAULT_START_UNIX_MS,
        5,
    )
    .unwrap();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut tokens = 0;
    for record in sim.run_for(Duration::from_secs(120)) {
        let frames = decode(
            &hex::decode(&record.adv).unwrap(),
            &DecodeOptions::default(),
        )
        .unwrap_or_default();
        for frame in &frames {
            if let Frame::AppToken { company_id, .. } = frame {
                assert_eq!(*company_id, 0xFFFF);
                tokens += 1;
            }
        }
        let Some(want) = by_addr.get(&record.addr) else {
            continue;
        };
        for frame in frames.iter().filter_map(identity) {
            assert_eq!(
                &frame, want,
                "beacon at {} decodes to something else",
                record.addr
            );
            *seen.entry(record.addr.clone()).or_default() += 1;
        }
    }
    assert_eq!(
        seen.len(),
        by_addr.len(),
        "every configured beacon is heard and decoded: {seen:?}"
    );
    assert!(tokens > 0, "app tokens decode");
}

#[test]
fn small_store_beacons_decode_back_to_their_configuration() {
    check_store(StoreSpec::small_store(), Scenario::small_demo(5));
}

#[test]
fn electronics_store_beacons_decode_back_to_their_configuration() {
    let spec = StoreSpec::from_file(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/sim/electronics-store.toml"
    ))
    .unwrap();
    let scenario = Scenario::tour(&spec, 5, 6);
    check_store(spec, scenario);
}
