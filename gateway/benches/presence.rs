//! Presence engine cost at store scale: 10,000 people present across 50
//! scanners, each person advertising 5 times a second (50,000 adverts/s),
//! each advert heard by the three scanners nearest to the person, so one
//! advert is three `observe` calls, as the daemon makes them.
//!
//! Reports CPU per advert (criterion, `observe_one_advert_3_scanners`) and
//! per reading, the share of one core the target load takes, and the
//! resident memory the engine state takes (/proc/self/statm before and
//! after populating).
//!
//! `PRESENCE_BENCH_MAP=1` runs the same with a radio map (25 zones and the
//! hall, 50 scanners: the engine's filter over 26 places per person).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gateway::identity::PersonId;
use gateway::presence::radiomap::{
    BIN_DB, BINS, Coverage, LEVEL_MIN_DBM, PlaceLevels, RADIO_MAP_VERSION, RadioMap, RadioModel,
    ScannerLevels,
};
use gateway::presence::{PresenceConfig, PresenceEngine, PresenceEvent, ZoneId};
use std::sync::Arc;

const PEOPLE: usize = 10_000;
const SCANNERS: usize = 50;
const ADVERTS_PER_S: i64 = 5;
const SCANNERS_PER_PERSON: usize = 3;

fn config() -> PresenceConfig {
    let mut config = PresenceConfig::default();
    for s in 0..SCANNERS {
        // Two scanners per zone.
        config.scanner_zone.insert(
            format!("scanner-{s}"),
            ZoneId::from(format!("zone-{}", s / 2)),
        );
    }
    config.dwell_thresholds_s = [20, 60, 300].into_iter().collect();
    config
}

struct Load {
    people: Vec<PersonId>,
    scanners: Vec<String>,
    /// Deterministic noise.
    rng: u64,
}

impl Load {
    fn new() -> Self {
        Load {
            people: (0..PEOPLE)
                .map(|i| PersonId::from(format!("p-{i:05}").as_str()))
                .collect(),
            scanners: (0..SCANNERS).map(|s| format!("scanner-{s}")).collect(),
            rng: 0x9E37_79B9_7F4A_7C15,
        }
    }

    fn noise(&mut self) -> i16 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((r >> 59) as i16) - 8
    }

    /// One advert of person `i` at `at_ms`, heard by their three scanners.
    fn advert(
        &mut self,
        engine: &mut PresenceEngine,
        i: usize,
        at_ms: i64,
        out: &mut Vec<PresenceEvent>,
    ) {
        let home = i % SCANNERS;
        for k in 0..SCANNERS_PER_PERSON {
            let s = (home + k) % SCANNERS;
            let rssi = -62 - 6 * k as i16 + self.noise();
            engine.observe(&self.people[i], &self.scanners[s], rssi, at_ms, out);
        }
    }
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0) as u64
}

