//! Durable decisions per second, and the latency of each, on the daemon's
//! path: jobs go through the reservation stage (`gateway::reservations`:
//! a bounded queue, one decider task, `Store::reserve_batch` = one sled
//! transaction + one group-commit flush per batch), fed by N producer tasks
//! as the pipeline feeds it. Latency is per decision, from submission to
//! the durable outcome (the batch's flush returned). Jobs go round-robin
//! over 2,000 enrolled people with generous caps, so every one is a
//! Reserved: ledger, sealed outbox entry and decision log, the heaviest
//! path. A person's successive decisions are one (event-clock) day apart,
//! so a ledger holds at most ~9 sends, as under a real weekly cap; with
//! every decision in the same hour the ledgers would grow without bound
//! and the figure would measure JSON parsing of ever longer ledgers.
//!
//! For comparison, `--threads` also runs the old path: `Store::reserve`
//! per decision (one transaction + flush each) from N OS threads.
//!
//! ```text
//! cargo run --release -p gateway --example durable_decisions -- \
//!     [seconds] [--rates max,10000] [--producers 1] [--batch 256] [--queue 1024] [--threads 1]
//! ```
//! `--rates`: `max` = producers submit as fast as the queue takes them
//! (throughput); a number = decisions/s offered open loop in 1 ms ticks
//! (latency at that load). The database lives in a temporary directory
//! under $TMPDIR, removed at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono_tz::Tz;
use gateway::config::Config;
use gateway::decide::{Limits, NudgeKind};
use gateway::identity::{PersonId, PersonRecord};
use gateway::reservations::{self, DecisionJob};
use gateway::store::{Reservation, ReserveCandidate, ReserveRequest, Store};
use gateway::telemetry::LatencyStamps;
use gateway::telemetry::Telemetry;
use tokio::sync::{Notify, mpsc, oneshot};

#[path = "../benches/support/durable.rs"]
mod durable;

const PEOPLE: usize = 2_000;
const START_MS: i64 = 1_795_485_600_000;
const DAY_MS: i64 = 86_400_000;

/// The i-th decision of the whole run: its person and its time.
fn nth(i: u64) -> (usize, i64) {
    let person = (i % PEOPLE as u64) as usize;
    (
        person,
        START_MS + (i / PEOPLE as u64) as i64 * DAY_MS + person as i64,
    )
}

fn record(i: usize) -> PersonRecord {
    durable::enrolled(
        i as u64,
        PersonId::from(format!("p-{i:06}").as_str()),
        format!("r-{i:06}"),
    )
}

