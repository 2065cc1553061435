//! The chain's storage (chain-wide caps, docs/design.md): other stores'
//! entries folded into chain ledgers, the chain outbox of this store's own
//! entries, the index from chain person hash to local person, and the
//! chain tombstones. Trees and layouts in `keys.rs`.
//!
//! The reservation transaction (`Store::reserve_batch_unflushed`) reads
//! the chain ledger of each person it decides for and writes the chain
//! outbox entry of each nudge it reserves; a fold writes the chain ledger
//! in a transaction of its own. sled runs transactions over shared trees
//! one after the other, so a reservation sees a folded entry entirely or
//! not at all, never half, and never misses one folded before it began.

use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

use super::{Store, StoreError, json, keys, parse, tag_of, unwrap_tx, vault};
use crate::decide::{CHAIN_KEEP_MS, ChainCaps, ChainEntry, ChainLedger};
use crate::identity::PersonId;
use crate::privacy::ChainPerson;

/// What a reservation needs to decide under the chain's caps and to tell
/// the chain: the person's chain hash, the caps, their own time zone (for
/// `day = "home"`) and this store's decisions topic.
#[derive(Clone, Copy, Debug)]
pub struct ChainJob<'a> {
    pub person: ChainPerson,
    pub caps: &'a ChainCaps,
    pub home: Option<Tz>,
    /// `<p>/chain/decisions/<s>`.
    pub topic: &'a str,
}

/// One of this store's entries waiting for the broker's PUBACK: a
/// reserved nudge, an erasure or a consent change, ready to publish.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainOutboxEntry {
    /// The chain person hash (hex), to purge a person's entries.
    pub person: String,
    /// `decisions`, `erasures` or `consent` (the topic level).
    pub kind: String,
    pub topic: String,
    pub payload: String,
}

/// What folding another store's decision did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FoldOutcome {
    /// New: it counts against the person's chain caps from now on.
    Folded,
    /// Its nudge id was folded before (a redelivery): nothing changed.
    Duplicate,
    /// Dated no later than the person's erasure: dropped.
    Erased,
}

/// The `decisions` payload of a reserved nudge (docs/design.md, chain).
pub fn decision_payload(person: &ChainPerson, entry: &ChainEntry) -> String {
    serde_json::json!({
        "v": 1,
        "person": person.to_hex(),
        "kind": entry.kind,
        "rule": entry.rule,
        "at_ms": entry.at_ms,
        "nudge_id": entry.nudge_id,
    })
    .to_string()
}

/// The `erasures` entry this store publishes for a person it forgot.
pub fn erasure_entry(
    topics: &crate::topics::TopicNames,
    person: &ChainPerson,
    at_ms: i64,
) -> ChainOutboxEntry {
    ChainOutboxEntry {
        person: person.to_hex(),
        kind: crate::topics::ChainKind::Erasure.level().into(),
        topic: topics.chain_topic(crate::topics::ChainKind::Erasure),
        payload: serde_json::json!({
            "v": 1,
            "person": person.to_hex(),
            "erased_at_ms": at_ms,
        })
        .to_string(),
    }
}

/// The `consent` entry this store publishes for a change the app sent it.
pub fn consent_entry(
    topics: &crate::topics::TopicNames,
    person: &ChainPerson,
    consent: &[(crate::identity::Purpose, bool)],
    at_ms: i64,
) -> ChainOutboxEntry {
    let words: serde_json::Map<String, serde_json::Value> = consent
        .iter()
        .map(|(purpose, on)| (purpose.as_str().to_string(), serde_json::Value::Bool(*on)))
        .collect();
    ChainOutboxEntry {
        person: person.to_hex(),
        kind: crate::topics::ChainKind::Consent.level().into(),
        topic: topics.chain_topic(crate::topics::ChainKind::Consent),
        payload: serde_json::json!({
            "v": 1,
            "person": person.to_hex(),
            "consent": words,
            "at_ms": at_ms,
        })
        .to_string(),
    }
}

fn i64_value(bytes: &[u8]) -> i64 {
    i64::from_be_bytes(bytes.try_into().unwrap_or([0; 8]))
}

impl Store {
    /// The other stores' entries folded for a chain person.
    pub fn chain_ledger(&self, person: &ChainPerson) -> Result<ChainLedger, StoreError> {
        match self.chain_ledgers.get(keys::chain(person))? {
            Some(v) => parse(keys::CHAIN_LEDGERS, &v),
            None => Ok(ChainLedger::default()),
        }
    }

