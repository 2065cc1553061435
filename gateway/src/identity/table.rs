//! The rotating-identifier table: for every enrolled app key, the identifiers
//! of the previous, current and next interval, so that resolving an advert is
//! one hash probe. Rolled forward when the interval changes.
//!
//! Built for a million enrolled keys on one core:
//!
//! - Per key the table keeps the 16-byte RPIK, not the expanded AES key
//!   schedule: the `aes` crate's runtime-dispatched cipher is about 700 bytes
//!   (it holds room for the software fallback), which would be 700 MB for a
//!   million keys, while expanding an AES-128 key with AES-NI costs tens of
//!   nanoseconds per roll.
//! - Rolling by one interval is incremental: per key, one identifier leaves
//!   the map and one enters; the rest stay. Larger jumps (a clock step, a
//!   restart) remove and add only the intervals that differ, and rebuild when
//!   none are shared.
//! - Identifiers map to a `u32` key slot, not to a cloned [`PersonId`]: moving
//!   a key to another person changes one slot and none of its identifiers.
//! - Identifiers are hashed by taking their first 8 bytes (`IdHasher`, private).

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};

use aes::Aes128Enc;
use aes::cipher::KeyInit;
use hashbrown::HashTable;

use super::person::PersonId;
use super::rotating::{interval_of, rpi_with, rpik};

/// Interval offsets kept in the table: clocks on phones and the gateway
/// disagree by a little, and an advert may straddle a rotation.
const WINDOW: [i64; 3] = [-1, 0, 1];

/// End of a list of key slots.
const NONE: u32 = u32::MAX;

/// A rotating identifier as a map key. It hashes as its first 8 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Rpi([u8; 16]);

impl Rpi {
    fn hash_u64(&self) -> u64 {
        let [a, b, c, d, e, f, g, h, ..] = self.0;
        u64::from_le_bytes([a, b, c, d, e, f, g, h])
    }
}

impl Hash for Rpi {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash_u64());
    }
}

/// The hasher for [`Rpi`]: the identity function on the 8 bytes it is given.
///
/// Safe here, and only here, because of what the map holds and who chooses it.
/// Every stored identifier is AES-128 output under a secret per-person key, so
/// its bytes are uniformly distributed and no one outside the back office can
/// predict them: the buckets fill as evenly as under any keyed hash. An
/// attacker does choose the identifiers we *look up* (any phone can advertise
/// any 16 bytes), but a lookup never inserts, so chosen ids cannot build
/// collision chains; at worst one lookup walks one probe sequence of a table
/// whose layout the attacker cannot see. (The key-by-key map, whose keys come
/// from enrollment and may be sequential in tests, keeps SipHash.)
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    /// Not used by [`Rpi`]; a plain FNV-1a fold so the hasher stays correct if
    /// something else is ever hashed with it.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type IdMap = HashMap<Rpi, u32, BuildHasherDefault<IdHasher>>;

struct KeySlot {
    key: [u8; 16],
    rpik: [u8; 16],
    /// `None` for a free slot.
    person: Option<PersonId>,
    /// Next key slot of the same person, or next free slot.
    next: u32,
}

impl KeySlot {
    fn cipher(&self) -> Aes128Enc {
        Aes128Enc::new(&self.rpik.into())
    }
}

pub struct RotatingIdTable {
    slots: Vec<KeySlot>,
    /// Head of the free-slot list.
    free: u32,
    /// Slots by their key (a table of slot numbers hashing the slot's own
    /// key: each key is held once, in its slot).
    by_key: HashTable<u32>,
    /// Head of each person's list of key slots (linked through `next`), by
    /// the head slot's person.
    people: HashTable<u32>,
    /// Keyed SipHash for `by_key` and `people`: keys come from enrollment and
    /// may be sequential in tests.
    hasher: RandomState,
    /// Interval the table is centred on; `None` before the first roll.
    centre: Option<u32>,
    by_id: IdMap,
}

/// Not derived: an empty free list is `NONE`, not slot 0.
impl Default for RotatingIdTable {
    fn default() -> Self {
        RotatingIdTable {
            slots: Vec::new(),
            free: NONE,
            by_key: HashTable::new(),
            people: HashTable::new(),
            hasher: RandomState::new(),
            centre: None,
            by_id: IdMap::default(),
        }
    }
}

