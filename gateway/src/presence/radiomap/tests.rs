use super::*;
use crate::presence::{PresenceConfig, PresenceEngine, PresenceEvent, ZoneId};
use crate::sighting::BdAddr;
use proptest::prelude::*;
use std::sync::Arc;

const TAG: &str = "02:00:00:00:00:aa";

fn site() -> Site {
    Site {
        scanner_zone: [("s-a", "a"), ("s-b", "b")]
            .iter()
            .map(|(s, z)| (s.to_string(), z.to_string()))
            .collect(),
        scanner_offset_db: HashMap::new(),
        min_rssi: -95,
    }
}

fn sighting(scanner: &str, addr: &str, rssi: i16, at_ms: i64) -> Sighting {
    Sighting {
        scanner: scanner.to_owned(),
        addr: BdAddr::parse(addr).unwrap(),
        rssi,
        adv: vec![2, 1, 6],
        at_ms,
    }
}

fn span(from_ms: i64, to_ms: i64, zone: &str) -> TruthSpan {
    TruthSpan {
        addr: TAG.to_owned(),
        from_ms,
        to_ms,
        zone: zone.to_owned(),
    }
}

/// Levels (s-a, s-b) in each place: `None` never heard.
fn levels(place: &str) -> (Option<i16>, Option<i16>) {
    match place {
        "a" => (Some(-60), Some(-85)),
        "b" => (Some(-85), Some(-60)),
        _ => (Some(-72), Some(-72)),
    }
}

/// A walk: 30 s in a, 20 s in the hall, 30 s in b, one advert a second,
/// a deterministic wobble of +-3 dB, every 5th advert missed by s-b.
fn walk() -> (Vec<Sighting>, Vec<TruthSpan>) {
    let truth = vec![
        span(0, 30_000, "a"),
        span(30_000, 50_000, "hall"),
        span(50_000, 80_000, "b"),
    ];
    let mut sightings = Vec::new();
    for t in 0..80 {
        let place = &truth.iter().find(|s| s.to_ms > t * 1000).unwrap().zone;
        let wobble = [(0i16), 3, -2, 1, -3][t as usize % 5];
        let (a, b) = levels(place);
        if let Some(a) = a {
            sightings.push(sighting("s-a", TAG, a + wobble, t * 1000 + 100));
        }
        if let Some(b) = b {
            if t % 5 != 4 {
                sightings.push(sighting("s-b", TAG, b - wobble, t * 1000 + 100));
            }
        }
        // A passer-by the truth does not list: ignored.
        sightings.push(sighting("s-a", "02:00:00:00:00:bb", -40, t * 1000 + 200));
    }
    (sightings, truth)
}

fn peak_dbm(levels: &ScannerLevels) -> f32 {
    let (i, _) = levels
        .histogram
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap();
    f32::from(LEVEL_MIN_DBM) + i as f32 * f32::from(BIN_DB)
}

#[test]
fn a_walk_gives_per_place_levels_heard_shares_and_coverage() {
    let (sightings, truth) = walk();
    let cal = calibrate(&site(), &sightings, &truth).unwrap();
    let map = &cal.map;
    map.validate().unwrap();
    assert_eq!(map.scanners, ["s-a", "s-b"]);
    let names: Vec<&str> = map.places.iter().map(|p| p.place.as_str()).collect();
    assert_eq!(names, ["a", "b", "hall"]);
    let a = &map.places[0];
    assert!((peak_dbm(&a.scanners[0]) + 60.0).abs() <= 2.0);
    assert!((peak_dbm(&a.scanners[1]) + 85.0).abs() <= 2.0);
    assert!((a.scanners[0].mean_dbm.unwrap() + 60.0).abs() < 1.0);
    // s-a hears every advert, s-b four in five.
    assert!(a.scanners[0].heard > 0.9, "{}", a.scanners[0].heard);
    assert!(
        (a.scanners[1].heard - 0.8).abs() < 0.1,
        "{}",
        a.scanners[1].heard
    );
    assert_eq!(map.coverage[2].place, "hall");
    assert!((map.coverage[2].seconds - 20.0).abs() < 1e-9);
    assert!(map.coverage.iter().all(|c| c.readings > 0));
    // The walk went a → hall → b: no direct zone-to-zone move.
    assert!(map.adjacency.is_empty());
    // Both scanners hear their own zone alike.
    assert!(
        map.scanner_gain_db.iter().all(|g| g.abs() < 1.0),
        "{:?}",
        map.scanner_gain_db
    );
    assert!(cal.warnings.is_empty(), "{:?}", cal.warnings);
    // The file round-trips.
    assert_eq!(&RadioMap::from_json(&map.to_json()).unwrap(), map);
}

