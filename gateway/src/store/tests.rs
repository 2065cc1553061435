use std::sync::Arc;

use super::*;
use crate::decide::{Caps, Limits, SentNudge};
use chrono_tz::Tz;

/// Reopen a database that this process just closed. sled's background
/// flusher may hold the file lock for a moment after the handle is dropped;
/// only an "in use" error is retried, and only for a bounded time.
fn reopen(path: &std::path::Path) -> Result<Store, StoreError> {
    for _ in 0..100 {
        match Store::open(path) {
            Err(StoreError::Open { reason, .. }) if reason.contains("in use") => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            other => return other,
        }
    }
    Store::open(path)
}

fn caps() -> Caps {
    Caps {
        per_visit: 2,
        per_day: 3,
        per_week: 7,
        min_gap_s: 0,
        per_kind_per_day: None,
        rule_cooldown_s: 0,
        store_per_minute: None,
    }
}

fn record(person: &str, recipient: &str) -> PersonRecord {
    PersonRecord::from_json(&format!(
        r#"{{"person": "{person}", "recipient": "{recipient}", "identities": [{{"kind": "email", "value": "{person}@example.com"}}], "consent": {{"proximity": true, "product_info": true}}}}"#
    ))
    .unwrap()
}

fn request<'a>(
    person: &'a PersonId,
    caps: &'a Caps,
    tz: &'a Tz,
    visit: i64,
    now_ms: i64,
    id: &str,
) -> ReserveRequest<'a> {
    ReserveRequest {
        person,
        recipient: "r-1",
        topic: "retail/s/nudges/r-1".into(),
        nudge_id: id.into(),
        payload: format!("{{\"id\":\"{id}\"}}"),
        kind: NudgeKind::Compare,
        rule: "laptop-compare",
        zone: "laptops",
        visit,
        now_ms,
        expires_at_ms: now_ms + 900_000,
        limits: Limits {
            caps,
            quiet: None,
            tz,
            enabled: true,
        },
    }
}

#[test]
fn caps_survive_reopening_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let person = PersonId::from("p-1");
    let (caps, tz) = (caps(), chrono_tz::UTC);
    let t = 1_795_334_400_000;
    {
        let store = reopen(dir.path()).unwrap();
        assert_eq!(
            store
                .reserve(&request(&person, &caps, &tz, 1, t, "n1"))
                .unwrap(),
            Reservation::Reserved { seq: 1 }
        );
        assert_eq!(
            store
                .reserve(&request(&person, &caps, &tz, 1, t + 1, "n2"))
                .unwrap(),
            Reservation::Reserved { seq: 2 }
        );
    }
    let store = reopen(dir.path()).unwrap();
    assert_eq!(
        store
            .reserve(&request(&person, &caps, &tz, 1, t + 2, "n3"))
            .unwrap(),
        Reservation::Held(SkipReason::PerVisit { limit: 2 })
    );
    let ids: Vec<_> = store
        .outbox_from(0)
        .map(|e| e.unwrap().1.nudge_id)
        .collect();
    assert_eq!(ids, ["n1", "n2"]);
    assert_eq!(
        store.decision_by_nudge("n3").unwrap().unwrap().outcome,
        DecisionOutcome::Held
    );
    assert_eq!(store.decisions_for("p-1").unwrap().len(), 3);
}