fn payload() -> String {
    format!(
        r#"{{"nudge_id":"x","kind":"info","title":"Comparing laptops?","body":"{}","expires_at_ms":0}}"#,
        "Side-by-side specs, reviews and prices. ".repeat(6)
    )
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

struct StageRun {
    rate: Option<u64>,
    producers: usize,
    batch: usize,
    queue: usize,
    seconds: u64,
}

/// One producer: submits jobs (paced or not) until `stop`, handing each
/// reply to its collector, which waits for them in order.
async fn produce(
    run: Arc<StageRun>,
    config: Arc<Config>,
    people: Arc<Vec<PersonRecord>>,
    reservations: reservations::Reservations,
    stop: Arc<AtomicBool>,
    next: Arc<AtomicU64>,
    collector: mpsc::Sender<(Instant, oneshot::Receiver<reservations::JobOutcome>)>,
) {
    let payload = payload();
    // Open loop: `per_ms` jobs per 1 ms tick on average.
    let per_ms = run.rate.map(|r| r as f64 / 1000.0 / run.producers as f64);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut owed = 0.0;
    while !stop.load(Ordering::Relaxed) {
        let burst = match per_ms {
            Some(per_ms) => {
                tick.tick().await;
                owed += per_ms;
                let k = owed.floor();
                owed -= k;
                k as usize
            }
            None => 1,
        };
        for _ in 0..burst {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let (person, now_ms) = nth(i);
            let person = &people[person];
            let nudge_id = format!("n-{i}");
            let (tx, rx) = oneshot::channel();
            let submitted = Instant::now();
            let job = DecisionJob {
                person: person.person.clone(),
                person_hash: String::new(),
                recipient: person.recipient.clone(),
                chain: None,
                candidates: vec![ReserveCandidate {
                    topic: config.nudge_topic(&person.recipient),
                    nudge_id,
                    payload: payload.clone(),
                    kind: NudgeKind::Info,
                    rule: "rule-a".into(),
                    zone: "zone-01".into(),
                    visit: i as i64,
                    now_ms,
                    expires_at_ms: now_ms + 900_000,
                    held: None,
                }],
                config: config.clone(),
                arrival: None,
                submitted,
                reply: Some(tx),
            };
            if reservations.submit(job).await.is_err()
                || collector.send((submitted, rx)).await.is_err()
            {
                return;
            }
        }
    }
}

async fn run_stage(store: &Store, run: StageRun, next: &Arc<AtomicU64>) {
    let mut config = gateway::config::from_layers("bench", Some(durable::SITE), Default::default())
        .expect("bench config");
    config.caps = durable::unlimited_caps();
    config.quiet_hours = None;
    config.nudges_enabled = true;
    let config = Arc::new(config);
    let people = Arc::new((0..PEOPLE).map(record).collect::<Vec<_>>());
    let telemetry = Arc::new(Telemetry::new());
    let (reservations, decider) = reservations::stage(
        store.clone(),
        telemetry.clone(),
        Arc::new(Notify::new()),
        LatencyStamps::default(),
        run.queue,
        run.batch,
    );
    let decider = tokio::spawn(decider.run());
    let run = Arc::new(run);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let load_at_start = load();
    let mut producers = Vec::new();
    let mut collectors = Vec::new();
    for _ in 0..run.producers {
        let (tx, mut rx) =
            mpsc::channel::<(Instant, oneshot::Receiver<reservations::JobOutcome>)>(1 << 16);
        producers.push(tokio::spawn(produce(
            run.clone(),
            config.clone(),
            people.clone(),
            reservations.clone(),
            stop.clone(),
            next.clone(),
            tx,
        )));
        collectors.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut batches = 0u64;
            let mut last = None;
            while let Some((submitted, reply)) = rx.recv().await {
                let Ok(outcome) = reply.await else { break };
                assert!(
                    matches!(outcome.tried.as_deref(), Ok([Reservation::Reserved { .. }])),
                    "{:?}",
                    outcome.tried
                );
                latencies.push(outcome.finished.duration_since(submitted));
                batches += outcome.batch_size as u64;
                last = Some(outcome.finished);
            }
            (latencies, batches, last)
        }));
    }
    drop(reservations);
    tokio::time::sleep(Duration::from_secs(run.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.await.expect("producer");
    }
    let mut latencies = Vec::new();
    let mut batch_weight = 0u64;
    let mut last = started;
    for c in collectors {
        let (l, b, end) = c.await.expect("collector");
        latencies.extend(l);
        batch_weight += b;
        if let Some(end) = end {
            last = last.max(end);
        }
    }
    decider.await.expect("decider");
    latencies.sort_unstable();
    let total = latencies.len();
    let elapsed = last.duration_since(started).as_secs_f64();
    let batches = telemetry.counter("reservation_batches_total", &[]);
    println!(
        "stage: offered {}, {} producer(s), batch ≤ {}, queue {}: {total} durable decisions in {elapsed:.1} s \
         = {:.0} decisions/s; submit → durable p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
         {batches} batches (mean {:.0} jobs; a job's batch averages {:.0}); load {load_at_start} → {}",
        run.rate.map_or("max".to_string(), |r| format!("{r}/s")),
        run.producers,
        run.batch,
        run.queue,
        total as f64 / elapsed,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        total as f64 / batches.max(1) as f64,
        batch_weight as f64 / total.max(1) as f64,
        load(),
    );
}

/// The old path: `Store::reserve` (transaction + flush) per decision.
fn run_threads(store: &Store, threads: usize, seconds: u64, next: &Arc<AtomicU64>) {
    let caps = Arc::new(durable::unlimited_caps());
    let tz: Arc<Tz> = Arc::new("Europe/Berlin".parse().expect("tz"));
    let people: Arc<Vec<PersonId>> = Arc::new((0..PEOPLE).map(|i| record(i).person).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let load_at_start = load();
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (store, caps, tz, people, stop, done, next) = (
                store.clone(),
                caps.clone(),
                tz.clone(),
                people.clone(),
                stop.clone(),
                done.clone(),
                next.clone(),
            );
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                let payload = payload();
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let (person, now_ms) = nth(i);
                    let person = &people[person];
                    let recipient = format!("r-{}", &person.as_str()[2..]);
                    let req = ReserveRequest {
                        person,
                        recipient: &recipient,
                        topic: format!("retail/store-042/nudges/{recipient}"),
                        nudge_id: format!("n-{i}"),
                        payload: payload.clone(),
                        kind: NudgeKind::Info,
                        rule: "rule-a",
                        zone: "zone-01",
                        visit: i as i64,
                        now_ms,
                        expires_at_ms: now_ms + 900_000,
                        limits: Limits {
                            caps: &caps,
                            quiet: None,
                            tz: &tz,
                            enabled: true,
                        },
                    };
                    let t0 = Instant::now();
                    let outcome = store.reserve(&req).expect("reserve");
                    latencies.push(t0.elapsed());
                    assert!(
                        matches!(outcome, Reservation::Reserved { .. }),
                        "{outcome:?}"
                    );
                    done.fetch_add(1, Ordering::Relaxed);
                }
                latencies
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut latencies: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("thread"))
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let total = done.load(Ordering::Relaxed);
    println!(
        "reserve per decision: {threads} thread(s), {total} reservations in {elapsed:.1} s = {:.0} decisions/s; \
         latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; load {load_at_start} → {}",
        total as f64 / elapsed,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        load(),
    );
}

