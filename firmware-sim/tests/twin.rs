//! The twin's newer parts: TLM telemetry, the shipped electronics store,
//! iOS check-ins, multi-day runs with opening hours.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use firmware_sim::hours::Hours;
use firmware_sim::spec::{BeaconFrame, OpeningHours, TlmSpec};
use firmware_sim::{
    DEFAULT_START_UNIX_MS, Platform, Scenario, SightingRecord, Simulation, StoreSpec, rotating_id,
};

const START: i64 = DEFAULT_START_UNIX_MS;
const DAY_MS: i64 = 86_400_000;

fn electronics_store() -> StoreSpec {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/sim/electronics-store.toml"
    );
    StoreSpec::from_file(path).expect("shipped electronics store loads and validates")
}

/// Eddystone-TLM decoded by hand from the advertising data:
/// `(battery_mv, temperature_c, adv_count, uptime_ds)`.
fn decode_tlm(adv_hex: &str) -> Option<(u16, f64, u32, u32)> {
    let adv = hex::decode(adv_hex).ok()?;
    let mut i = 0;
    while i < adv.len() {
        let len = usize::from(adv[i]);
        let s = adv.get(i + 1..i + 1 + len)?;
        // Service data (0x16), UUID 0xFEAA little-endian, frame type 0x20.
        if s.len() == 17 && s[0] == 0x16 && s[1..3] == [0xAA, 0xFE] && s[3] == 0x20 {
            assert_eq!(s[4], 0x00, "TLM version 0");
            let battery = u16::from_be_bytes([s[5], s[6]]);
            let temp = f64::from(i16::from_be_bytes([s[7], s[8]])) / 256.0;
            let count = u32::from_be_bytes([s[9], s[10], s[11], s[12]]);
            let uptime = u32::from_be_bytes([s[13], s[14], s[15], s[16]]);
            return Some((battery, temp, count, uptime));
        }
        i += 1 + len;
    }
    None
}

/// A store with one TLM beacon draining 10 mV a day, heard by its scanner.
fn tlm_store() -> StoreSpec {
    let mut spec = StoreSpec::small_store();
    spec.beacons[0].tlm = Some(TlmSpec {
        every: 4,
        battery_start_mv: 3000,
        drain_mv_per_day: 10.0,
        age_days: 2.0,
        temperature_c: 22.5,
        ..TlmSpec::default()
    });
    spec
}

#[test]
fn tlm_frames_are_interleaved_and_decode_to_consistent_telemetry() {
    let spec = tlm_store();
    let addr = spec.beacons[0].addr.clone();
    let mut sim = Simulation::new(spec, Scenario::new(1), START, 1).expect("valid");
    let records = sim.run_for(Duration::from_secs(120));
    let mine: Vec<&SightingRecord> = records.iter().filter(|r| r.addr == addr).collect();
    let tlm: Vec<(i64, (u16, f64, u32, u32))> = mine
        .iter()
        .filter_map(|r| decode_tlm(&r.adv).map(|t| (r.at_ms, t)))
        .collect();
    let main = mine.len() - tlm.len();
    assert!(
        !tlm.is_empty() && main > tlm.len() * 2,
        "{} tlm of {}",
        tlm.len(),
        mine.len()
    );
    // The main frame is still the iBeacon.
    assert!(mine.iter().any(|r| r.adv.contains("4c000215")));
    for (at_ms, (battery, temp, count, uptime)) in &tlm {
        let elapsed_ms = at_ms - START + 2 * DAY_MS;
        assert_eq!(*battery, 2980, "two days at 10 mV/day");
        assert!((temp - 22.5).abs() < 1.0 / 256.0);
        assert_eq!(i64::from(*uptime), elapsed_ms / 100, "uptime in 0.1 s");
        // One advert per interval (1000 ms plus the mean 5 ms random delay).
        let expected = elapsed_ms as f64 / 1005.0;
        assert!(
            (f64::from(*count) - expected).abs() <= 1.0,
            "{count} vs {expected}"
        );
    }
    // Several scanners hear each advert; per advert the count grows.
    let per_advert: BTreeMap<i64, u32> = tlm.iter().map(|(at, t)| (*at, t.2)).collect();
    let counts: Vec<u32> = per_advert.into_values().collect();
    assert!(counts.windows(2).all(|w| w[0] < w[1]), "{counts:?}");
}

