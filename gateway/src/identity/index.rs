//! Which person each identity (app key, e-mail, card) belongs to.
//!
//! The CRM is the authority: the latest record that names an identity owns
//! it. When the CRM merges two people it republishes the survivor naming the
//! other's identities; when it splits one it publishes a new person naming
//! some of the old one's. [`IdentityIndex::apply_record`] reports what moved
//! so the caller can update the people it moved from (their stored records,
//! their keys in the rotating-ID table) in the same step.

use std::collections::HashMap;

use super::person::{Identity, PersonId, PersonRecord};
use super::table::RotatingIdTable;

/// An identity that a record took over from another person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MovedIdentity {
    pub identity: Identity,
    pub from: PersonId,
}

/// What [`IdentityIndex::apply_record`] changed.
#[must_use]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityChanges {
    /// Named by the record and held by another person until now.
    pub moved: Vec<MovedIdentity>,
    /// Named by the record and held by nobody until now.
    pub added: Vec<Identity>,
    /// Held by this person until now and no longer named: nobody's now.
    pub released: Vec<Identity>,
}

impl IdentityChanges {
    pub fn is_empty(&self) -> bool {
        self.moved.is_empty() && self.added.is_empty() && self.released.is_empty()
    }

    /// The other people who lost identities, each once.
    pub fn people_losing(&self) -> Vec<&PersonId> {
        let mut people: Vec<&PersonId> = Vec::new();
        for m in &self.moved {
            if !people.contains(&&m.from) {
                people.push(&m.from);
            }
        }
        people
    }

    /// Removes from another person's record the identities that moved away
    /// from them. Returns whether the record changed.
    pub fn strip_moved(&self, record: &mut PersonRecord) -> bool {
        let before = record.identities.len();
        record.identities.retain(|identity| {
            !self
                .moved
                .iter()
                .any(|m| m.from == record.person && &m.identity == identity)
        });
        record.identities.len() != before
    }

    /// Brings the rotating-ID table in line for `owner` (the table's name
    /// for the record's person): moved and added app keys now resolve to
    /// them, released ones to nobody.
    pub fn update_table(&self, owner: u32, table: &mut RotatingIdTable) {
        let moved = self.moved.iter().map(|m| &m.identity);
        for identity in moved.chain(&self.added) {
            if let Identity::App { key } = identity {
                table.insert_key(owner, *key);
            }
        }
        for identity in &self.released {
            if let Identity::App { key } = identity {
                table.remove_key(key);
            }
        }
    }
}

/// Every known identity and its one person.
#[derive(Default)]
pub struct IdentityIndex {
    owner: HashMap<Identity, PersonId>,
    by_person: HashMap<PersonId, Vec<Identity>>,
}

