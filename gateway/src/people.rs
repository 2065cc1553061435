//! Who the gateway knows, in memory: only what the hot path needs. Pure
//! apart from reading whole records through [`Records`]: every change
//! returns what has to be persisted, and the caller writes it before it
//! acknowledges anything.
//!
//! Hot and cold (BENCHMARKS.md §2a). A sighting needs the person behind a
//! rotating identifier and their consent, nothing else; everything else in
//! a person's record (recipient, identities, interests, owned products,
//! time zone, stamps) is read from the store when a decision, a check-in,
//! a purchase or a CRM change needs it. Per person memory holds one slot
//! (the id, the consent bits and a fingerprint of the recipient: 32 bytes),
//! their app keys in the rotating-ID table (owned by the slot's number), and
//! one fingerprint per e-mail or card. A fingerprint is a keyed hash (64
//! bits for recipients, 32 for e-mails and cards): a match is confirmed
//! against the stored record before it is believed, so that two values
//! sharing a fingerprint cannot be confused (it only costs a read).

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use hashbrown::HashTable;

use crate::identity::{
    Consent, Identity, IdentityChanges, MovedIdentity, PersonId, PersonRecord, RotatingIdTable,
};

/// Where whole person records are read: the store in the daemon, a map in
/// tests and benches.
pub trait Records: Send + Sync {
    fn record(&self, person: &PersonId) -> Result<Option<PersonRecord>, RecordsError>;
}

/// A record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("person records: {0}")]
pub struct RecordsError(pub String);

/// Records held in memory, for tests and benches: the caller writes what
/// [`People`] returns into it, as the daemon writes the store.
#[derive(Default)]
pub struct MemoryRecords(std::sync::Mutex<std::collections::HashMap<PersonId, PersonRecord>>);

impl MemoryRecords {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&self, record: PersonRecord) {
        self.map().insert(record.person.clone(), record);
    }

    pub fn remove(&self, person: &PersonId) {
        self.map().remove(person);
    }

    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<PersonId, PersonRecord>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Records for MemoryRecords {
    fn record(&self, person: &PersonId) -> Result<Option<PersonRecord>, RecordsError> {
        Ok(self.map().get(person).cloned())
    }
}

/// One person as kept in memory.
struct Hot {
    person: PersonId,
    /// Fingerprint of the recipient.
    recipient: u64,
    consent: Consent,
}

/// An e-mail or card: 32 bits of its fingerprint and its person's slot, 8
/// bytes. 32 bits are enough: a match is confirmed against the stored
/// record, so that values sharing them only cost a read, and at a million
/// e-mails a lookup meets another's 32 bits about once in 4,000.
#[derive(Clone, Copy)]
struct Named {
    fingerprint: u32,
    slot: u32,
}

impl Named {
    fn hash(&self) -> u64 {
        named_hash(self.fingerprint)
    }
}

/// The hash `named` files a fingerprint under: its 32 bits spread over 64
/// (hashbrown takes the bucket from the low bits and a tag from the top
/// seven).
fn named_hash(fingerprint: u32) -> u64 {
    u64::from(fingerprint).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

pub struct People {
    /// `None` for a free slot (listed in `free`).
    slots: Vec<Option<Hot>>,
    free: Vec<u32>,
    /// Slots by their person id.
    by_person: HashTable<u32>,
    /// Slots by their recipient's fingerprint.
    by_recipient: HashTable<u32>,
    /// E-mails and cards by fingerprint; app keys are in `table`.
    named: HashTable<Named>,
    hasher: RandomState,
    /// Keyed: fingerprints are also the tables' hashes.
    fingerprints: RandomState,
    /// App keys, owned by slot numbers.
    table: RotatingIdTable,
    records: Arc<dyn Records>,
    /// Heap of the person ids held in `slots` (kept as they change, so
    /// that [`People::heap_bytes`] costs nothing at a million people).
    id_bytes: usize,
}

/// What one call of [`People::roll_toward`] did, for whoever paces and
/// times the roll (the pipeline, `daemon/roll.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollProgress {
    /// A roll by one interval began (one still under way was finished
    /// first; a larger jump is done at once and is not a roll).
    pub began: bool,
    /// A step of a roll by one interval ran.
    pub stepped: bool,
    /// The table is centred on the interval asked for.
    pub centred: bool,
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
    #[error(transparent)]
    Records(#[from] RecordsError),
}

/// The heap `People` holds, by part, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeopleBytes {
    /// Slots, person ids, the person, recipient and e-mail/card indexes.
    pub people: usize,
    /// The rotating-ID table.
    pub rotating_ids: usize,
}

