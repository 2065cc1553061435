use super::*;

fn reopen(path: &Path) -> Store {
    super::super::reopen_closed(path)
}

fn record(n: u32) -> PersonRecord {
    PersonRecord::from_json(&format!(
        r#"{{"person": "p-{n}", "recipient": "r-{n}", "timezone": "Europe/Paris",
            "identities": [{{"kind": "app", "key": "{n:032x}"}}, {{"kind": "email", "value": "p{n}@example.com"}}],
            "consent": {{"proximity": true, "offers": {}}}, "interests": ["laptops"]}}"#,
        n % 2 == 0
    ))
    .unwrap()
}

fn app(n: u32) -> Identity {
    Identity::App {
        key: u128::from(n).to_be_bytes(),
    }
}

fn email(n: u32) -> Identity {
    Identity::Email {
        value: format!("p{n}@example.com"),
    }
}

const NOW_S: i64 = 1_800_000_000;

/// Every way `People` finds the person, and their consent, as expected.
fn assert_knows(people: &People, n: u32) {
    let id = PersonId::from(format!("p-{n}").as_str());
    assert_eq!(people.person_of(&app(n)).unwrap(), Some(id.clone()));
    assert_eq!(people.person_of(&email(n)).unwrap(), Some(id.clone()));
    let full = people.by_recipient(&format!("r-{n}")).unwrap().unwrap();
    // The whole record comes from sled, not from the snapshot's hot part.
    assert_eq!(full, record(n));
    assert_eq!(people.consent(&id), Some(record(n).consent));
}

fn assert_forgot(people: &People, n: u32) {
    assert_eq!(people.person_of(&app(n)).unwrap(), None);
    assert_eq!(people.person_of(&email(n)).unwrap(), None);
    assert_eq!(people.by_recipient(&format!("r-{n}")).unwrap(), None);
}

fn store_with(dir: &Path, people: std::ops::Range<u32>) -> Store {
    let store = Store::open(dir).unwrap();
    let records: Vec<PersonRecord> = people.map(record).collect();
    store.upsert_people(&records).unwrap();
    store
}

#[test]
fn a_written_snapshot_is_what_the_next_start_reads() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = store_with(dir.path(), 0..50);
        assert!(!store.people_snapshot_current());
        assert_eq!(store.write_people_snapshot().unwrap(), 50);
        assert!(store.people_snapshot_current());
    }
    let store = reopen(dir.path());
    let (people, source) = store.load_people(NOW_S).unwrap();
    assert_eq!(source, PeopleSource::Snapshot);
    assert_eq!(people.len(), 50);
    for n in 0..50 {
        assert_knows(&people, n);
    }
}

#[test]
fn without_a_snapshot_the_start_scans_and_writes_one() {
    let dir = tempfile::tempdir().unwrap();
    drop(store_with(dir.path(), 0..10));
    {
        let store = reopen(dir.path());
        let (people, source) = store.load_people(NOW_S).unwrap();
        assert_eq!((source, people.len()), (PeopleSource::Scan, 10));
        assert!(store.people_snapshot_current());
    }
    let store = reopen(dir.path());
    let (people, source) = store.load_people(NOW_S).unwrap();
    assert_eq!((source, people.len()), (PeopleSource::Snapshot, 10));
    assert_knows(&people, 7);
}

#[test]
fn a_change_after_the_snapshot_makes_the_start_scan() {
    for change in ["upsert", "forget"] {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = store_with(dir.path(), 0..10);
            store.write_people_snapshot().unwrap();
            match change {
                "upsert" => {
                    store.upsert_person(&record(10)).unwrap();
                }
                _ => {
                    store.forget_person("p-3", 1).unwrap();
                }
            }
            assert!(!store.people_snapshot_current(), "{change}");
        }
        let store = reopen(dir.path());
        let (people, source) = store.load_people(NOW_S).unwrap();
        assert_eq!(source, PeopleSource::Scan, "{change}");
        if change == "upsert" {
            assert_eq!(people.len(), 11);
            assert_knows(&people, 10);
        } else {
            assert_eq!(people.len(), 9);
            assert_forgot(&people, 3);
        }
    }
}

/// A way of damaging a snapshot file (given another store's file).
type Damage = fn(&mut Vec<u8>, &[u8]);

#[test]
fn a_damaged_truncated_or_foreign_snapshot_is_not_used() {
    let other = tempfile::tempdir().unwrap();
    {
        let store = store_with(other.path(), 0..5);
        store.write_people_snapshot().unwrap();
    }
    let foreign = std::fs::read(other.path().join(keys::PEOPLE_SNAPSHOT_FILE)).unwrap();
    let damages: [(&str, Damage); 4] = [
        ("a flipped byte", |file, _| {
            let at = file.len() / 2;
            file[at] ^= 0x40;
        }),
        ("cut short", |file, _| file.truncate(file.len() - 40)),
        ("a byte appended", |file, _| file.push(0)),
        ("another store's, under this one's id", |file, foreign| {
            let id = file[8..24].to_vec();
            *file = foreign.to_vec();
            file[8..24].copy_from_slice(&id);
        }),
    ];
    for (damage, apply) in damages {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = store_with(dir.path(), 0..5);
            store.write_people_snapshot().unwrap();
        }
        let path = dir.path().join(keys::PEOPLE_SNAPSHOT_FILE);
        let mut file = std::fs::read(&path).unwrap();
        apply(&mut file, &foreign);
        std::fs::write(&path, &file).unwrap();
        let store = reopen(dir.path());
        let (people, source) = store.load_people(NOW_S).unwrap();
        assert_eq!(source, PeopleSource::Scan, "{damage}");
        assert_eq!(people.len(), 5, "{damage}");
        for n in 0..5 {
            assert_knows(&people, n);
        }
    }
}

