//! The in-process pipeline, per advert, as `daemon::on_sighting` runs it
//! minus the I/O: decode → resolve (People with 100,000 enrolled) →
//! consent gate → presence → beacon fleet → on Dwell events: the
//! daemon's decision step (`decide::prepare`: rules, consent, content;
//! `decide::choose`: caps) against in-memory ledgers. The durable part
//! (sled transaction + flush) is measured separately
//! (`cargo run --release -p gateway --example durable_decisions`).
//!
//! The mix is what a busy store's 50 scanners hear, 10,000 sightings/s of
//! simulated time:
//! - 65 % strangers: Apple continuity / Find My, wearables, foreign
//!   iBeacons, other apps' tokens, random bytes;
//! - 15 % the store's own beacons: iBeacon, Eddystone-UID and -TLM,
//!   AltBeacon (all 50 in the fleet);
//! - 20 % app tokens of 1,000 enrolled people present in the store (their
//!   rotating id of the current interval, rebuilt when the interval rolls).
//!
//! Criterion reports elements/s, one element being one sighting: that is
//! adverts/s on one core (the pipeline is single-threaded by design).
//! `cargo bench -p gateway --bench pipeline`

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use chrono_tz::Tz;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gateway::decide::{
    Caps, ContentSources, Happening, Ledger, Limits, NudgeKind, Rule, StoreRateLedger,
    TriggeredRule, Verdict, choose, dwell_rules, prepare,
};
use gateway::decode::{DecodeOptions, Frame, decode_into};
use gateway::identity::{Consent, PersonId, PersonRecord, interval_of, rotating_id};
use gateway::io::fleet::{BeaconKind, Fleet, FleetBeacon};
use gateway::people::{MemoryRecords, People};
use gateway::presence::{PresenceConfig, PresenceEngine, PresenceEvent, ZoneId};
use gateway::sighting::BdAddr;

/// 2026-11-23T10:00:00Z.
const START_MS: i64 = 1_795_485_600_000;
pub const ENROLLED: usize = 100_000;
const PRESENT: usize = 1_000;
const SCANNERS: usize = 50;
const BEACONS: usize = 50;
const BATCH: usize = 4096;
/// Simulated time between two sightings: 10,000 sightings/s.
const STEP_US: i64 = 100;

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

#[path = "support/people.rs"]
mod people;
use people::key;

fn structure(ad_type: u8, data: &[u8]) -> Vec<u8> {
    let mut s = vec![(data.len() + 1) as u8, ad_type];
    s.extend_from_slice(data);
    s
}

const FLAGS: [u8; 3] = [0x02, 0x01, 0x06];
const STORE_UUID: [u8; 16] = *b"StoreBeaconsUUID";

fn ibeacon(uuid: &[u8; 16], major: u16, minor: u16) -> Vec<u8> {
    let mut d = vec![0x4C, 0x00, 0x02, 0x15];
    d.extend_from_slice(uuid);
    d.extend_from_slice(&major.to_be_bytes());
    d.extend_from_slice(&minor.to_be_bytes());
    d.push(0xC5);
    [&FLAGS[..], &structure(0xFF, &d)].concat()
}

fn app_token(id: &[u8; 16]) -> Vec<u8> {
    let mut d = vec![0xFF, 0xFF, 0x01];
    d.extend_from_slice(id);
    d.push(0xC5);
    [&FLAGS[..], &structure(0xFF, &d)].concat()
}

fn eddystone(frame: &[u8]) -> Vec<u8> {
    let mut d = vec![0xAA, 0xFE];
    d.extend_from_slice(frame);
    [&FLAGS[..], &[0x03, 0x03, 0xAA, 0xFE], &structure(0x16, &d)].concat()
}

fn uid_ns() -> [u8; 10] {
    *b"StoreNmspc"
}

fn uid_instance(b: usize) -> [u8; 6] {
    [0, 0, 0, 0, 0, b as u8]
}

