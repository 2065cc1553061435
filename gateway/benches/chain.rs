//! Chain-wide caps in storage (docs/design.md §10): what a chain costs the
//! reservation transaction and how fast other stores' decisions fold.
//!
//! - `reserve_batch_64/{plain,chain}`: one `Store::reserve_batch` (one
//!   transaction, one flush) of 64 decisions for 64 people, without and
//!   with `[caps.chain]` (each person's chain ledger holds two folded
//!   entries of other stores; the chain outbox entry is written beside
//!   the nudge's). Criterion's time is per batch.
//! - `chain_fold/{1,64,512}`: `Store::chain_fold` of that many new
//!   entries (fresh nudge ids, 2,000 people) in one transaction and one
//!   flush, as the daemon's chain folder does with what is queued.
//!
//! `cargo bench -p gateway --bench chain -- --warm-up-time 1 --measurement-time 5`
//!
//! Measured 2026-12-07 on the shared 2-core build machine (load average
//! 2.7-5.5 during the run, `--measurement-time 4`, bench profile):
//! `reserve_batch_64` plain 3.4 ms (18.8 k decisions/s), chain 6.2 ms
//! (10.3 k decisions/s); `chain_fold` 1 entry 0.51 ms (the flush), 64
//! entries 5.9 ms (10.9 k/s), 512 entries 76 ms (6.7 k/s). The ledgers
//! grow over the run (every fold adds to one of 2,000 people within the
//! same week), so the larger figures are pessimistic.

use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, Throughput};
use gateway::decide::{ChainCaps, ChainDay, ChainEntry, Limits, NudgeKind};
use gateway::identity::{PersonId, PersonRecord};
use gateway::privacy::{ChainPerson, chain_person};
use gateway::store::{ChainJob, Reservation, ReserveCandidate, ReserveJob, Store};

#[allow(dead_code)]
#[path = "support/durable.rs"]
mod durable;

const T0_MS: i64 = 1_795_334_400_000;
const DAY_MS: i64 = 86_400_000;
const PEOPLE: u64 = 2_000;
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn person(i: u64) -> (PersonId, String, ChainPerson) {
    let id = format!("p-{i:06}");
    let hash = chain_person(SECRET, &id);
    (PersonId::from(id.as_str()), format!("r-{i:06}"), hash)
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).expect("open store");
    let records: Vec<PersonRecord> = (0..PEOPLE)
        .map(|i| {
            let (id, recipient, _) = person(i);
            durable::enrolled(i, id, recipient)
        })
        .collect();
    store.upsert_people(&records).expect("enrol people");
    let people: Vec<(PersonId, String, ChainPerson)> = (0..PEOPLE).map(person).collect();
    // Two entries of other stores per person, a week before the decisions.
    let folded: Vec<(ChainPerson, ChainEntry)> = people
        .iter()
        .enumerate()
        .flat_map(|(i, (_, _, hash))| {
            (0..2).map(move |k| {
                (
                    *hash,
                    ChainEntry {
                        at_ms: T0_MS - 7 * DAY_MS + k * 3_600_000,
                        nudge_id: format!("other-{i}-{k}"),
                        kind: NudgeKind::Info,
                        rule: "laptop-dwell".into(),
                    },
                )
            })
        })
        .collect();
    store.chain_fold(&folded, T0_MS).expect("fold");

    let caps = durable::unlimited_caps();
    let chain_caps = ChainCaps {
        per_day: 1_000,
        per_week: 1_000,
        min_gap_s: 0,
        day: ChainDay::Chain,
        timezone: chrono_tz::Europe::Berlin,
    };
    let next = AtomicU64::new(0);
    let mut c = Criterion::default().sample_size(10).configure_from_args();
    let mut group = c.benchmark_group("reserve_batch_64");
    group.throughput(Throughput::Elements(64));
    for chained in [false, true] {
        group.bench_function(if chained { "chain" } else { "plain" }, |b| {
            b.iter(|| {
                let n = next.fetch_add(64, Ordering::Relaxed);
                let jobs_data: Vec<(usize, [ReserveCandidate; 1])> = (n..n + 64)
                    .map(|k| {
                        let i = (k % PEOPLE) as usize;
                        // A person's decisions are a day apart.
                        let now_ms = T0_MS + (k / PEOPLE) as i64 * DAY_MS + i as i64;
                        let id = format!("own-{k:012}");
                        (
                            i,
                            [durable::laptop_compare(
                                id.clone(),
                                &people[i].1,
                                format!("{{\"id\":\"{id}\"}}"),
                                now_ms,
                            )],
                        )
                    })
                    .collect();
                let jobs: Vec<ReserveJob<'_>> = jobs_data
                    .iter()
                    .map(|(i, candidates)| ReserveJob {
                        person: &people[*i].0,
                        recipient: &people[*i].1,
                        candidates,
                        limits: Limits {
                            caps: &caps,
                            quiet: None,
                            tz: &chrono_tz::Europe::Berlin,
                            enabled: true,
                        },
                        chain: chained.then(|| ChainJob {
                            person: people[*i].2,
                            caps: &chain_caps,
                            home: None,
                            topic: "retail/chain/decisions/s",
                        }),
                    })
                    .collect();
                let outcomes = store.reserve_batch(&jobs).expect("reserve");
                assert!(
                    outcomes
                        .iter()
                        .all(|o| matches!(o[..], [Reservation::Reserved { .. }]))
                );
            })
        });
    }
    group.finish();
    println!(
        "chain outbox after the runs: {} entries",
        store.chain_outbox_len()
    );

    let fresh = AtomicU64::new(0);
    let mut group = c.benchmark_group("chain_fold");
    for size in [1u64, 64, 512] {
        group.throughput(Throughput::Elements(size));
        group.bench_function(size.to_string(), |b| {
            b.iter(|| {
                let n = fresh.fetch_add(size, Ordering::Relaxed);
                let entries: Vec<(ChainPerson, ChainEntry)> = (n..n + size)
                    .map(|k| {
                        (
                            people[(k % PEOPLE) as usize].2,
                            ChainEntry {
                                at_ms: T0_MS + k as i64,
                                nudge_id: format!("fresh-{k:012}"),
                                kind: NudgeKind::Info,
                                rule: "laptop-dwell".into(),
                            },
                        )
                    })
                    .collect();
                store.chain_fold(&entries, T0_MS).expect("fold");
            })
        });
    }
    group.finish();
    c.final_summary();
}