#[test]
fn a_deaf_scanner_shows_as_a_gain_difference() {
    let (mut sightings, truth) = walk();
    for s in &mut sightings {
        if s.scanner == "s-b" {
            s.rssi -= 8;
        }
    }
    let map = calibrate(&site(), &sightings, &truth).unwrap().map;
    let gap = map.scanner_gain_db[0] - map.scanner_gain_db[1];
    assert!((gap - 8.0).abs() < 1.0, "{:?}", map.scanner_gain_db);
}

#[test]
fn a_walk_that_misses_a_place_is_refused_naming_it() {
    let (sightings, truth) = walk();
    let no_b: Vec<TruthSpan> = truth.iter().filter(|s| s.zone != "b").cloned().collect();
    let err = calibrate(&site(), &sightings, &no_b).unwrap_err();
    assert_eq!(
        err,
        CalibrateError::MissingPlaces {
            missing: vec!["b".to_owned()]
        }
    );
    assert!(err.to_string().contains("\"b\""), "{err}");
    let no_hall: Vec<TruthSpan> = truth.iter().filter(|s| s.zone != "hall").cloned().collect();
    let err = calibrate(&site(), &sightings, &no_hall).unwrap_err();
    assert!(err.to_string().contains("hall"), "{err}");
}

#[test]
fn truth_naming_a_place_the_site_lacks_is_refused() {
    let (sightings, mut truth) = walk();
    truth[1].zone = "garden".into();
    let err = calibrate(&site(), &sightings, &truth).unwrap_err();
    assert!(matches!(err, CalibrateError::UnknownPlace { ref zone, .. } if zone == "garden"));
}

#[test]
fn a_short_stay_and_a_foreign_scanner_are_warned_about() {
    let (mut sightings, mut truth) = walk();
    truth[1] = span(30_000, 35_000, "hall");
    truth.push(span(35_000, 50_000, "a"));
    sightings.push(sighting("s-x", TAG, -50, 1_000));
    let cal = calibrate(&site(), &sightings, &truth).unwrap();
    let all = cal.warnings.join("\n");
    assert!(all.contains("hall was walked for only 5.0 s"), "{all}");
    assert!(all.contains("s-x"), "{all}");
}

#[test]
fn maps_for_other_scanners_or_zones_are_refused() {
    let map = calibrate(&site(), &walk().0, &walk().1).unwrap().map;
    let set = |v: &[&str]| {
        v.iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<String>>()
    };
    map.check_site(&set(&["s-a", "s-b"]), &set(&["a", "b"]))
        .unwrap();
    let err = map
        .check_site(&set(&["s-a", "s-c"]), &set(&["a", "b"]))
        .unwrap_err();
    assert_eq!(err.field, "scanners");
    assert!(
        err.reason.contains("s-c") && err.reason.contains("s-b"),
        "{err}"
    );
    let err = map
        .check_site(&set(&["s-a", "s-b"]), &set(&["a", "c"]))
        .unwrap_err();
    assert_eq!(err.field, "places");
}

