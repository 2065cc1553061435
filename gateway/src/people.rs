//! Who the gateway knows, in memory: person records, which identity belongs
//! to whom, the rotating-identifier table and the recipient index. Pure:
//! every change returns what has to be persisted, and the caller writes it
//! before it acknowledges anything.
//!
//! Kept compact for a store's worth of people (BENCHMARKS.md §2): each
//! person is one `Entry` in a slab, and the person and recipient indexes
//! are hash tables of `u32` slots that hash the entry's own strings, so no
//! id or recipient is held twice. Interests, owned products and time zones
//! repeat across people and are interned. App keys are indexed once, in the
//! rotating-ID table; the [`IdentityIndex`] holds e-mails and cards.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use hashbrown::HashTable;

use crate::identity::{
    Consent, Identity, IdentityChanges, IdentityIndex, MovedIdentity, PersonId, PersonRecord,
    RotatingIdTable, Stamps,
};

/// One person as kept in memory: a [`PersonRecord`] without spare capacity,
/// its repeated strings shared.
struct Entry {
    person: PersonId,
    recipient: Box<str>,
    timezone: Option<Arc<str>>,
    identities: Box<[Identity]>,
    consent: Consent,
    interests: Box<[Arc<str>]>,
    owns: Box<[Arc<str>]>,
    stamps: Stamps,
}

impl Entry {
    fn to_record(&self) -> PersonRecord {
        let strings = |list: &[Arc<str>]| list.iter().map(|s| s.to_string()).collect();
        PersonRecord {
            person: self.person.clone(),
            recipient: self.recipient.to_string(),
            timezone: self.timezone.as_deref().map(str::to_string),
            identities: self.identities.to_vec(),
            consent: self.consent,
            interests: strings(&self.interests),
            owns: strings(&self.owns),
            stamps: self.stamps,
        }
    }

    /// The interned strings it holds.
    fn shared(self) -> impl Iterator<Item = Arc<str>> {
        let Entry {
            timezone,
            interests,
            owns,
            ..
        } = self;
        timezone
            .into_iter()
            .chain(interests.into_vec())
            .chain(owns.into_vec())
    }
}

/// Strings that repeat across people, one copy each. A string leaves when
/// the last person holding it does (erasure leaves nothing of a person).
#[derive(Default)]
struct Interner(HashSet<Arc<str>>);

impl Interner {
    fn intern(&mut self, s: String) -> Arc<str> {
        if let Some(known) = self.0.get(s.as_str()) {
            return known.clone();
        }
        let new: Arc<str> = Arc::from(s);
        self.0.insert(new.clone());
        new
    }

    fn intern_all(&mut self, list: Vec<String>) -> Box<[Arc<str>]> {
        list.into_iter().map(|s| self.intern(s)).collect()
    }

    /// Drops one holder's copy; forgets the string if only the interner
    /// held it besides.
    fn release(&mut self, s: Arc<str>) {
        if Arc::strong_count(&s) <= 2 {
            self.0.remove(&*s);
        }
    }
}

#[derive(Default)]
pub struct People {
    /// `None` for a free slot (listed in `free`).
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    /// Slots by their person id.
    by_person: HashTable<u32>,
    /// Slots by their recipient.
    by_recipient: HashTable<u32>,
    hasher: RandomState,
    strings: Interner,
    /// E-mails and cards; app keys are in `table`.
    index: IdentityIndex,
    table: RotatingIdTable,
}

/// What an upsert changed, for the caller to persist and act on.
#[derive(Debug, Default, PartialEq)]
pub struct Upserted {
    /// Records to write, the upserted one first; others lost identities to it.
    pub to_store: Vec<PersonRecord>,
    /// People whose proximity consent is now off: forget their presence and
    /// purge their pending nudges.
    pub withdrawn: Vec<PersonId>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeopleError {
    #[error("recipient: {recipient:?} already belongs to another person")]
    RecipientTaken { recipient: String },
}

impl People {
    pub fn new() -> Self {
        Self::default()
    }