#[test]
fn concurrent_deciders_never_exceed_a_cap() {
    let dir = tempfile::tempdir().unwrap();
    let store = reopen(dir.path()).unwrap();
    let reserved = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    std::thread::scope(|scope| {
        for thread in 0..8 {
            let (store, reserved) = (store.clone(), reserved.clone());
            scope.spawn(move || {
                let person = PersonId::from("p-1");
                let (caps, tz) = (caps(), chrono_tz::UTC);
                for i in 0..10 {
                    let id = format!("n-{thread}-{i}");
                    let visit = i % 3;
                    if let Reservation::Reserved { .. } = store
                        .reserve(&request(
                            &person,
                            &caps,
                            &tz,
                            visit,
                            1_795_334_400_000 + i,
                            &id,
                        ))
                        .unwrap()
                    {
                        reserved.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            });
        }
    });
    assert_eq!(
        reserved.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "per_day is 3"
    );
    assert_eq!(store.outbox_len(), 3);
}

#[test]
fn the_kill_switch_holds_everything_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = reopen(dir.path()).unwrap();
    let person = PersonId::from("p-1");
    let (caps, tz) = (caps(), chrono_tz::UTC);
    let mut req = request(&person, &caps, &tz, 1, 0, "n1");
    req.limits.enabled = false;
    assert_eq!(
        store.reserve(&req).unwrap(),
        Reservation::Held(SkipReason::KillSwitch)
    );
    assert_eq!(store.outbox_len(), 0);
}

#[test]
fn a_recipient_belongs_to_one_person_and_moves_with_updates() {
    let dir = tempfile::tempdir().unwrap();
    let store = reopen(dir.path()).unwrap();
    store.upsert_person(&record("p-1", "r-1")).unwrap();
    assert!(matches!(
        store.upsert_person(&record("p-2", "r-1")),
        Err(StoreError::RecipientTaken { .. })
    ));
    assert!(
        store.person("p-2").unwrap().is_none(),
        "a refused record changes nothing"
    );
    store.upsert_person(&record("p-1", "r-9")).unwrap();
    assert!(store.person_by_recipient("r-1").unwrap().is_none());
    assert_eq!(
        store
            .person_by_recipient("r-9")
            .unwrap()
            .unwrap()
            .person
            .as_str(),
        "p-1"
    );
}

#[test]
fn forgetting_a_person_leaves_no_key_in_any_tree() {
    let dir = tempfile::tempdir().unwrap();
    let store = reopen(dir.path()).unwrap();
    store.upsert_person(&record("p-1", "r-1")).unwrap();
    store.upsert_person(&record("p-2", "r-2")).unwrap();
    let (p1, caps, tz) = (PersonId::from("p-1"), caps(), chrono_tz::UTC);
    store
        .reserve(&request(&p1, &caps, &tz, 1, 0, "n1"))
        .unwrap();
    store
        .save_visit(
            &p1,
            VisitSeed {
                visit: 1,
                last_seen_ms: 0,
            },
        )
        .unwrap();
    assert!(store.forget_person("p-1", 0).unwrap() >= 5);
    for name in store.db.tree_names() {
        let tree = store.db.open_tree(&name).unwrap();
        for item in tree.iter() {
            let (k, v) = item.unwrap();
            for needle in [&b"p-1"[..], b"r-1", b"p-1@example.com"] {
                assert!(
                    !k.windows(needle.len()).any(|w| w == needle),
                    "key in {:?}",
                    String::from_utf8_lossy(&name)
                );
                assert!(
                    !v.windows(needle.len()).any(|w| w == needle),
                    "value in {:?}",
                    String::from_utf8_lossy(&name)
                );
            }
        }
    }
    assert!(store.person("p-2").unwrap().is_some());
}

#[test]
fn a_database_from_a_newer_gateway_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.open_tree(keys::META)
            .unwrap()
            .insert(keys::META_LAYOUT_VERSION, &99u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    assert!(matches!(
        reopen(dir.path()),
        Err(StoreError::TooNew { found: 99, .. })
    ));
}

#[test]
fn one_answer_per_nudge_is_kept_and_retention_sweeps_answers_and_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let store = reopen(dir.path()).unwrap();
    store.upsert_person(&record("p-1", "r-1")).unwrap();
    let p1 = PersonId::from("p-1");
    let answer = |nudge: &str, answer: &str, at_ms: i64| FeedbackEntry {
        nudge_id: nudge.into(),
        answer: answer.into(),
        comment: None,
        at_ms,
    };
    // A flood of answers to one nudge keeps one: the latest.
    for i in 0..100 {
        store
            .save_feedback(
                &p1,
                &answer("n-1", if i == 99 { "yes" } else { "no" }, 1_000 + i),
            )
            .unwrap();
    }
    store
        .save_feedback(&p1, &answer("n-2", "no", 90 * 86_400_000))
        .unwrap();
    let kept = store.feedback_for("p-1").unwrap();
    assert_eq!(kept.len(), 2);
    assert!(
        kept.iter()
            .any(|e| e.nudge_id == "n-1" && e.answer == "yes")
    );

    store.forget_person("p-9", 2_000).unwrap();
    store.forget_person("p-8", 95 * 86_400_000).unwrap();
    assert_eq!(store.tombstone("p-9").unwrap(), Some(2_000));
    // A later erasure moves the tombstone on, an earlier one never back.
    store.forget_person("p-9", 1_500).unwrap();
    assert_eq!(store.tombstone("p-9").unwrap(), Some(2_000));

    assert_eq!(
        store.sweep(30 * 86_400_000).unwrap(),
        2,
        "n-1's answer and p-9's tombstone"
    );
    assert_eq!(store.feedback_for("p-1").unwrap().len(), 1);
    assert_eq!(store.tombstone("p-9").unwrap(), None);
    assert_eq!(store.tombstone("p-8").unwrap(), Some(95 * 86_400_000));
}