#[test]
fn bad_map_files_are_refused_naming_the_field() {
    let map = calibrate(&site(), &walk().0, &walk().1).unwrap().map;
    let field = |edit: &dyn Fn(&mut RadioMap)| {
        let mut m = map.clone();
        edit(&mut m);
        RadioMap::from_json(&serde_json::to_string(&m).unwrap())
            .unwrap_err()
            .field
    };
    assert_eq!(field(&|m| m.version = 99), "version");
    assert_eq!(
        field(&|m| m.places[1].scanners[0]
            .histogram
            .pop()
            .map(drop)
            .unwrap_or(())),
        "places[1].scanners[0].histogram"
    );
    assert_eq!(
        field(&|m| m.places[0].scanners[1].heard = 1.5),
        "places[0].scanners[1].heard"
    );
    assert_eq!(
        field(&|m| m.places[2].place = "b".into()),
        "places[2].place"
    );
    assert_eq!(field(&|m| m.scanner_gain_db.clear()), "scanner_gain_db");
    assert_eq!(
        field(&|m| m.adjacency.push(["a".into(), "zz".into()])),
        "adjacency[0]"
    );
    assert_eq!(field(&|m| m.places.retain(|p| p.place != "hall")), "places");
    assert_eq!(RadioMap::from_json("{}").unwrap_err().field, "radio map");
    assert_eq!(RadioMap::from_json("nope").unwrap_err().field, "radio map");
}

fn engine_with_map() -> PresenceEngine {
    let (sightings, truth) = walk();
    let map = calibrate(&site(), &sightings, &truth).unwrap().map;
    let zones: Vec<ZoneId> = vec![ZoneId::from("a"), ZoneId::from("b")];
    let config = PresenceConfig {
        scanner_zone: [("s-a", "a"), ("s-b", "b")]
            .iter()
            .map(|(s, z)| (s.to_string(), ZoneId::from(*z)))
            .collect(),
        radio_map: Some(Arc::new(RadioModel::new(map, &zones))),
        ..PresenceConfig::default()
    };
    PresenceEngine::new(config)
}

fn places(events: &[PresenceEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            PresenceEvent::ZoneEntered { zone, .. } => Some(format!("+{zone}")),
            PresenceEvent::ZoneLeft { zone, .. } => Some(format!("-{zone}")),
            PresenceEvent::Entered { .. } => Some("entered".into()),
            PresenceEvent::Exited { .. } => Some("exited".into()),
            PresenceEvent::Dwell { .. } => None,
        })
        .collect()
}

/// With a map the engine follows the fingerprint: a, the hall between the
/// zones (where one scanner's level alone would say "a" or "b"), b.
#[test]
fn the_engine_with_a_map_follows_the_pattern_through_the_hall() {
    let mut e = engine_with_map();
    let p = crate::identity::PersonId::from("p-1");
    let mut out = Vec::new();
    let mut t = 0i64;
    for (place, seconds) in [("a", 20), ("hall", 15), ("b", 20)] {
        for _ in 0..seconds * 2 {
            let (a, b) = levels(place);
            e.observe(&p, "s-a", a.unwrap(), t, &mut out);
            e.observe(&p, "s-b", b.unwrap(), t, &mut out);
            t += 500;
            e.tick(t, &mut out);
        }
    }
    e.tick(t + 50_000, &mut out);
    assert_eq!(
        places(&out),
        ["entered", "+a", "-a", "+b", "-b", "exited"],
        "{out:?}"
    );
    // The hall came between a and b: a was left long before b was entered.
    let at = |name: &str| {
        out.iter()
            .zip(places(&out))
            .find(|(_, n)| n == name)
            .map(|(e, _)| e.at_ms())
            .unwrap()
    };
    assert!(at("+b") - at("-a") > 8_000, "{out:?}");
}

#[test]
fn one_wild_reading_does_not_move_a_person_with_a_map() {
    let mut e = engine_with_map();
    let p = crate::identity::PersonId::from("p-1");
    let mut out = Vec::new();
    for i in 0..40 {
        let t = i * 500;
        if i == 20 {
            e.observe(&p, "s-b", -50, t, &mut out);
        } else {
            e.observe(&p, "s-a", -60, t, &mut out);
            e.observe(&p, "s-b", -85, t, &mut out);
        }
        e.tick(t, &mut out);
    }
    assert_eq!(places(&out), ["entered", "+a"]);
}

/// An engine with the map and `p-1` settled in place `a` (five seconds
/// strong at s-a, weak at s-b), with the events so far.
fn settled_at_a() -> (
    PresenceEngine,
    crate::identity::PersonId,
    Vec<crate::presence::PresenceEvent>,
) {
    let mut e = engine_with_map();
    let p = crate::identity::PersonId::from("p-1");
    let mut out = Vec::new();
    for i in 0..10 {
        e.observe(&p, "s-a", -60, i * 500, &mut out);
        e.observe(&p, "s-b", -85, i * 500, &mut out);
    }
    (e, p, out)
}

