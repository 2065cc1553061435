//! Who the gateway knows, in memory: person records, which identity belongs
//! to whom, the rotating-identifier table and the recipient index. Pure:
//! every change returns what has to be persisted, and the caller writes it
//! before it acknowledges anything.

use std::collections::HashMap;

use crate::identity::{IdentityIndex, PersonId, PersonRecord, RotatingIdTable};

#[derive(Default)]
pub struct People {
    records: HashMap<PersonId, PersonRecord>,
    recipients: HashMap<String, PersonId>,
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
        let mut people = People::new();
        for record in records {
            let _ = people.upsert(record);
        }
        people.table.roll_to(now_s);
        people
    }

    pub fn get(&self, person: &PersonId) -> Option<&PersonRecord> {
        self.records.get(person)
    }

    pub fn by_recipient(&self, recipient: &str) -> Option<&PersonRecord> {
        self.recipients
            .get(recipient)
            .and_then(|p| self.records.get(p))
    }

    /// The person an identity (app key, e-mail, card) belongs to.
    pub fn person_of(&self, identity: &crate::identity::Identity) -> Option<&PersonId> {
        self.index.person_of(identity)
    }

    pub fn resolve(&self, rotating_id: &[u8; 16]) -> Option<&PersonId> {
        self.table.lookup(rotating_id)
    }

    pub fn roll_to(&mut self, now_s: i64) {
        self.table.roll_to(now_s);
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Check an upsert without applying it.
    pub fn check(&self, record: &PersonRecord) -> Result<(), PeopleError> {
        match self.recipients.get(&record.recipient) {
            Some(owner) if *owner != record.person => Err(PeopleError::RecipientTaken {
                recipient: record.recipient.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Insert or replace a person. Identities named by this record move to
    /// it from whoever held them (the CRM merging or splitting people).
    pub fn upsert(&mut self, record: PersonRecord) -> Result<Upserted, PeopleError> {
        self.check(&record)?;
        let mut out = Upserted::default();
        let changes = self.index.apply_record(&record);
        for loser in changes.people_losing() {
            if let Some(other) = self.records.get_mut(loser) {
                if changes.strip_moved(other) {
                    out.to_store.push(other.clone());
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
        if let Some(previous) = self.records.get(&record.person) {
            if previous.recipient != record.recipient {
                self.recipients.remove(&previous.recipient);
            }
            if previous.consent.proximity && !record.consent.proximity {
                out.withdrawn.push(record.person.clone());
            }
        }
        self.recipients
            .insert(record.recipient.clone(), record.person.clone());
        out.to_store.insert(0, record.clone());
        self.records.insert(record.person.clone(), record);
        Ok(out)
    }

    /// Forget a person entirely. Returns their last record, if any.
    pub fn remove(&mut self, person: &PersonId) -> Option<PersonRecord> {
        let record = self.records.remove(person)?;
        self.recipients.remove(&record.recipient);
        self.index.remove_person(person);
        self.table.remove_person(person);
        Some(record)
    }
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
}