#[test]
fn the_log_salt_is_random_per_gateway_and_kept_across_restarts() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let salt_a = reopen(a.path()).unwrap().log_salt();
    assert_eq!(reopen(a.path()).unwrap().log_salt(), salt_a);
    assert_ne!(reopen(b.path()).unwrap().log_salt(), salt_a);
}

#[test]
fn retention_sweeps_old_decisions_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = reopen(dir.path()).unwrap();
    let (p1, caps, tz) = (PersonId::from("p-1"), caps(), chrono_tz::UTC);
    store
        .reserve(&request(&p1, &caps, &tz, 1, 1_000, "old"))
        .unwrap();
    store
        .reserve(&request(&p1, &caps, &tz, 2, 90 * 86_400_000, "new"))
        .unwrap();
    assert_eq!(store.sweep_decisions(30 * 86_400_000).unwrap(), 1);
    assert!(store.decision_by_nudge("old").unwrap().is_none());
    assert!(store.decision_by_nudge("new").unwrap().is_some());
}

/// Entries of the three trees the retention sweep clears, and index keys.
fn expiring_counts(store: &Store) -> (usize, usize) {
    (
        store.decisions.len() + store.feedback.len() + store.tombstones.len(),
        store.expiry.len(),
    )
}

#[test]
fn the_expiry_index_holds_one_key_per_entry_and_the_sweep_removes_both() {
    let dir = tempfile::tempdir().unwrap();
    let store = reopen(dir.path()).unwrap();
    let day = 86_400_000;
    let (caps, tz) = (caps(), chrono_tz::UTC);
    for n in 0..6 {
        let person = PersonId::from(format!("p-{n}").as_str());
        store
            .reserve(&request(
                &person,
                &caps,
                &tz,
                1,
                n * 20 * day,
                &format!("n{n}"),
            ))
            .unwrap();
        // Answered twice: the second answer (a day later) replaces the
        // first, and its index key the first's.
        for late in [0, day] {
            store
                .save_feedback(
                    &person,
                    &FeedbackEntry {
                        nudge_id: format!("n{n}"),
                        answer: "yes".into(),
                        comment: None,
                        at_ms: n * 20 * day + late,
                    },
                )
                .unwrap();
        }
        store
            .forget_person(&format!("gone-{n}"), n * 20 * day)
            .unwrap();
    }
    // A later erasure moves a tombstone and its index key on.
    store.forget_person("gone-0", 70 * day).unwrap();
    assert_eq!(expiring_counts(&store), (18, 18));
    // Cut-off at day 50: decisions of days 0, 20, 40, their answers (days
    // 1, 21, 41), tombstones of gone-1 (20) and gone-2 (40).
    assert_eq!(store.sweep(50 * day).unwrap(), 8);
    assert_eq!(expiring_counts(&store), (10, 10));
    assert!(store.decision_by_nudge("n2").unwrap().is_none());
    assert!(store.decision_by_nudge("n3").unwrap().is_some());
    assert_eq!(store.feedback_for("p-2").unwrap().len(), 0);
    assert_eq!(store.feedback_for("p-3").unwrap().len(), 1);
    assert_eq!(store.tombstone("gone-0").unwrap(), Some(70 * day));
    assert_eq!(store.tombstone("gone-2").unwrap(), None);
    // Nothing older than the cut-off is left to visit.
    assert_eq!(store.sweep(50 * day).unwrap(), 0);
    assert_eq!(store.expiry.range(..keys::expiry_time(50 * day)).count(), 0);
}

