use std::collections::HashMap;
use std::path::Path;

use super::*;
use crate::decide::{Caps, NudgeKind, SkipReason};

/// docs/design.md §7's minimal site; each test sets the caps it needs.
use crate::config::tests::MINIMAL_SITE as SITE;

const T0_MS: i64 = 1_795_334_400_000;

fn config(per_visit: u32) -> Arc<Config> {
    let mut config = crate::config::from_layers("site.toml", Some(SITE), HashMap::new()).unwrap();
    config.caps = Caps {
        per_visit,
        per_day: 100,
        per_week: 100,
        min_gap_s: 0,
        per_kind_per_day: None,
        rule_cooldown_s: 0,
        store_per_minute: None,
    };
    config.quiet_hours = None;
    config.nudges_enabled = true;
    Arc::new(config)
}

fn job(
    person: &str,
    n: i64,
    config: &Arc<Config>,
    reply: Option<oneshot::Sender<JobOutcome>>,
) -> DecisionJob {
    DecisionJob {
        person: PersonId::from(person),
        person_hash: crate::privacy::hashed(person),
        recipient: format!("r-{person}"),
        chain: None,
        candidates: vec![ReserveCandidate {
            nudge_id: format!("n-{person}-{n}"),
            topic: format!("retail/store-042/nudges/r-{person}"),
            payload: "{}".into(),
            kind: NudgeKind::Info,
            rule: "rule-a".into(),
            zone: "laptops".into(),
            visit: 1,
            now_ms: T0_MS + n,
            expires_at_ms: T0_MS + n + 900_000,
            held: None,
        }],
        config: config.clone(),
        arrival: None,
        submitted: Instant::now(),
        reply,
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    store: Store,
    telemetry: Arc<Telemetry>,
    outbox_ready: Arc<Notify>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    Fixture {
        store: Store::open(&path).unwrap(),
        path,
        _dir: dir,
        telemetry: Arc::new(Telemetry::new()),
        outbox_ready: Arc::new(Notify::new()),
    }
}

impl Fixture {
    fn stage(&self, queue: usize, max_batch: usize) -> (Reservations, Decider) {
        stage(
            self.store.clone(),
            self.telemetry.clone(),
            self.outbox_ready.clone(),
            crate::telemetry::LatencyStamps::default(),
            queue,
            max_batch,
        )
    }

    fn reserved(&self) -> u64 {
        self.telemetry.counter("nudges_reserved_total", &[])
    }
}

#[tokio::test]
async fn queued_jobs_share_batches_and_caps_still_hold_exactly() {
    let f = fixture();
    let (reservations, decider) = f.stage(1024, 256);
    let config = config(2);
    let mut replies = Vec::new();
    // Queued before the decider runs: they are drained as 256 + 44.
    for n in 0..300 {
        let (tx, rx) = oneshot::channel();
        let person = format!("p-{}", n % 100);
        reservations
            .submit(job(&person, n, &config, Some(tx)))
            .await
            .unwrap();
        replies.push(rx);
    }
    let decider = tokio::spawn(decider.run());
    let mut batch_sizes = Vec::new();
    let mut held = 0;
    for rx in replies {
        let outcome = rx.await.unwrap();
        batch_sizes.push(outcome.batch_size);
        match outcome.tried.unwrap()[..] {
            [Reservation::Reserved { .. }] => {}
            [Reservation::Held(SkipReason::PerVisit { limit: 2 })] => held += 1,
            ref other => panic!("{other:?}"),
        }
    }
    assert_eq!(batch_sizes[0], 256);
    assert_eq!(batch_sizes[299], 44);
    // 100 people × 3 decisions in one visit, 2 allowed each.
    assert_eq!(held, 100);
    assert_eq!(f.store.outbox_len(), 200);
    assert_eq!(f.reserved(), 200);
    assert_eq!(
        f.telemetry
            .counter("nudges_held_total", &[("reason", "per_visit")]),
        100
    );
    drop(reservations);
    decider.await.unwrap();
}

#[tokio::test]
async fn settle_returns_once_everything_before_it_is_durable_and_reported() {
    let f = fixture();
    let (reservations, decider) = f.stage(64, 8);
    let decider = tokio::spawn(decider.run());
    let config = config(100);
    for n in 0..50 {
        reservations
            .submit(job("p-1", n, &config, None))
            .await
            .unwrap();
    }
    reservations.settle().await.unwrap();
    assert_eq!(f.reserved(), 50);
    assert_eq!(f.store.outbox_len(), 50);
    drop(reservations);
    decider.await.unwrap();
}

#[tokio::test]
async fn on_shutdown_everything_queued_is_reserved_before_the_decider_ends() {
    let f = fixture();
    let (reservations, decider) = f.stage(512, 16);
    let config = config(100);
    for n in 0..200 {
        reservations
            .submit(job(&format!("p-{n}"), n, &config, None))
            .await
            .unwrap();
    }
    // The pipeline is gone: the decider drains the queue, then stops.
    drop(reservations);
    decider.run().await;
    assert_eq!(f.reserved(), 200);
    assert_eq!(f.store.outbox_len(), 200);
    // And it is on disk: a copy of the files now, as a crash would leave
    // them, holds every entry.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&f.path, copy.path());
    assert_eq!(Store::open(copy.path()).unwrap().outbox_len(), 200);
}

/// What a crash at that instant would leave: the files as they are.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_is_woken_only_once_the_batch_is_on_disk() {
    let f = fixture();
    let (reservations, decider) = f.stage(64, 64);
    let config = config(100);
    let decider = tokio::spawn(decider.run());
    for round in 0..5 {
        let notified = f.outbox_ready.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let person = format!("p-{round}");
        reservations
            .submit(job(&person, round, &config, None))
            .await
            .unwrap();
        notified.await;
        // Woken: copy the files at once, as a SIGKILL now would leave
        // them (sled's own background flush runs only every 500 ms).
        let copy = tempfile::tempdir().unwrap();
        copy_dir(&f.path, copy.path());
        let on_disk: Vec<String> = Store::open(copy.path())
            .unwrap()
            .outbox_from(0)
            .map(|e| e.unwrap().1.nudge_id)
            .collect();
        assert!(
            on_disk.contains(&format!("n-{person}-{round}")),
            "round {round}: on disk only {on_disk:?}"
        );
    }
    drop(reservations);
    decider.await.unwrap();
}