/// A radio map for the bench's store (25 zones, 50 scanners, the hall):
/// a zone's own two scanners hear it loud, the others faintly.
fn radio_map() -> Arc<RadioModel> {
    let cfg = config();
    let mut scanners: Vec<String> = cfg.scanner_zone.keys().cloned().collect();
    scanners.sort();
    let mut zones: Vec<ZoneId> = cfg.scanner_zone.values().cloned().collect();
    zones.sort();
    zones.dedup();
    let levels = |mean: f32, heard: f32| {
        let mut histogram: Vec<f32> = (0..BINS)
            .map(|b| {
                let level = f32::from(LEVEL_MIN_DBM) + (b as f32) * f32::from(BIN_DB);
                (-0.5 * ((level - mean) / 5.0).powi(2)).exp() + 1e-3
            })
            .collect();
        let sum: f32 = histogram.iter().sum();
        histogram.iter_mut().for_each(|h| *h /= sum);
        ScannerLevels {
            heard,
            mean_dbm: Some(mean),
            sd_db: Some(5.0),
            histogram,
        }
    };
    let mut places: Vec<PlaceLevels> = zones
        .iter()
        .map(|z| PlaceLevels {
            place: z.to_string(),
            scanners: scanners
                .iter()
                .map(|s| {
                    if *cfg.zone_of(s) == **z {
                        levels(-62.0, 0.9)
                    } else {
                        levels(-88.0, 0.3)
                    }
                })
                .collect(),
        })
        .collect();
    places.push(PlaceLevels {
        place: "hall".into(),
        scanners: scanners.iter().map(|_| levels(-78.0, 0.6)).collect(),
    });
    let map = RadioMap {
        version: RADIO_MAP_VERSION,
        scanner_gain_db: vec![0.0; scanners.len()],
        beacon_gain_db: Default::default(),
        coverage: places
            .iter()
            .map(|p| Coverage {
                place: p.place.clone(),
                seconds: 60.0,
                readings: 100,
            })
            .collect(),
        scanners,
        places,
        adjacency: Vec::new(),
        tuning: None,
    };
    map.validate().expect("the bench's map is valid");
    Arc::new(RadioModel::new(map, &zones))
}

fn populate(load: &mut Load, seconds: i64) -> (PresenceEngine, i64) {
    let mut config = config();
    if std::env::var("PRESENCE_BENCH_MAP").is_ok() {
        config.radio_map = Some(radio_map());
    }
    let mut engine = PresenceEngine::new(config);
    let mut out = Vec::new();
    let step = 1000 / ADVERTS_PER_S;
    let mut t = 0;
    while t < seconds * 1000 {
        for i in 0..PEOPLE {
            load.advert(&mut engine, i, t + (i as i64 % step), &mut out);
        }
        out.clear();
        t += step;
        if t % 500 == 0 {
            engine.tick(t, &mut out);
            out.clear();
        }
    }
    (engine, t)
}

fn bench(c: &mut Criterion) {
    let mut load = Load::new();
    let before = resident_bytes();
    let (mut engine, mut now) = populate(&mut load, 5);
    let after = resident_bytes();
    let state = after.saturating_sub(before);
    println!(
        "presence state: {} people present, resident {:.1} MB ({} bytes, {:.0} bytes/person)",
        engine.present_count(),
        state as f64 / 1e6,
        state,
        state as f64 / PEOPLE as f64
    );

    // A plain timing as well, for the core share at the target load.
    let mut out = Vec::new();
    let start = Instant::now();
    let rounds = 10;
    for _ in 0..rounds {
        for i in 0..PEOPLE {
            load.advert(&mut engine, i, now, &mut out);
        }
        out.clear();
        now += 1000 / ADVERTS_PER_S;
        engine.tick(now, &mut out);
        out.clear();
    }
    let readings = (rounds * PEOPLE * SCANNERS_PER_PERSON) as f64;
    let ns = start.elapsed().as_nanos() as f64 / readings;
    let per_s = (PEOPLE as i64 * ADVERTS_PER_S) as f64 * SCANNERS_PER_PERSON as f64;
    println!(
        "presence: {ns:.0} ns per reading (ticks included); {per_s:.0} readings/s \
         = {:.1} % of one core",
        per_s * ns / 1e9 * 100.0
    );

    let mut group = c.benchmark_group("presence");
    group.throughput(Throughput::Elements(SCANNERS_PER_PERSON as u64));
    let mut i = 0;
    let mut out = Vec::new();
    group.bench_function("observe_one_advert_3_scanners", |b| {
        b.iter(|| {
            i = (i + 1) % PEOPLE;
            if i == 0 {
                now += 1000 / ADVERTS_PER_S;
            }
            load.advert(&mut engine, black_box(i), now, &mut out);
            out.clear();
        })
    });
    group.bench_function("tick_10000_people", |b| {
        b.iter(|| {
            engine.tick(black_box(now), &mut out);
            out.clear();
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