    /// Fold other stores' decisions, in one transaction, then one flush:
    /// durable when it returns (the caller acks the messages only then).
    /// Idempotent by nudge id (`chain_folded.v4`, kept as long as a ledger
    /// keeps an entry); an entry dated no later than the person's chain
    /// tombstone is dropped. `now_ms` is the wall clock: it prunes and
    /// re-dates entries from a clock far ahead (`ChainLedger::fold`).
    pub fn chain_fold(
        &self,
        entries: &[(ChainPerson, ChainEntry)],
        now_ms: i64,
    ) -> Result<Vec<FoldOutcome>, StoreError> {
        let outcomes = self.chain_fold_unflushed(entries, now_ms)?;
        self.flush()?;
        Ok(outcomes)
    }

    /// [`Store::chain_fold`] without the flush.
    pub fn chain_fold_unflushed(
        &self,
        entries: &[(ChainPerson, ChainEntry)],
        now_ms: i64,
    ) -> Result<Vec<FoldOutcome>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        unwrap_tx(
            (
                &self.chain_ledgers,
                &self.chain_folded,
                &self.chain_tombstones,
            )
                .transaction(|(ledgers, folded, tombstones)| {
                    let mut outcomes = Vec::with_capacity(entries.len());
                    let mut changed: std::collections::HashMap<ChainPerson, ChainLedger> =
                        std::collections::HashMap::new();
                    for (person, entry) in entries {
                        let key = keys::chain(person);
                        if folded.get(entry.nudge_id.as_bytes())?.is_some() {
                            outcomes.push(FoldOutcome::Duplicate);
                            continue;
                        }
                        if let Some(erased) = tombstones.get(key)? {
                            if entry.at_ms <= i64_value(&erased) {
                                outcomes.push(FoldOutcome::Erased);
                                continue;
                            }
                        }
                        let ledger = match changed.entry(*person) {
                            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                            std::collections::hash_map::Entry::Vacant(e) => {
                                e.insert(match ledgers.get(key)? {
                                    Some(v) => parse(keys::CHAIN_LEDGERS, &v)
                                        .map_err(ConflictableTransactionError::Abort)?,
                                    None => ChainLedger::default(),
                                })
                            }
                        };
                        let at_ms = entry.at_ms;
                        if ledger.fold(entry.clone(), now_ms) {
                            folded.insert(entry.nudge_id.as_bytes(), &at_ms.to_be_bytes())?;
                            outcomes.push(FoldOutcome::Folded);
                        } else {
                            outcomes.push(FoldOutcome::Duplicate);
                        }
                    }
                    for (person, ledger) in &changed {
                        let key = keys::chain(person);
                        if ledger.entries.is_empty() {
                            ledgers.remove(&key)?;
                        } else {
                            ledgers.insert(&key, json(ledger))?;
                        }
                    }
                    Ok(outcomes)
                }),
        )
    }

    /// Put erasures or consent changes in the chain outbox (one
    /// transaction, then a flush): durable, published by delivery, kept
    /// until the broker's PUBACK.
    pub fn chain_queue(&self, entries: &[ChainOutboxEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let values: Vec<Vec<u8>> = entries.iter().map(json).collect();
        unwrap_tx(
            (&self.meta, &self.chain_outbox).transaction(|(meta, outbox)| {
                let mut seq = super::seq_value(meta.get(keys::META_NEXT_SEQ)?.as_deref());
                for value in &values {
                    outbox.insert(&keys::outbox(seq), value.as_slice())?;
                    seq += 1;
                }
                meta.insert(keys::META_NEXT_SEQ, &seq.to_be_bytes())?;
                Ok(())
            }),
        )?;
        self.flush()
    }

    /// Durable chain outbox entries with sequence >= `from`, in order
    /// (as [`Store::outbox_from`]: nothing not yet flushed).
    pub fn chain_outbox_from(
        &self,
        from: u64,
    ) -> impl Iterator<Item = Result<(u64, ChainOutboxEntry), StoreError>> + '_ {
        let below = self.durable_below.load(std::sync::atomic::Ordering::SeqCst);
        self.chain_outbox
            .range(keys::outbox(from)..keys::outbox(below.max(from)))
            .map(|item| {
                let (k, v) = item?;
                let seq = keys::outbox_seq(&k).ok_or(StoreError::Corrupt {
                    tree: keys::CHAIN_OUTBOX,
                    reason: "key is not a u64".into(),
                })?;
                Ok((seq, parse(keys::CHAIN_OUTBOX, &v)?))
            })
    }

    /// The broker acknowledged it. Not flushed: a crash republishes it,
    /// and the nudge id makes that harmless to the other stores.
    pub fn chain_outbox_remove(&self, seq: u64) -> Result<(), StoreError> {
        self.chain_outbox.remove(keys::outbox(seq))?;
        Ok(())
    }

    pub fn chain_outbox_len(&self) -> usize {
        self.chain_outbox.len()
    }

    /// When the chain person was last erased (here or in another store),
    /// if within the retention window.
    pub fn chain_tombstone(&self, person: &ChainPerson) -> Result<Option<i64>, StoreError> {
        Ok(self
            .chain_tombstones
            .get(keys::chain(person))?
            .map(|v| i64_value(&v)))
    }

    /// The chain side of an erasure (the local side is
    /// [`Store::forget_person`]): the person's chain ledger, their index
    /// entry and their entries still in the chain outbox go, a chain
    /// tombstone refuses their older entries and records, and `notice`
    /// (the erasure for the other stores, when it started here) is queued.
    /// One transaction, then a flush.
    pub fn chain_forget(
        &self,
        person: &ChainPerson,
        erased_at_ms: i64,
        notice: Option<&ChainOutboxEntry>,
    ) -> Result<usize, StoreError> {
        let hex = person.to_hex();
        let mut pending = Vec::new();
        for item in self.chain_outbox.iter() {
            let (key, value) = item?;
            let entry: ChainOutboxEntry = parse(keys::CHAIN_OUTBOX, &value)?;
            if entry.person == hex && entry.kind != "erasures" {
                pending.push(key);
            }
        }
        let notice = notice.map(json);
        let key = keys::chain(person);
        let removed = unwrap_tx(
            (
                &self.meta,
                &self.chain_outbox,
                &self.chain_ledgers,
                &self.chain_people,
                &self.chain_tombstones,
            )
                .transaction(|(meta, outbox, ledgers, people, tombstones)| {
                    let mut removed = 0;
                    for k in &pending {
                        removed += usize::from(outbox.remove(k)?.is_some());
                    }
                    removed += usize::from(ledgers.remove(&key)?.is_some());
                    removed += usize::from(people.remove(&key)?.is_some());
                    let erased = tombstones
                        .get(key)?
                        .map_or(erased_at_ms, |t| i64_value(&t).max(erased_at_ms));
                    tombstones.insert(&key, &erased.to_be_bytes())?;
                    if let Some(notice) = &notice {
                        let seq = super::seq_value(meta.get(keys::META_NEXT_SEQ)?.as_deref());
                        outbox.insert(&keys::outbox(seq), notice.as_slice())?;
                        meta.insert(keys::META_NEXT_SEQ, &(seq + 1).to_be_bytes())?;
                    }
                    Ok(removed)
                }),
        )?;
        self.flush()?;
        Ok(removed)
    }

    /// Record who these chain hashes are here (`chain_people.v4`), sealed
    /// under each person's key: erased with them. An entry that already
    /// names the person is left alone (one read, no write: a CRM record
    /// seen again costs nothing more). Not flushed: a lost entry is
    /// written again by [`Store::chain_index_sync`] at the next start.
    pub fn chain_index_put(&self, people: &[(ChainPerson, &str)]) -> Result<(), StoreError> {
        let mut missing = Vec::new();
        for (person, id) in people {
            if self.chain_index_entry(person)?.as_deref() != Some(*id) {
                missing.push((*person, *id));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = missing.iter().map(|(_, id)| *id).collect();
        let sealers = self.sealers(&ids)?;
        let mut batch = sled::Batch::default();
        for ((person, id), sealer) in missing.iter().zip(sealers) {
            let value = [
                &sealer.tag[..],
                &sealer.seal(id.as_bytes(), &vault::nonce()?),
            ]
            .concat();
            batch.insert(&keys::chain(person), value);
        }
        self.chain_people.apply_batch(batch)?;
        Ok(())
    }

    /// The person id a chain hash's index entry names, if it opens with
    /// that person's key: an entry left by an erasure the chain did not
    /// hear of (`people forget` offline) opens with no key, or not with
    /// the key of the person enrolled again since, and names no one.
    fn chain_index_entry(&self, person: &ChainPerson) -> Result<Option<String>, StoreError> {
        let Some(value) = self.chain_people.get(keys::chain(person))? else {
            return Ok(None);
        };
        let tag = tag_of(&value, keys::CHAIN_PEOPLE)?;
        Ok(self
            .sealer_for_tag(tag)?
            .and_then(|sealer| vault::open(&sealer.key, &sealer.tag, &value[16..]))
            .map(|id| String::from_utf8_lossy(&id).into_owned()))
    }

    /// The local person a chain hash names, if they are enrolled here.
    pub fn chain_index_person(&self, person: &ChainPerson) -> Result<Option<PersonId>, StoreError> {
        Ok(self
            .chain_index_entry(person)?
            .map(|id| PersonId::from(id.as_str())))
    }

    /// Whether `chain_people.v4` is known to hold every person, so that a
    /// start can skip [`Store::chain_index_sync`] (which reads every
    /// record and every index entry: sled keeps what that pages in). True
    /// when an index under this secret was marked complete for the people
    /// snapshot that is current: any change to the people since would have
    /// made another snapshot current, or none.
    pub fn chain_index_complete(&self, index_of: &ChainPerson) -> Result<bool, StoreError> {
        let Some(snapshot) = self.people_snapshot_id() else {
            return Ok(false);
        };
        Ok(
            self.meta.get(keys::META_CHAIN_INDEX_OF)?.as_deref() == Some(&index_of.0[..])
                && self.meta.get(keys::META_CHAIN_INDEX_AT)?.as_deref() == Some(&snapshot[..]),
        )
    }

    /// Record that the index holds every person of the current people
    /// snapshot: after a sync, or after a run in which the daemon indexed
    /// every person it changed. Nothing happens without a current snapshot.
    pub fn mark_chain_index_complete(&self) -> Result<(), StoreError> {
        if let Some(snapshot) = self.people_snapshot_id() {
            self.meta.insert(keys::META_CHAIN_INDEX_AT, &snapshot[..])?;
            self.flush()?;
        }
        Ok(())
    }

    /// Bring `chain_people.v4` up to date with the people: after an import
    /// made while the daemon was stopped, or under a new chain secret
    /// (`index_of` is `chain_person(secret, "")`: another one clears the
    /// index first). Each person costs one HMAC and one read; only missing
    /// entries are written, in batches. Returns how many were added.
    pub fn chain_index_sync(
        &self,
        index_of: &ChainPerson,
        hash: impl Fn(&str) -> ChainPerson,
    ) -> Result<usize, StoreError> {
        if self.meta.get(keys::META_CHAIN_INDEX_OF)?.as_deref() != Some(&index_of.0[..]) {
            self.chain_people.clear()?;
            self.meta
                .insert(keys::META_CHAIN_INDEX_OF, &index_of.0[..])?;
        }
        let mut added = 0;
        let mut missing: Vec<(ChainPerson, String)> = Vec::new();
        let mut put = |missing: &mut Vec<(ChainPerson, String)>| -> Result<(), StoreError> {
            let batch: Vec<(ChainPerson, &str)> =
                missing.iter().map(|(p, id)| (*p, id.as_str())).collect();
            self.chain_index_put(&batch)?;
            added += missing.len();
            missing.clear();
            Ok(())
        };
        for record in self.people() {
            let record = record?;
            let person = hash(record.person.as_str());
            if self.chain_index_entry(&person)?.as_deref() != Some(record.person.as_str()) {
                missing.push((person, record.person.as_str().to_string()));
            }
            if missing.len() >= 1024 {
                put(&mut missing)?;
            }
        }
        put(&mut missing)?;
        self.flush()?;
        Ok(added)
    }

    /// Retention of the chain's trees: ledger entries and folded nudge ids
    /// older than the longest chain window (eight days before `now_ms`),
    /// chain tombstones older than `tombstone_cutoff_ms`. Returns how many
    /// went.
    pub fn chain_sweep(&self, now_ms: i64, tombstone_cutoff_ms: i64) -> Result<usize, StoreError> {
        let mut removed = 0;
        let oldest = now_ms - CHAIN_KEEP_MS;
        for item in self.chain_folded.iter() {
            let (key, value) = item?;
            if i64_value(&value) < oldest {
                self.chain_folded.remove(&key)?;
                removed += 1;
            }
        }
        for item in self.chain_ledgers.iter() {
            let (key, _) = item?;
            // Read-modify-write in a transaction of its own, so that a
            // fold running meanwhile is not lost.
            let pruned = unwrap_tx(self.chain_ledgers.transaction(|ledgers| {
                let Some(value) = ledgers.get(&key)? else {
                    return Ok(0);
                };
                let mut ledger: ChainLedger = parse(keys::CHAIN_LEDGERS, &value)
                    .map_err(ConflictableTransactionError::Abort)?;
                let before = ledger.entries.len();
                ledger.prune(now_ms);
                let pruned = before - ledger.entries.len();
                if ledger.entries.is_empty() {
                    ledgers.remove(&key)?;
                } else if pruned > 0 {
                    ledgers.insert(&key, json(&ledger))?;
                }
                Ok(pruned)
            }))?;
            removed += pruned;
        }
        for item in self.chain_tombstones.iter() {
            let (key, value) = item?;
            if i64_value(&value) < tombstone_cutoff_ms {
                self.chain_tombstones.remove(&key)?;
                removed += 1;
            }
        }
        self.flush()?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::{Caps, ChainDay, Limits, NudgeKind, SkipReason};
    use crate::privacy::chain_person;
    use crate::store::{Reservation, ReserveCandidate, ReserveJob};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    /// 2026-12-07 12:00 UTC.
    const NOON: i64 = 1_796_644_800_000;

    fn open(path: &std::path::Path) -> Store {
        super::super::reopen_closed(path)
    }

    fn entry(id: &str, at_ms: i64) -> ChainEntry {
        ChainEntry {
            at_ms,
            nudge_id: id.into(),
            kind: NudgeKind::Info,
            rule: "laptop-dwell".into(),
        }
    }

    fn store_caps() -> Caps {
        Caps {
            per_visit: 5,
            per_day: 5,
            per_week: 10,
            min_gap_s: 0,
            per_kind_per_day: None,
            rule_cooldown_s: 0,
            store_per_minute: None,
        }
    }

    fn chain_caps() -> ChainCaps {
        ChainCaps {
            per_day: 1,
            per_week: 5,
            min_gap_s: 0,
            day: ChainDay::Chain,
            timezone: chrono_tz::Europe::Berlin,
        }
    }

    fn candidate(id: &str, now_ms: i64) -> ReserveCandidate {
        ReserveCandidate {
            nudge_id: id.into(),
            topic: "retail/s1/nudges/r-1".into(),
            payload: "{}".into(),
            kind: NudgeKind::Compare,
            rule: "laptop-compare".into(),
            zone: "laptops".into(),
            visit: 1,
            now_ms,
            expires_at_ms: now_ms + 900_000,
            held: None,
        }
    }

    fn reserve(store: &Store, person: &str, id: &str, now_ms: i64) -> Reservation {
        let (caps, chain, tz) = (store_caps(), chain_caps(), chrono_tz::UTC);
        let person_id = PersonId::from(person);
        let candidates = [candidate(id, now_ms)];
        let job = ReserveJob {
            person: &person_id,
            recipient: "r-1",
            candidates: &candidates,
            limits: Limits {
                caps: &caps,
                quiet: None,
                tz: &tz,
                enabled: true,
            },
            chain: Some(ChainJob {
                person: chain_person(SECRET, person),
                caps: &chain,
                home: None,
                topic: "retail/chain/decisions/s1",
            }),
        };
        store.reserve_batch(&[job]).unwrap().remove(0).remove(0)
    }

    #[test]
    fn folding_is_idempotent_by_nudge_id_and_durable() {
        let dir = tempfile::tempdir().unwrap();
        let p = chain_person(SECRET, "p-1");
        {
            let store = open(dir.path());
            let first = store
                .chain_fold(
                    &[
                        (p, entry("n-1", NOON)),
                        (p, entry("n-2", NOON + 1)),
                        (p, entry("n-1", NOON)),
                    ],
                    NOON,
                )
                .unwrap();
            assert_eq!(
                first,
                [
                    FoldOutcome::Folded,
                    FoldOutcome::Folded,
                    FoldOutcome::Duplicate
                ]
            );
        }
        let store = open(dir.path());
        // After a restart the same entries are still known.
        let again = store
            .chain_fold(
                &[(p, entry("n-2", NOON + 1)), (p, entry("n-1", NOON))],
                NOON + 5,
            )
            .unwrap();
        assert_eq!(again, [FoldOutcome::Duplicate, FoldOutcome::Duplicate]);
        let ledger = store.chain_ledger(&p).unwrap();
        let ids: Vec<&str> = ledger.entries.iter().map(|e| e.nudge_id.as_str()).collect();
        assert_eq!(ids, ["n-1", "n-2"]);
        // Another person's ledger is untouched.
        assert!(
            store
                .chain_ledger(&chain_person(SECRET, "p-2"))
                .unwrap()
                .entries
                .is_empty()
        );
    }

    #[test]
    fn a_folded_entry_holds_the_reservation_and_a_reservation_queues_its_chain_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let p1 = chain_person(SECRET, "p-1");
        store
            .chain_fold(&[(p1, entry("other-store-1", NOON - 3_600_000))], NOON)
            .unwrap();
        // p-1 was nudged in another store today: chain per_day = 1 holds.
        assert_eq!(
            reserve(&store, "p-1", "n-a", NOON),
            Reservation::Held(SkipReason::ChainPerDay { limit: 1 })
        );
        assert_eq!(store.chain_outbox_len(), 0);
        // p-2 was not: reserved, and the chain hears of it with the same seq.
        let Reservation::Reserved { seq } = reserve(&store, "p-2", "n-b", NOON) else {
            panic!("p-2 should be reserved");
        };
        let queued: Vec<(u64, ChainOutboxEntry)> = store
            .chain_outbox_from(0)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].0, seq);
        assert_eq!(queued[0].1.topic, "retail/chain/decisions/s1");
        assert_eq!(queued[0].1.kind, "decisions");
        let payload: serde_json::Value = serde_json::from_str(&queued[0].1.payload).unwrap();
        assert_eq!(
            payload,
            serde_json::json!({"v": 1, "person": chain_person(SECRET, "p-2").to_hex(),
                "kind": "compare", "rule": "laptop-compare", "at_ms": NOON, "nudge_id": "n-b"})
        );
        // The nudge itself is in the outbox beside it.
        assert_eq!(store.outbox_from(0).count(), 1);
        // Its own send counts for the chain too: the next is held by the chain cap.
        assert_eq!(
            reserve(&store, "p-2", "n-c", NOON + 60_000),
            Reservation::Held(SkipReason::ChainPerDay { limit: 1 })
        );
        // Removed on the PUBACK.
        store.chain_outbox_remove(seq).unwrap();
        assert_eq!(store.chain_outbox_len(), 0);
        // Another day in Berlin: p-1 may have one again.
        assert!(matches!(
            reserve(&store, "p-1", "n-d", NOON + 86_400_000),
            Reservation::Reserved { .. }
        ));
    }

    #[test]
    fn queued_entries_survive_a_restart_and_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = chain_person(SECRET, "p-1");
        let queued = ChainOutboxEntry {
            person: p.to_hex(),
            kind: "consent".into(),
            topic: "retail/chain/consent/s1".into(),
            payload: "{}".into(),
        };
        {
            let store = open(dir.path());
            assert!(matches!(
                reserve(&store, "p-1", "n-a", NOON),
                Reservation::Reserved { .. }
            ));
            store.chain_queue(std::slice::from_ref(&queued)).unwrap();
        }
        let store = open(dir.path());
        let kinds: Vec<String> = store
            .chain_outbox_from(0)
            .map(|e| e.unwrap().1.kind)
            .collect();
        assert_eq!(kinds, ["decisions", "consent"]);
    }

    #[test]
    fn a_chain_erasure_clears_the_person_and_refuses_their_older_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let p = chain_person(SECRET, "p-1");
        store.chain_index_put(&[(p, "p-1")]).unwrap();
        assert_eq!(
            store.chain_index_person(&p).unwrap(),
            Some(PersonId::from("p-1"))
        );
        store.chain_fold(&[(p, entry("n-1", NOON))], NOON).unwrap();
        assert!(matches!(
            reserve(&store, "p-1", "n-a", NOON + 86_400_000),
            Reservation::Reserved { .. }
        ));
        let notice = ChainOutboxEntry {
            person: p.to_hex(),
            kind: "erasures".into(),
            topic: "retail/chain/erasures/s1".into(),
            payload: "{}".into(),
        };
        let erased_at = NOON + 90_000_000;
        store.chain_forget(&p, erased_at, Some(&notice)).unwrap();
        assert!(store.chain_ledger(&p).unwrap().entries.is_empty());
        assert_eq!(store.chain_index_person(&p).unwrap(), None);
        assert_eq!(store.chain_tombstone(&p).unwrap(), Some(erased_at));
        // Their pending decision is gone; the erasure itself is queued.
        let kinds: Vec<String> = store
            .chain_outbox_from(0)
            .map(|e| e.unwrap().1.kind)
            .collect();
        assert_eq!(kinds, ["erasures"]);
        // A late entry from before the erasure is dropped, a later one counts.
        let outcomes = store
            .chain_fold(
                &[
                    (p, entry("n-old", erased_at - 1)),
                    (p, entry("n-new", erased_at + 1)),
                ],
                erased_at + 10,
            )
            .unwrap();
        assert_eq!(outcomes, [FoldOutcome::Erased, FoldOutcome::Folded]);
    }

    #[test]
    fn a_complete_index_is_trusted_only_for_the_people_it_was_marked_for() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let person = |n: u32| {
            crate::identity::PersonRecord::from_json(&format!(
                r#"{{"person": "p-{n}", "recipient": "r-{n}", "consent": {{"proximity": true}}}}"#
            ))
            .unwrap()
        };
        store.upsert_person(&person(1)).unwrap();
        let hash = |id: &str| chain_person(SECRET, id);
        let other = |id: &str| chain_person(b"another chain secret", id);
        // No snapshot yet: nothing to vouch for.
        store.chain_index_sync(&hash(""), hash).unwrap();
        store.mark_chain_index_complete().unwrap();
        assert!(!store.chain_index_complete(&hash("")).unwrap());
        store.write_people_snapshot().unwrap();
        assert!(
            !store.chain_index_complete(&hash("")).unwrap(),
            "another snapshot"
        );
        store.mark_chain_index_complete().unwrap();
        assert!(store.chain_index_complete(&hash("")).unwrap());
        assert!(
            !store.chain_index_complete(&other("")).unwrap(),
            "another secret"
        );
        // Reopened, the same holds.
        drop(store);
        let store = open(dir.path());
        assert!(store.chain_index_complete(&hash("")).unwrap());
        // A person changed (as by an import while the daemon was stopped):
        // the index is not trusted, whatever snapshot follows.
        store.upsert_person(&person(2)).unwrap();
        assert!(!store.chain_index_complete(&hash("")).unwrap());
        store.write_people_snapshot().unwrap();
        assert!(!store.chain_index_complete(&hash("")).unwrap());
        assert_eq!(store.chain_index_sync(&hash(""), hash).unwrap(), 1);
        store.mark_chain_index_complete().unwrap();
        assert!(store.chain_index_complete(&hash("")).unwrap());
    }

    #[test]
    fn the_index_follows_the_people_and_forgets_the_erased() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        for (person, recipient) in [("p-1", "r-1"), ("p-2", "r-2")] {
            let record = crate::identity::PersonRecord::from_json(&format!(
                r#"{{"person": "{person}", "recipient": "{recipient}", "consent": {{"proximity": true}}}}"#
            ))
            .unwrap();
            store.upsert_person(&record).unwrap();
        }
        let hash = |id: &str| chain_person(SECRET, id);
        assert_eq!(store.chain_index_sync(&hash(""), hash).unwrap(), 2);
        assert_eq!(
            store.chain_index_sync(&hash(""), hash).unwrap(),
            0,
            "nothing missing"
        );
        assert_eq!(
            store.chain_index_person(&hash("p-2")).unwrap(),
            Some(PersonId::from("p-2"))
        );
        // Erased locally (offline, the chain not told): the key is gone,
        // so is who the hash was.
        store.forget_person("p-2", NOON).unwrap();
        assert_eq!(store.chain_index_person(&hash("p-2")).unwrap(), None);
        // Enrolled again (a new key): the stale entry is written anew.
        let again = crate::identity::PersonRecord::from_json(
            r#"{"person": "p-2", "recipient": "r-2", "consent": {"proximity": true}}"#,
        )
        .unwrap();
        store.upsert_person(&again).unwrap();
        assert_eq!(store.chain_index_person(&hash("p-2")).unwrap(), None);
        assert_eq!(store.chain_index_sync(&hash(""), hash).unwrap(), 1);
        assert_eq!(
            store.chain_index_person(&hash("p-2")).unwrap(),
            Some(PersonId::from("p-2"))
        );
        store.forget_person("p-2", NOON + 1).unwrap();
        // Another secret: the index is rebuilt under it.
        let other = |id: &str| chain_person(b"another secret, 16+ bytes", id);
        assert_eq!(store.chain_index_sync(&other(""), other).unwrap(), 1);
        assert_eq!(store.chain_index_person(&hash("p-1")).unwrap(), None);
        assert_eq!(
            store.chain_index_person(&other("p-1")).unwrap(),
            Some(PersonId::from("p-1"))
        );
    }

    #[test]
    fn a_layout_3_database_opens_as_4_with_everything_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            assert!(matches!(
                reserve(&store, "p-1", "n-a", NOON),
                Reservation::Reserved { .. }
            ));
            // As a gateway before the chain left it.
            store.chain_outbox.clear().unwrap();
            store
                .meta
                .insert(keys::META_LAYOUT_VERSION, &3u32.to_be_bytes())
                .unwrap();
            store.flush().unwrap();
        }
        let store = open(dir.path());
        assert_eq!(store.layout_version().unwrap(), keys::LAYOUT_VERSION);
        assert_eq!(store.ledger("p-1").unwrap().sent.len(), 1);
        assert_eq!(store.outbox_from(0).count(), 1);
        assert_eq!(store.chain_outbox_len(), 0);
    }

    #[test]
    fn the_sweep_drops_what_no_chain_cap_can_see() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let p = chain_person(SECRET, "p-1");
        let day = 86_400_000;
        store
            .chain_fold(
                &[(p, entry("old", NOON - 7 * day)), (p, entry("new", NOON))],
                NOON,
            )
            .unwrap();
        store
            .chain_forget(&chain_person(SECRET, "gone"), NOON - 40 * day, None)
            .unwrap();
        let removed = store.chain_sweep(NOON + 2 * day, NOON - 30 * day).unwrap();
        // The old entry, its folded id and the old tombstone.
        assert_eq!(removed, 3);
        let ids: Vec<String> = store
            .chain_ledger(&p)
            .unwrap()
            .entries
            .into_iter()
            .map(|e| e.nudge_id)
            .collect();
        assert_eq!(ids, ["new"]);
        assert_eq!(
            store
                .chain_tombstone(&chain_person(SECRET, "gone"))
                .unwrap(),
            None
        );
    }
}