#[test]
fn an_erasure_leaves_no_expiry_key_with_the_persons_tag_but_the_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let store = reopen(dir.path()).unwrap();
    store.upsert_person(&record("p-1", "r-1")).unwrap();
    let (p1, caps, tz) = (PersonId::from("p-1"), caps(), chrono_tz::UTC);
    for n in 0..3 {
        store
            .reserve(&request(&p1, &caps, &tz, n, n * 1_000, &format!("n{n}")))
            .unwrap();
        store
            .save_feedback(
                &p1,
                &FeedbackEntry {
                    nudge_id: format!("n{n}"),
                    answer: "no".into(),
                    comment: None,
                    at_ms: n * 1_000 + 10,
                },
            )
            .unwrap();
    }
    let p2 = PersonId::from("p-2");
    store
        .reserve(&request(&p2, &caps, &tz, 1, 500, "m1"))
        .unwrap();
    let tag = store.person_tag("p-1");
    assert_eq!(
        store
            .expiry
            .iter()
            .filter(|i| i.as_ref().unwrap().0.windows(16).any(|w| w == tag))
            .count(),
        6
    );
    store.forget_person("p-1", 5_000).unwrap();
    let with_tag: Vec<_> = store
        .expiry
        .iter()
        .map(|i| i.unwrap().0)
        .filter(|k| k.windows(16).any(|w| w == tag))
        .collect();
    assert_eq!(with_tag.len(), 1, "the tombstone's key only");
    assert_eq!(
        keys::expiry_entry(&with_tag[0]),
        Some((keys::Expiring::Tombstone, &tag[..]))
    );
    // p-2's decision is still indexed and swept in its time.
    assert_eq!(expiring_counts(&store), (2, 2));
    assert_eq!(store.sweep(1_000).unwrap(), 1);
    assert!(store.decisions_for("p-2").unwrap().is_empty());
}

#[test]
fn a_layout_5_store_gets_its_expiry_index_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    let (caps, tz) = (caps(), chrono_tz::UTC);
    let day = 86_400_000;
    {
        let store = reopen(dir.path()).unwrap();
        for n in 0..4 {
            let person = PersonId::from(format!("p-{n}").as_str());
            store
                .reserve(&request(
                    &person,
                    &caps,
                    &tz,
                    1,
                    n * 20 * day,
                    &format!("n{n}"),
                ))
                .unwrap();
            store
                .save_feedback(
                    &person,
                    &FeedbackEntry {
                        nudge_id: format!("n{n}"),
                        answer: "yes".into(),
                        comment: None,
                        at_ms: n * 20 * day,
                    },
                )
                .unwrap();
        }
        store.forget_person("gone", 10 * day).unwrap();
        // As a layout-5 gateway left it: no index.
        store.expiry.clear().unwrap();
        store
            .meta
            .insert(keys::META_LAYOUT_VERSION, &5u32.to_be_bytes())
            .unwrap();
        store.flush().unwrap();
    }
    let store = reopen(dir.path()).unwrap();
    assert_eq!(store.layout_version().unwrap(), 6);
    assert_eq!(expiring_counts(&store), (9, 9));
    // Days 0, 20 (decisions and answers) and the tombstone of day 10.
    assert_eq!(store.sweep(30 * day).unwrap(), 5);
    assert_eq!(expiring_counts(&store), (4, 4));
    assert!(store.decision_by_nudge("n1").unwrap().is_none());
    assert!(store.decision_by_nudge("n2").unwrap().is_some());
}

/// Every byte of every file under the storage directory (sled's segments,
/// snapshots, config, and the key vault).
fn raw_files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                out.push((
                    entry.path().display().to_string(),
                    std::fs::read(entry.path()).unwrap(),
                ));
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn erasure_leaves_nothing_readable_in_the_raw_files() {
    const KEY: &str = "75c734c6dd1a782de7a965da5eb93125";
    let dir = tempfile::tempdir().unwrap();
    let record = PersonRecord::from_json(&format!(
        r#"{{"person": "p-1001", "recipient": "r-5f2c9a", "identities": [{{"kind": "app", "key": "{KEY}"}}, {{"kind": "email", "value": "ana@example.com"}}], "consent": {{"proximity": true, "product_info": true}}, "interests": ["laptops"]}}"#
    ))
    .unwrap();
    let person = PersonId::from("p-1001");
    let (caps, tz) = (caps(), chrono_tz::UTC);
    let data_key = {
        let store = reopen(dir.path()).unwrap();
        store.upsert_person(&record).unwrap();
        let mut req = request(&person, &caps, &tz, 1, 0, "nudge-4f1c9e2a-77aa");
        req.recipient = "r-5f2c9a";
        store.reserve(&req).unwrap();
        store
            .save_visit(
                &person,
                VisitSeed {
                    visit: 1,
                    last_seen_ms: 0,
                },
            )
            .unwrap();
        store.flush().unwrap();
        let tag = store.person_tag("p-1001");
        let key = store.vault().key(&tag).unwrap().unwrap();
        // Even before erasure nothing personal is in sled in the clear.
        let raw_key = hex::decode(KEY).unwrap();
        for (file, bytes) in raw_files(dir.path()) {
            for needle in [
                &b"ana@example.com"[..],
                KEY.as_bytes(),
                &raw_key,
                b"p-1001",
                b"r-5f2c9a",
                // The cap ledger's rule ids and the nudge's id: no index
                // or ledger holds them in the clear.
                b"laptop-compare",
                b"nudge-4f1c9e2a-77aa",
            ] {
                assert!(
                    !contains(&bytes, needle),
                    "{} in the clear in {file}",
                    String::from_utf8_lossy(needle)
                );
            }
        }
        assert!(store.forget_person("p-1001", 0).unwrap() >= 6);
        assert!(store.person("p-1001").unwrap().is_none());
        key
    };
    // After erasure the person's key exists nowhere on disk, so every sealed
    // copy sled keeps in its segments is unreadable.
    for (file, bytes) in raw_files(dir.path()) {
        assert!(
            !contains(&bytes, &data_key),
            "the data key survives in {file}"
        );
    }
    let store = reopen(dir.path()).unwrap();
    assert_eq!(store.people().count(), 0);
    assert_eq!(store.outbox_len(), 0);
    assert!(store.decisions_for("p-1001").unwrap().is_empty());
}

