//! Age a store: fill an existing gateway store (people already imported
//! with `gateway people import`) with what weeks of running leave behind,
//! written through the store's own API, so keys, sealing and tree layout
//! are the daemon's: decisions (`Store::reserve_batch`, the decider's
//! call; a sent nudge's outbox entry is then removed as its PUBACK would),
//! feedback answers (`Store::save_feedback`) and erasures
//! (`Store::forget_person`: tombstone, the person's entries gone, key
//! destroyed). The people snapshot is written again at the end
//! (`Store::write_people_snapshot`; the erasures made it stale), as a
//! gateway does at shutdown.
//!
//! Decisions: PER_DAY a day for DAYS days up to now (wall clock), at
//! random moments of each day, for random people `f-<i>` (i < PEOPLE, the
//! made-up customer base of `bench/lib.sh::write_people`, recipient
//! `rf-<i>`), under the load site's caps (2 a visit, 3 a day, 7 a week,
//! 20 min apart); HELD % of them held before the caps (no consent for
//! offers), as the decision log keeps them. FEEDBACK % of the sent ones get
//! an answer a minute later. ERASED people (random, distinct) are
//! forgotten at random moments of the DAYS days, oldest first. With the
//! default 30-day retention and DAYS 60, about half of everything is
//! older than the window: the first sweep removes it, the next ones walk
//! a month.
//!
//! ```text
//! cargo run --release -p gateway --example month_old_store -- \
//!     --storage DIR [--people 988000] [--days 60] [--per-day 3000] \
//!     [--held 20] [--feedback 10] [--erased 3000] [--seed 7] [--threads 16]
//! ```
//! Deterministic for a seed but for the times, which end at the moment it
//! runs. The store must not be in use (stop the gateway).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use chrono_tz::Tz;
use gateway::decide::{Caps, Limits, NudgeKind, SkipReason};
use gateway::identity::{PersonId, Purpose};
use gateway::store::{FeedbackEntry, Reservation, ReserveCandidate, ReserveJob, Store};

const DAY_MS: i64 = 86_400_000;
/// The decider's largest batch (`reservations`).
const BATCH: usize = 256;
/// The import's cache (`[storage] import_cache_mb`): the layout does not
/// depend on it, the time does.
const CACHE_BYTES: u64 = 128 * 1024 * 1024;

struct Args {
    storage: PathBuf,
    people: u64,
    days: i64,
    per_day: u64,
    held_pct: u64,
    feedback_pct: u64,
    erased: u64,
    seed: u64,
    threads: usize,
}

fn args() -> Args {
    let mut a = Args {
        storage: PathBuf::new(),
        people: 988_000,
        days: 60,
        per_day: 3_000,
        held_pct: 20,
        feedback_pct: 10,
        erased: 3_000,
        seed: 7,
        threads: 16,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let num = || -> u64 {
            value
                .parse()
                .unwrap_or_else(|_| usage(&format!("{flag}: not a number")))
        };
        match flag.as_str() {
            "--storage" => a.storage = PathBuf::from(&value),
            "--people" => a.people = num(),
            "--days" => a.days = num() as i64,
            "--per-day" => a.per_day = num(),
            "--held" => a.held_pct = num(),
            "--feedback" => a.feedback_pct = num(),
            "--erased" => a.erased = num(),
            "--seed" => a.seed = num(),
            "--threads" => a.threads = num().max(1) as usize,
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    if a.storage.as_os_str().is_empty() {
        usage("--storage is required");
    }
    if a.people == 0 || a.days <= 0 {
        usage("--people and --days must be positive");
    }
    a
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "{problem}\nusage: month_old_store --storage DIR [--people N] [--days D] [--per-day N] \
         [--held PCT] [--feedback PCT] [--erased N] [--seed S] [--threads T]"
    );
    std::process::exit(2)
}

/// splitmix64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// A uuid v7 string for a moment, as the pipeline's nudge ids
/// (`Uuid::now_v7`), but dated when the decision was.
fn nudge_id(at_ms: i64, rng: &mut Rng) -> String {
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        (at_ms / 1000) as u64,
        ((at_ms % 1000) * 1_000_000) as u32,
    );
    let _ = rng.next();
    uuid::Uuid::new_v7(ts).to_string()
}

struct Decision {
    person: u64,
    at_ms: i64,
    held: bool,
}