#[test]
fn tlm_battery_falls_across_simulated_days() {
    let mut spec = tlm_store().with_hours(OpeningHours::default());
    spec.beacons.truncate(1); // keep the run short
    let addr = spec.beacons[0].addr.clone();
    let mut sim = Simulation::new(spec, Scenario::new(2), START, 2).expect("valid");
    let mut per_day: BTreeMap<i64, BTreeSet<u16>> = BTreeMap::new();
    for day in 0..4 {
        let until = START + day * DAY_MS + 3_600_000;
        sim.next_batch(START + day * DAY_MS); // skip most of the day quickly
        for r in sim.next_batch(until) {
            if let Some((battery, ..)) = (r.addr == addr).then(|| decode_tlm(&r.adv)).flatten() {
                per_day.entry(day).or_default().insert(battery);
            }
        }
    }
    let levels: Vec<u16> = per_day
        .values()
        .map(|set| *set.iter().next().expect("some"))
        .collect();
    assert_eq!(levels.len(), 4, "{per_day:?}");
    assert!(levels.windows(2).all(|w| w[0] > w[1]), "{levels:?}");
    assert_eq!(
        levels[0] - levels[3],
        30,
        "10 mV a day over 3 days: {levels:?}"
    );

    let exp = TlmSpec {
        model: firmware_sim::spec::DrainModel::Exponential,
        ..TlmSpec::default()
    };
    let drops: Vec<i32> = (0..4)
        .map(|d| i32::from(exp.battery_mv(f64::from(d) * 100.0)))
        .collect();
    assert!(drops.windows(2).all(|w| w[0] > w[1]));
    assert!(
        drops[0] - drops[1] > drops[2] - drops[3],
        "decays: {drops:?}"
    );
}

#[test]
fn electronics_store_has_ten_zones_and_every_scanner_hears_something() {
    let spec = electronics_store();
    let zones: Vec<&str> = spec.zones.iter().map(|z| z.id.as_str()).collect();
    assert_eq!(
        zones,
        [
            "entrance",
            "laptops",
            "phones",
            "tv",
            "audio",
            "gaming",
            "cameras",
            "smart-home",
            "accessories",
            "checkout"
        ]
    );
    assert_eq!(spec.scanners.len(), 10);
    assert!((10..=14).contains(&spec.beacons.len()));
    let kinds: BTreeSet<&str> = spec
        .beacons
        .iter()
        .map(|b| match b.frame {
            BeaconFrame::Ibeacon { .. } => "ibeacon",
            BeaconFrame::EddystoneUid { .. } => "eddystone",
            BeaconFrame::Altbeacon { .. } => "altbeacon",
        })
        .collect();
    assert_eq!(kinds.len(), 3);
    assert!(spec.beacons.iter().any(|b| b.tlm.is_some()));

    let scenario = Scenario::tour(&spec, 5, 6);
    let mut sim = Simulation::new(spec.clone(), scenario, START, 5).expect("tour fits the store");
    let records = sim.run_for(Duration::from_secs(300));
    let heard: BTreeSet<&str> = records.iter().map(|r| r.scanner.as_str()).collect();
    for scanner in &spec.scanners {
        assert!(
            heard.contains(scanner.id.as_str()),
            "{} heard nothing",
            scanner.id
        );
    }
    assert!(records.iter().any(|r| decode_tlm(&r.adv).is_some()));
    // Shoppers were heard too, not only beacons.
    let shopper_addrs = sim.shopper_addrs(START + 300_000);
    assert!(records.iter().any(|r| shopper_addrs.contains(&r.addr)));
}

#[test]
fn electronics_store_errors_name_the_field() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/sim/electronics-store.toml"
    );
    let text = std::fs::read_to_string(path).expect("read");
    let bad = text.replace("drain_mv_per_day = 4.0", "drain_mv_per_day = -4.0");
    let err = StoreSpec::from_toml_str(&bad)
        .expect_err("negative drain")
        .to_string();
    assert!(err.contains("tlm.drain_mv_per_day"), "{err}");
    let bad = text.replace(
        "timezone = \"Europe/Berlin\"",
        "timezone = \"Europe/Atlantis\"",
    );
    let err = StoreSpec::from_toml_str(&bad)
        .expect_err("bad zone")
        .to_string();
    assert!(err.contains("hours.timezone"), "{err}");
}