impl RotatingIdTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes room for `keys` more keys without rehashing on the way.
    pub fn reserve(&mut self, keys: usize) {
        self.slots.reserve(keys);
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.by_key.reserve(keys, |&i| key_hash(hasher, slots, i));
        self.people
            .reserve(keys, |&i| person_hash(hasher, slots, i));
        self.by_id.reserve(keys * WINDOW.len());
    }

    /// Enrol (or re-enrol under another person) an app key. Re-enrolling a
    /// key under the same person does nothing; under another person it moves
    /// the key without touching its identifiers.
    pub fn insert_key(&mut self, person: PersonId, key: [u8; 16]) {
        if let Some(slot) = self.key_slot(&key) {
            if self.slots[slot as usize].person.as_ref() == Some(&person) {
                return;
            }
            self.unlink(slot);
            self.link(person, slot);
            return;
        }
        let entry = KeySlot {
            key,
            rpik: rpik(&key),
            person: None,
            next: NONE,
        };
        let slot = if self.free == NONE {
            self.slots.push(entry);
            (self.slots.len() - 1) as u32
        } else {
            let slot = self.free;
            self.free = self.slots[slot as usize].next;
            self.slots[slot as usize] = entry;
            slot
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.by_key
            .insert_unique(hasher.hash_one(key), slot, |&i| key_hash(hasher, slots, i));
        self.link(person, slot);
        if let Some(centre) = self.centre {
            let cipher = self.slots[slot as usize].cipher();
            for interval in window(centre).into_iter().flatten() {
                self.by_id.insert(Rpi(rpi_with(&cipher, interval)), slot);
            }
        }
    }

    /// Forget every key of a person.
    pub fn remove_person(&mut self, person: &PersonId) {
        let slots = &self.slots;
        let Ok(head) = self
            .people
            .find_entry(self.hasher.hash_one(person.as_str()), |&i| {
                slots[i as usize].person.as_ref() == Some(person)
            })
        else {
            return;
        };
        let mut slot = head.remove().0;
        while slot != NONE {
            let next = self.slots[slot as usize].next;
            self.unindex_key(slot);
            self.release(slot);
            slot = next;
        }
    }

    /// Forget one key.
    pub fn remove_key(&mut self, key: &[u8; 16]) {
        if let Some(slot) = self.key_slot(key) {
            self.unindex_key(slot);
            self.unlink(slot);
            self.release(slot);
        }
    }

    /// Centre the table on the interval of `unix_s`; recomputes only when the
    /// interval changed, and then only the identifiers that differ. Returns
    /// whether it rolled.
    pub fn roll_to(&mut self, unix_s: i64) -> bool {
        let interval = interval_of(unix_s);
        if self.centre == Some(interval) {
            return false;
        }
        let new = window(interval);
        let old = self.centre.map(window).unwrap_or_default();
        self.centre = Some(interval);
        let entering: Vec<u32> = new
            .into_iter()
            .flatten()
            .filter(|i| !old.contains(&Some(*i)))
            .collect();
        let mut leaving: Vec<u32> = old
            .into_iter()
            .flatten()
            .filter(|i| !new.contains(&Some(*i)))
            .collect();
        if leaving.len() == old.iter().flatten().count() {
            // Nothing shared: start from an empty map (keeps its allocation)
            // rather than removing every identifier one by one.
            self.by_id.clear();
            self.by_id.reserve(self.by_key.len() * entering.len());
            leaving.clear();
        }
        let mut gone: Vec<(Rpi, u32)> = Vec::with_capacity(self.by_key.len() * leaving.len());
        let mut new_ids: Vec<(Rpi, u32)> = Vec::with_capacity(self.by_key.len() * entering.len());
        for (slot, entry) in self.slots.iter().enumerate() {
            if entry.person.is_none() {
                continue;
            }
            let cipher = entry.cipher();
            gone.extend(
                leaving
                    .iter()
                    .map(|&i| (Rpi(rpi_with(&cipher, i)), slot as u32)),
            );
            new_ids.extend(
                entering
                    .iter()
                    .map(|&i| (Rpi(rpi_with(&cipher, i)), slot as u32)),
            );
        }
        // Visit the map in bucket order rather than at random: with a million
        // keys this turns most cache and TLB misses into sequential access
        // and more than halves the roll. The order only affects speed.
        self.by_id.reserve(new_ids.len().saturating_sub(gone.len()));
        let buckets = (self.by_id.capacity() * 8 / 7).next_power_of_two() as u64;
        let bucket = |id: &Rpi| id.hash_u64() & (buckets - 1);
        gone.sort_unstable_by_key(|(id, _)| bucket(id));
        new_ids.sort_unstable_by_key(|(id, _)| bucket(id));
        for (id, slot) in gone {
            remove_if_owned(&mut self.by_id, id, slot);
        }
        self.by_id.extend(new_ids);
        true
    }

    pub fn lookup(&self, rotating_id: &[u8; 16]) -> Option<&PersonId> {
        let slot = *self.by_id.get(&Rpi(*rotating_id))?;
        self.slots.get(slot as usize)?.person.as_ref()
    }

    /// The person an app key is enrolled under.
    pub fn person_of_key(&self, key: &[u8; 16]) -> Option<&PersonId> {
        let slot = self.key_slot(key)?;
        self.slots.get(slot as usize)?.person.as_ref()
    }

    /// Whether `rotating_id` belongs to one of `person`'s keys right now.
    pub fn belongs_to(&self, rotating_id: &[u8; 16], person: &PersonId) -> bool {
        self.lookup(rotating_id) == Some(person)
    }

    pub fn key_count(&self) -> usize {
        self.by_key.len()
    }

    /// Number of identifiers currently resolvable (three per key once rolled).
    pub fn id_count(&self) -> usize {
        self.by_id.len()
    }

    /// A lower bound on the heap the table holds, from its capacities (hash
    /// maps counted as one control byte plus one entry per bucket). Does not
    /// count the person ids' string allocations, which the table shares with
    /// the rest of the gateway.
    pub fn heap_bytes(&self) -> usize {
        // hashbrown keeps capacity at 7/8 of a power-of-two bucket count.
        let buckets = |capacity: usize| (capacity * 8 / 7).next_power_of_two();
        let table = |t: &HashTable<u32>| buckets(t.capacity()) * (1 + size_of::<u32>());
        self.slots.capacity() * size_of::<KeySlot>()
            + table(&self.by_key)
            + table(&self.people)
            + buckets(self.by_id.capacity()) * (1 + size_of::<(Rpi, u32)>())
    }

    /// Puts `slot` at the head of `person`'s list.
    fn link(&mut self, person: PersonId, slot: u32) {
        let hash = self.hasher.hash_one(person.as_str());
        let slots = &self.slots;
        let head = self.people.find_mut(hash, |&i| {
            slots[i as usize].person.as_ref() == Some(&person)
        });
        let next = match head {
            Some(head) => std::mem::replace(head, slot),
            None => NONE,
        };
        self.slots[slot as usize].next = next;
        self.slots[slot as usize].person = Some(person);
        if next == NONE {
            let (slots, hasher) = (&self.slots, &self.hasher);
            self.people
                .insert_unique(hash, slot, |&i| person_hash(hasher, slots, i));
        }
    }

    fn key_slot(&self, key: &[u8; 16]) -> Option<u32> {
        let slots = &self.slots;
        self.by_key
            .find(self.hasher.hash_one(key), |&i| {
                slots[i as usize].key == *key
            })
            .copied()
    }

    /// Takes `slot` out of `by_key`.
    fn unindex_key(&mut self, slot: u32) {
        let hash = key_hash(&self.hasher, &self.slots, slot);
        if let Ok(found) = self.by_key.find_entry(hash, |&i| i == slot) {
            found.remove();
        }
    }

    /// Takes `slot` out of its person's list, dropping the person when it was
    /// their last key.
    fn unlink(&mut self, slot: u32) {
        let Some(person) = self.slots[slot as usize].person.clone() else {
            return;
        };
        let after = self.slots[slot as usize].next;
        let slots = &self.slots;
        let found = self
            .people
            .find_entry(self.hasher.hash_one(person.as_str()), |&i| {
                slots[i as usize].person.as_ref() == Some(&person)
            });
        self.slots[slot as usize].person = None;
        let Ok(mut head) = found else {
            return;
        };
        if *head.get() == slot {
            if after == NONE {
                head.remove();
            } else {
                *head.get_mut() = after;
            }
            return;
        }
        let mut cur = *head.get();
        while cur != NONE {
            let next = self.slots[cur as usize].next;
            if next == slot {
                self.slots[cur as usize].next = after;
                return;
            }
            cur = next;
        }
    }

    /// Removes the slot's identifiers and puts it on the free list. The slot
    /// must already be out of its person's list and `by_key`.
    fn release(&mut self, slot: u32) {
        if let Some(centre) = self.centre {
            let cipher = self.slots[slot as usize].cipher();
            for interval in window(centre).into_iter().flatten() {
                remove_if_owned(&mut self.by_id, Rpi(rpi_with(&cipher, interval)), slot);
            }
        }
        let entry = &mut self.slots[slot as usize];
        entry.person = None;
        entry.rpik = [0; 16];
        entry.key = [0; 16];
        entry.next = self.free;
        self.free = slot;
    }
}