#[test]
fn a_layout_2_database_gets_its_ledgers_and_recipients_sealed_and_its_nudge_index_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let p1 = PersonId::from("p-1");
    {
        let store = reopen(dir.path()).unwrap();
        store.upsert_person(&record("p-1", "r-1")).unwrap();
        // Write what layout 2 held: a clear ledger, a clear owner, the index.
        let tag = store.person_tag("p-1");
        let ledger = Ledger {
            sent: vec![SentNudge {
                at_ms: 5,
                kind: NudgeKind::Compare,
                rule: "rule-in-the-clear".into(),
                visit: 1,
            }],
            visits: 4,
        };
        store.ledgers.insert(tag, json(&ledger)).unwrap();
        store
            .recipients
            .insert(store.recipient_tag("r-1"), &tag)
            .unwrap();
        store
            .db
            .open_tree(keys::v2::DECISION_BY_NUDGE)
            .unwrap()
            .insert("n-1", &tag)
            .unwrap();
        store
            .meta
            .insert(keys::META_LAYOUT_VERSION, &2u32.to_be_bytes())
            .unwrap();
        store.flush().unwrap();
    }
    let store = reopen(dir.path()).unwrap();
    assert_eq!(store.layout_version().unwrap(), keys::LAYOUT_VERSION);
    let ledger = store.ledger("p-1").unwrap();
    assert_eq!((ledger.visits, ledger.sent.len()), (4, 1));
    let raw = store.ledgers.get(store.person_tag("p-1")).unwrap().unwrap();
    assert!(
        serde_json::from_slice::<Ledger>(&raw).is_err(),
        "sealed now"
    );
    assert_eq!(store.count_visit(&p1).unwrap(), 5);
    assert_eq!(
        store.person_by_recipient("r-1").unwrap().unwrap().person,
        p1
    );
    assert!(matches!(
        store.upsert_person(&record("p-2", "r-1")),
        Err(StoreError::RecipientTaken { .. })
    ));
    store.upsert_person(&record("p-1", "r-1")).unwrap();
    assert!(
        !store
            .db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == keys::v2::DECISION_BY_NUDGE.as_bytes())
    );
}