impl People {
    pub fn new(records: Arc<dyn Records>) -> Self {
        People {
            slots: Vec::new(),
            free: Vec::new(),
            by_person: HashTable::new(),
            by_recipient: HashTable::new(),
            named: HashTable::new(),
            hasher: RandomState::new(),
            fingerprints: RandomState::new(),
            table: RotatingIdTable::new(),
            records,
            id_bytes: 0,
        }
    }

    /// Index stored records (no checks: they were validated when stored),
    /// one at a time: the records themselves are not kept. `expected` is
    /// how many there are, about (room is made for them up front: growing
    /// the tables on the way would hold the old and the new at once).
    pub fn load<E>(
        stored: impl IntoIterator<Item = Result<PersonRecord, E>>,
        expected: usize,
        records: Arc<dyn Records>,
        now_s: i64,
    ) -> Result<Self, E> {
        let stored = stored.into_iter();
        let mut people = People::new(records);
        people.reserve(stored.size_hint().0.max(expected));
        for record in stored {
            people.index(&record?);
        }
        people.table.roll_to(now_s);
        // The records it was given, their spare capacity, rehashed tables.
        crate::heap::release_freed_heap();
        Ok(people)
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
            .reserve(n, |&i| slot_of(slots, i).recipient);
        self.table.reserve(n);
    }

    /// The person's record, read from the store.
    pub fn get(&self, person: &PersonId) -> Result<Option<PersonRecord>, RecordsError> {
        if self.person_slot(person).is_none() {
            return Ok(None);
        }
        self.records.record(person)
    }

    /// The person's consent, from memory (the hot path).
    pub fn consent(&self, person: &PersonId) -> Option<Consent> {
        self.person_slot(person)
            .map(|i| slot_of(&self.slots, i).consent)
    }

    /// Whether the person is known.
    pub fn contains(&self, person: &PersonId) -> bool {
        self.person_slot(person).is_some()
    }

    /// The record of the person a recipient belongs to.
    pub fn by_recipient(&self, recipient: &str) -> Result<Option<PersonRecord>, RecordsError> {
        let fingerprint = self.fingerprints.hash_one(recipient);
        let slots = &self.slots;
        self.find_record(
            &self.by_recipient,
            fingerprint,
            |&i| (slot_of(slots, i).recipient == fingerprint).then_some(i),
            |record| (record.recipient == recipient).then_some(record),
        )
    }

    /// The person an identity (app key, e-mail, card) belongs to.
    pub fn person_of(&self, identity: &Identity) -> Result<Option<PersonId>, RecordsError> {
        if let Identity::App { key } = identity {
            return Ok(self
                .table
                .owner_of_key(key)
                .map(|slot| slot_of(&self.slots, slot).person.clone()));
        }
        let fingerprint = self.named_fingerprint(identity);
        self.find_record(
            &self.named,
            named_hash(fingerprint),
            |named| (named.fingerprint == fingerprint).then_some(named.slot),
            |record| {
                record
                    .identities
                    .contains(identity)
                    .then_some(record.person)
            },
        )
    }

    /// Look `hash` up in `table`: `slot` gives the slot of an entry whose
    /// fingerprint is the one sought (`None`: another's, sharing the
    /// bucket), and
    /// the stored record of that slot's person is checked with `pick` (a
    /// fingerprint may collide); the first it takes is the answer. A read
    /// error ends the search and is returned.
    fn find_record<T, R>(
        &self,
        table: &HashTable<T>,
        hash: u64,
        slot: impl Fn(&T) -> Option<u32>,
        pick: impl Fn(PersonRecord) -> Option<R>,
    ) -> Result<Option<R>, RecordsError> {
        let mut failed = None;
        let mut found = None;
        let _ = table.find(hash, |entry| {
            let Some(i) = slot(entry) else {
                return false;
            };
            if failed.is_some() {
                return false;
            }
            match self.records.record(&slot_of(&self.slots, i).person) {
                Ok(Some(record)) => match pick(record) {
                    Some(hit) => {
                        found = Some(hit);
                        true
                    }
                    None => false,
                },
                Ok(None) => false,
                Err(e) => {
                    failed = Some(e);
                    true
                }
            }
        });
        match failed {
            Some(e) => Err(e),
            None => Ok(found),
        }
    }