/// The hash `by_key` files a slot under: its key's.
fn key_hash(hasher: &RandomState, slots: &[KeySlot], slot: u32) -> u64 {
    hasher.hash_one(slots[slot as usize].key)
}

/// The hash `people` files a head slot under: its person's id.
fn person_hash(hasher: &RandomState, slots: &[KeySlot], slot: u32) -> u64 {
    let person = slots[slot as usize].person.as_ref();
    hasher.hash_one(person.expect("a listed slot has a person").as_str())
}

/// Removes `id` only if it maps to `slot`: two keys sharing an identifier is
/// a 2^-128 event, but removing one must not unmap the other.
fn remove_if_owned(by_id: &mut IdMap, id: Rpi, slot: u32) {
    if by_id.get(&id) == Some(&slot) {
        by_id.remove(&id);
    }
}

/// The intervals of the window centred on `centre`; `None` off either end of
/// the `u32` range.
fn window(centre: u32) -> [Option<u32>; 3] {
    WINDOW.map(|offset| u32::try_from(i64::from(centre) + offset).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_table_accepts_keys_like_a_new_one() {
        let mut table = RotatingIdTable::default();
        table.roll_to(0);
        table.insert_key(PersonId::from("p-1"), [7; 16]);
        table.remove_person(&PersonId::from("p-1"));
        table.insert_key(PersonId::from("p-2"), [8; 16]);
        assert_eq!(table.key_count(), 1);
    }
    use crate::identity::rotating::{rotating_id, rpi_cipher};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const KEY: [u8; 16] = [
        0x75, 0xc7, 0x34, 0xc6, 0xdd, 0x1a, 0x78, 0x2d, 0xe7, 0xa9, 0x65, 0xda, 0x5e, 0xb9, 0x31,
        0x25,
    ];

    #[test]
    fn resolves_previous_current_and_next_interval_only() {
        let mut table = RotatingIdTable::new();
        let person = PersonId::from("p-1");
        table.insert_key(person.clone(), KEY);
        let now_s = 2642976 * 600 + 30;
        table.roll_to(now_s);
        for interval in [2642975, 2642976, 2642977] {
            assert_eq!(table.lookup(&rotating_id(&KEY, interval)), Some(&person));
        }
        assert_eq!(table.lookup(&rotating_id(&KEY, 2642978)), None);
        assert_eq!(table.lookup(&rotating_id(&KEY, 2642974)), None);
        assert!(table.roll_to(now_s + 600));
        assert_eq!(table.lookup(&rotating_id(&KEY, 2642978)), Some(&person));
        assert_eq!(table.lookup(&rotating_id(&KEY, 2642975)), None);
        assert_eq!(table.id_count(), 3);
    }

    #[test]
    fn moving_a_key_to_another_person_and_removing() {
        let mut table = RotatingIdTable::new();
        table.roll_to(2642976 * 600);
        table.insert_key(PersonId::from("p-1"), KEY);
        table.insert_key(PersonId::from("p-2"), KEY);
        assert_eq!(
            table.lookup(&rotating_id(&KEY, 2642976)),
            Some(&PersonId::from("p-2"))
        );
        table.remove_person(&PersonId::from("p-1"));
        assert_eq!(
            table.lookup(&rotating_id(&KEY, 2642976)),
            Some(&PersonId::from("p-2")),
            "the key left p-1, so forgetting p-1 keeps it"
        );
        table.remove_person(&PersonId::from("p-2"));
        assert_eq!(table.lookup(&rotating_id(&KEY, 2642976)), None);
        assert_eq!(table.key_count(), 0);
        assert_eq!(table.id_count(), 0);
    }

    #[test]
    fn window_stops_at_the_ends_of_the_interval_range() {
        assert_eq!(window(0), [None, Some(0), Some(1)]);
        assert_eq!(window(u32::MAX), [Some(u32::MAX - 1), Some(u32::MAX), None]);
        let mut table = RotatingIdTable::new();
        table.insert_key(PersonId::from("p-1"), KEY);
        table.roll_to(0);
        assert_eq!(table.id_count(), 2);
        assert_eq!(
            table.lookup(&rotating_id(&KEY, 1)),
            Some(&PersonId::from("p-1"))
        );
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u8, u8),
        RemoveKey(u8),
        RemovePerson(u8),
        /// Roll to base interval + offset (jumps forward and back, small
        /// and large).
        Roll(i8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..4u8, 0..6u8).prop_map(|(p, k)| Op::Insert(p, k)),
            1 => (0..6u8).prop_map(Op::RemoveKey),
            1 => (0..4u8).prop_map(Op::RemovePerson),
            2 => (-6..6i8).prop_map(Op::Roll),
        ]
    }

    const BASE: i64 = 2_642_976;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Against a naive model (key -> person, centre): after every step,
        /// each key's ids for the centre and its neighbours resolve to the
        /// key's current person, and ids further out, of removed keys or of
        /// removed people, do not resolve.
        #[test]
        fn agrees_with_a_naive_model(ops in prop::collection::vec(op(), 1..40)) {
            let keys: Vec<[u8; 16]> = (0..6u8).map(|k| {
                let mut key = [0u8; 16];
                key[15] = k; // sequential keys: the key map must not care
                key
            }).collect();
            let ciphers: Vec<_> = keys.iter().map(|k| rpi_cipher(&rpik(k))).collect();
            let people: Vec<PersonId> = (0..4).map(|p| PersonId::from(format!("p-{p}").as_str())).collect();
            let mut table = RotatingIdTable::new();
            let mut model: BTreeMap<u8, u8> = BTreeMap::new();
            let mut centre: Option<i64> = None;
            for op in ops {
                match op {
                    Op::Insert(p, k) => {
                        table.insert_key(people[p as usize].clone(), keys[k as usize]);
                        model.insert(k, p);
                    }
                    Op::RemoveKey(k) => {
                        table.remove_key(&keys[k as usize]);
                        model.remove(&k);
                    }
                    Op::RemovePerson(p) => {
                        table.remove_person(&people[p as usize]);
                        model.retain(|_, owner| *owner != p);
                    }
                    Op::Roll(offset) => {
                        let interval = BASE + i64::from(offset);
                        let rolled = table.roll_to(interval * 600 + 599);
                        prop_assert_eq!(rolled, centre != Some(interval));
                        centre = Some(interval);
                    }
                }
                prop_assert_eq!(table.key_count(), model.len());
                let expected_ids = if centre.is_some() { model.len() * 3 } else { 0 };
                prop_assert_eq!(table.id_count(), expected_ids);
                for k in 0..6u8 {
                    for interval in BASE - 9..=BASE + 9 {
                        let id = rpi_with(&ciphers[k as usize], interval as u32);
                        let live = centre.is_some_and(|c| (interval - c).abs() <= 1);
                        let expected = model.get(&k).filter(|_| live).map(|p| &people[*p as usize]);
                        prop_assert_eq!(table.lookup(&id), expected);
                        for (p, person) in people.iter().enumerate() {
                            prop_assert_eq!(
                                table.belongs_to(&id, person),
                                expected.is_some() && model.get(&k) == Some(&(p as u8))
                            );
                        }
                    }
                }
            }
        }
    }
}