#[test]
fn a_layout_1_database_is_migrated_and_its_clear_trees_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let record = record("p-1", "r-1");
    {
        let db = sled::open(dir.path()).unwrap();
        db.open_tree(keys::META)
            .unwrap()
            .insert(keys::META_LAYOUT_VERSION, &1u32.to_be_bytes())
            .unwrap();
        db.open_tree(keys::v1::PEOPLE)
            .unwrap()
            .insert("p-1", serde_json::to_vec(&record).unwrap())
            .unwrap();
        db.open_tree(keys::v1::RECIPIENTS)
            .unwrap()
            .insert("r-1", "p-1")
            .unwrap();
        let ledger = Ledger {
            sent: vec![SentNudge {
                at_ms: 5,
                kind: NudgeKind::Compare,
                rule: "r".into(),
                visit: 1,
            }],
            visits: 4,
        };
        db.open_tree(keys::v1::LEDGERS)
            .unwrap()
            .insert("p-1", serde_json::to_vec(&ledger).unwrap())
            .unwrap();
        let entry = OutboxEntry {
            nudge_id: "n-1".into(),
            person: "p-1".into(),
            recipient: "r-1".into(),
            topic: "t".into(),
            payload: "{}".into(),
            created_ms: 5,
            expires_at_ms: i64::MAX,
        };
        db.open_tree(keys::v1::OUTBOX)
            .unwrap()
            .insert(7u64.to_be_bytes(), serde_json::to_vec(&entry).unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    let store = reopen(dir.path()).unwrap();
    assert_eq!(store.layout_version().unwrap(), keys::LAYOUT_VERSION);
    assert_eq!(store.person_by_recipient("r-1").unwrap(), Some(record));
    assert_eq!(
        store.ledger("p-1").unwrap().sent.len(),
        1,
        "caps carry over"
    );
    assert_eq!(
        store.count_visit(&PersonId::from("p-1")).unwrap(),
        5,
        "and so does the visit count"
    );
    let pending: Vec<_> = store.outbox_from(0).map(|e| e.unwrap()).collect();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].0, pending[0].1.nudge_id.as_str()),
        (7, "n-1"),
        "nothing pending is lost"
    );
    let names: Vec<String> = store
        .db
        .tree_names()
        .iter()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    for old in keys::v1::ALL {
        assert!(
            !names.contains(&old.to_string()),
            "{old} still there: {names:?}"
        );
    }
}

fn candidate(id: &str, rule: &str, kind: NudgeKind, visit: i64, now_ms: i64) -> ReserveCandidate {
    ReserveCandidate {
        nudge_id: id.into(),
        topic: "retail/s/nudges/r-1".into(),
        payload: format!("{{\"id\":\"{id}\"}}"),
        kind,
        rule: rule.into(),
        zone: "laptops".into(),
        visit,
        now_ms,
        expires_at_ms: now_ms + 900_000,
        held: None,
    }
}

fn job<'a>(
    person: &'a PersonId,
    candidates: &'a [ReserveCandidate],
    caps: &'a Caps,
    tz: &'a Tz,
) -> ReserveJob<'a> {
    ReserveJob {
        person,
        recipient: "r-1",
        candidates,
        limits: Limits {
            caps,
            quiet: None,
            tz,
            enabled: true,
        },
        chain: None,
    }
}

#[test]
fn caps_hold_exactly_for_one_person_within_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = reopen(dir.path()).unwrap();
    let person = PersonId::from("p-1");
    let (caps, tz) = (caps(), chrono_tz::UTC);
    let t = 1_795_334_400_000;
    let candidates: Vec<[ReserveCandidate; 1]> = (0..10)
        .map(|i| {
            [candidate(
                &format!("n{i}"),
                "laptop-compare",
                NudgeKind::Compare,
                1,
                t + i,
            )]
        })
        .collect();
    let jobs: Vec<_> = candidates
        .iter()
        .map(|c| job(&person, c, &caps, &tz))
        .collect();
    let outcomes = store.reserve_batch(&jobs).unwrap();
    let flat: Vec<_> = outcomes.iter().flatten().cloned().collect();
    assert_eq!(
        flat,
        [
            vec![
                Reservation::Reserved { seq: 1 },
                Reservation::Reserved { seq: 2 }
            ],
            vec![Reservation::Held(SkipReason::PerVisit { limit: 2 }); 8],
        ]
        .concat()
    );
    assert_eq!(store.outbox_len(), 2);
    assert_eq!(store.decisions_for("p-1").unwrap().len(), 10);
    assert_eq!(store.ledger("p-1").unwrap().sent.len(), 2);
    // The next batch (and a single reservation) still sees them.
    assert_eq!(
        store
            .reserve(&request(&person, &caps, &tz, 1, t + 20, "n10"))
            .unwrap(),
        Reservation::Held(SkipReason::PerVisit { limit: 2 })
    );
}

