//! End-to-end tests of the twin through its public API.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use firmware_sim::{
    DEFAULT_START_UNIX_MS, HALL_ZONE, RotatingKey, Scenario, Shopper, SightingRecord, Simulation,
    Stop, StoreSpec, interval_of_unix_ms, rotating_id,
};
use proptest::prelude::*;
use serde_json::Value;

const START: i64 = DEFAULT_START_UNIX_MS;
const TEN_MINUTES: Duration = Duration::from_secs(600);

fn capture(seed: u64, duration: Duration) -> (Simulation, Vec<SightingRecord>) {
    let mut sim = Simulation::new(
        StoreSpec::small_store(),
        Scenario::small_demo(seed),
        START,
        seed,
    )
    .expect("demo scenario fits the small store");
    let records = sim.run_for(duration);
    (sim, records)
}

fn capture_bytes(records: &[SightingRecord]) -> Vec<u8> {
    let mut bytes = Vec::new();
    firmware_sim::write_jsonl(&mut bytes, records).expect("writing to memory");
    bytes
}

/// The 16-byte rotating id inside an app token advert with `company_id`.
fn app_token_id(adv_hex: &str, company_id: u16) -> Option<[u8; 16]> {
    let adv = hex::decode(adv_hex).ok()?;
    let mut i = 0;
    while i < adv.len() {
        let len = usize::from(adv[i]);
        let structure = adv.get(i + 1..i + 1 + len)?;
        if len == 21 && structure[0] == 0xFF && structure[1..3] == company_id.to_le_bytes() {
            assert_eq!(structure[3], 0x01, "app token version");
            return structure[4..20].try_into().ok();
        }
        i += 1 + len;
    }
    None
}

#[test]
fn rotating_id_matches_published_vectors() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../vectors/rotating_id.json");
    let text = std::fs::read_to_string(path).expect("vector file present");
    let vectors: Value = serde_json::from_str(&text).expect("vector file is JSON");
    let key: [u8; 16] = hex::decode(vectors["key"].as_str().expect("key"))
        .expect("hex key")
        .try_into()
        .expect("16-byte key");
    assert_eq!(
        hex::encode(firmware_sim::rotating::derive_rpik(&key)),
        vectors["rpik"].as_str().expect("rpik")
    );
    let start = u32::try_from(vectors["start_interval"].as_u64().expect("interval")).expect("u32");
    let rpis = vectors["rpis"].as_array().expect("rpis");
    assert_eq!(rpis.len(), 5);
    let prepared = RotatingKey::new(&key);
    for (offset, rpi) in (0u32..).zip(rpis) {
        let expected = rpi.as_str().expect("rpi string");
        assert_eq!(hex::encode(rotating_id(&key, start + offset)), expected);
        assert_eq!(hex::encode(prepared.identifier(start + offset)), expected);
    }
}

#[test]
fn same_seed_gives_identical_bytes_and_other_seeds_differ() {
    let (sim_a, a) = capture(7, TEN_MINUTES);
    let (sim_b, b) = capture(7, TEN_MINUTES);
    let (_, c) = capture(8, TEN_MINUTES);
    assert!(a.len() > 1000, "a ten minute capture has plenty of records");
    assert_eq!(capture_bytes(&a), capture_bytes(&b));
    assert_ne!(capture_bytes(&a), capture_bytes(&c));
    let end = START + 600_000;
    assert_eq!(sim_a.ground_truth(end), sim_b.ground_truth(end));
    assert_eq!(
        Scenario::small_demo(7).people_jsonl(),
        Scenario::small_demo(7).people_jsonl()
    );
    assert_ne!(
        Scenario::small_demo(7).people_jsonl(),
        Scenario::small_demo(8).people_jsonl()
    );
}

