//! Durable decisions per second through `Store::reserve`: one sled
//! transaction (ledger read + update, outbox entry, decision log) and a
//! flush per decision, as the daemon did before the reservation stage.
//! Single-threaded and with N threads deciding concurrently. Prints decisions/s and p50/p99 latency
//! per configuration to stdout (criterion's own timing is per decision).
//!
//! `reserve_batch_*`: the daemon's path since the reservation stage: one
//! `Store::reserve_batch` (one transaction, one flush) for B decisions of
//! B different people, one thread. Criterion's time is per batch (its
//! throughput line gives decisions/s); the printed latency is per batch,
//! i.e. what each decision in it waited for the transaction and flush.
//!
//! `cargo bench -p gateway --bench decisions -- --warm-up-time 1 --measurement-time 5`
//! `THREADS=1,4,16,64` chooses the thread counts, `BATCHES=1,16,64,256`
//! the batch sizes.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use gateway::decide::{Caps, Limits, NudgeKind};
use gateway::identity::{PersonId, PersonRecord};
use gateway::store::{Reservation, ReserveCandidate, ReserveJob, ReserveRequest, Store};

// The bench builds no configuration: the site text goes unused here.
#[allow(dead_code)]
#[path = "support/durable.rs"]
mod durable;

const T0_MS: i64 = 1_795_334_400_000;
const DAY_MS: i64 = 86_400_000;
/// Distinct people decided for, enrolled (their vault keys made) before
/// measuring, as in the daemon: the first decision for a person without a
/// key would pay a vault fsync, which no decision in the daemon does.
const PEOPLE: u64 = 2_000;

/// The n-th decision of the run: its person and its time. A person's
/// decisions are a day apart, so ledgers stay as small as a weekly cap
/// keeps them (≤ ~9 sends) however long criterion runs.
fn nth(n: u64) -> (PersonId, String, i64) {
    let i = n % PEOPLE;
    (
        PersonId::from(format!("p-{i:06}").as_str()),
        format!("r-{i:06}"),
        T0_MS + (n / PEOPLE) as i64 * DAY_MS + i as i64,
    )
}

fn enrolled_store(dir: &std::path::Path) -> Store {
    let store = Store::open(dir).expect("open store");
    let records: Vec<PersonRecord> = (0..PEOPLE)
        .map(|i| {
            let (person, recipient, _) = nth(i);
            durable::enrolled(i, person, recipient)
        })
        .collect();
    store.upsert_people(&records).expect("enrol people");
    store
}

fn payload(id: &str) -> String {
    format!(
        "{{\"id\":\"{id}\",\"kind\":\"compare\",\"title\":\"Comparing laptops?\",\"body\":\"Side-by-side specs, reviews and prices for the models on this table.\",\"zone\":\"laptops\",\"created_at\":\"2026-11-23T10:00:00.000Z\",\"expires_at\":\"2026-11-23T10:15:00.000Z\",\"why\":{{\"rule\":\"laptop-compare\",\"preference\":\"laptops\",\"zone\":\"laptops\",\"text\":\"You told us you are interested in laptops\"}}}}"
    )
}

/// One batch of `size` decisions, people `n..n + size`: the time the
/// whole batch took (transaction + flush).
fn decide_batch(store: &Store, caps: &Caps, n: u64, size: u64) -> Duration {
    let people: Vec<(PersonId, String, i64)> = (n..n + size).map(nth).collect();
    let candidates: Vec<[ReserveCandidate; 1]> = (n..n + size)
        .zip(&people)
        .map(|(i, (_, recipient, now_ms))| {
            let id = format!("batch-{i:012}");
            let now_ms = *now_ms;
            [durable::laptop_compare(
                id.clone(),
                recipient,
                payload(&id),
                now_ms,
            )]
        })
        .collect();
    let jobs: Vec<ReserveJob<'_>> = people
        .iter()
        .zip(&candidates)
        .map(|((person, recipient, _), candidates)| ReserveJob {
            person,
            recipient,
            candidates,
            limits: Limits {
                caps,
                quiet: None,
                tz: &chrono_tz::Europe::Berlin,
                enabled: true,
            },
            chain: None,
        })
        .collect();
    let started = Instant::now();
    let outcomes = store.reserve_batch(&jobs).expect("reserve_batch succeeds");
    let took = started.elapsed();
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o[..], [Reservation::Reserved { .. }]))
    );
    took
}