    /// Load stored records (no checks: they were validated when stored).
    pub fn load(records: impl IntoIterator<Item = PersonRecord>, now_s: i64) -> Self {
        let records = records.into_iter();
        let mut people = People::new();
        people.reserve(records.size_hint().0);
        for record in records {
            let _ = people.upsert(record);
        }
        people.table.roll_to(now_s);
        release_freed_heap();
        people
    }

    /// Makes room for `n` more people (with one app key each) without
    /// rehashing on the way.
    fn reserve(&mut self, n: usize) {
        self.slots.reserve_exact(n);
        let slots = &self.slots;
        let hasher = &self.hasher;
        self.by_person
            .reserve(n, |&i| hasher.hash_one(slot_of(slots, i).person.as_str()));
        self.by_recipient
            .reserve(n, |&i| hasher.hash_one(&*slot_of(slots, i).recipient));
        self.table.reserve(n);
    }

    /// A copy of the person's record.
    pub fn get(&self, person: &PersonId) -> Option<PersonRecord> {
        self.entry(person).map(Entry::to_record)
    }

    /// The person's consent, without copying their record (the hot path).
    pub fn consent(&self, person: &PersonId) -> Option<Consent> {
        self.entry(person).map(|e| e.consent)
    }

    /// A copy of the record of the person a recipient belongs to.
    pub fn by_recipient(&self, recipient: &str) -> Option<PersonRecord> {
        self.recipient_slot(recipient)
            .map(|i| slot_of(&self.slots, i).to_record())
    }

    /// The person an identity (app key, e-mail, card) belongs to.
    pub fn person_of(&self, identity: &Identity) -> Option<&PersonId> {
        match identity {
            Identity::App { key } => self.table.person_of_key(key),
            _ => self.index.person_of(identity),
        }
    }

    pub fn resolve(&self, rotating_id: &[u8; 16]) -> Option<&PersonId> {
        self.table.lookup(rotating_id)
    }

    /// Whether the person is known and opted in to proximity
    /// ([`Consent::opted_in_to_proximity`]).
    pub fn opted_in(&self, person: &PersonId) -> bool {
        self.consent(person)
            .is_some_and(|c| c.opted_in_to_proximity())
    }

    /// The opted-in person behind a rotating identifier; `None` for a
    /// stranger (nobody enrolled it, or its owner did not opt in).
    pub fn recognise(&self, rotating_id: &[u8; 16]) -> Option<&PersonId> {
        self.resolve(rotating_id).filter(|p| self.opted_in(p))
    }

    pub fn roll_to(&mut self, now_s: i64) {
        self.table.roll_to(now_s);
    }

    pub fn len(&self) -> usize {
        self.by_person.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_person.is_empty()
    }

