//! The rotating-identifier table: for every enrolled app key, the identifiers
//! of the previous, current and next interval, so that resolving an advert is
//! a hash probe per live interval. Rolled forward when the interval changes.
//!
//! Built for a million enrolled keys on one core, in as little memory as a
//! hash probe allows (BENCHMARKS.md §2a):
//!
//! - Keys belong to owners, `u32`s the caller chooses (the daemon's
//!   [`crate::people::People`] uses its slot numbers, which hold the person
//!   id): a key slot names its owner in 4 bytes instead of holding a
//!   reference-counted id, and each owner's list of keys starts in `heads`,
//!   indexed by owner, instead of a hash table of people.
//! - Per key the table keeps the 16-byte RPIK, not the expanded AES key
//!   schedule (the `aes` crate's runtime-dispatched cipher is about 700
//!   bytes), nor the key itself. Keys have no index of their own: a key is
//!   found by its identifier for the centre interval (derived from the key,
//!   as `owner_of_key` does), which every key has, rolled or not; before
//!   the first roll, by its identifier for a parked interval kept only for
//!   that.
//! - The identifiers themselves are not stored. Each live interval has its
//!   own table of key slots (`u32`), filed under the identifier's first 8
//!   bytes; a probe recomputes the candidate's identifier (one AES block)
//!   and compares all 16 bytes. 5 bytes a bucket instead of 21.
//! - One table per interval, each only ever inserted into while it is live,
//!   so that a roll leaves no removal tombstones behind: rolling by one
//!   interval builds the entering interval's table and drops the leaving
//!   one whole when the roll ends. A single table for all intervals would
//!   have to keep room for a fourth identifier a key (hashbrown does not
//!   give back the buckets its removals leave as tombstones, and running
//!   out of room mid-roll rehashes it, recomputing every identifier): about
//!   42 MB for a million keys instead of 31.
//! - Rolling by one interval is incremental, in steps: a bounded number of
//!   keys per step ([`RotatingIdTable::roll_some`]) get their entering
//!   identifier, so that the pipeline never stops for a whole roll. While a
//!   roll is under way, keys already rolled resolve the new window (and,
//!   until the roll ends, still the leaving interval) and the rest the old
//!   one: both hold the old and the new current interval, so a phone with a
//!   good clock is resolved throughout. Larger jumps (a clock step, a
//!   restart) rebuild at once.
//! - Identifiers map to a key slot, not to an owner: moving a key to another
//!   owner changes one slot and none of its identifiers.

use aes::Aes128Enc;
use aes::cipher::KeyInit;
use hashbrown::HashTable;

use super::rotating::{interval_of, rpi_with, rpik};

/// Interval offsets kept in the table: clocks on phones and the gateway
/// disagree by a little, and an advert may straddle a rotation.
const WINDOW: [i64; 3] = [-1, 0, 1];

/// End of a list of key slots; the owner of a free slot; no owner's head.
const NONE: u32 = u32::MAX;

/// The interval keys are filed under before the first roll (never looked
/// up: no interval is live then).
const PARKED: u32 = 0;

/// The hash an interval's table files an identifier under: its first 8
/// bytes.
///
/// Safe here, and only here, because of what the table holds and who
/// chooses it. Every stored identifier is AES-128 output under a secret
/// per-person key, so its bytes are uniformly distributed and no one outside
/// the back office can predict them: the buckets fill as evenly as under any
/// keyed hash. An attacker does choose the identifiers we *look up* (any
/// phone can advertise any 16 bytes), but a lookup never inserts, so chosen
/// ids cannot build collision chains; at worst one lookup walks one probe
/// sequence per table, of tables whose layout the attacker cannot see. Keys
/// are looked up the same way, by an identifier derived from them: even
/// sequential keys (tests) give uniform identifiers.
fn id_hash(id: &[u8; 16]) -> u64 {
    let [a, b, c, d, e, f, g, h, ..] = *id;
    u64::from_le_bytes([a, b, c, d, e, f, g, h])
}

struct KeySlot {
    rpik: [u8; 16],
    /// `NONE` for a free slot.
    owner: u32,
    /// Next key slot of the same owner, or next free slot.
    next: u32,
}