#[test]
fn ios_shoppers_check_in_with_their_rotating_id_at_most_every_30_s() {
    let scenario = Scenario::small_demo(7);
    let ios: Vec<_> = scenario
        .shoppers
        .iter()
        .filter(|s| s.platform == Platform::Ios)
        .cloned()
        .collect();
    assert_eq!(ios.len(), 1);
    let mut sim = Simulation::new(StoreSpec::small_store(), scenario, START, 7).expect("valid");
    let (records, checkins) = sim.next_batch_with_checkins(START + 600_000);

    // Asking for check-ins does not change the sightings.
    let mut plain =
        Simulation::new(StoreSpec::small_store(), Scenario::small_demo(7), START, 7).expect("v");
    assert_eq!(plain.next_batch(START + 600_000), records);

    assert!(checkins.len() >= 2, "{checkins:?}");
    let shopper = &ios[0];
    for c in &checkins {
        assert_eq!(c.recipient, shopper.recipient);
        assert_eq!(
            c.topic("retail", "store-042"),
            format!("retail/store-042/checkin/{}", shopper.recipient)
        );
        let interval = firmware_sim::interval_of_unix_ms(c.payload.at_ms);
        assert_eq!(
            c.payload.rotating_id,
            hex::encode(rotating_id(&shopper.key, interval))
        );
        assert!(!c.payload.beacons.is_empty() && c.payload.beacons.len() <= 5);
        for b in &c.payload.beacons {
            assert_eq!(b.uuid, firmware_sim::spec::STORE_IBEACON_UUID);
            assert!((-100..=0).contains(&b.rssi));
        }
        let json: serde_json::Value = serde_json::to_value(&c.payload).expect("json");
        let keys: Vec<&str> = json
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["at_ms", "beacons", "rotating_id"]);
        let beacon_keys: BTreeSet<&str> = json["beacons"][0]
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            beacon_keys,
            BTreeSet::from(["uuid", "major", "minor", "rssi"])
        );
    }
    assert!(
        checkins
            .windows(2)
            .all(|w| w[1].payload.at_ms - w[0].payload.at_ms >= 30_000)
    );
    // Only while the shopper is in the store.
    let truth = &sim.truth_by_person(START + 600_000)[&shopper.person];
    let (first, last) = (truth[0].from_ms, truth[truth.len() - 1].to_ms);
    assert!(
        checkins
            .iter()
            .all(|c| (first..last).contains(&c.payload.at_ms))
    );
}

#[test]
fn three_days_of_returning_shoppers_visit_on_distinct_local_days() {
    let hours_spec = OpeningHours::default();
    let hours = Hours::new(&hours_spec).expect("valid");
    let mut spec = StoreSpec::small_store().with_hours(hours_spec);
    // One slow beacon keeps three days of debug-build simulation short.
    spec.beacons.truncate(1);
    spec.beacons[0].interval_ms = 5000;
    let scenario = Scenario::returning(11, 3);
    let start = hours.opening_of_day(START);
    let end = start + 3 * DAY_MS;
    let shoppers = scenario.shoppers.clone();
    let mut sim = Simulation::new(spec, scenario, start, 11).expect("valid");
    let records = sim.next_batch(end);
    assert!(!records.is_empty());
    // Nights are skipped: every record is inside opening hours.
    assert!(records.iter().all(|r| hours.is_open(r.at_ms)));
    let days: BTreeSet<_> = records.iter().map(|r| hours.local_date(r.at_ms)).collect();
    assert_eq!(days.len(), 3);

    let truth = sim.truth_by_person(end);
    let mut returning = 0;
    for shopper in &shoppers {
        let visits = shopper.visits().count();
        let spans = &truth[&shopper.person];
        assert!(
            spans
                .iter()
                .all(|t| hours.is_open(t.from_ms) && hours.is_open(t.to_ms - 1))
        );
        // Split the truth into visits (gaps of more than an hour).
        let mut starts = vec![spans[0].from_ms];
        for w in spans.windows(2) {
            if w[1].from_ms - w[0].to_ms > 3_600_000 {
                starts.push(w[1].from_ms);
            }
        }
        assert_eq!(starts.len(), visits, "{}", shopper.person);
        let local: BTreeSet<_> = starts.iter().map(|&t| hours.local_date(t)).collect();
        assert_eq!(
            local.len(),
            visits,
            "{} visits on distinct days",
            shopper.person
        );
        if visits >= 2 {
            returning += 1;
        }
        // Their phone was heard on each of those days.
        let addrs: BTreeSet<&str> = spans.iter().map(|t| t.addr.as_str()).collect();
        let heard_days: BTreeSet<_> = records
            .iter()
            .filter(|r| addrs.contains(r.addr.as_str()))
            .map(|r| hours.local_date(r.at_ms))
            .collect();
        if shopper.platform == Platform::Android {
            assert_eq!(heard_days, local, "{}", shopper.person);
        }
    }
    assert_eq!(
        returning,
        shoppers.len(),
        "every shopper returns at least once"
    );
    // Deterministic in the seed.
    let again = Simulation::new(sim.spec().clone(), Scenario::returning(11, 3), start, 11)
        .expect("valid")
        .next_batch(end);
    assert_eq!(again, records);
}