#[cfg(test)]
mod interleaving {
    //! The chain caps through the store itself: reservations and folds
    //! interleaved on one real database, each reservation's verdict
    //! compared with a count of what had been folded and reserved before.

    use proptest::prelude::*;

    use super::*;
    use crate::decide::{Caps, ChainDay, Limits, NudgeKind, SkipReason};
    use crate::privacy::chain_person;
    use crate::store::{Reservation, ReserveCandidate, ReserveJob};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const T0: i64 = 1_796_644_800_000;

    #[derive(Clone, Debug)]
    enum Op {
        Reserve {
            person: u8,
            after_ms: i64,
        },
        Fold {
            person: u8,
            after_ms: i64,
            back_ms: i64,
            id: u8,
        },
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        let after = prop_oneof![0i64..600_000, 0i64..20 * 3_600_000];
        proptest::collection::vec(
            prop_oneof![
                (0u8..2, after.clone())
                    .prop_map(|(person, after_ms)| Op::Reserve { person, after_ms }),
                (0u8..2, after, 0i64..2 * 86_400_000, 0u8..12).prop_map(
                    |(person, after_ms, back_ms, id)| Op::Fold {
                        person,
                        after_ms,
                        back_ms,
                        id
                    }
                ),
            ],
            1..25,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn reservations_keep_the_chain_caps_over_what_was_folded_before_them(
            ops in ops(),
            per_day in 1u32..3,
            per_week in 1u32..5,
            min_gap_s in prop_oneof![Just(0u32), 0u32..3600],
        ) {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let caps = Caps::wide();
            let chain = ChainCaps {
                per_day,
                per_week,
                min_gap_s,
                day: ChainDay::Chain,
                timezone: chrono_tz::Europe::Berlin,
            };
            let tz = chrono_tz::Europe::Berlin;
            // What each person has, as far as this store knows: own sends
            // and folded entries (nudge id → time), in the model.
            let mut known: [Vec<(String, i64)>; 2] = [Vec::new(), Vec::new()];
            let mut now = T0;
            for (n, op) in ops.iter().enumerate() {
                match *op {
                    Op::Fold { person, after_ms, back_ms, id } => {
                        now += after_ms;
                        let nudge_id = format!("other-{id}");
                        let at_ms = now - back_ms;
                        let p = chain_person(SECRET, &format!("p-{person}"));
                        let outcome = store
                            .chain_fold(&[(p, ChainEntry { at_ms, nudge_id: nudge_id.clone(), kind: NudgeKind::Info, rule: "r".into() })], now)
                            .unwrap()[0];
                        // A nudge id names one entry of one person.
                        let seen = known.iter().flatten().any(|(id, _)| *id == nudge_id);
                        prop_assert_eq!(outcome == FoldOutcome::Duplicate, seen);
                        if !seen {
                            known[usize::from(person)].push((nudge_id, at_ms));
                        }
                    }
                    Op::Reserve { person, after_ms } => {
                        now += after_ms;
                        let id = format!("p-{person}");
                        let candidates = [ReserveCandidate {
                            nudge_id: format!("own-{n}"),
                            topic: "t".into(),
                            payload: "{}".into(),
                            kind: NudgeKind::Info,
                            rule: "r".into(),
                            zone: "z".into(),
                            visit: n as i64,
                            now_ms: now,
                            expires_at_ms: now + 900_000,
                            held: None,
                        }];
                        let person_id = PersonId::from(id.as_str());
                        let job = ReserveJob {
                            person: &person_id,
                            recipient: "r",
                            candidates: &candidates,
                            limits: Limits { caps: &caps, quiet: None, tz: &tz, enabled: true },
                            chain: Some(ChainJob {
                                person: chain_person(SECRET, &id),
                                caps: &chain,
                                home: None,
                                topic: "retail/chain/decisions/s1",
                            }),
                        };
                        let got = store.reserve_batch_unflushed(&[job]).unwrap().remove(0).remove(0);
                        let times: Vec<i64> = known[usize::from(person)].iter().map(|(_, t)| *t).collect();
                        let date = |ms: i64| chrono::TimeZone::timestamp_millis_opt(&tz, ms).unwrap().date_naive();
                        let monday = |ms: i64| {
                            let d = date(ms);
                            d - chrono::Days::new(chrono::Datelike::weekday(&d).num_days_from_monday().into())
                        };
                        let day = times.iter().filter(|&&t| date(t) >= date(now)).count() as u32;
                        let week = times.iter().filter(|&&t| monday(t) >= monday(now)).count() as u32;
                        let close = times.iter().any(|&t| (now - t).abs() < i64::from(min_gap_s) * 1000);
                        let expected = if day >= per_day {
                            Some(SkipReason::ChainPerDay { limit: per_day })
                        } else if week >= per_week {
                            Some(SkipReason::ChainPerWeek { limit: per_week })
                        } else if close {
                            Some(SkipReason::ChainMinGap { gap_s: min_gap_s })
                        } else {
                            None
                        };
                        match expected {
                            Some(reason) => prop_assert_eq!(got, Reservation::Held(reason)),
                            None => {
                                prop_assert!(matches!(got, Reservation::Reserved { .. }), "{:?}", got);
                                known[usize::from(person)].push((format!("own-{n}"), now));
                            }
                        }
                    }
                }
            }
            // Every reserved nudge is in the chain outbox, once.
            let own: usize = known.iter().flatten().filter(|(id, _)| id.starts_with("own-")).count();
            prop_assert_eq!(store.chain_outbox_len(), own);
        }
    }
}