#[test]
fn app_tokens_carry_the_shoppers_rotating_id_for_the_interval() {
    let scenario = Scenario::small_demo(7);
    let keys: BTreeMap<String, RotatingKey> = scenario
        .shoppers
        .iter()
        .map(|s| (s.person.clone(), RotatingKey::new(&s.key)))
        .collect();
    // A capture that crosses a rotation boundary.
    let mut sim = Simulation::new(
        StoreSpec::small_store(),
        scenario.clone(),
        START - 120_000,
        7,
    )
    .expect("valid");
    let records = sim.run_for(TEN_MINUTES);
    let truth = sim.truth_by_person(START + 480_000);
    let shopper_addrs = sim.shopper_addrs(START + 480_000);

    let mut seen = BTreeSet::new();
    let mut intervals = BTreeSet::new();
    for record in &records {
        let Some(id) = app_token_id(&record.adv, scenario.app_company_id) else {
            continue;
        };
        let interval = interval_of_unix_ms(record.at_ms);
        let owner = keys
            .iter()
            .find(|(_, key)| key.identifier(interval) == id)
            .map(|(person, _)| person.clone());
        let Some(person) = owner else {
            // Only the unenrolled app install may send a token nobody knows.
            assert!(!shopper_addrs.contains(&record.addr), "{record:?}");
            continue;
        };
        // The address it came from is the one the truth gives that person now.
        let addr_then = truth[&person]
            .iter()
            .find(|t| t.from_ms <= record.at_ms && record.at_ms < t.to_ms)
            .map(|t| t.addr.as_str());
        assert_eq!(addr_then, Some(record.addr.as_str()), "{record:?}");
        seen.insert(person);
        intervals.insert(interval);
    }
    let android: BTreeSet<String> = ["p-1001", "p-1002", "p-1003"].map(String::from).into();
    assert_eq!(seen, android, "every Android shopper heard, iOS never");
    assert_eq!(intervals.len(), 2, "capture spans a rotation boundary");
}

#[test]
fn strangers_never_carry_a_shoppers_rotating_id() {
    let scenario = Scenario::small_demo(11);
    let (sim, records) = capture(11, Duration::from_secs(1800));
    let shopper_addrs = sim.shopper_addrs(START + 1_800_000);
    let keys: Vec<RotatingKey> = scenario
        .shoppers
        .iter()
        .map(|s| RotatingKey::new(&s.key))
        .collect();
    let first = interval_of_unix_ms(START);
    let all_ids: Vec<String> = (first.saturating_sub(1)..first + 5)
        .flat_map(|i| keys.iter().map(move |k| hex::encode(k.identifier(i))))
        .collect();
    let mut stranger_records = 0;
    for record in records.iter().filter(|r| !shopper_addrs.contains(&r.addr)) {
        stranger_records += 1;
        for id in &all_ids {
            assert!(!record.adv.contains(id.as_str()), "{record:?}");
        }
    }
    assert!(stranger_records > 1000, "strangers and beacons are heard");
}

#[test]
fn ground_truth_follows_the_shoppers_path() {
    let (sim, _) = capture(7, TEN_MINUTES);
    let truth = sim.truth_by_person(START + 600_000);
    let p1001 = &truth["p-1001"];
    // Merge spans split only by address changes, then drop the hall.
    let mut visits: Vec<(String, i64)> = Vec::new();
    for t in p1001 {
        match visits.last_mut() {
            Some((zone, ms)) if *zone == t.zone => *ms += t.to_ms - t.from_ms,
            _ => visits.push((t.zone.clone(), t.to_ms - t.from_ms)),
        }
    }
    let zones: Vec<&str> = visits
        .iter()
        .map(|(z, _)| z.as_str())
        .filter(|z| *z != HALL_ZONE)
        .collect();
    assert_eq!(zones, ["entrance", "laptops", "headphones", "entrance"]);
    let dwell = |zone: &str| {
        visits
            .iter()
            .find(|(z, _)| z == zone)
            .map(|(_, ms)| *ms)
            .expect("visited")
    };
    // Walking in and out of a zone adds a few seconds on top of the dwell.
    for (zone, dwell_s) in [("laptops", 60_000), ("headphones", 30_000)] {
        let ms = dwell(zone);
        assert!((dwell_s..dwell_s + 8_000).contains(&ms), "{zone}: {ms} ms");
    }
    assert_eq!(p1001[0].from_ms, START + 10_000, "arrives at 10 s");
    // Spans are contiguous from arrival to departure.
    for pair in p1001.windows(2) {
        assert_eq!(pair[0].to_ms, pair[1].from_ms);
    }
}