    /// Check an upsert without applying it.
    pub fn check(&self, record: &PersonRecord) -> Result<(), PeopleError> {
        match self.recipient_slot(&record.recipient) {
            Some(i) if slot_of(&self.slots, i).person != record.person => {
                Err(PeopleError::RecipientTaken {
                    recipient: record.recipient.clone(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Insert or replace a person. Identities named by this record move to
    /// it from whoever held them (the CRM merging or splitting people).
    pub fn upsert(&mut self, record: PersonRecord) -> Result<Upserted, PeopleError> {
        self.check(&record)?;
        let mut out = Upserted::default();
        // The last record naming an identity owns it: what moves here, in
        // the record's order, from whom (app keys per the table, the rest
        // per the index).
        let mut changes = IdentityChanges::default();
        for (n, identity) in record.identities.iter().enumerate() {
            if record.identities[..n].contains(identity) {
                continue;
            }
            if let Some(from) = self.person_of(identity) {
                if *from != record.person {
                    changes.moved.push(MovedIdentity {
                        identity: identity.clone(),
                        from: from.clone(),
                    });
                }
            }
        }
        let not_app = |i: &&Identity| !matches!(i, Identity::App { .. });
        let _ = self
            .index
            .apply(&record.person, record.identities.iter().filter(not_app));
        for loser in changes.people_losing() {
            if let Some(mut other) = self.get(loser) {
                if changes.strip_moved(&mut other) {
                    out.to_store.push(other);
                }
            }
        }
        // Rebuild this person's keys in the table from the record itself.
        self.table.remove_person(&record.person);
        for key in record.app_keys() {
            self.table.insert_key(record.person.clone(), *key);
        }
        for other in &out.to_store {
            self.table.remove_person(&other.person);
            for key in other.app_keys() {
                self.table.insert_key(other.person.clone(), *key);
            }
        }
        if let Some(previous) = self.entry(&record.person) {
            if previous.consent.opted_in_to_proximity() && !record.consent.opted_in_to_proximity() {
                out.withdrawn.push(record.person.clone());
            }
        }
        for other in out.to_store.clone() {
            self.put(other);
        }
        out.to_store.insert(0, record.clone());
        self.put(record);
        Ok(out)
    }

    /// Forget a person entirely. Returns their last record, if any.
    pub fn remove(&mut self, person: &PersonId) -> Option<PersonRecord> {
        let slot = self.person_slot(person)?;
        let entry = self.unindex(slot);
        self.free.push(slot);
        let record = entry.to_record();
        for s in entry.shared() {
            self.strings.release(s);
        }
        self.index.remove_person(person);
        self.table.remove_person(person);
        Some(record)
    }

    fn entry(&self, person: &PersonId) -> Option<&Entry> {
        self.person_slot(person).map(|i| slot_of(&self.slots, i))
    }

    fn person_slot(&self, person: &PersonId) -> Option<u32> {
        let slots = &self.slots;
        self.by_person
            .find(self.hasher.hash_one(person.as_str()), |&i| {
                slot_of(slots, i).person == *person
            })
            .copied()
    }

    fn recipient_slot(&self, recipient: &str) -> Option<u32> {
        let slots = &self.slots;
        self.by_recipient
            .find(self.hasher.hash_one(recipient), |&i| {
                &*slot_of(slots, i).recipient == recipient
            })
            .copied()
    }

    /// Takes a slot's entry out of both indexes and the slab (the caller
    /// frees or refills the slot).
    fn unindex(&mut self, slot: u32) -> Entry {
        let slots = &self.slots;
        let entry = slot_of(slots, slot);
        let hash = self.hasher.hash_one(entry.person.as_str());
        if let Ok(found) = self.by_person.find_entry(hash, |&i| i == slot) {
            found.remove();
        }
        let hash = self.hasher.hash_one(&*entry.recipient);
        if let Ok(found) = self.by_recipient.find_entry(hash, |&i| i == slot) {
            found.remove();
        }
        self.slots[slot as usize]
            .take()
            .expect("an indexed slot holds an entry")
    }

    /// Stores a record as its person's entry, replacing any previous one.
    fn put(&mut self, record: PersonRecord) {
        let (slot, previous) = match self.person_slot(&record.person) {
            Some(slot) => (slot, Some(self.unindex(slot))),
            None => match self.free.pop() {
                Some(slot) => (slot, None),
                None => {
                    self.slots.push(None);
                    ((self.slots.len() - 1) as u32, None)
                }
            },
        };
        let entry = Entry {
            person: record.person,
            recipient: record.recipient.into_boxed_str(),
            timezone: record.timezone.map(|tz| self.strings.intern(tz)),
            identities: record.identities.into_boxed_slice(),
            consent: record.consent,
            interests: self.strings.intern_all(record.interests),
            owns: self.strings.intern_all(record.owns),
            stamps: record.stamps,
        };
        // Released after the new entry took its copies: a string both hold
        // stays.
        let person_hash = self.hasher.hash_one(entry.person.as_str());
        let recipient_hash = self.hasher.hash_one(&*entry.recipient);
        self.slots[slot as usize] = Some(entry);
        if let Some(previous) = previous {
            for s in previous.shared() {
                self.strings.release(s);
            }
        }
        let slots = &self.slots;
        let hasher = &self.hasher;
        self.by_person.insert_unique(person_hash, slot, |&i| {
            hasher.hash_one(slot_of(slots, i).person.as_str())
        });
        self.by_recipient.insert_unique(recipient_hash, slot, |&i| {
            hasher.hash_one(&*slot_of(slots, i).recipient)
        });
    }
}

/// After a bulk load, hands the heap the load freed (the records it was
/// given, their spare capacity, rehashed tables) back to the kernel: glibc
/// keeps it otherwise, about 6 MB for 100,000 records (BENCHMARKS.md §2).
/// Not I/O; a no-op off glibc.
fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and has no preconditions; it
    // only returns free pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The entry in an indexed slot.
fn slot_of(slots: &[Option<Entry>], slot: u32) -> &Entry {
    slots[slot as usize]
        .as_ref()
        .expect("an indexed slot holds an entry")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::rotating_id;

    const KEY_A: &str = "75c734c6dd1a782de7a965da5eb93125";
    const KEY_B: &str = "00112233445566778899aabbccddeeff";

    fn record(person: &str, recipient: &str, keys: &[&str], proximity: bool) -> PersonRecord {
        let identities: Vec<String> = keys
            .iter()
            .map(|k| format!(r#"{{"kind": "app", "key": "{k}"}}"#))
            .collect();
        PersonRecord::from_json(&format!(
            r#"{{"person": "{person}", "recipient": "{recipient}", "identities": [{}], "consent": {{"proximity": {proximity}}}}}"#,
            identities.join(",")
        ))
        .unwrap()
    }

    fn key(hex_key: &str) -> [u8; 16] {
        hex::decode(hex_key).unwrap().try_into().unwrap()
    }

    #[test]
    fn a_key_moved_by_the_crm_resolves_to_its_new_person_and_the_old_record_is_rewritten() {
        let now_s = 2_642_976 * 600;
        let mut people = People::load([record("p-1", "r-1", &[KEY_A, KEY_B], true)], now_s);
        let id_b = rotating_id(&key(KEY_B), 2_642_976);
        assert_eq!(people.resolve(&id_b).map(|p| p.as_str()), Some("p-1"));
        let out = people.upsert(record("p-2", "r-2", &[KEY_B], true)).unwrap();
        assert_eq!(out.to_store.len(), 2, "p-2 and the p-1 that lost a key");
        assert_eq!(out.to_store[1].app_keys().count(), 1);
        assert_eq!(people.resolve(&id_b).map(|p| p.as_str()), Some("p-2"));
        assert_eq!(
            people
                .resolve(&rotating_id(&key(KEY_A), 2_642_976))
                .map(|p| p.as_str()),
            Some("p-1")
        );
    }

    #[test]
    fn withdrawing_proximity_is_reported_and_recipients_are_exclusive() {
        let mut people = People::load([record("p-1", "r-1", &[KEY_A], true)], 0);
        let out = people
            .upsert(record("p-1", "r-1", &[KEY_A], false))
            .unwrap();
        assert_eq!(out.withdrawn, vec![PersonId::from("p-1")]);
        assert_eq!(
            people.upsert(record("p-9", "r-1", &[], true)),
            Err(PeopleError::RecipientTaken {
                recipient: "r-1".into()
            })
        );
        assert!(
            people.get(&PersonId::from("p-9")).is_none(),
            "a refused upsert changes nothing"
        );
        people.remove(&PersonId::from("p-1"));
        assert!(people.by_recipient("r-1").is_none());
        assert!(people.resolve(&rotating_id(&key(KEY_A), 0)).is_none());
    }

    #[test]
    fn records_come_back_as_stored_and_forgetting_leaves_no_string_behind() {
        let mut full = PersonRecord::from_json(
            r#"{"person": "p-1", "recipient": "r-1", "timezone": "Europe/Lisbon",
                "identities": [{"kind": "email", "value": "ana@example.com"},
                               {"kind": "app", "key": "75c734c6dd1a782de7a965da5eb93125"},
                               {"kind": "card", "value": "c-77"}],
                "consent": {"proximity": true, "offers": true},
                "interests": ["laptops", "only-ana"], "owns": ["phone:pixel-8"]}"#,
        )
        .unwrap();
        let mut people = People::load([full.clone(), record("p-2", "r-2", &[KEY_B], true)], 0);
        assert_eq!(people.get(&full.person), Some(full.clone()));
        assert_eq!(people.by_recipient("r-1"), Some(full.clone()));
        assert_eq!(people.consent(&full.person), Some(full.consent));
        for identity in &full.identities {
            assert_eq!(people.person_of(identity), Some(&full.person));
        }
        // p-2 shares an interest with p-1; replacing p-2 keeps p-1's copy.
        let mut p2 = record("p-2", "r-2b", &[KEY_B], true);
        p2.interests = vec!["laptops".into()];
        people.upsert(p2.clone()).unwrap();
        assert!(people.by_recipient("r-2").is_none());
        assert_eq!(people.by_recipient("r-2b"), Some(p2.clone()));
        full.timezone = Some("Europe/Paris".into());
        people.upsert(full.clone()).unwrap();
        assert_eq!(people.get(&full.person), Some(full.clone()));
        assert!(!people.strings.0.contains("Europe/Lisbon"));
        assert_eq!(people.remove(&full.person), Some(full.clone()));
        for identity in &full.identities {
            assert_eq!(people.person_of(identity), None);
        }
        let mut left: Vec<&str> = people.strings.0.iter().map(|s| &**s).collect();
        left.sort_unstable();
        assert_eq!(left, ["laptops"], "only what p-2 still holds");
        assert!(people.get(&full.person).is_none() && people.by_recipient("r-1").is_none());
        assert_eq!(people.len(), 1);
        // The freed slot is reused.
        people.upsert(full.clone()).unwrap();
        assert_eq!(people.slots.len(), 2);
        assert_eq!(people.get(&full.person), Some(full));
        assert_eq!(people.get(&p2.person), Some(p2));
    }

    #[test]
    fn an_email_moved_by_the_crm_is_stripped_from_its_old_owner_in_record_order() {
        let email = Identity::Email {
            value: "ana@example.com".into(),
        };
        let mut p1 = record("p-1", "r-1", &[KEY_A], true);
        p1.identities.push(email.clone());
        let p3 = record("p-3", "r-3", &[KEY_B], true);
        let mut people = People::load([p1, p3], 0);
        let mut p2 = record("p-2", "r-2", &[KEY_B], true);
        p2.identities.insert(0, email.clone());
        let out = people.upsert(p2.clone()).unwrap();
        let written: Vec<&str> = out.to_store.iter().map(|r| r.person.as_str()).collect();
        assert_eq!(written, ["p-2", "p-1", "p-3"]);
        assert_eq!(people.person_of(&email).map(PersonId::as_str), Some("p-2"));
        assert_eq!(
            people.get(&PersonId::from("p-1")).unwrap().identities,
            vec![Identity::App { key: key(KEY_A) }]
        );
        assert!(
            people
                .get(&PersonId::from("p-3"))
                .unwrap()
                .identities
                .is_empty()
        );
        assert_eq!(people.get(&p2.person), Some(p2));
    }

    mod model {
        //! `People` against a naive model: a map of whole records where the
        //! last record naming an identity takes it from whoever held it.
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        fn universe() -> Vec<Identity> {
            let mut all: Vec<Identity> =
                (1..=3u8).map(|k| Identity::App { key: [k; 16] }).collect();
            all.extend((0..2).map(|i| Identity::Email {
                value: format!("e{i}@example.com"),
            }));
            all.push(Identity::Card {
                value: "card-0".into(),
            });
            all
        }

        const WORDS: [&str; 3] = ["laptops", "phones", "tv"];

        #[derive(Clone, Debug)]
        enum Op {
            Upsert {
                person: u8,
                recipient: u8,
                identities: Vec<usize>,
                proximity: bool,
                timezone: bool,
                interests: Vec<usize>,
                owns: Vec<usize>,
            },
            Remove(u8),
        }

        fn op() -> impl Strategy<Value = Op> {
            let words = || prop::collection::vec(0..WORDS.len(), 0..3);
            prop_oneof![
                4 => (0..4u8, 0..3u8, prop::collection::vec(0..6usize, 0..4), any::<bool>(), any::<bool>(), words(), words())
                    .prop_map(|(person, recipient, identities, proximity, timezone, interests, owns)| Op::Upsert {
                        person, recipient, identities, proximity, timezone, interests, owns,
                    }),
                1 => (0..4u8).prop_map(Op::Remove),
            ]
        }

        fn person(p: u8) -> PersonId {
            PersonId::from(format!("p-{p}").as_str())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]
            #[test]
            fn agrees_with_whole_records(ops in prop::collection::vec(op(), 1..30)) {
                let u = universe();
                let now_s = 2_642_976 * 600;
                let mut people = People::load([], now_s);
                let mut model: BTreeMap<u8, PersonRecord> = BTreeMap::new();
                for op in ops {
                    match op {
                        Op::Upsert { person: p, recipient, identities, proximity, timezone, interests, owns } => {
                            let record = PersonRecord {
                                person: person(p),
                                recipient: format!("r-{recipient}"),
                                timezone: timezone.then(|| "Europe/Lisbon".to_string()),
                                identities: identities.iter().map(|&i| u[i].clone()).collect(),
                                consent: Consent { proximity, ..Consent::default() },
                                interests: interests.iter().map(|&i| WORDS[i].to_string()).collect(),
                                owns: owns.iter().map(|&i| WORDS[i].to_string()).collect(),
                                stamps: Default::default(),
                            };
                            let taken = model.iter().any(|(q, r)| *q != p && r.recipient == record.recipient);
                            let got = people.upsert(record.clone());
                            if taken {
                                prop_assert_eq!(got, Err(PeopleError::RecipientTaken { recipient: record.recipient.clone() }));
                                continue;
                            }
                            let mut losers: Vec<u8> = Vec::new();
                            for identity in &record.identities {
                                if let Some((q, _)) = model.iter().find(|(q, r)| **q != p && r.identities.contains(identity)) {
                                    if !losers.contains(q) {
                                        losers.push(*q);
                                    }
                                }
                            }
                            let mut to_store = vec![record.clone()];
                            for q in losers {
                                let other = model.get_mut(&q).unwrap();
                                other.identities.retain(|i| !record.identities.contains(i));
                                to_store.push(other.clone());
                            }
                            let withdrawn = match model.get(&p) {
                                Some(previous) if previous.consent.proximity && !proximity => vec![person(p)],
                                _ => vec![],
                            };
                            model.insert(p, record);
                            prop_assert_eq!(got, Ok(Upserted { to_store, withdrawn }));
                        }
                        Op::Remove(p) => {
                            prop_assert_eq!(people.remove(&person(p)), model.remove(&p));
                        }
                    }
                    prop_assert_eq!(people.len(), model.len());
                    for p in 0..4u8 {
                        prop_assert_eq!(people.get(&person(p)), model.get(&p).cloned());
                        prop_assert_eq!(people.consent(&person(p)), model.get(&p).map(|r| r.consent));
                    }
                    for r in 0..3 {
                        let recipient = format!("r-{r}");
                        let expected = model.values().find(|m| m.recipient == recipient).cloned();
                        prop_assert_eq!(people.by_recipient(&recipient), expected);
                    }
                    for identity in &u {
                        let owner = model.values().find(|m| m.identities.contains(identity)).map(|m| m.person.clone());
                        prop_assert_eq!(people.person_of(identity), owner.as_ref());
                        if let Identity::App { key } = identity {
                            let id = rotating_id(key, (now_s / 600) as u32);
                            prop_assert_eq!(people.resolve(&id), owner.as_ref());
                        }
                    }
                    // Erasure: the interner holds exactly the strings someone holds.
                    let mut held: Vec<&str> = model
                        .values()
                        .flat_map(|m| m.interests.iter().chain(&m.owns).chain(&m.timezone))
                        .map(String::as_str)
                        .collect();
                    held.sort_unstable();
                    held.dedup();
                    let mut interned: Vec<&str> = people.strings.0.iter().map(|s| &**s).collect();
                    interned.sort_unstable();
                    prop_assert_eq!(interned, held);
                }
            }
        }
    }
}
