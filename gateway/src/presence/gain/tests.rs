use super::*;
use proptest::prelude::*;

/// Four scanners on a 10 m square, a beacon by each, 1.5 m below them.
fn setup() -> GainSetup {
    let positions: HashMap<String, (f32, f32)> = [
        ("a", (0.0, 0.0)),
        ("b", (10.0, 0.0)),
        ("c", (0.0, 10.0)),
        ("d", (10.0, 10.0)),
    ]
    .into_iter()
    .map(|(s, p)| (s.to_string(), p))
    .collect();
    let beacons: Vec<Option<BeaconPlace>> = [(1.0, 1.0), (9.0, 1.0), (1.0, 9.0), (9.0, 9.0)]
        .into_iter()
        .map(|(x_m, y_m)| {
            Some(BeaconPlace {
                x_m,
                y_m,
                tx_power_1m: -59.0,
            })
        })
        .collect();
    GainSetup::new(&positions, &HashMap::new(), &beacons, 2.2, 1.5, -95).unwrap()
}

/// Feed `seconds` of one reading a second of every link, each scanner off
/// by its `gain` plus a bounded noise from `noise`.
fn feed(
    tracker: &mut GainTracker,
    gain: &[f32; 4],
    noise: &[i8],
    seconds: i64,
    deaf: Option<usize>,
) -> i64 {
    let setup = tracker.setup().clone();
    for t in 0..seconds {
        // Every link sees the same noise sequence.
        let n = f32::from(noise[t as usize % noise.len()]);
        for (b, row) in setup.expected.iter().enumerate() {
            for (s, expected) in row.iter().enumerate() {
                let (Some(e), true) = (expected, deaf != Some(s)) else {
                    continue;
                };
                let rssi = (e + gain[s] + n).round() as i16;
                tracker.observe(b, &setup.scanners[s], rssi, t * 1000);
            }
        }
    }
    seconds * 1000
}

#[test]
fn a_scanner_10_db_deaf_is_measured_and_reported_as_drifted() {
    let mut tracker = GainTracker::new(setup());
    let noise = [-3, 1, 0, 2, -1, 3, -2, 0, 1, -1];
    let now = feed(&mut tracker, &[0.0, -10.0, 0.0, 0.0], &noise, 60, None);
    let changes = tracker.evaluate(now);
    let g = tracker.gain("b").unwrap();
    assert!((g + 10.0).abs() <= 1.0, "gain of b {g}");
    for s in ["a", "c", "d"] {
        assert!(tracker.gain(s).unwrap().abs() <= 1.0, "{s}");
        assert_eq!(tracker.status(s), Some(GainStatus::Ok));
    }
    assert!(
        changes
            .iter()
            .any(|c| c.scanner == "b" && c.to == GainStatus::Drifted)
    );
    // Relative to a reference of -10 (the map was learned that way) it is fine.
    tracker.set_reference(&HashMap::from([("b".to_string(), -10.0)]));
    let changes = tracker.evaluate(now);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].to, GainStatus::Ok);
    assert!(tracker.correction("b").unwrap().abs() <= 1.0);
}

#[test]
fn a_scanner_that_hears_no_beacon_while_others_do_is_deaf_then_recovers() {
    let mut tracker = GainTracker::new(setup());
    let now = feed(&mut tracker, &[0.0; 4], &[0], 200, Some(2));
    let changes = tracker.evaluate(now);
    assert_eq!(tracker.status("c"), Some(GainStatus::Deaf));
    assert!(
        changes
            .iter()
            .any(|c| c.scanner == "c" && c.to == GainStatus::Deaf)
    );
    assert_eq!(tracker.correction("c"), None);
    // Everybody silent (beacons off, say): nobody is called deaf anew.
    let mut quiet = GainTracker::new(setup());
    assert!(quiet.evaluate(500_000).is_empty());
    // Heard again: no longer deaf.
    let setup = tracker.setup().clone();
    for t in 0..20 {
        for b in 0..4 {
            if let Some(e) = setup.expected[b][2] {
                tracker.observe(b, "c", e as i16, now + t * 1000);
            }
        }
    }
    tracker.evaluate(now + 20_000);
    assert_eq!(tracker.status("c"), Some(GainStatus::Ok));
}

#[test]
fn unknown_scanners_beacons_and_weak_links_are_ignored() {
    let mut tracker = GainTracker::new(setup());
    tracker.observe(0, "nobody", -40, 0);
    tracker.observe(99, "a", -40, 0);
    tracker.evaluate(1_000);
    assert!(tracker.gains().all(|(_, g, _)| g.is_none()));
    // A beacon without a position, or too far for every scanner: no setup.
    let positions = HashMap::from([("a".to_string(), (0.0, 0.0))]);
    let far = BeaconPlace {
        x_m: 500.0,
        y_m: 0.0,
        tx_power_1m: -59.0,
    };
    assert!(
        GainSetup::new(
            &positions,
            &HashMap::new(),
            &[None, Some(far)],
            2.2,
            1.5,
            -95
        )
        .is_none()
    );
}

proptest! {
    /// Whatever the gains and the (bounded, zero-median-ish) noise, each
    /// scanner's learned gain is within the noise's reach of the truth,
    /// and the status says drifted exactly when the gain is well off.
    #[test]
    fn learned_gain_follows_the_true_gain(
        gains in proptest::array::uniform4(-15.0f32..15.0),
        noise in proptest::collection::vec(-4i8..=4, 4..24),
    ) {
        let mut noise = noise;
        // Symmetric noise: a median of 0 (each value with its opposite).
        let mirrored: Vec<i8> = noise.iter().map(|n| -n).collect();
        noise.extend(mirrored);
        let mut tracker = GainTracker::new(setup());
        // Exactly the mirrored sequence in every ring: a median of 0.
        let now = feed(&mut tracker, &gains, &noise, noise.len() as i64, None);
        tracker.evaluate(now);
        for (i, s) in ["a", "b", "c", "d"].iter().enumerate() {
            let g = tracker.gain(s).unwrap();
            prop_assert!((g - gains[i]).abs() <= 1.0, "{} learned {} true {}", s, g, gains[i]);
            let status = tracker.status(s).unwrap();
            if gains[i].abs() > DRIFT_DB + 1.0 {
                prop_assert_eq!(status, GainStatus::Drifted);
            } else if gains[i].abs() < DRIFT_DB - 1.0 {
                prop_assert_eq!(status, GainStatus::Ok);
            }
        }
    }

    /// Arbitrary readings in any order never panic, and gains stay finite.
    #[test]
    fn arbitrary_readings_keep_the_tracker_sane(
        readings in proptest::collection::vec((0usize..6, 0usize..5, any::<i16>(), -1_000_000i64..1_000_000), 0..300),
        now in -1_000_000i64..2_000_000,
    ) {
        let mut tracker = GainTracker::new(setup());
        let names = ["a", "b", "c", "d", "x"];
        for (b, s, rssi, at) in readings {
            tracker.observe(b, names[s], rssi, at);
        }
        tracker.evaluate(now);
        for (_, g, _) in tracker.gains() {
            prop_assert!(g.is_none_or(f32::is_finite));
        }
    }
}