fn list<T: std::str::FromStr>(value: Option<String>, name: &str) -> Vec<T> {
    let value = value.unwrap_or_else(|| panic!("{name} needs a value"));
    value
        .split(',')
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}: bad value {v:?}"))
        })
        .collect()
}

fn main() {
    let mut seconds = 5;
    let mut rates: Vec<Option<u64>> = vec![None, Some(10_000)];
    let mut producers = vec![1];
    let (mut batch, mut queue) = (reservations::MAX_BATCH, reservations::QUEUE);
    let mut threads: Vec<usize> = vec![1];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rates" => {
                rates = list::<String>(args.next(), "--rates")
                    .into_iter()
                    .map(|r| (r != "max").then(|| r.parse().expect("--rates: max or a number")))
                    .collect()
            }
            "--producers" => producers = list(args.next(), "--producers"),
            "--batch" => batch = list(args.next(), "--batch")[0],
            "--queue" => queue = list(args.next(), "--queue")[0],
            "--threads" => threads = list(args.next(), "--threads"),
            other => seconds = other.parse().expect("seconds, or a --flag"),
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("db")).expect("open store");
    let records: Vec<PersonRecord> = (0..PEOPLE).map(record).collect();
    store.upsert_people(&records).expect("people");
    println!(
        "durable: store in {} (filesystem of $TMPDIR), {PEOPLE} people, {} cores",
        dir.path().display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let next = Arc::new(AtomicU64::new(0));
    for &p in &producers {
        for &rate in &rates {
            runtime.block_on(run_stage(
                &store,
                StageRun {
                    rate,
                    producers: p,
                    batch,
                    queue,
                    seconds,
                },
                &next,
            ));
        }
    }
    for &t in &threads {
        if t > 0 {
            run_threads(&store, t, seconds, &next);
        }
    }
}