#[test]
fn a_job_falls_through_only_rule_or_kind_limits_and_consent() {
    let dir = tempfile::tempdir().unwrap();
    let store = reopen(dir.path()).unwrap();
    let person = PersonId::from("p-1");
    let tz = chrono_tz::UTC;
    let caps = Caps {
        rule_cooldown_s: 3_600,
        ..caps()
    };
    let t = 1_795_334_400_000;
    let first = [candidate("a0", "rule-a", NudgeKind::Compare, 1, t)];
    let mut no_consent = candidate("b0", "rule-b", NudgeKind::Offer, 1, t + 1);
    no_consent.held = Some(SkipReason::NoConsent {
        purpose: crate::identity::Purpose::Offers,
    });
    // rule-a is cooling down, rule-b has no consent: rule-c goes, rule-d
    // is never tried.
    let second = [
        candidate("a1", "rule-a", NudgeKind::Compare, 1, t + 2),
        no_consent,
        candidate("c1", "rule-c", NudgeKind::Info, 1, t + 3),
        candidate("d1", "rule-d", NudgeKind::Info, 1, t + 4),
    ];
    // Per visit is 2: the third decision of the visit stops at once.
    let third = [
        candidate("e2", "rule-e", NudgeKind::Info, 1, t + 5),
        candidate("f2", "rule-f", NudgeKind::Info, 1, t + 6),
    ];
    let outcomes = store
        .reserve_batch(&[
            job(&person, &first, &caps, &tz),
            job(&person, &second, &caps, &tz),
            job(&person, &third, &caps, &tz),
        ])
        .unwrap();
    assert_eq!(outcomes[0], [Reservation::Reserved { seq: 1 }]);
    assert!(matches!(
        outcomes[1][..],
        [
            Reservation::Held(SkipReason::RuleCooldown { .. }),
            Reservation::Held(SkipReason::NoConsent { .. }),
            Reservation::Reserved { seq: 4 }
        ]
    ));
    assert_eq!(
        outcomes[2],
        [Reservation::Held(SkipReason::PerVisit { limit: 2 })]
    );
    let sent: Vec<_> = store
        .outbox_from(0)
        .map(|e| e.unwrap().1.nudge_id)
        .collect();
    assert_eq!(sent, ["a0", "c1"]);
    assert_eq!(store.decisions_for("p-1").unwrap().len(), 5);
    assert!(store.decision_by_nudge("d1").unwrap().is_none());
    assert!(store.decision_by_nudge("f2").unwrap().is_none());
    assert_eq!(
        store.decision_by_nudge("b0").unwrap().unwrap().outcome,
        DecisionOutcome::Held
    );
}

#[test]
fn a_batch_that_fails_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = reopen(dir.path()).unwrap();
    let (good, bad) = (PersonId::from("p-good"), PersonId::from("p-bad"));
    let (caps, tz) = (caps(), chrono_tz::UTC);
    let t = 1_795_334_400_000;
    store
        .reserve(&request(&good, &caps, &tz, 1, t, "before"))
        .unwrap();
    let seq_before = store.meta.get(keys::META_NEXT_SEQ).unwrap();
    // A ledger that no longer parses: the transaction aborts on it.
    store
        .ledgers
        .insert(store.person_tag("p-bad"), &b"not json"[..])
        .unwrap();
    let a = [candidate(
        "g1",
        "laptop-compare",
        NudgeKind::Compare,
        2,
        t + 1,
    )];
    let b = [candidate(
        "b1",
        "laptop-compare",
        NudgeKind::Compare,
        1,
        t + 2,
    )];
    let err = store
        .reserve_batch(&[job(&good, &a, &caps, &tz), job(&bad, &b, &caps, &tz)])
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { tree, .. } if tree == keys::LEDGERS));
    assert_eq!(store.outbox_len(), 1);
    assert_eq!(store.decisions_for("p-good").unwrap().len(), 1);
    assert_eq!(store.ledger("p-good").unwrap().sent.len(), 1);
    assert!(store.decision_by_nudge("g1").unwrap().is_none());
    assert_eq!(store.meta.get(keys::META_NEXT_SEQ).unwrap(), seq_before);
}

mod batch_equals_one_by_one {
    use proptest::prelude::*;

    use super::*;

    /// (person, rule, kind, visit, minutes later), as small numbers.
    type Attempt = (u8, u8, u8, u8, u8);

