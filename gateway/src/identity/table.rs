//! The rotating-identifier table: for every enrolled app key, the identifiers
//! of the previous, current and next interval, so that resolving an advert is
//! one hash probe. Rolled forward when the interval changes.

use std::collections::HashMap;

use aes::Aes128;

use super::person::PersonId;
use super::rotating::{interval_of, rpi_cipher, rpi_with, rpik};

struct Enrolled {
    person: PersonId,
    cipher: Aes128,
}

/// Interval offsets kept in the table: clocks on phones and the gateway
/// disagree by a little, and an advert may straddle a rotation.
const WINDOW: [i64; 3] = [-1, 0, 1];

#[derive(Default)]
pub struct RotatingIdTable {
    keys: HashMap<[u8; 16], Enrolled>,
    /// Interval the table is centred on; `None` before the first roll.
    centre: Option<u32>,
    by_id: HashMap<[u8; 16], PersonId>,
}

impl RotatingIdTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Enrol (or re-enrol under another person) an app key.
    pub fn insert_key(&mut self, person: PersonId, key: [u8; 16]) {
        let cipher = rpi_cipher(&rpik(&key));
        if let Some(centre) = self.centre {
            for offset in WINDOW {
                if let Some(interval) = offset_interval(centre, offset) {
                    self.by_id
                        .insert(rpi_with(&cipher, interval), person.clone());
                }
            }
        }
        if let Some(previous) = self.keys.insert(key, Enrolled { person, cipher }) {
            let _ = previous;
            self.rebuild_ids();
        }
    }

    /// Forget every key of a person.
    pub fn remove_person(&mut self, person: &PersonId) {
        let before = self.keys.len();
        self.keys.retain(|_, e| &e.person != person);
        if self.keys.len() != before {
            self.by_id.retain(|_, p| p != person);
        }
    }

    /// Forget one key.
    pub fn remove_key(&mut self, key: &[u8; 16]) {
        if self.keys.remove(key).is_some() {
            self.rebuild_ids();
        }
    }

    /// Centre the table on the interval of `unix_s`; recomputes only when the
    /// interval changed. Returns whether it rolled.
    pub fn roll_to(&mut self, unix_s: i64) -> bool {
        let interval = interval_of(unix_s);
        if self.centre == Some(interval) {
            return false;
        }
        self.centre = Some(interval);
        self.rebuild_ids();
        true
    }

    fn rebuild_ids(&mut self) {
        self.by_id.clear();
        let Some(centre) = self.centre else { return };
        self.by_id.reserve(self.keys.len() * WINDOW.len());
        for enrolled in self.keys.values() {
            for offset in WINDOW {
                if let Some(interval) = offset_interval(centre, offset) {
                    self.by_id.insert(
                        rpi_with(&enrolled.cipher, interval),
                        enrolled.person.clone(),
                    );
                }
            }
        }
    }

    pub fn lookup(&self, rotating_id: &[u8; 16]) -> Option<&PersonId> {
        self.by_id.get(rotating_id)
    }

    /// Whether `rotating_id` belongs to one of `person`'s keys right now.
    pub fn belongs_to(&self, rotating_id: &[u8; 16], person: &PersonId) -> bool {
        self.lookup(rotating_id) == Some(person)
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }
}

fn offset_interval(centre: u32, offset: i64) -> Option<u32> {
    u32::try_from(centre as i64 + offset).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::rotating::rotating_id;

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
        table.remove_person(&PersonId::from("p-2"));
        assert_eq!(table.lookup(&rotating_id(&KEY, 2642976)), None);
        assert_eq!(table.key_count(), 0);
    }
}
