//! Durable decisions per second through `Store::reserve`: one sled
//! transaction (ledger read + update, outbox entry, decision log) and a
//! flush per decision, as the daemon does today. Single-threaded and with
//! N threads deciding concurrently. Prints decisions/s and p50/p99 latency
//! per configuration to stdout (criterion's own timing is per decision).
//!
//! `cargo bench -p gateway --bench decisions -- --warm-up-time 1 --measurement-time 5`
//! `THREADS=1,4,16,64` chooses the thread counts.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use gateway::decide::{Caps, NudgeKind};
use gateway::identity::PersonId;
use gateway::store::{Reservation, ReserveRequest, Store};

const T0_MS: i64 = 1_795_334_400_000;
/// Distinct people decided for; each ledger stays small, as in a store.
const PEOPLE: u64 = 50_000;

fn caps() -> Caps {
    // Generous: every decision is a grant, so each writes ledger + outbox +
    // decision log (the heaviest path).
    Caps {
        per_visit: 1_000_000,
        per_day: 1_000_000,
        per_week: 1_000_000,
        min_gap_s: 0,
        per_kind_per_day: None,
        rule_cooldown_s: 0,
        store_per_minute: None,
    }
}

fn decide_once(store: &Store, caps: &Caps, n: u64) -> Duration {
    let person = PersonId::from(format!("p-{:06}", n % PEOPLE).as_str());
    let recipient = format!("r-{:06}", n % PEOPLE);
    let id = format!("bench-{n:012}");
    let payload = format!(
        "{{\"id\":\"{id}\",\"kind\":\"compare\",\"title\":\"Comparing laptops?\",\"body\":\"Side-by-side specs, reviews and prices for the models on this table.\",\"zone\":\"laptops\",\"created_at\":\"2026-11-23T10:00:00.000Z\",\"expires_at\":\"2026-11-23T10:15:00.000Z\",\"why\":{{\"rule\":\"laptop-compare\",\"preference\":\"laptops\",\"zone\":\"laptops\",\"text\":\"You told us you are interested in laptops\"}}}}"
    );
    let now_ms = T0_MS + n as i64;
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
            caps,
            quiet: None,
            tz: &chrono_tz::Europe::Berlin,
            enabled: true,
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

fn bench(c: &mut Criterion) {
    let caps = caps();
    let mut group = c.benchmark_group("reserve_flush_per_decision");
    for threads in thread_counts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("open store");
        let next = AtomicU64::new(0);
        let stats = Mutex::new(Stats::default());
        group.bench_function(format!("threads_{threads}"), |b| {
            b.iter_custom(|iters| {
                let latencies = Mutex::new(Vec::with_capacity(iters as usize));
                let started = Instant::now();
                std::thread::scope(|scope| {
                    for t in 0..threads {
                        let (store, caps, next, latencies) = (&store, &caps, &next, &latencies);
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

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