impl KeySlot {
    fn cipher(&self) -> Aes128Enc {
        Aes128Enc::new(&self.rpik.into())
    }
}

/// One live interval's identifiers: key slots by their identifier's hash.
struct Interval {
    interval: u32,
    slots: HashTable<u32>,
}

fn slot_hash(keys: &[KeySlot], slot: u32, interval: u32) -> u64 {
    id_hash(&rpi_with(&keys[slot as usize].cipher(), interval))
}

/// A roll by one interval under way: slots below `next` are on `target`'s
/// window, the rest on `centre`'s.
#[derive(Clone, Copy)]
struct Rolling {
    target: u32,
    next: u32,
}

pub struct RotatingIdTable {
    slots: Vec<KeySlot>,
    /// Head of the free-slot list.
    free: u32,
    /// Head of each owner's list of key slots (linked through `next`), by
    /// owner; `NONE` for an owner without keys.
    heads: Vec<u32>,
    /// Interval the table is centred on; `None` before the first roll.
    centre: Option<u32>,
    rolling: Option<Rolling>,
    /// A table per live interval: the centre's window, and while rolling
    /// the entering interval's too. Before the first roll, the `PARKED`
    /// interval's alone (once a key is enrolled).
    live: Vec<Interval>,
    /// Entries of slots already rolled still filed under the leaving
    /// interval (dropped with it when the roll ends).
    stale: usize,
    keys: usize,
}

/// Not derived: an empty free list is `NONE`, not slot 0.
impl Default for RotatingIdTable {
    fn default() -> Self {
        RotatingIdTable {
            slots: Vec::new(),
            free: NONE,
            heads: Vec::new(),
            centre: None,
            rolling: None,
            live: Vec::new(),
            stale: 0,
            keys: 0,
        }
    }
}