    fn candidates(attempts: &[Vec<Attempt>]) -> Vec<Vec<ReserveCandidate>> {
        let t = 1_795_334_400_000;
        let kinds = [NudgeKind::Compare, NudgeKind::Info, NudgeKind::Offer];
        let mut n = 0;
        attempts
            .iter()
            .map(|job| {
                job.iter()
                    .map(|&(_, rule, kind, visit, minutes)| {
                        n += 1;
                        candidate(
                            &format!("n{n}"),
                            &format!("rule-{rule}"),
                            kinds[kind as usize % 3],
                            i64::from(visit),
                            t + i64::from(minutes) * 60_000 + n,
                        )
                    })
                    .collect()
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Any batch decides exactly as the same jobs reserved one at a
        /// time would: same outcomes, same outbox, same ledgers.
        #[test]
        fn a_batch_decides_as_its_jobs_would_one_at_a_time(
            attempts in prop::collection::vec(
                prop::collection::vec((0u8..3, 0u8..3, 0u8..3, 0u8..3, 0u8..90), 1..4),
                1..40,
            ),
            per_visit in 1u32..4,
            per_day in 1u32..6,
            per_kind in prop::option::of(1u32..3),
            cooldown_min in 0u32..30,
            store_per_minute in prop::option::of(1u32..5),
        ) {
            let caps = Caps {
                per_visit,
                per_day,
                per_week: 10,
                min_gap_s: 0,
                per_kind_per_day: per_kind,
                rule_cooldown_s: cooldown_min * 60,
                store_per_minute,
            };
            let tz = chrono_tz::UTC;
            let people: Vec<PersonId> =
                (0..3).map(|i| PersonId::from(format!("p-{i}").as_str())).collect();
            let candidates = candidates(&attempts);
            let jobs: Vec<_> = attempts
                .iter()
                .zip(&candidates)
                .map(|(a, c)| job(&people[a[0].0 as usize], c, &caps, &tz))
                .collect();
            let (batched_dir, single_dir) =
                (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let (batched, single) =
                (reopen(batched_dir.path()).unwrap(), reopen(single_dir.path()).unwrap());
            let together = batched.reserve_batch(&jobs).unwrap();
            let alone: Vec<_> = jobs
                .iter()
                .map(|j| single.reserve_batch(std::slice::from_ref(j)).unwrap().remove(0))
                .collect();
            prop_assert_eq!(&together, &alone);
            let outbox = |s: &Store| -> Vec<(u64, String)> {
                s.outbox_from(0).map(|e| e.map(|(q, e)| (q, e.nudge_id)).unwrap()).collect()
            };
            prop_assert_eq!(outbox(&batched), outbox(&single));
            for p in &people {
                prop_assert_eq!(batched.ledger(p.as_str()).unwrap(), single.ledger(p.as_str()).unwrap());
                prop_assert_eq!(
                    batched.decisions_for(p.as_str()).unwrap(),
                    single.decisions_for(p.as_str()).unwrap()
                );
                // No person ever gets more than the caps allow.
                let sent = batched.ledger(p.as_str()).unwrap().sent.len() as u32;
                prop_assert!(sent <= per_day);
            }
        }
    }
}

#[test]
fn the_outbox_shows_a_reservation_only_once_it_is_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let store = reopen(dir.path()).unwrap();
    let person = PersonId::from("p-1");
    let (caps, tz) = (caps(), chrono_tz::UTC);
    let t = 1_795_334_400_000;
    store
        .reserve(&request(&person, &caps, &tz, 1, t, "flushed"))
        .unwrap();
    // A batch committed whose flush has not returned yet: its entry is in
    // the tree, and the sequence moved on, but delivery must not see it.
    let sealer = store.sealer("p-1").unwrap();
    let entry = OutboxEntry {
        nudge_id: "committed".into(),
        person: "p-1".into(),
        recipient: "r-1".into(),
        topic: "retail/s/nudges/r-1".into(),
        payload: "{}".into(),
        created_ms: t,
        expires_at_ms: t + 900_000,
    };
    let sealed = [
        &sealer.tag[..],
        &sealer.seal(&json(&entry), &vault::nonce().unwrap()),
    ]
    .concat();
    store.outbox.insert(keys::outbox(2), sealed).unwrap();
    store
        .meta
        .insert(keys::META_NEXT_SEQ, &3u64.to_be_bytes())
        .unwrap();
    let visible = |store: &Store, from| -> Vec<String> {
        store
            .outbox_from(from)
            .map(|e| e.unwrap().1.nudge_id)
            .collect()
    };
    assert_eq!(visible(&store, 0), ["flushed"]);
    assert!(visible(&store, 5).is_empty());
    assert_eq!(store.outbox_len(), 2);
    store.flush().unwrap();
    assert_eq!(visible(&store, 0), ["flushed", "committed"]);
    // After a restart everything found on disk is durable.
    drop(store);
    let store = reopen(dir.path()).unwrap();
    assert_eq!(visible(&store, 0), ["flushed", "committed"]);
}