fn store_beacon(b: usize, rng: &mut Rng) -> Vec<u8> {
    match b % 4 {
        0 => ibeacon(&STORE_UUID, 1, b as u16),
        1 => {
            let mut f = vec![0x00, 0xEB];
            f.extend_from_slice(&uid_ns());
            f.extend_from_slice(&uid_instance(b));
            f.extend_from_slice(&[0, 0]);
            eddystone(&f)
        }
        2 => {
            let mut f = vec![0x20, 0x00, 0x0B, 0x18, 0x13, 0x00];
            f.extend_from_slice(&(rng.next() as u32).to_be_bytes());
            f.extend_from_slice(&(rng.next() as u32).to_be_bytes());
            eddystone(&f)
        }
        _ => {
            let mut d = vec![0x18, 0x01, 0xBE, 0xAC];
            d.extend_from_slice(&STORE_UUID);
            d.extend_from_slice(&2u16.to_be_bytes());
            d.extend_from_slice(&(b as u16).to_be_bytes());
            d.extend_from_slice(&[0xC5, 0x00]);
            [&FLAGS[..], &structure(0xFF, &d)].concat()
        }
    }
}

fn stranger(rng: &mut Rng) -> Vec<u8> {
    match rng.below(6) {
        0 => {
            let mut d = vec![0x4C, 0x00, 0x10, 0x05];
            d.extend_from_slice(&rng.bytes::<5>());
            [&FLAGS[..], &structure(0xFF, &d)].concat()
        }
        1 => {
            let mut d = vec![0x4C, 0x00, 0x12, 0x19];
            d.extend_from_slice(&rng.bytes::<25>());
            structure(0xFF, &d)
        }
        2 => [
            &FLAGS[..],
            &structure(0x09, b"Galaxy Buds2"),
            &structure(0x03, &[0x0A, 0x18, 0x0F, 0x18]),
        ]
        .concat(),
        3 => ibeacon(&rng.bytes::<16>(), rng.next() as u16, rng.next() as u16),
        // Another install of the app nobody here enrolled.
        4 => app_token(&rng.bytes::<16>()),
        _ => {
            let len = 1 + rng.below(31) as usize;
            (0..len).map(|_| rng.next() as u8).collect()
        }
    }
}

pub fn records() -> Vec<PersonRecord> {
    let consent = Consent {
        proximity: true,
        product_info: true,
        offers: true,
        thanks: true,
        feedback: true,
    };
    people::enrolled(ENROLLED, consent)
}

fn presence_config() -> PresenceConfig {
    let mut config = PresenceConfig::default();
    for s in 0..SCANNERS {
        config.scanner_zone.insert(
            format!("scanner-{s:02}"),
            ZoneId::from(format!("zone-{:02}", s / 2)),
        );
    }
    config.dwell_thresholds_s = [20, 60, 300].into_iter().collect();
    config
}

fn rules() -> Vec<Rule> {
    let mut rules = Vec::new();
    for z in 0..SCANNERS / 2 {
        for (dwell_s, kind, interest) in [
            (20, NudgeKind::Info, None),
            (60, NudgeKind::Compare, Some("laptops".to_string())),
            (300, NudgeKind::Offer, None),
        ] {
            rules.push(Rule {
                id: format!("rule-{z:02}-{dwell_s}"),
                zone: ZoneId::from(format!("zone-{z:02}")),
                dwell_s,
                interest,
                kind,
                title: "Hello".into(),
                body: "Something you might like".into(),
                priority: dwell_s as i32,
            });
        }
    }
    rules
}

fn fleet() -> Fleet {
    Fleet::new(
        (0..BEACONS)
            .map(|b| FleetBeacon {
                id: format!("beacon-{b}"),
                kind: match b % 4 {
                    1 | 2 => BeaconKind::EddystoneUid {
                        namespace: uid_ns(),
                        instance: uid_instance(b - (b % 4 == 2) as usize),
                    },
                    3 => BeaconKind::AltBeacon {
                        id1: STORE_UUID,
                        id2: 2,
                        id3: b as u16,
                    },
                    _ => BeaconKind::IBeacon {
                        uuid: STORE_UUID,
                        major: 1,
                        minor: b as u16,
                    },
                },
                low_battery_mv: Some(2500),
                missing_after_s: 600,
                espresense_id: None,
            })
            .collect(),
    )
}

/// One pre-built sighting of the batch.
struct Item {
    scanner: usize,
    addr: BdAddr,
    rssi: i16,
    adv: Vec<u8>,
    /// Enrolled person's index, to rebuild the token when the interval rolls.
    person: Option<usize>,
}