impl RotatingIdTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes room for `keys` more keys, and as many more owners, without
    /// rehashing on the way.
    pub fn reserve(&mut self, keys: usize) {
        self.slots.reserve(keys);
        self.heads.reserve(keys);
        self.park();
        let slots = &self.slots;
        for table in &mut self.live {
            table
                .slots
                .reserve(keys, |&i| slot_hash(slots, i, table.interval));
        }
    }

    /// Enrol (or move to another owner) an app key. Enrolling a key again
    /// under the same owner does nothing; under another owner it moves the
    /// key without touching its identifiers.
    ///
    /// # Panics
    /// If `owner` is `u32::MAX`, or there are 2^32 - 1 keys.
    pub fn insert_key(&mut self, owner: u32, key: [u8; 16]) {
        assert_ne!(owner, NONE, "u32::MAX names no owner");
        let rpik = rpik(&key);
        if let Some(slot) = self.rpik_slot(&rpik) {
            if self.slots[slot as usize].owner == owner {
                return;
            }
            self.unlink(slot);
            self.link(owner, slot);
            return;
        }
        let entry = KeySlot {
            rpik,
            owner: NONE,
            next: NONE,
        };
        let slot = if self.free == NONE {
            assert!(
                self.slots.len() < NONE as usize,
                "more app keys than the table can name"
            );
            self.slots.push(entry);
            (self.slots.len() - 1) as u32
        } else {
            let slot = self.free;
            self.free = self.slots[slot as usize].next;
            self.slots[slot as usize] = entry;
            slot
        };
        self.keys += 1;
        self.link(owner, slot);
        if self.centre.is_none() {
            self.park();
            self.add_ids(slot, [PARKED]);
        } else {
            let window = self.window_of(slot);
            self.add_ids(slot, window.into_iter().flatten());
        }
    }

    /// Before the first roll: makes the table keys are filed under.
    fn park(&mut self) {
        if self.centre.is_none() && self.live.is_empty() {
            self.live.push(Interval {
                interval: PARKED,
                slots: HashTable::new(),
            });
        }
    }

    /// Forget every key of an owner.
    pub fn remove_owner(&mut self, owner: u32) {
        let Some(head) = self.heads.get_mut(owner as usize) else {
            return;
        };
        let mut slot = std::mem::replace(head, NONE);
        while slot != NONE {
            let next = self.slots[slot as usize].next;
            self.release(slot);
            slot = next;
        }
    }

    /// Forget one key.
    pub fn remove_key(&mut self, key: &[u8; 16]) {
        if let Some(slot) = self.key_slot(key) {
            self.unlink(slot);
            self.release(slot);
        }
    }

    /// Centre the table on the interval of `unix_s`, at once (a roll under
    /// way is finished). Recomputes only when the interval changed, and
    /// then only the identifiers that differ. Returns whether it rolled.
    pub fn roll_to(&mut self, unix_s: i64) -> bool {
        let rolled = self.start_roll(unix_s);
        self.roll_some(usize::MAX);
        rolled
    }

    /// Starts centring the table on the interval of `unix_s`: a roll by one
    /// interval is left to [`Self::roll_some`]; the first roll, and any
    /// larger jump, is done at once. A roll still under way towards another
    /// interval is finished first. Returns whether the interval changed.
    pub fn start_roll(&mut self, unix_s: i64) -> bool {
        let interval = interval_of(unix_s);
        let heading = self.rolling.map(|r| r.target).or(self.centre);
        if heading == Some(interval) {
            return false;
        }
        self.roll_some(usize::MAX);
        match self.centre {
            Some(centre) if centre.abs_diff(interval) == 1 => {
                let old = window(centre);
                for entering in window(interval).into_iter().flatten() {
                    if !old.contains(&Some(entering)) {
                        self.live.push(Interval {
                            interval: entering,
                            slots: HashTable::with_capacity(self.keys),
                        });
                    }
                }
                self.rolling = Some(Rolling {
                    target: interval,
                    next: 0,
                });
            }
            _ => self.rebuild(interval),
        }
        true
    }

    /// Whether a roll is under way.
    pub fn rolling(&self) -> bool {
        self.rolling.is_some()
    }

    /// Rolls up to `max_slots` key slots of a roll under way. Returns
    /// whether the roll is done (or none was under way).
    pub fn roll_some(&mut self, max_slots: usize) -> bool {
        let Some(Rolling { target, next }) = self.rolling else {
            return true;
        };
        let centre = self.centre.expect("a roll starts from a centre");
        let (old, new) = (window(centre), window(target));
        let leaving = old
            .into_iter()
            .flatten()
            .filter(|i| !new.contains(&Some(*i)))
            .count();
        let entering: Vec<usize> = (0..self.live.len())
            .filter(|&t| !old.contains(&Some(self.live[t].interval)))
            .collect();
        let end = (next as usize)
            .saturating_add(max_slots)
            .min(self.slots.len()) as u32;
        for slot in next..end {
            let key = &self.slots[slot as usize];
            if key.owner == NONE {
                continue;
            }
            let cipher = key.cipher();
            for &t in &entering {
                let table = &mut self.live[t];
                let id = rpi_with(&cipher, table.interval);
                let (slots, interval) = (&self.slots, table.interval);
                table
                    .slots
                    .insert_unique(id_hash(&id), slot, |&i| slot_hash(slots, i, interval));
            }
            self.stale += leaving;
        }
        if end as usize == self.slots.len() {
            self.live.retain(|t| new.contains(&Some(t.interval)));
            // The centre's table first: most adverts are of this interval.
            self.live.sort_by_key(|t| t.interval.abs_diff(target));
            self.centre = Some(target);
            self.rolling = None;
            self.stale = 0;
            true
        } else {
            self.rolling = Some(Rolling { target, next: end });
            false
        }
    }

    /// Every identifier made again for a window centred on `interval`.
    fn rebuild(&mut self, interval: u32) {
        self.rolling = None;
        self.stale = 0;
        self.centre = Some(interval);
        // Dropped before the new tables are made: never both at once.
        self.live.clear();
        self.live.shrink_to_fit();
        // The centre's table first: most adverts are of this interval.
        let order = [0, 1, -1].map(|o| u32::try_from(i64::from(interval) + o).ok());
        for interval in order.into_iter().flatten() {
            self.live.push(Interval {
                interval,
                slots: HashTable::with_capacity(self.keys),
            });
        }
        let slots = &self.slots;
        for (slot, key) in slots.iter().enumerate() {
            if key.owner == NONE {
                continue;
            }
            // One key schedule for the key's three identifiers.
            let cipher = key.cipher();
            for table in &mut self.live {
                let interval = table.interval;
                table.slots.insert_unique(
                    id_hash(&rpi_with(&cipher, interval)),
                    slot as u32,
                    |&i| slot_hash(slots, i, interval),
                );
            }
        }
    }

    /// The window a slot's identifiers are on.
    fn window_of(&self, slot: u32) -> [Option<u32>; 3] {
        match self.rolling {
            Some(r) if slot < r.next => window(r.target),
            _ => self.centre.map(window).unwrap_or_default(),
        }
    }

    /// Files a slot's identifiers for `intervals` (each must be live).
    fn add_ids(&mut self, slot: u32, intervals: impl IntoIterator<Item = u32>) {
        let cipher = self.slots[slot as usize].cipher();
        for interval in intervals {
            let id = rpi_with(&cipher, interval);
            let slots = &self.slots;
            if let Some(table) = self.live.iter_mut().find(|t| t.interval == interval) {
                table
                    .slots
                    .insert_unique(id_hash(&id), slot, |&i| slot_hash(slots, i, interval));
            }
        }
    }

    /// Takes a slot's identifiers out of every live interval's table.
    /// Returns how many it took out of the tables for `intervals`.
    fn remove_ids(&mut self, slot: u32, leaving: &[u32]) -> usize {
        let cipher = self.slots[slot as usize].cipher();
        let mut left = 0;
        for table in &mut self.live {
            let id = rpi_with(&cipher, table.interval);
            if let Ok(found) = table.slots.find_entry(id_hash(&id), |&i| i == slot) {
                found.remove();
                left += usize::from(leaving.contains(&table.interval));
            }
        }
        left
    }

    /// The owner of the key whose identifier this is, in a live interval.
    pub fn lookup(&self, rotating_id: &[u8; 16]) -> Option<u32> {
        self.centre?;
        let hash = id_hash(rotating_id);
        let slots = &self.slots;
        self.live
            .iter()
            .find_map(|table| {
                table.slots.find(hash, |&i| {
                    rpi_with(&slots[i as usize].cipher(), table.interval) == *rotating_id
                })
            })
            .map(|&slot| self.slots[slot as usize].owner)
            .filter(|&owner| owner != NONE)
    }

    /// The owner an app key is enrolled under.
    pub fn owner_of_key(&self, key: &[u8; 16]) -> Option<u32> {
        let slot = self.key_slot(key)?;
        Some(self.slots.get(slot as usize)?.owner).filter(|&owner| owner != NONE)
    }

    /// Whether `rotating_id` belongs to one of `owner`'s keys right now.
    pub fn belongs_to(&self, rotating_id: &[u8; 16], owner: u32) -> bool {
        self.lookup(rotating_id) == Some(owner)
    }

    pub fn key_count(&self) -> usize {
        self.keys
    }

    /// Number of identifiers currently resolvable on each key's window
    /// (three per key once rolled; a rolled key's leaving identifier, kept
    /// until the roll ends, is not counted).
    pub fn id_count(&self) -> usize {
        if self.centre.is_none() {
            return 0;
        }
        self.live.iter().map(|t| t.slots.len()).sum::<usize>() - self.stale
    }

    /// A lower bound on the heap the table holds, from its capacities (hash
    /// tables counted as one control byte plus one entry per bucket).
    pub fn heap_bytes(&self) -> usize {
        // hashbrown keeps capacity at 7/8 of a power-of-two bucket count
        // (3/4 below 8 buckets, close enough).
        let buckets = |capacity: usize| {
            if capacity == 0 {
                0
            } else {
                (capacity * 8 / 7).next_power_of_two()
            }
        };
        let table = |t: &HashTable<u32>| buckets(t.capacity()) * (1 + size_of::<u32>());
        self.slots.capacity() * size_of::<KeySlot>()
            + self.heads.capacity() * size_of::<u32>()
            + self.live.capacity() * size_of::<Interval>()
            + self.live.iter().map(|t| table(&t.slots)).sum::<usize>()
    }

    /// Puts `slot` at the head of `owner`'s list.
    fn link(&mut self, owner: u32, slot: u32) {
        let at = owner as usize;
        if self.heads.len() <= at {
            self.heads.resize(at + 1, NONE);
        }
        let next = std::mem::replace(&mut self.heads[at], slot);
        let key = &mut self.slots[slot as usize];
        key.next = next;
        key.owner = owner;
    }

    fn key_slot(&self, key: &[u8; 16]) -> Option<u32> {
        self.rpik_slot(&rpik(key))
    }

    /// The slot of a key by its RPIK: found under its identifier for the
    /// centre interval (or the parked one), which every key has.
    fn rpik_slot(&self, rpik: &[u8; 16]) -> Option<u32> {
        let anchor = self.centre.unwrap_or(PARKED);
        let table = self.live.iter().find(|t| t.interval == anchor)?;
        let id = rpi_with(&Aes128Enc::new(&(*rpik).into()), anchor);
        let slots = &self.slots;
        table
            .slots
            .find(id_hash(&id), |&i| slots[i as usize].rpik == *rpik)
            .copied()
    }

    /// Takes `slot` out of its owner's list.
    fn unlink(&mut self, slot: u32) {
        let owner = std::mem::replace(&mut self.slots[slot as usize].owner, NONE);
        let after = self.slots[slot as usize].next;
        let Some(head) = self.heads.get_mut(owner as usize) else {
            return;
        };
        if *head == slot {
            *head = after;
            return;
        }
        let mut cur = *head;
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
    /// must already be out of its owner's list.
    fn release(&mut self, slot: u32) {
        // A slot already rolled may still be filed under the leaving
        // interval: out with it too, and no longer counted as stale.
        let leaving: Vec<u32> = match (self.rolling, self.centre) {
            (Some(r), Some(centre)) if slot < r.next => {
                let new = window(r.target);
                window(centre)
                    .into_iter()
                    .flatten()
                    .filter(|i| !new.contains(&Some(*i)))
                    .collect()
            }
            _ => Vec::new(),
        };
        self.stale -= self.remove_ids(slot, &leaving);
        let entry = &mut self.slots[slot as usize];
        entry.owner = NONE;
        entry.rpik = [0; 16];
        entry.next = self.free;
        self.free = slot;
        self.keys -= 1;
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
        table.insert_key(1, [7; 16]);
        table.remove_owner(1);
        table.insert_key(2, [8; 16]);
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
        let person = 1;
        table.insert_key(person, KEY);
        let now_s = 2642976 * 600 + 30;
        table.roll_to(now_s);
        for interval in [2642975, 2642976, 2642977] {
            assert_eq!(table.lookup(&rotating_id(&KEY, interval)), Some(person));
        }
        assert_eq!(table.lookup(&rotating_id(&KEY, 2642978)), None);
        assert_eq!(table.lookup(&rotating_id(&KEY, 2642974)), None);
        assert!(table.roll_to(now_s + 600));
        assert_eq!(table.lookup(&rotating_id(&KEY, 2642978)), Some(person));
        assert_eq!(table.lookup(&rotating_id(&KEY, 2642975)), None);
        assert_eq!(table.id_count(), 3);
    }

    #[test]
    fn moving_a_key_to_another_person_and_removing() {
        let mut table = RotatingIdTable::new();
        table.roll_to(2642976 * 600);
        table.insert_key(1, KEY);
        table.insert_key(2, KEY);
        assert_eq!(table.lookup(&rotating_id(&KEY, 2642976)), Some(2));
        table.remove_owner(1);
        assert_eq!(
            table.lookup(&rotating_id(&KEY, 2642976)),
            Some(2),
            "the key left p-1, so forgetting p-1 keeps it"
        );
        table.remove_owner(2);
        assert_eq!(table.lookup(&rotating_id(&KEY, 2642976)), None);
        assert_eq!(table.key_count(), 0);
        assert_eq!(table.id_count(), 0);
    }

    #[test]
    fn window_stops_at_the_ends_of_the_interval_range() {
        assert_eq!(window(0), [None, Some(0), Some(1)]);
        assert_eq!(window(u32::MAX), [Some(u32::MAX - 1), Some(u32::MAX), None]);
        let mut table = RotatingIdTable::new();
        table.insert_key(1, KEY);
        table.roll_to(0);
        assert_eq!(table.id_count(), 2);
        assert_eq!(table.lookup(&rotating_id(&KEY, 1)), Some(1));
    }

    #[test]
    fn a_roll_in_steps_resolves_the_current_interval_throughout_and_ends_like_a_fresh_table() {
        let key = |k: u32| {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&k.to_le_bytes());
            key
        };
        let person = |k: u32| k;
        let c = 2_642_976u32;
        let mut table = RotatingIdTable::new();
        for k in 0..50 {
            table.insert_key(person(k), key(k));
        }
        table.roll_to(i64::from(c) * 600);
        assert!(table.start_roll(i64::from(c + 1) * 600));
        assert!(
            !table.start_roll(i64::from(c + 1) * 600 + 5),
            "already heading there"
        );
        let mut live: Vec<u32> = (0..50).collect();
        let mut step = 0;
        while !table.roll_some(7) {
            step += 1;
            // Mid-roll: one key leaves (its slot is reused below or above
            // the roll's front), one arrives.
            if step == 2 {
                table.remove_key(&key(3));
                table.remove_owner(person(40));
                live.retain(|k| *k != 3 && *k != 40);
                table.insert_key(person(100), key(100));
                table.insert_key(person(101), key(101));
                table.insert_key(person(102), key(102));
                live.extend([100, 101, 102]);
            }
            for &k in &live {
                for interval in [c, c + 1] {
                    assert_eq!(
                        table.lookup(&rotating_id(&key(k), interval)),
                        Some(person(k))
                    );
                }
                for interval in [c - 2, c + 3] {
                    assert_eq!(table.lookup(&rotating_id(&key(k), interval)), None);
                }
            }
            for k in [3, 40].into_iter().filter(|_| step >= 2) {
                assert_eq!(table.lookup(&rotating_id(&key(k), c)), None, "removed");
            }
        }
        assert!(step >= 7, "rolled in steps");
        assert!(!table.rolling());
        assert_eq!(table.id_count(), live.len() * 3);
        for &k in &live {
            for interval in [c, c + 1, c + 2] {
                assert_eq!(
                    table.lookup(&rotating_id(&key(k), interval)),
                    Some(person(k))
                );
            }
            assert_eq!(table.lookup(&rotating_id(&key(k), c - 1)), None);
            assert_eq!(table.owner_of_key(&key(k)), Some(person(k)));
        }
        assert_eq!(table.owner_of_key(&key(3)), None);
    }

    #[test]
    fn a_roll_adds_one_intervals_table_and_gives_it_back_whole() {
        let mut table = RotatingIdTable::new();
        for k in 0..1000u32 {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&k.to_le_bytes());
            table.insert_key(k, key);
        }
        let c = 2_642_976u32;
        table.roll_to(i64::from(c) * 600);
        let steady = table.heap_bytes();
        let tables: Vec<usize> = table.live.iter().map(|t| t.slots.capacity()).collect();
        assert_eq!(tables.len(), 3);
        assert!(table.start_roll(i64::from(c + 1) * 600));
        let mut steps = 0;
        while !table.roll_some(64) {
            steps += 1;
            // The three tables neither grow nor rehash mid-roll; the
            // entering one was made with room for every key.
            let during: Vec<usize> = table.live.iter().map(|t| t.slots.capacity()).collect();
            assert_eq!(during[..3], tables[..]);
            assert!(during[3] >= table.key_count());
        }
        assert!(steps > 10, "rolled in steps");
        assert_eq!(table.live.len(), 3);
        assert_eq!(table.heap_bytes(), steady, "the leaving table went whole");
        assert_eq!(table.live[0].interval, c + 1, "the centre's table first");
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u8, u8),
        RemoveKey(u8),
        RemovePerson(u8),
        /// Roll to base interval + offset (jumps forward and back, small
        /// and large).
        Roll(i8),
        /// Start a roll to base interval + offset (by one interval: left
        /// under way; larger jumps: done at once).
        Start(i8),
        /// Roll this many key slots of a roll under way.
        Step(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..4u8, 0..6u8).prop_map(|(p, k)| Op::Insert(p, k)),
            1 => (0..6u8).prop_map(Op::RemoveKey),
            1 => (0..4u8).prop_map(Op::RemovePerson),
            2 => (-6..6i8).prop_map(Op::Roll),
            2 => (-6..6i8).prop_map(Op::Start),
            2 => (0..4u8).prop_map(Op::Step),
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
            let people: Vec<u32> = (0..4).collect();
            let mut table = RotatingIdTable::new();
            let mut model: BTreeMap<u8, u8> = BTreeMap::new();
            let mut centre: Option<i64> = None;
            // The interval a roll under way heads to.
            let mut target: Option<i64> = None;
            for op in ops {
                match op {
                    Op::Insert(p, k) => {
                        table.insert_key(people[p as usize], keys[k as usize]);
                        model.insert(k, p);
                    }
                    Op::RemoveKey(k) => {
                        table.remove_key(&keys[k as usize]);
                        model.remove(&k);
                    }
                    Op::RemovePerson(p) => {
                        table.remove_owner(people[p as usize]);
                        model.retain(|_, owner| *owner != p);
                    }
                    Op::Roll(offset) => {
                        let interval = BASE + i64::from(offset);
                        let rolled = table.roll_to(interval * 600 + 599);
                        prop_assert_eq!(rolled, target.or(centre) != Some(interval));
                        centre = Some(interval);
                        target = None;
                    }
                    Op::Start(offset) => {
                        let interval = BASE + i64::from(offset);
                        let started = table.start_roll(interval * 600 + 599);
                        prop_assert_eq!(started, target.or(centre) != Some(interval));
                        if started {
                            // A roll under way is finished first.
                            centre = target.or(centre);
                            match centre {
                                Some(c) if (interval - c).abs() == 1 => target = Some(interval),
                                _ => {
                                    centre = Some(interval);
                                    target = None;
                                }
                            }
                        }
                    }
                    Op::Step(n) => {
                        if table.roll_some(usize::from(n)) {
                            centre = target.or(centre);
                            target = None;
                        }
                    }
                }
                prop_assert_eq!(table.rolling(), target.is_some());
                prop_assert_eq!(table.key_count(), model.len());
                let expected_ids = if centre.is_some() { model.len() * 3 } else { 0 };
                prop_assert_eq!(table.id_count(), expected_ids);
                for k in 0..6u8 {
                    for interval in BASE - 9..=BASE + 9 {
                        let id = rpi_with(&ciphers[k as usize], interval as u32);
                        if let (Some(c), Some(t)) = (centre, target) {
                            // Under way: what both windows hold resolves,
                            // what neither holds does not; the rest depends
                            // on where the key's slot is.
                            let in_old = (interval - c).abs() <= 1;
                            let in_new = (interval - t).abs() <= 1;
                            let owner = model.get(&k).map(|p| people[*p as usize]);
                            if in_old && in_new {
                                prop_assert_eq!(table.lookup(&id), owner);
                            } else if !in_old && !in_new {
                                prop_assert_eq!(table.lookup(&id), None);
                            }
                            continue;
                        }
                        let live = centre.is_some_and(|c| (interval - c).abs() <= 1);
                        let expected = model.get(&k).filter(|_| live).map(|p| people[*p as usize]);
                        prop_assert_eq!(table.lookup(&id), expected);
                        for (p, person) in people.iter().enumerate() {
                            prop_assert_eq!(
                                table.belongs_to(&id, *person),
                                expected.is_some() && model.get(&k) == Some(&(p as u8))
                            );
                        }
                    }
                }
            }
        }
    }
}