/// A reload that drops the map goes back to the level rules; one that
/// brings another map starts the filters again; nobody is dropped.
#[test]
fn swapping_the_map_keeps_who_is_present() {
    let (mut e, p, mut out) = settled_at_a();
    let mut config = e.config().clone();
    config.radio_map = None;
    e.set_config(config.clone());
    assert_eq!(e.present_count(), 1);
    e.observe(&p, "s-a", -60, 5_000, &mut out);
    let again = engine_with_map().config().radio_map.clone();
    config.radio_map = again;
    e.set_config(config);
    e.observe(&p, "s-a", -60, 5_500, &mut out);
    assert_eq!(e.present_count(), 1);
    assert_eq!(places(&out), ["entered", "+a"]);
}

/// A reload reads the map file again: the same map, rebuilt, keeps every
/// present person's filter where it was.
#[test]
fn a_reload_with_the_same_map_keeps_the_filters() {
    let (mut e, _, _) = settled_at_a();
    let filtering = |e: &PresenceEngine| e.people.values().all(|s| s.map.is_some());
    assert!(filtering(&e));
    let mut config = e.config().clone();
    config.radio_map = engine_with_map().config().radio_map.clone();
    e.set_config(config);
    assert!(filtering(&e), "an unchanged map restarted the filter");
}

proptest! {
    /// The filter's sparse moves are the dense move shares.
    #[test]
    fn sparse_moves_match_the_dense_shares(leaving in prop::collection::vec(0f32..1.0, 3)) {
        let e = engine_with_map();
        let model = e.config().radio_map.clone().unwrap();
        let mut next = vec![0f32; 3];
        model.spread(&leaving, &mut next);
        for (q, got) in next.iter().enumerate() {
            let want: f32 = (0..3)
                .filter(|&p| p != q)
                .map(|p| leaving[p] * model.move_share(p, q))
                .sum();
            prop_assert!((got - want).abs() < 1e-5, "{q}: {got} vs {want}");
        }
        let rows: Vec<f32> = (0..3)
            .map(|p| (0..3).filter(|&q| q != p).map(|q| model.move_share(p, q)).sum())
            .collect();
        prop_assert!(rows.iter().all(|r| (r - 1.0).abs() < 1e-5), "{rows:?}");
    }

    /// Whatever the walk holds, calibration does not panic, and a map it
    /// makes is a valid file.
    #[test]
    fn calibration_never_panics_and_makes_valid_maps(
        readings in prop::collection::vec((0usize..3, -120i16..10, 0i64..90_000), 0..300),
        cut in 1i64..45_000,
        cut2 in 45_001i64..89_000,
    ) {
        let truth = vec![span(0, cut, "a"), span(cut, cut2, "b"), span(cut2, 90_000, "hall")];
        let scanners = ["s-a", "s-b", "s-x"];
        let sightings: Vec<Sighting> = readings
            .iter()
            .map(|&(s, rssi, t)| sighting(scanners[s], TAG, rssi, t))
            .collect();
        match calibrate(&site(), &sightings, &truth) {
            Ok(cal) => {
                prop_assert!(cal.map.validate().is_ok());
                prop_assert!(RadioMap::from_json(&cal.map.to_json()).is_ok());
            }
            Err(CalibrateError::MissingPlaces { missing }) => prop_assert!(!missing.is_empty()),
            Err(other) => prop_assert!(false, "{other}"),
        }
    }

    /// The filter's probabilities stay a distribution whatever it is fed.
    #[test]
    fn the_filter_stays_a_distribution(
        steps in prop::collection::vec((0usize..2, -110i16..5, 0i64..5_000, any::<bool>()), 1..200),
    ) {
        let mut e = engine_with_map();
        let p = crate::identity::PersonId::from("p-1");
        let mut out = Vec::new();
        let mut t = 0;
        for (s, rssi, dt, tick) in steps {
            t += dt;
            e.observe(&p, ["s-a", "s-b"][s], rssi, t, &mut out);
            if tick {
                e.tick(t, &mut out);
            }
            if let Some(map) = e.people.get(&p).and_then(|s| s.map.as_ref()) {
                let sum: f32 = map.p.iter().sum();
                prop_assert!((sum - 1.0).abs() < 1e-3, "{sum}");
                prop_assert!(map.p.iter().all(|v| v.is_finite() && *v > 0.0));
            }
        }
    }
}