#[test]
fn a_shopper_can_stay_an_hour_and_rotates_address() {
    let lingerer = Shopper::new(2001, 3)
        .with_interests(&["laptops"])
        .with_path(vec![Stop::new("laptops", 3600)]);
    let scenario = Scenario::with_shoppers(3, vec![lingerer]);
    let mut sim = Simulation::new(StoreSpec::small_store(), scenario, START, 3).expect("valid");
    let records = sim.run_for(Duration::from_secs(3700));
    let truth = &sim.truth_by_person(START + 3_700_000)["p-2001"];
    let in_laptops: i64 = truth
        .iter()
        .filter(|t| t.zone == "laptops")
        .map(|t| t.to_ms - t.from_ms)
        .sum();
    assert!((3_600_000..3_610_000).contains(&in_laptops), "{in_laptops}");
    let addrs: BTreeSet<&str> = truth.iter().map(|t| t.addr.as_str()).collect();
    assert!(addrs.len() >= 6, "new address every 10 min: {addrs:?}");
    let heard: BTreeSet<&str> = records
        .iter()
        .filter(|r| addrs.contains(r.addr.as_str()))
        .map(|r| r.addr.as_str())
        .collect();
    assert_eq!(heard, addrs, "every address of the hour is heard");
    let by_laptops = records
        .iter()
        .filter(|r| addrs.contains(r.addr.as_str()) && r.scanner == "laptops")
        .count();
    let by_headphones = records
        .iter()
        .filter(|r| addrs.contains(r.addr.as_str()) && r.scanner == "headphones")
        .count();
    assert!(by_laptops > by_headphones, "the near scanner hears more");
}

#[test]
fn person_records_have_exactly_the_design_fields() {
    let jsonl = Scenario::small_demo(7).people_jsonl();
    let lines: Vec<&str> = jsonl.lines().collect();
    assert!(lines.len() >= 3);
    for line in lines {
        let value: Value = serde_json::from_str(line).expect("each line is JSON");
        let object = value.as_object().expect("an object");
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        let mut expected = vec![
            "consent",
            "identities",
            "interests",
            "owns",
            "person",
            "recipient",
            "timezone",
        ];
        expected.sort_unstable();
        let mut keys_sorted = keys.clone();
        keys_sorted.sort_unstable();
        assert_eq!(keys_sorted, expected);
        assert!(object["timezone"].is_null());
        let identities = object["identities"].as_array().expect("array");
        assert_eq!(identities.len(), 1);
        assert_eq!(identities[0]["kind"], "app");
        let key = identities[0]["key"].as_str().expect("key string");
        assert_eq!(key.len(), 32);
        assert!(
            key.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        let consent = object["consent"].as_object().expect("consent object");
        let purposes: BTreeSet<&str> = consent.keys().map(String::as_str).collect();
        assert_eq!(
            purposes,
            ["feedback", "offers", "product_info", "proximity", "thanks"].into()
        );
        assert!(consent.values().all(Value::is_boolean));
    }
    let first: Value = serde_json::from_str(jsonl.lines().next().expect("a line")).expect("json");
    assert_eq!(first["person"], "p-1001");
    assert_eq!(first["recipient"], "r-1001");
    assert_eq!(first["consent"]["product_info"], true);
    assert_eq!(
        first["interests"],
        serde_json::json!(["laptops", "headphones"])
    );
    let second: Value = serde_json::from_str(jsonl.lines().nth(1).expect("a line")).expect("json");
    assert_eq!(second["interests"], serde_json::json!(["laptops"]));
    assert_eq!(second["consent"]["product_info"], false);
}

#[test]
fn shipped_store_file_equals_the_built_in() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/sim/small-store.toml"
    );
    let spec = StoreSpec::from_file(path).expect("shipped file is valid");
    assert_eq!(spec, StoreSpec::small_store());
}