pub struct Pipeline {
    people: People,
    presence: PresenceEngine,
    fleet: Fleet,
    rules: Vec<TriggeredRule>,
    caps: Caps,
    tz: Tz,
    ledgers: HashMap<PersonId, Ledger>,
    store_rate: StoreRateLedger,
    scanners: Vec<String>,
    opts: DecodeOptions,
    frames: Vec<Frame>,
    events: Vec<PresenceEvent>,
    items: Vec<Item>,
    keys: Vec<[u8; 16]>,
    interval: u32,
    now_us: i64,
    last_tick_ms: i64,
    pub reserved: u64,
    pub held: u64,
    pub recognised: u64,
    pub dwell_events: u64,
}

impl Pipeline {
    pub fn new() -> Self {
        let records = records();
        let keys: Vec<[u8; 16]> = (0..ENROLLED).map(key).collect();
        let store = std::sync::Arc::new(MemoryRecords::new());
        for record in &records {
            store.put(record.clone());
        }
        let count = records.len();
        let people = People::load(
            records.into_iter().map(Ok::<_, std::convert::Infallible>),
            count,
            store,
            START_MS / 1000,
        )
        .unwrap_or_else(|e| match e {});
        let mut rng = Rng(0x5EED_0042);
        let interval = interval_of(START_MS / 1000);
        let items = (0..BATCH)
            .map(|_| {
                let roll = rng.below(100);
                let addr = BdAddr(rng.bytes::<6>());
                if roll < 20 {
                    // Present people: spread over the enrolled, each with a
                    // home scanner and the two next to it.
                    let p = (rng.below(PRESENT as u64) as usize) * (ENROLLED / PRESENT);
                    let home = p % SCANNERS;
                    let k = rng.below(3) as usize;
                    Item {
                        scanner: (home + k) % SCANNERS,
                        addr,
                        rssi: -60 - 8 * k as i16 - rng.below(8) as i16,
                        adv: app_token(&rotating_id(&keys[p], interval)),
                        person: Some(p),
                    }
                } else if roll < 35 {
                    let b = rng.below(BEACONS as u64) as usize;
                    Item {
                        scanner: b % SCANNERS,
                        addr: BdAddr([0xC0, 0x42, 0, 0, 0, b as u8]),
                        rssi: -70 - rng.below(20) as i16,
                        adv: store_beacon(b, &mut rng),
                        person: None,
                    }
                } else {
                    Item {
                        scanner: rng.below(SCANNERS as u64) as usize,
                        addr,
                        rssi: -60 - rng.below(35) as i16,
                        adv: stranger(&mut rng),
                        person: None,
                    }
                }
            })
            .collect();
        Pipeline {
            people,
            presence: PresenceEngine::new(presence_config()),
            fleet: fleet(),
            rules: dwell_rules(&rules()),
            caps: Caps {
                per_visit: 2,
                per_day: 3,
                per_week: 7,
                min_gap_s: 1200,
                per_kind_per_day: None,
                rule_cooldown_s: 86_400,
                store_per_minute: Some(120),
            },
            tz: "Europe/Berlin".parse().expect("tz"),
            ledgers: HashMap::new(),
            store_rate: StoreRateLedger::default(),
            scanners: (0..SCANNERS).map(|s| format!("scanner-{s:02}")).collect(),
            opts: DecodeOptions::default(),
            frames: Vec::with_capacity(4),
            events: Vec::with_capacity(16),
            items,
            keys,
            interval,
            now_us: START_MS * 1000,
            last_tick_ms: START_MS,
            reserved: 0,
            held: 0,
            recognised: 0,
            dwell_events: 0,
        }
    }

    /// The current interval's tokens for the present people (the phones
    /// rotate; done when simulated time crosses an interval boundary).
    fn rotate(&mut self, interval: u32) {
        self.interval = interval;
        for item in &mut self.items {
            if let Some(p) = item.person {
                item.adv = app_token(&rotating_id(&self.keys[p], interval));
            }
        }
    }

    /// Decode only, same mix (the floor of the pipeline).
    pub fn decode_batch(&mut self) -> usize {
        let mut n = 0;
        for item in &self.items {
            n += decode_into(black_box(&item.adv), &self.opts, &mut self.frames);
        }
        n
    }

