use std::sync::Arc;

use super::*;
use crate::decide::Caps;

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
        caps,
        quiet: None,
        tz,
        enabled: true,
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
    req.enabled = false;
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
    assert!(store.forget_person("p-1").unwrap() >= 5);
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
        let mut req = request(&person, &caps, &tz, 1, 0, "n-1");
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
        let key = store.vault().key(&tag).unwrap();
        // Even before erasure nothing personal is in sled in the clear.
        let raw_key = hex::decode(KEY).unwrap();
        for (file, bytes) in raw_files(dir.path()) {
            for needle in [
                &b"ana@example.com"[..],
                KEY.as_bytes(),
                &raw_key,
                b"p-1001",
                b"r-5f2c9a",
            ] {
                assert!(
                    !contains(&bytes, needle),
                    "{} in the clear in {file}",
                    String::from_utf8_lossy(needle)
                );
            }
        }
        assert!(store.forget_person("p-1001").unwrap() >= 6);
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