    pub fn resolve(&self, rotating_id: &[u8; 16]) -> Option<&PersonId> {
        let slot = self.table.lookup(rotating_id)?;
        Some(&slot_of(&self.slots, slot).person)
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

    /// Centres the rotating-ID table on `now_s`'s interval at once.
    pub fn roll_to(&mut self, now_s: i64) {
        self.table.roll_to(now_s);
    }

    /// Moves the rotating-ID table towards `now_s`'s interval by at most
    /// `max_keys` keys (a roll by one interval; larger jumps are done at
    /// once): the pipeline's way, so that no sighting waits for a whole
    /// roll. Both windows of a roll under way hold the current interval,
    /// so nothing goes unrecognised while it lasts. The caller paces the
    /// steps (`daemon/roll.rs`): a step on every sighting saturated the
    /// pipeline at a million keys (BENCHMARKS.md, "Decisions across a
    /// roll").
    pub fn roll_toward(&mut self, now_s: i64, max_keys: usize) -> RollProgress {
        let began = self.table.start_roll(now_s) && self.table.rolling();
        let stepped = self.table.rolling();
        let centred = self.table.roll_some(max_keys);
        RollProgress {
            began,
            stepped,
            centred,
        }
    }

    /// Whether a roll by one interval is under way (more steps to come).
    pub fn rolling(&self) -> bool {
        self.table.rolling()
    }

    pub fn len(&self) -> usize {
        self.by_person.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_person.is_empty()
    }

    /// The heap held, from capacities (hash tables counted as one control
    /// byte plus one entry per bucket; person ids at their length plus the
    /// reference counts). A lower bound: the allocator's rounding is not
    /// counted.
    pub fn heap_bytes(&self) -> PeopleBytes {
        let buckets = |capacity: usize| (capacity * 8 / 7).next_power_of_two();
        let table = |t: &HashTable<u32>| buckets(t.capacity()) * (1 + size_of::<u32>());
        let ids = self.id_bytes;
        PeopleBytes {
            people: self.slots.capacity() * size_of::<Option<Hot>>()
                + self.free.capacity() * size_of::<u32>()
                + table(&self.by_person)
                + table(&self.by_recipient)
                + buckets(self.named.capacity()) * (1 + size_of::<Named>())
                + ids,
            rotating_ids: self.table.heap_bytes(),
        }
    }

    /// Check an upsert without applying it.
    pub fn check(&self, record: &PersonRecord) -> Result<(), PeopleError> {
        match self.by_recipient(&record.recipient)? {
            Some(owner) if owner.person != record.person => Err(PeopleError::RecipientTaken {
                recipient: record.recipient.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Insert or replace a person. Identities named by this record move to
    /// it from whoever held them (the CRM merging or splitting people).
    pub fn upsert(&mut self, record: PersonRecord) -> Result<Upserted, PeopleError> {
        self.check(&record)?;
        let previous = self.get(&record.person)?;
        let mut out = Upserted::default();
        // The last record naming an identity owns it: what moves here, in
        // the record's order, from whom.
        let mut changes = IdentityChanges::default();
        for (n, identity) in record.identities.iter().enumerate() {
            if record.identities[..n].contains(identity) {
                continue;
            }
            if let Some(from) = self.person_of(identity)? {
                if from != record.person {
                    changes.moved.push(MovedIdentity {
                        identity: identity.clone(),
                        from,
                    });
                }
            }
        }
        for loser in changes.people_losing() {
            if let Some(mut other) = self.get(loser)? {
                if changes.strip_moved(&mut other) {
                    out.to_store.push(other);
                }
            }
        }
        // Everything read: from here on nothing fails.
        if let Some(previous) = &previous {
            if previous.consent.opted_in_to_proximity() && !record.consent.opted_in_to_proximity() {
                out.withdrawn.push(record.person.clone());
            }
            self.unindex(previous);
        }
        for other in &out.to_store {
            if let Some(slot) = self.person_slot(&other.person) {
                for moved in changes.moved.iter().filter(|m| m.from == other.person) {
                    self.unname(&moved.identity, slot);
                }
            }
            if let Some(slot) = self.person_slot(&other.person) {
                self.table.remove_owner(slot);
                for key in other.app_keys() {
                    self.table.insert_key(slot, *key);
                }
            }
        }
        self.index(&record);
        out.to_store.insert(0, record);
        Ok(out)
    }

    /// Forget a person entirely (their record may already be gone from the
    /// store). Returns whether they were known.
    pub fn remove(&mut self, person: &PersonId) -> bool {
        let Some(slot) = self.person_slot(person) else {
            return false;
        };
        let hot = slot_of(&self.slots, slot);
        let hash = self.hasher.hash_one(person.as_str());
        let recipient = hot.recipient;
        if let Ok(found) = self.by_person.find_entry(hash, |&i| i == slot) {
            found.remove();
        }
        if let Ok(found) = self.by_recipient.find_entry(recipient, |&i| i == slot) {
            found.remove();
        }
        // Their e-mails and cards are not known without the record: a
        // sweep, for a rare event.
        self.named.retain(|n| n.slot != slot);
        self.id_bytes -= person.heap_bytes();
        self.table.remove_owner(slot);
        self.slots[slot as usize] = None;
        self.free.push(slot);
        true
    }

    fn person_slot(&self, person: &PersonId) -> Option<u32> {
        let slots = &self.slots;
        self.by_person
            .find(self.hasher.hash_one(person.as_str()), |&i| {
                slot_of(slots, i).person == *person
            })
            .copied()
    }

    /// Takes a person's e-mails and cards (as `record`, their stored
    /// record, names them) out of the index; [`Self::index`] refiles the
    /// rest.
    fn unindex(&mut self, record: &PersonRecord) {
        let Some(slot) = self.person_slot(&record.person) else {
            return;
        };
        for identity in &record.identities {
            if !matches!(identity, Identity::App { .. }) {
                self.unname(identity, slot);
            }
        }
    }

    /// Takes one e-mail or card of the person in `slot` out of the index.
    fn unname(&mut self, identity: &Identity, slot: u32) {
        let fingerprint = self.named_fingerprint(identity);
        if let Ok(found) = self.named.find_entry(named_hash(fingerprint), |n| {
            n.fingerprint == fingerprint && n.slot == slot
        }) {
            found.remove();
        }
    }

    /// Files a record under its person, recipient, e-mails, cards and app
    /// keys, replacing the person's recipient and keys; their previous
    /// e-mails and cards must be gone ([`Self::unindex`]).
    fn index(&mut self, record: &PersonRecord) {
        let recipient = self.fingerprints.hash_one(record.recipient.as_str());
        let slot = match self.person_slot(&record.person) {
            Some(slot) => {
                let old = slot_of(&self.slots, slot).recipient;
                if let Ok(found) = self.by_recipient.find_entry(old, |&i| i == slot) {
                    found.remove();
                }
                self.table.remove_owner(slot);
                let hot = self.slots[slot as usize]
                    .as_mut()
                    .expect("an indexed slot holds a person");
                hot.recipient = recipient;
                hot.consent = record.consent;
                slot
            }
            None => {
                self.id_bytes += record.person.heap_bytes();
                let hot = Hot {
                    person: record.person.clone(),
                    recipient,
                    consent: record.consent,
                };
                let slot = match self.free.pop() {
                    Some(slot) => {
                        self.slots[slot as usize] = Some(hot);
                        slot
                    }
                    None => {
                        self.slots.push(Some(hot));
                        (self.slots.len() - 1) as u32
                    }
                };
                let (slots, hasher) = (&self.slots, &self.hasher);
                self.by_person
                    .insert_unique(hasher.hash_one(record.person.as_str()), slot, |&i| {
                        hasher.hash_one(slot_of(slots, i).person.as_str())
                    });
                slot
            }
        };
        let slots = &self.slots;
        self.by_recipient
            .insert_unique(recipient, slot, |&i| slot_of(slots, i).recipient);
        for (n, identity) in record.identities.iter().enumerate() {
            if matches!(identity, Identity::App { .. }) || record.identities[..n].contains(identity)
            {
                continue;
            }
            let fingerprint = self.named_fingerprint(identity);
            self.named.insert_unique(
                named_hash(fingerprint),
                Named { fingerprint, slot },
                Named::hash,
            );
        }
        for key in record.app_keys() {
            self.table.insert_key(slot, *key);
        }
    }

    /// An e-mail's or card's fingerprint: the top 32 bits of its keyed hash.
    fn named_fingerprint(&self, identity: &Identity) -> u32 {
        (self.fingerprints.hash_one(identity) >> 32) as u32
    }
}

/// The person in an indexed slot.
fn slot_of(slots: &[Option<Hot>], slot: u32) -> &Hot {
    slots[slot as usize]
        .as_ref()
        .expect("an indexed slot holds a person")
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

    /// `People` over records in memory, written as the daemon writes the
    /// store: what an upsert returns, then the change in memory.
    struct Rig {
        people: People,
        records: Arc<MemoryRecords>,
    }

    impl std::ops::Deref for Rig {
        type Target = People;
        fn deref(&self) -> &People {
            &self.people
        }
    }

    impl Rig {
        fn load(stored: impl IntoIterator<Item = PersonRecord>, now_s: i64) -> Rig {
            let records = Arc::new(MemoryRecords::new());
            let stored: Vec<PersonRecord> = stored.into_iter().collect();
            for record in &stored {
                records.put(record.clone());
            }
            let people = People::load(
                stored.into_iter().map(Ok::<_, RecordsError>),
                0,
                records.clone(),
                now_s,
            )
            .unwrap();
            Rig { people, records }
        }

        fn upsert(&mut self, record: PersonRecord) -> Result<Upserted, PeopleError> {
            let out = self.people.upsert(record)?;
            for record in &out.to_store {
                self.records.put(record.clone());
            }
            Ok(out)
        }

        /// Erasure as the daemon does it: the store first.
        fn remove(&mut self, person: &PersonId) -> Option<PersonRecord> {
            let record = self.records.record(person).unwrap();
            self.records.remove(person);
            assert_eq!(self.people.remove(person), record.is_some());
            record
        }

        fn get(&self, person: &PersonId) -> Option<PersonRecord> {
            self.people.get(person).unwrap()
        }

        fn by_recipient(&self, recipient: &str) -> Option<PersonRecord> {
            self.people.by_recipient(recipient).unwrap()
        }

        fn person_of(&self, identity: &Identity) -> Option<PersonId> {
            self.people.person_of(identity).unwrap()
        }
    }

    fn key(hex_key: &str) -> [u8; 16] {
        hex::decode(hex_key).unwrap().try_into().unwrap()
    }

    #[test]
    fn a_roll_by_one_interval_goes_in_steps_and_says_how_far_it_is() {
        let interval = 2_642_976;
        let mut people = Rig::load(
            [
                record("p-1", "r-1", &[KEY_A], true),
                record("p-2", "r-2", &[KEY_B], true),
            ],
            i64::from(interval) * 600,
        );
        let progress = |began, stepped, centred| RollProgress {
            began,
            stepped,
            centred,
        };
        let next = i64::from(interval + 1) * 600;
        let ahead = rotating_id(&key(KEY_A), interval + 2);
        assert!(people.resolve(&ahead).is_none());
        // Two keys, one a step.
        assert_eq!(
            people.people.roll_toward(next, 1),
            progress(true, true, false)
        );
        assert_eq!(
            people.people.roll_toward(next, 1),
            progress(false, true, true)
        );
        assert_eq!(people.resolve(&ahead).map(|p| p.as_str()), Some("p-1"));
        // Centred: nothing to do.
        assert_eq!(
            people.people.roll_toward(next, 1),
            progress(false, false, true)
        );
        // A jump of two intervals is done at once.
        let later = i64::from(interval + 3) * 600;
        assert_eq!(
            people.people.roll_toward(later, 1),
            progress(false, false, true)
        );
        assert_eq!(
            people
                .resolve(&rotating_id(&key(KEY_B), interval + 4))
                .map(|p| p.as_str()),
            Some("p-2")
        );
    }

    #[test]
    fn a_key_moved_by_the_crm_resolves_to_its_new_person_and_the_old_record_is_rewritten() {
        let now_s = 2_642_976 * 600;
        let mut people = Rig::load([record("p-1", "r-1", &[KEY_A, KEY_B], true)], now_s);
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
        let mut people = Rig::load([record("p-1", "r-1", &[KEY_A], true)], 0);
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
    fn records_come_back_as_stored_and_forgetting_leaves_nothing_indexed() {
        let mut full = PersonRecord::from_json(
            r#"{"person": "p-1", "recipient": "r-1", "timezone": "Europe/Lisbon",
                "identities": [{"kind": "email", "value": "ana@example.com"},
                               {"kind": "app", "key": "75c734c6dd1a782de7a965da5eb93125"},
                               {"kind": "card", "value": "c-77"}],
                "consent": {"proximity": true, "offers": true},
                "interests": ["laptops", "only-ana"], "owns": ["phone:pixel-8"]}"#,
        )
        .unwrap();
        let mut people = Rig::load([full.clone(), record("p-2", "r-2", &[KEY_B], true)], 0);
        assert_eq!(people.get(&full.person), Some(full.clone()));
        assert_eq!(people.by_recipient("r-1"), Some(full.clone()));
        assert_eq!(people.consent(&full.person), Some(full.consent));
        for identity in &full.identities {
            assert_eq!(people.person_of(identity), Some(full.person.clone()));
        }
        // p-2 shares an interest with p-1; replacing p-2 keeps p-1's.
        let mut p2 = record("p-2", "r-2b", &[KEY_B], true);
        p2.interests = vec!["laptops".into()];
        people.upsert(p2.clone()).unwrap();
        assert!(people.by_recipient("r-2").is_none());
        assert_eq!(people.by_recipient("r-2b"), Some(p2.clone()));
        full.timezone = Some("Europe/Paris".into());
        people.upsert(full.clone()).unwrap();
        assert_eq!(people.get(&full.person), Some(full.clone()));
        assert_eq!(people.remove(&full.person), Some(full.clone()));
        for identity in &full.identities {
            assert_eq!(people.person_of(identity), None);
        }
        assert_eq!(people.named.len(), 0, "no e-mail or card of p-1 is left");
        assert_eq!(people.by_recipient.len(), 1, "only p-2's recipient is left");
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
        let mut people = Rig::load([p1, p3], 0);
        let mut p2 = record("p-2", "r-2", &[KEY_B], true);
        p2.identities.insert(0, email.clone());
        let out = people.upsert(p2.clone()).unwrap();
        let written: Vec<&str> = out.to_store.iter().map(|r| r.person.as_str()).collect();
        assert_eq!(written, ["p-2", "p-1", "p-3"]);
        assert_eq!(
            people.person_of(&email).as_ref().map(PersonId::as_str),
            Some("p-2")
        );
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
                let mut people = Rig::load([], now_s);
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
                        prop_assert_eq!(people.person_of(identity), owner.clone());
                        if let Identity::App { key } = identity {
                            let id = rotating_id(key, (now_s / 600) as u32);
                            prop_assert_eq!(people.resolve(&id), owner.as_ref());
                        }
                    }
                    // Erasure and moves leave nothing behind in memory: one
                    // recipient per person, one entry per e-mail or card held.
                    let named = u
                        .iter()
                        .filter(|i| !matches!(i, Identity::App { .. }))
                        .filter(|i| model.values().any(|m| m.identities.contains(i)))
                        .count();
                    prop_assert_eq!(people.named.len(), named);
                    prop_assert_eq!(people.by_recipient.len(), model.len());
                }
            }
        }
    }
}