#[test]
fn an_erased_persons_entry_in_an_old_copy_of_the_file_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), 0..3);
    store.write_people_snapshot().unwrap();
    let marker = store.snapshot.lock().unwrap().marker.unwrap();
    // What the disk may still hold after the file is replaced.
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join(keys::PEOPLE_SNAPSHOT_FILE),
        copy.path().join(keys::PEOPLE_SNAPSHOT_FILE),
    )
    .unwrap();
    store.forget_person("p-1", 1).unwrap();
    let reader = SnapshotReader::open(&store, copy.path(), &marker, &store.snapshot_mac_key())
        .unwrap()
        .unwrap();
    let mut people: Vec<String> = reader
        .map(|r| r.unwrap().person.as_str().to_string())
        .collect();
    people.sort();
    assert_eq!(people, ["p-0", "p-2"]);
    // And the bytes do not hold the person in the clear.
    let bytes = std::fs::read(copy.path().join(keys::PEOPLE_SNAPSHOT_FILE)).unwrap();
    for needle in [&b"p-1"[..], b"r-1", b"p1@example.com"] {
        assert!(!bytes.windows(needle.len()).any(|w| w == needle));
    }
}

#[test]
fn a_start_that_scanned_asks_for_a_snapshot_in_slot_order() {
    let dir = tempfile::tempdir().unwrap();
    drop(store_with(dir.path(), 0..20));
    let store = reopen(dir.path());
    assert!(store.people_snapshot_needs_writing(), "none yet");
    let (_, source) = store.load_people(NOW_S).unwrap();
    assert_eq!(source, PeopleSource::Scan);
    assert!(store.people_snapshot_current());
    assert!(
        store.people_snapshot_needs_writing(),
        "written during the scan, in tag order"
    );
    store.write_people_snapshot().unwrap();
    assert!(!store.people_snapshot_needs_writing());
    drop(store);
    let store = reopen(dir.path());
    let (people, source) = store.load_people(NOW_S).unwrap();
    assert_eq!((source, people.len()), (PeopleSource::Snapshot, 20));
    assert!(!store.people_snapshot_needs_writing());
    for n in 0..20 {
        assert_knows(&people, n);
    }
}

#[test]
fn entries_in_any_order_and_keys_moved_since_are_still_read() {
    // Erase people between writing and reading: their slots go free and
    // are taken by people enrolled after, so the cursor finds other tags
    // in some slots and has to ask the vault.
    let dir = tempfile::tempdir().unwrap();
    {
        let store = store_with(dir.path(), 0..30);
        store.write_people_snapshot().unwrap();
        for n in [3, 11, 12] {
            store.forget_person(&format!("p-{n}"), 1).unwrap();
        }
        let records: Vec<PersonRecord> = (30..33).map(record).collect();
        store.upsert_people(&records).unwrap();
        // Twice: once in tag order (as a start that scanned), once sorted.
        let (people, _) = store.load_people(NOW_S).unwrap();
        assert_eq!(people.len(), 30);
    }
    let store = reopen(dir.path());
    let (people, source) = store.load_people(NOW_S).unwrap();
    assert_eq!((source, people.len()), (PeopleSource::Snapshot, 30));
    for n in (0..33).filter(|n| ![3, 11, 12].contains(n)) {
        assert_knows(&people, n);
    }
    for n in [3, 11, 12] {
        assert_forgot(&people, n);
    }
}

#[test]
fn an_entry_round_trips_every_identity_kind_and_consent() {
    for bits in 0u8..32 {
        let mut record = record(7);
        for (n, &purpose) in Purpose::ALL.iter().enumerate() {
            record.consent.set(purpose, bits & (1 << n) != 0);
        }
        record.identities.push(Identity::Card {
            value: "4711-ü".into(),
        });
        let back = decode_hot(&encode_hot(&record).unwrap()).unwrap();
        assert_eq!(back.person, record.person);
        assert_eq!(back.recipient, record.recipient);
        assert_eq!(back.identities, record.identities);
        assert_eq!(back.consent, record.consent);
    }
    let entry = encode_hot(&record(1)).unwrap();
    for cut in 0..entry.len() {
        assert!(decode_hot(&entry[..cut]).is_err(), "cut at {cut}");
    }
    let mut longer = entry.clone();
    longer.push(0);
    assert!(decode_hot(&longer).is_err());
}