#[test]
fn a_map_may_carry_its_tuning_from_version_2_and_old_maps_still_load() {
    use crate::presence::{MapTuning, MapTuningOverrides};
    let map = calibrate(&site(), &walk().0, &walk().1).unwrap().map;
    // What `calibrate` writes without --tune is version 1, without `tuning`:
    // what the builds before version 2 read.
    assert_eq!(map.version, RADIO_MAP_VERSION);
    let text = map.to_json();
    assert!(!text.contains("tuning"), "{text}");
    assert_eq!(RadioMap::from_json(&text).unwrap(), map);

    let tuning = MapTuningOverrides {
        evidence_weight: Some(1.0),
        switch_p: Some(0.7),
        ..Default::default()
    };
    let mut tuned = map.clone();
    tuned.set_tuning(Some(tuning.clone()));
    assert_eq!(tuned.version, RADIO_MAP_VERSION_TUNED);
    let back = RadioMap::from_json(&tuned.to_json()).unwrap();
    assert_eq!(back.tuning, Some(tuning.clone()));
    assert!(
        back.summary()
            .contains("tuning: evidence_weight 1, switch_p 0.7")
    );

    let field = |edit: &dyn Fn(&mut RadioMap)| {
        let mut m = tuned.clone();
        edit(&mut m);
        RadioMap::from_json(&serde_json::to_string(&m).unwrap()).unwrap_err()
    };
    // A version 1 map has no tuning; knobs are checked as the site file's are.
    assert_eq!(field(&|m| m.version = RADIO_MAP_VERSION).field, "tuning");
    let e = field(&|m| m.tuning.as_mut().unwrap().switch_p = Some(1.5));
    assert_eq!(
        e.to_string(),
        "tuning.switch_p: must be between 0.01 and 0.99"
    );
    // An unknown knob is refused by name.
    let unknown = tuned
        .to_json()
        .replace("\"switch_p\"", "\"switch_probability\"");
    let e = RadioMap::from_json(&unknown).unwrap_err();
    assert!(e.reason.contains("switch_probability"), "{e}");

    // The engine runs the map's knobs; the site's win; the rest are defaults.
    let zones = [ZoneId::from("a"), ZoneId::from("b")];
    let config = PresenceConfig {
        scanner_zone: [("s-a", "a"), ("s-b", "b")]
            .iter()
            .map(|(s, z)| (s.to_string(), ZoneId::from(*z)))
            .collect(),
        radio_map: Some(Arc::new(RadioModel::new(tuned, &zones))),
        map_tuning: MapTuningOverrides {
            switch_p: Some(0.9),
            hold_ms: Some(1_000),
            ..Default::default()
        },
        ..PresenceConfig::default()
    };
    let mut e = PresenceEngine::new(config.clone());
    let want = MapTuning {
        evidence_weight: 1.0,
        switch_p: 0.9,
        hold_ms: 1_000,
        ..MapTuning::default()
    };
    assert_eq!(*e.map_tuning(), want);
    assert!(
        MapTuning::describe(
            &MapTuning::default(),
            Some(&tuning),
            &config.map_tuning
        )
        .contains("evidence_weight 1 (radio map), enter_p 0.6 (default), switch_p 0.9 (site file), hold_ms 1000 (site file)")
    );
    // A reload without the site's knobs falls back to the map's.
    e.set_config(PresenceConfig {
        map_tuning: MapTuningOverrides::default(),
        ..config.clone()
    });
    assert_eq!(e.map_tuning().switch_p, 0.7);
    assert_eq!(e.map_tuning().hold_ms, MapTuning::default().hold_ms);
    // Without a map, only the site's knobs count (unused until a map comes).
    e.set_config(PresenceConfig {
        radio_map: None,
        ..config
    });
    assert_eq!(
        e.map_tuning().evidence_weight,
        MapTuning::default().evidence_weight
    );
    assert_eq!(e.map_tuning().switch_p, 0.9);
}