fn main() {
    let a = args();
    let started = Instant::now();
    let store = Store::open_with_cache(&a.storage, CACHE_BYTES).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64;
    let first_ms = now_ms - a.days * DAY_MS;
    let mut rng = Rng(a.seed);

    // Decisions, oldest first, as the decider would have written them.
    let mut decisions: Vec<Decision> = (0..a.days as u64 * a.per_day)
        .map(|_| Decision {
            person: rng.below(a.people),
            // Leave the last minute alone: nothing the next sweep keeps
            // should look like it was made after the run starts.
            at_ms: first_ms + rng.below((a.days * DAY_MS - 60_000) as u64) as i64,
            held: rng.below(100) < a.held_pct,
        })
        .collect();
    decisions.sort_by_key(|d| d.at_ms);
    let caps = Caps {
        per_visit: 2,
        per_day: 3,
        per_week: 7,
        min_gap_s: 1200,
        per_kind_per_day: None,
        rule_cooldown_s: 0,
        store_per_minute: None,
    };
    let tz: Tz = chrono_tz::Europe::Berlin;
    let limits = Limits {
        caps: &caps,
        quiet: None,
        tz: &tz,
        enabled: true,
    };
    let payload = format!(
        r#"{{"kind":"info","title":"Welcome","body":"{}"}}"#,
        "Today's offers are at the entrance. ".repeat(3)
    );
    let (mut sent, mut held) = (0u64, 0u64);
    let mut answered: Vec<(u64, String, i64)> = Vec::new();
    for chunk in decisions.chunks(BATCH) {
        let ids: Vec<(PersonId, String)> = chunk
            .iter()
            .map(|d| {
                (
                    PersonId::from(format!("f-{}", d.person).as_str()),
                    format!("rf-{}", d.person),
                )
            })
            .collect();
        let candidates: Vec<[ReserveCandidate; 1]> = chunk
            .iter()
            .zip(&ids)
            .map(|(d, (_, recipient))| {
                [ReserveCandidate {
                    nudge_id: nudge_id(d.at_ms, &mut rng),
                    topic: format!("retail/store-042/nudges/{recipient}"),
                    payload: payload.clone(),
                    kind: if d.held {
                        NudgeKind::Offer
                    } else {
                        NudgeKind::Info
                    },
                    rule: if d.held {
                        "offer".into()
                    } else {
                        "welcome".into()
                    },
                    zone: "floor".into(),
                    visit: d.at_ms / DAY_MS,
                    now_ms: d.at_ms,
                    expires_at_ms: d.at_ms + 900_000,
                    held: d.held.then_some(SkipReason::NoConsent {
                        purpose: Purpose::Offers,
                    }),
                }]
            })
            .collect();
        let jobs: Vec<ReserveJob<'_>> = ids
            .iter()
            .zip(&candidates)
            .map(|((person, recipient), c)| ReserveJob {
                person,
                recipient,
                candidates: c,
                limits,
                chain: None,
            })
            .collect();
        let outcomes = store.reserve_batch(&jobs).expect("reserve_batch");
        for ((d, c), tried) in chunk.iter().zip(&candidates).zip(outcomes) {
            for outcome in tried {
                match outcome {
                    Reservation::Reserved { seq } => {
                        sent += 1;
                        // Delivered and acknowledged.
                        store.outbox_remove(seq).expect("outbox_remove");
                        if rng.below(100) < a.feedback_pct {
                            answered.push((d.person, c[0].nudge_id.clone(), d.at_ms + 60_000));
                        }
                    }
                    Reservation::Held(_) => held += 1,
                }
            }
        }
    }
    store.flush().expect("flush");
    let decided_s = started.elapsed().as_secs_f64();
    eprintln!(
        "decisions: {} over {} days ({sent} sent, {held} held) in {decided_s:.1} s (load {})",
        decisions.len(),
        a.days,
        load()
    );

    // Feedback answers, from several threads: concurrent flushes share
    // one group commit, as the pipeline's do.
    let t = Instant::now();
    let answered = Arc::new(answered);
    let n_answers = answered.len();
    std::thread::scope(|s| {
        for k in 0..a.threads {
            let (store, answered) = (store.clone(), answered.clone());
            s.spawn(move || {
                for (person, nudge_id, at_ms) in answered.iter().skip(k).step_by(a.threads) {
                    let person = PersonId::from(format!("f-{person}").as_str());
                    store
                        .save_feedback(
                            &person,
                            &FeedbackEntry {
                                nudge_id: nudge_id.clone(),
                                answer: "useful".into(),
                                comment: None,
                                at_ms: *at_ms,
                            },
                        )
                        .expect("save_feedback");
                }
            });
        }
    });
    eprintln!(
        "feedback: {n_answers} answers in {:.1} s (load {})",
        t.elapsed().as_secs_f64(),
        load()
    );

    // Erasures: distinct people, oldest first.
    let t = Instant::now();
    let mut erased: Vec<(u64, i64)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    while (erased.len() as u64) < a.erased.min(a.people) {
        let person = rng.below(a.people);
        if seen.insert(person) {
            erased.push((
                person,
                first_ms + rng.below((a.days * DAY_MS) as u64) as i64,
            ));
        }
    }
    erased.sort_by_key(|e| e.1);
    let removed = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for k in 0..a.threads {
            let (store, erased, removed) = (store.clone(), &erased, &removed);
            s.spawn(move || {
                for (person, at_ms) in erased.iter().skip(k).step_by(a.threads) {
                    let n = store
                        .forget_person(&format!("f-{person}"), *at_ms)
                        .expect("forget_person");
                    removed.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    eprintln!(
        "erasures: {} people forgotten ({} entries removed with them) in {:.1} s (load {})",
        erased.len(),
        removed.into_inner(),
        t.elapsed().as_secs_f64(),
        load()
    );

    let t = Instant::now();
    let people = store.write_people_snapshot().expect("people snapshot");
    eprintln!(
        "people snapshot: {people} people in {:.1} s; all done in {:.1} s",
        t.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