impl IdentityIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `record` the truth about its person's identities: every identity
    /// it names is theirs (taken from whoever held it), every identity they
    /// held and it does not name is released.
    pub fn apply_record(&mut self, record: &PersonRecord) -> IdentityChanges {
        self.apply(&record.person, &record.identities)
    }

    /// [`IdentityIndex::apply_record`] for a person and the identities their
    /// record names (or the part of them this index keeps: `People` indexes
    /// app keys in the rotating-ID table only).
    pub fn apply<'a>(
        &mut self,
        person: &PersonId,
        identities: impl IntoIterator<Item = &'a Identity>,
    ) -> IdentityChanges {
        let mut changes = IdentityChanges::default();
        let identities = identities.into_iter();
        let mut named: Vec<Identity> = Vec::with_capacity(identities.size_hint().0);
        for identity in identities {
            if !named.contains(identity) {
                named.push(identity.clone());
            }
        }
        for old in self.by_person.remove(person).unwrap_or_default() {
            if !named.contains(&old) {
                self.owner.remove(&old);
                changes.released.push(old);
            }
        }
        for identity in &named {
            match self.owner.insert(identity.clone(), person.clone()) {
                None => changes.added.push(identity.clone()),
                Some(previous) if &previous == person => {}
                Some(previous) => {
                    if let Some(list) = self.by_person.get_mut(&previous) {
                        list.retain(|i| i != identity);
                        if list.is_empty() {
                            self.by_person.remove(&previous);
                        }
                    }
                    changes.moved.push(MovedIdentity {
                        identity: identity.clone(),
                        from: previous,
                    });
                }
            }
        }
        if !named.is_empty() {
            named.shrink_to_fit();
            self.by_person.insert(person.clone(), named);
        }
        changes
    }

    /// Forgets a person; returns the identities they held.
    pub fn remove_person(&mut self, person: &PersonId) -> Vec<Identity> {
        let held = self.by_person.remove(person).unwrap_or_default();
        for identity in &held {
            self.owner.remove(identity);
        }
        held
    }

    pub fn person_of(&self, identity: &Identity) -> Option<&PersonId> {
        self.owner.get(identity)
    }

    pub fn identities_of(&self, person: &PersonId) -> &[Identity] {
        self.by_person.get(person).map_or(&[], Vec::as_slice)
    }

    /// Number of identities indexed.
    pub fn len(&self) -> usize {
        self.owner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.owner.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Consent, rotating_id};
    use proptest::prelude::*;

    fn universe() -> Vec<Identity> {
        let mut all: Vec<Identity> = (0..3u8)
            .map(|k| Identity::App { key: [k + 1; 16] })
            .collect();
        all.extend((0..3).map(|i| Identity::Email {
            value: format!("e{i}@example.com"),
        }));
        all.extend((0..2).map(|i| Identity::Card {
            value: format!("card-{i}"),
        }));
        all
    }

    fn person(p: u8) -> PersonId {
        PersonId::from(format!("p-{p}").as_str())
    }

    fn record(p: u8, identities: Vec<Identity>) -> PersonRecord {
        PersonRecord {
            person: person(p),
            recipient: format!("r-{p}"),
            timezone: None,
            identities,
            consent: Consent::default(),
            interests: vec![],
            owns: vec![],
            stamps: Default::default(),
        }
    }

    #[test]
    fn merge_then_split() {
        let u = universe();
        let mut index = IdentityIndex::new();
        let _ = index.apply_record(&record(1, vec![u[0].clone(), u[3].clone()]));
        let _ = index.apply_record(&record(2, vec![u[1].clone(), u[4].clone()]));
        // The CRM merges p-2 into p-1.
        let merged = index.apply_record(&record(
            1,
            vec![u[0].clone(), u[3].clone(), u[1].clone(), u[4].clone()],
        ));
        assert_eq!(
            merged.moved,
            vec![
                MovedIdentity {
                    identity: u[1].clone(),
                    from: person(2)
                },
                MovedIdentity {
                    identity: u[4].clone(),
                    from: person(2)
                },
            ]
        );
        assert!(merged.added.is_empty() && merged.released.is_empty());
        assert_eq!(merged.people_losing(), vec![&person(2)]);
        assert!(index.identities_of(&person(2)).is_empty());
        let mut old_p2 = record(2, vec![u[1].clone(), u[4].clone(), u[7].clone()]);
        assert!(merged.strip_moved(&mut old_p2));
        assert_eq!(old_p2.identities, vec![u[7].clone()]);
        // Then splits the e-mail u[3] out to a new person p-3 and drops u[4].
        let _ = index.apply_record(&record(3, vec![u[3].clone()]));
        let split = index.apply_record(&record(1, vec![u[0].clone(), u[1].clone()]));
        assert_eq!(split.released, vec![u[4].clone()]);
        assert!(split.moved.is_empty());
        assert_eq!(index.person_of(&u[3]), Some(&person(3)));
        assert_eq!(index.person_of(&u[4]), None);
        assert_eq!(
            index.remove_person(&person(1)),
            vec![u[0].clone(), u[1].clone()]
        );
        assert_eq!(index.person_of(&u[0]), None);
        assert_eq!(index.len(), 1);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Upsert(u8, Vec<usize>),
        Remove(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..4u8, prop::collection::vec(0..8usize, 0..5)).prop_map(|(p, ids)| Op::Upsert(p, ids)),
            1 => (0..4u8).prop_map(Op::Remove),
        ]
    }

    /// The owner the history implies: the person of the last record naming
    /// the identity, unless that person was upserted again (without it) or
    /// removed since.
    fn owner_from_history(history: &[Op], identity: usize) -> Option<u8> {
        let k = history
            .iter()
            .rposition(|op| matches!(op, Op::Upsert(_, ids) if ids.contains(&identity)))?;
        let Op::Upsert(p, _) = &history[k] else {
            return None;
        };
        let touched_later = history[k + 1..].iter().any(|op| match op {
            Op::Upsert(q, _) | Op::Remove(q) => q == p,
        });
        (!touched_later).then_some(*p)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// After any sequence of upserts and removals every identity belongs
        /// to at most one person, and to the last record that named it; the
        /// reported changes are exactly the differences; and the rotating-ID
        /// table, kept in step through `update_table`, agrees for app keys.
        #[test]
        fn last_record_wins(ops in prop::collection::vec(op(), 1..30)) {
            let u = universe();
            let now_s = 2_642_976 * 600;
            let mut index = IdentityIndex::new();
            let mut table = RotatingIdTable::new();
            table.roll_to(now_s);
            let mut history = Vec::new();
            for op in ops {
                let before: Vec<Option<u8>> = (0..u.len()).map(|i| owner_from_history(&history, i)).collect();
                history.push(op.clone());
                match &op {
                    Op::Upsert(p, ids) => {
                        let changes = index.apply_record(&record(*p, ids.iter().map(|&i| u[i].clone()).collect()));
                        for (i, identity) in u.iter().enumerate() {
                            let named = ids.contains(&i);
                            let moved = changes.moved.iter().find(|m| &m.identity == identity).map(|m| m.from.clone());
                            let expected_moved = before[i].filter(|q| named && q != p).map(person);
                            prop_assert_eq!(moved, expected_moved);
                            prop_assert_eq!(changes.added.contains(identity), named && before[i].is_none());
                            prop_assert_eq!(changes.released.contains(identity), !named && before[i] == Some(*p));
                        }
                        changes.update_table(u32::from(*p), &mut table);
                    }
                    Op::Remove(p) => {
                        let held = index.remove_person(&person(*p));
                        for (i, identity) in u.iter().enumerate() {
                            prop_assert_eq!(held.contains(identity), before[i] == Some(*p));
                        }
                        table.remove_owner(u32::from(*p));
                    }
                }
                let mut total = 0;
                for p in 0..4u8 {
                    let held = index.identities_of(&person(p));
                    total += held.len();
                    for identity in held {
                        prop_assert_eq!(index.person_of(identity), Some(&person(p)));
                    }
                }
                prop_assert_eq!(total, index.len(), "no identity is held twice");
                for (i, identity) in u.iter().enumerate() {
                    let expected = owner_from_history(&history, i).map(person);
                    prop_assert_eq!(index.person_of(identity), expected.as_ref());
                    if let Identity::App { key } = identity {
                        let id = rotating_id(key, (now_s / 600) as u32);
                        prop_assert_eq!(table.lookup(&id), owner_from_history(&history, i).map(u32::from));
                    }
                }
            }
        }
    }
}