    /// Decode and resolve, same mix.
    pub fn resolve_batch(&mut self) -> usize {
        let mut n = 0;
        for item in &self.items {
            decode_into(black_box(&item.adv), &self.opts, &mut self.frames);
            for f in &self.frames {
                if let Frame::AppToken { rotating_id, .. } = f {
                    n += self
                        .people
                        .resolve(rotating_id)
                        .is_some_and(|p| self.people.opted_in(p)) as usize;
                }
            }
        }
        n
    }

    /// The whole pure pipeline over one batch.
    pub fn run_batch(&mut self) {
        let batch_end_ms = (self.now_us + STEP_US * BATCH as i64) / 1000;
        let interval = interval_of(batch_end_ms / 1000);
        if interval != self.interval {
            self.rotate(interval);
        }
        let mut events = std::mem::take(&mut self.events);
        for i in 0..self.items.len() {
            self.now_us += STEP_US;
            let at_ms = self.now_us / 1000;
            // As the daemon: roll the table to the clock on every sighting.
            self.people.roll_to(at_ms / 1000);
            let item = &self.items[i];
            decode_into(black_box(&item.adv), &self.opts, &mut self.frames);
            events.clear();
            for (rotating_id, tx_power) in self.frames.iter().filter_map(Frame::app_token) {
                let Some(person) = self.people.recognise(rotating_id) else {
                    continue;
                };
                self.recognised += 1;
                self.presence.observe_with_power(
                    person,
                    &self.scanners[item.scanner],
                    item.rssi,
                    Some(tx_power),
                    at_ms,
                    &mut events,
                );
            }
            if !self.frames.is_empty() {
                self.fleet
                    .observe(&self.frames, item.addr, item.rssi, at_ms);
            }
            if at_ms - self.last_tick_ms >= 500 {
                self.last_tick_ms = at_ms;
                self.presence.tick(at_ms, &mut events);
            }
            for event in &events {
                if matches!(event, PresenceEvent::Dwell { .. }) {
                    self.decide(event);
                }
            }
        }
        self.events = events;
    }

    fn decide(&mut self, event: &PresenceEvent) {
        self.dwell_events += 1;
        let Ok(Some(person)) = self.people.get(event.person()) else {
            return;
        };
        let prepared = prepare(
            &Happening::Presence {
                event,
                visit_number: None,
            },
            &person,
            &self.rules,
            &ContentSources::default(),
        );
        let limits = Limits {
            caps: &self.caps,
            quiet: None,
            tz: &self.tz,
            enabled: true,
        };
        let ledger = self.ledgers.entry(person.person.clone()).or_default();
        let choice = choose(&prepared, ledger, &mut self.store_rate, &limits);
        for verdict in &choice.verdicts {
            match verdict {
                Verdict::Sent => self.reserved += 1,
                Verdict::Held(_) | Verdict::NotReady => self.held += 1,
            }
        }
    }

    pub fn present(&self) -> usize {
        self.presence.present_count()
    }
}

impl Default for Pipeline {
    fn default() -> Self {
        Self::new()
    }
}

fn bench(c: &mut Criterion) {
    let mut pipeline = Pipeline::new();
    // Warm up simulated time: two minutes of store time so people are
    // present and dwelling before anything is timed.
    for _ in 0..(120_000_000 / (STEP_US * BATCH as i64)) {
        pipeline.run_batch();
    }
    println!(
        "pipeline warm: {} present, {} recognised sightings, {} dwell events, {} reserved, {} held",
        pipeline.present(),
        pipeline.recognised,
        pipeline.dwell_events,
        pipeline.reserved,
        pipeline.held
    );
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("decode_only_mix", |b| {
        b.iter(|| black_box(pipeline.decode_batch()))
    });
    group.bench_function("decode_resolve_mix", |b| {
        b.iter(|| black_box(pipeline.resolve_batch()))
    });
    group.bench_function("full_pure_pipeline_mix", |b| {
        b.iter(|| pipeline.run_batch())
    });
    group.finish();
    println!(
        "pipeline after: {} present, {} recognised sightings, {} dwell events, {} reserved, {} held",
        pipeline.present(),
        pipeline.recognised,
        pipeline.dwell_events,
        pipeline.reserved,
        pipeline.held
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