fn decide_once(store: &Store, caps: &Caps, n: u64) -> Duration {
    let (person, recipient, now_ms) = nth(n);
    let id = format!("bench-{n:012}");
    let payload = payload(&id);
    let started = Instant::now();
    let outcome = store
        .reserve(&ReserveRequest {
            person: &person,
            recipient: &recipient,
            topic: format!("retail/s/nudges/{recipient}"),
            nudge_id: id,
            payload,
            kind: NudgeKind::Compare,
            rule: "laptop-compare",
            zone: "laptops",
            visit: now_ms,
            now_ms,
            expires_at_ms: now_ms + 900_000,
            limits: Limits {
                caps,
                quiet: None,
                tz: &chrono_tz::Europe::Berlin,
                enabled: true,
            },
        })
        .expect("reserve succeeds");
    let took = started.elapsed();
    assert!(matches!(outcome, Reservation::Reserved { .. }));
    took
}

#[derive(Default)]
struct Stats {
    decisions: u64,
    wall: Duration,
    latencies: Vec<Duration>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(label: &str, stats: &mut Stats) {
    stats.latencies.sort_unstable();
    let per_s = stats.decisions as f64 / stats.wall.as_secs_f64().max(1e-9);
    println!(
        "{label}: {} durable decisions in {:.2} s = {:.0} decisions/s; latency p50 {:.3} ms, p99 {:.3} ms",
        stats.decisions,
        stats.wall.as_secs_f64(),
        per_s,
        percentile(&stats.latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&stats.latencies, 0.99).as_secs_f64() * 1e3,
    );
}

fn thread_counts() -> Vec<usize> {
    std::env::var("THREADS")
        .ok()
        .map(|v| v.split(',').filter_map(|t| t.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 4, 16, 64])
}

fn bench(c: &mut Criterion, store: &Store, next: &AtomicU64) {
    let caps = durable::unlimited_caps();
    let mut group = c.benchmark_group("reserve_flush_per_decision");
    for threads in thread_counts() {
        let stats = Mutex::new(Stats::default());
        group.bench_function(format!("threads_{threads}"), |b| {
            b.iter_custom(|iters| {
                let latencies = Mutex::new(Vec::with_capacity(iters as usize));
                let started = Instant::now();
                std::thread::scope(|scope| {
                    for t in 0..threads {
                        let (caps, latencies) = (&caps, &latencies);
                        // Share `iters` decisions among the threads.
                        let mine =
                            iters / threads as u64 + u64::from((t as u64) < iters % threads as u64);
                        scope.spawn(move || {
                            let mut local = Vec::with_capacity(mine as usize);
                            for _ in 0..mine {
                                let n = next.fetch_add(1, Ordering::Relaxed);
                                local.push(decide_once(store, caps, n));
                            }
                            latencies.lock().unwrap().extend(local);
                        });
                    }
                });
                let wall = started.elapsed();
                let mut s = stats.lock().unwrap();
                s.decisions += iters;
                s.wall += wall;
                s.latencies.extend(latencies.into_inner().unwrap());
                // Criterion divides by `iters`: per-decision wall time, i.e.
                // the inverse of throughput.
                wall
            })
        });
        report(
            &format!("reserve, flush per decision, {threads} thread(s)"),
            &mut stats.lock().unwrap(),
        );
    }
    group.finish();
}

fn batch_sizes() -> Vec<u64> {
    std::env::var("BATCHES")
        .ok()
        .map(|v| v.split(',').filter_map(|t| t.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 16, 64, 256])
}

fn bench_batched(c: &mut Criterion, store: &Store, next: &AtomicU64) {
    let caps = durable::unlimited_caps();
    let mut group = c.benchmark_group("reserve_batch");
    for size in batch_sizes() {
        let stats = Mutex::new(Stats::default());
        group.throughput(Throughput::Elements(size));
        group.bench_function(format!("batch_{size}"), |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                let mut s = stats.lock().unwrap();
                for _ in 0..iters {
                    let took =
                        decide_batch(store, &caps, next.fetch_add(size, Ordering::Relaxed), size);
                    s.decisions += size;
                    // Every decision of the batch waited this long.
                    s.latencies.push(took);
                }
                let wall = started.elapsed();
                s.wall += wall;
                wall
            })
        });
        report(
            &format!("reserve_batch, {size} decisions per transaction + flush, 1 thread"),
            &mut stats.lock().unwrap(),
        );
    }
    group.finish();
}

fn main() {
    // One store for every case, its people enrolled once (2,000 vault
    // fsyncs): the decisions continue one another's event time.
    let dir = tempfile::tempdir().expect("temp dir");
    let store = enrolled_store(dir.path());
    let next = AtomicU64::new(0);
    let mut c = Criterion::default().sample_size(10).configure_from_args();
    bench(&mut c, &store, &next);
    bench_batched(&mut c, &store, &next);
    c.final_summary();
}