#[test]
fn unknown_store_field_is_rejected_by_name() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/sim/small-store.toml"
    );
    let text = std::fs::read_to_string(path).expect("shipped file");
    let bad = text.replacen(
        "interval_ms = 1000",
        "interval_ms = 1000\ncolour = \"red\"",
        1,
    );
    let err = StoreSpec::from_toml_str(&bad)
        .expect_err("unknown field")
        .to_string();
    assert!(err.contains("colour"), "{err}");
    assert!(err.contains("line"), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");

    let bad_radio = text.replace("floor_dbm = -95", "floor_dbm = -95\nfloor_db = -90");
    let err = StoreSpec::from_toml_str(&bad_radio)
        .expect_err("typo")
        .to_string();
    assert!(err.contains("floor_db"), "{err}");

    let bad_zone = text.replacen("scanner = \"laptops\"", "scanner = \"lap\"", 1);
    let err = StoreSpec::from_toml_str(&bad_zone)
        .expect_err("dangling")
        .to_string();
    assert!(err.contains("zones[1].scanner"), "{err}");
}

#[test]
fn unknown_zone_in_a_path_is_an_error() {
    let shopper = Shopper::new(1, 1).with_path(vec![Stop::new("garden", 10)]);
    let err = Simulation::new(
        StoreSpec::small_store(),
        Scenario::with_shoppers(1, vec![shopper]),
        START,
        1,
    )
    .expect_err("no garden in the small store")
    .to_string();
    assert!(err.contains("garden"), "{err}");
}

#[test]
fn sighting_records_serialise_to_the_design_shape() {
    let (_, records) = capture(7, Duration::from_secs(5));
    let line = serde_json::to_string(&records[0]).expect("serialise");
    let value: Value = serde_json::from_str(&line).expect("parse");
    let keys: Vec<&str> = value
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys.len(), 5);
    assert!(line.starts_with("{\"scanner\":"), "{line}");
    for r in &records {
        assert_eq!(r.addr.len(), 17);
        assert_eq!(r.addr, r.addr.to_lowercase());
        assert!(firmware_sim::adverts::parse_addr(&r.addr).is_some());
        assert_eq!(r.adv, r.adv.to_lowercase());
        assert!(hex::decode(&r.adv).is_ok());
    }
}

#[test]
fn next_batch_resumes_where_it_stopped() {
    let (_, whole) = capture(5, Duration::from_secs(120));
    let mut sim = Simulation::new(StoreSpec::small_store(), Scenario::small_demo(5), START, 5)
        .expect("valid");
    let mut pieces = sim.next_batch(START + 33_333);
    pieces.extend(sim.next_batch(START + 90_000));
    pieces.extend(sim.next_batch(START + 120_000));
    assert_eq!(pieces, whole);
}

#[test]
fn capture_files_round_trip() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (sim, records) = capture(9, Duration::from_secs(60));
    let capture_path = dir.path().join("capture.jsonl");
    let truth_path = dir.path().join("truth.jsonl");
    let people_path = dir.path().join("people.jsonl");
    let n = firmware_sim::write_capture_file(&capture_path, records.clone()).expect("write");
    assert_eq!(n, records.len());
    let text = std::fs::read_to_string(&capture_path).expect("read");
    let back: Vec<SightingRecord> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect();
    assert_eq!(back, records);
    let truth = sim.ground_truth(START + 60_000);
    firmware_sim::write_truth_file(&truth_path, &truth).expect("write truth");
    let first_truth: Value = serde_json::from_str(
        std::fs::read_to_string(&truth_path)
            .expect("read")
            .lines()
            .next()
            .expect("a line"),
    )
    .expect("json");
    let keys: BTreeSet<&str> = first_truth
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["addr", "from_ms", "to_ms", "zone"].into());
    let n = firmware_sim::write_people_file(&people_path, &Scenario::small_demo(9)).expect("write");
    assert_eq!(n, 4);
    let missing = dir.path().join("no/such/dir/file.jsonl");
    let err = firmware_sim::write_capture_file(&missing, records).expect_err("no dir");
    assert!(err.to_string().contains("no/such/dir"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn records_are_time_ordered_and_rssi_in_range(seed in any::<u64>()) {
        let (_, records) = capture(seed, Duration::from_secs(90));
        prop_assert!(!records.is_empty());
        for pair in records.windows(2) {
            prop_assert!(pair[0].at_ms <= pair[1].at_ms);
        }
        for r in &records {
            prop_assert!((-100..=0).contains(&r.rssi), "{r:?}");
            prop_assert!(r.at_ms >= START && r.at_ms < START + 90_000);
        }
    }
}
