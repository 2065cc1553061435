//! Durable decisions per second: `Store::reserve` as the daemon calls it
//! (sealed outbox entry + ledger + decision log in one sled transaction,
//! then `flush()` before returning), single-threaded and from 8 threads.
//! Every call is for a different person with generous caps, so every one
//! is a Reserved (the heaviest path: ledger, outbox and decision-log writes).
//!
//! `cargo run --release -p gateway --example durable_decisions -- [seconds] [threads...]`
//! (defaults: 5 s, threads 1 and 8). The database lives in a temporary
//! directory under $TMPDIR, removed at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono_tz::Tz;
use gateway::decide::{Caps, NudgeKind};
use gateway::identity::{Consent, Identity, PersonId, PersonRecord};
use gateway::store::{Reservation, ReserveRequest, Store};

const PEOPLE: usize = 2_000;
const START_MS: i64 = 1_795_485_600_000;

fn record(i: usize) -> PersonRecord {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&(i as u64).to_le_bytes());
    PersonRecord {
        person: PersonId::from(format!("p-{i:06}").as_str()),
        recipient: format!("r-{i:06}"),
        timezone: None,
        identities: vec![Identity::App { key }],
        consent: Consent {
            proximity: true,
            product_info: true,
            offers: true,
            thanks: true,
            feedback: true,
        },
        interests: Vec::new(),
        owns: Vec::new(),
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1e3
}

fn run(store: &Store, threads: usize, seconds: u64, round: u64) {
    let caps = Arc::new(Caps {
        per_visit: 1_000_000,
        per_day: 1_000_000,
        per_week: 1_000_000,
        min_gap_s: 0,
        per_kind_per_day: None,
        rule_cooldown_s: 0,
        store_per_minute: None,
    });
    let tz: Arc<Tz> = Arc::new("Europe/Berlin".parse().expect("tz"));
    let people: Arc<Vec<PersonId>> = Arc::new((0..PEOPLE).map(|i| record(i).person).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (store, caps, tz, people, stop, done) = (
                store.clone(),
                caps.clone(),
                tz.clone(),
                people.clone(),
                stop.clone(),
                done.clone(),
            );
            std::thread::spawn(move || {
                let mut lat_ns = Vec::new();
                let mut n = 0usize;
                let payload = format!(
                    r#"{{"nudge_id":"x","kind":"info","title":"Comparing laptops?","body":"{}","expires_at_ms":0}}"#,
                    "Side-by-side specs, reviews and prices. ".repeat(6)
                );
                while !stop.load(Ordering::Relaxed) {
                    let person = &people[(t + n * threads) % PEOPLE];
                    let recipient = format!("r-{}", &person.as_str()[2..]);
                    let nudge_id = format!("n-{round}-{t}-{n}");
                    let req = ReserveRequest {
                        person,
                        recipient: &recipient,
                        topic: format!("retail/store-042/nudges/{recipient}"),
                        nudge_id,
                        payload: payload.clone(),
                        kind: NudgeKind::Info,
                        rule: "rule-a",
                        zone: "zone-01",
                        visit: START_MS + n as i64,
                        now_ms: START_MS + (round as i64) * 3_600_000 + n as i64,
                        expires_at_ms: START_MS + 900_000,
                        caps: &caps,
                        quiet: None,
                        tz: &tz,
                        enabled: true,
                    };
                    let t0 = Instant::now();
                    let outcome = store.reserve(&req).expect("reserve");
                    lat_ns.push(t0.elapsed().as_nanos() as u64);
                    assert!(
                        matches!(outcome, Reservation::Reserved { .. }),
                        "{outcome:?}"
                    );
                    n += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                lat_ns
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut lat: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("thread"))
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let total = done.load(Ordering::Relaxed);
    println!(
        "durable: {threads} thread(s), {total} reservations in {elapsed:.1} s = {:.0} decisions/s; \
         latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (reserve = 1 sled transaction + flush)",
        total as f64 / elapsed,
        percentile(&lat, 0.50) / 1e3,
        percentile(&lat, 0.99) / 1e3,
        percentile(&lat, 1.0) / 1e3,
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let mut threads: Vec<usize> = args.filter_map(|a| a.parse().ok()).collect();
    if threads.is_empty() {
        threads = vec![1, 8];
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("db")).expect("open store");
    let records: Vec<PersonRecord> = (0..PEOPLE).map(record).collect();
    store.upsert_people(&records).expect("people");
    store.flush().expect("flush");
    println!(
        "durable: store in {} (filesystem of $TMPDIR), {PEOPLE} people",
        dir.path().display()
    );
    for (round, t) in threads.into_iter().enumerate() {
        run(&store, t, seconds, round as u64);
    }
}
