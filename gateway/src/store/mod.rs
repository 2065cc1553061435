//! Storage: the only module that touches sled. Reservations of cap slots,
//! the outbox and the decision log are written in one transaction
//! (DESIGN §4 invariant 1), and flushed before anything is published.

pub mod keys;

use std::path::Path;

use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::decide::{
    Caps, Ledger, NudgeKind, QuietHours, SentNudge, SkipReason, StoreRateLedger, check_caps,
};
use crate::identity::{PersonId, PersonRecord};
use crate::presence::VisitSeed;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage at {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    #[error(
        "storage layout version {found} was written by a newer gateway (this one knows up to {known})"
    )]
    TooNew { found: u32, known: u32 },
    #[error("storage: corrupt value in {tree}: {reason}")]
    Corrupt { tree: &'static str, reason: String },
    #[error("recipient {recipient:?} already belongs to another person")]
    RecipientTaken { recipient: String },
}

/// A nudge waiting for the broker's acknowledgement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub nudge_id: String,
    pub person: String,
    pub recipient: String,
    pub topic: String,
    pub payload: String,
    pub created_ms: i64,
    pub expires_at_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionOutcome {
    Sent,
    Held,
}

/// One line of the decision log, for `gateway explain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionEntry {
    pub at_ms: i64,
    pub person: String,
    pub nudge_id: String,
    pub rule: String,
    pub kind: NudgeKind,
    pub zone: String,
    pub visit: i64,
    pub outcome: DecisionOutcome,
    pub reason: Option<SkipReason>,
}

/// Everything a reservation needs; built outside the transaction so the
/// closure can safely be retried (ids and payload are made once).
pub struct ReserveRequest<'a> {
    pub person: &'a PersonId,
    pub recipient: &'a str,
    pub topic: String,
    pub nudge_id: String,
    pub payload: String,
    pub kind: NudgeKind,
    pub rule: &'a str,
    pub zone: &'a str,
    pub visit: i64,
    pub now_ms: i64,
    pub expires_at_ms: i64,
    pub caps: &'a Caps,
    pub quiet: Option<&'a QuietHours>,
    pub tz: &'a Tz,
    pub enabled: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reservation {
    Reserved { seq: u64 },
    Held(SkipReason),
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    meta: sled::Tree,
    people: sled::Tree,
    recipients: sled::Tree,
    ledgers: sled::Tree,
    outbox: sled::Tree,
    decisions: sled::Tree,
    decision_by_nudge: sled::Tree,
    visits: sled::Tree,
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("storage values always serialise")
}

fn parse<T: for<'de> Deserialize<'de>>(tree: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        tree,
        reason: e.to_string(),
    })
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn tx_parse<T: for<'de> Deserialize<'de>>(tree: &'static str, bytes: &[u8]) -> TxResult<T> {
    parse(tree, bytes).map_err(ConflictableTransactionError::Abort)
}

fn unwrap_tx<T>(result: Result<T, TransactionError<StoreError>>) -> Result<T, StoreError> {
    result.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
    })
}

impl Store {
    /// Open (or create) the database directory, readable by its owner only.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: path.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(path).map_err(|e| open_err(e.to_string()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| open_err(e.to_string()))?;
        }
        let db = sled::Config::new().path(path).open().map_err(|e| match e {
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") => {
                open_err("in use by another process (is the gateway running? stop it, or change people over MQTT)".into())
            }
            other => open_err(other.to_string()),
        })?;
        let store = Store {
            meta: db.open_tree(keys::META)?,
            people: db.open_tree(keys::PEOPLE)?,
            recipients: db.open_tree(keys::RECIPIENTS)?,
            ledgers: db.open_tree(keys::LEDGERS)?,
            outbox: db.open_tree(keys::OUTBOX)?,
            decisions: db.open_tree(keys::DECISIONS)?,
            decision_by_nudge: db.open_tree(keys::DECISION_BY_NUDGE)?,
            visits: db.open_tree(keys::VISITS)?,
            db,
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let found = match self.meta.get(keys::META_LAYOUT_VERSION)? {
            Some(v) => {
                u32::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    tree: keys::META,
                    reason: "layout_version".into(),
                })?)
            }
            None => 0,
        };
        if found > keys::LAYOUT_VERSION {
            return Err(StoreError::TooNew {
                found,
                known: keys::LAYOUT_VERSION,
            });
        }
        // Version 0 is a new, empty database; later versions add steps here.
        if found < keys::LAYOUT_VERSION {
            self.meta.insert(
                keys::META_LAYOUT_VERSION,
                &keys::LAYOUT_VERSION.to_be_bytes(),
            )?;
            self.db.flush()?;
        }
        Ok(())
    }

    pub fn layout_version(&self) -> Result<u32, StoreError> {
        let v = self
            .meta
            .get(keys::META_LAYOUT_VERSION)?
            .ok_or(StoreError::Corrupt {
                tree: keys::META,
                reason: "no layout_version".into(),
            })?;
        Ok(u32::from_be_bytes(
            v.as_ref().try_into().unwrap_or_default(),
        ))
    }

    /// Make everything written so far survive a process crash.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    pub async fn flush_async(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Insert or replace a person, keeping the recipient index exact.
    /// Durable when it returns.
    pub fn upsert_person(&self, record: &PersonRecord) -> Result<Option<PersonRecord>, StoreError> {
        Ok(self
            .upsert_people(std::slice::from_ref(record))?
            .pop()
            .flatten())
    }

    /// Insert or replace several people in one transaction: all or none.
    /// Returns each one's previous record. Durable when it returns.
    pub fn upsert_people(
        &self,
        records: &[PersonRecord],
    ) -> Result<Vec<Option<PersonRecord>>, StoreError> {
        let previous = unwrap_tx((&self.people, &self.recipients).transaction(
            |(people, recipients)| {
                let mut previous = Vec::with_capacity(records.len());
                for record in records {
                    let id = record.person.as_str();
                    if let Some(owner) = recipients.get(record.recipient.as_bytes())? {
                        if owner.as_ref() != id.as_bytes() {
                            return Err(ConflictableTransactionError::Abort(
                                StoreError::RecipientTaken {
                                    recipient: record.recipient.clone(),
                                },
                            ));
                        }
                    }
                    let old: Option<PersonRecord> =
                        match people.insert(keys::person(id), json(record))? {
                            Some(old) => Some(tx_parse(keys::PEOPLE, &old)?),
                            None => None,
                        };
                    if let Some(old) = &old {
                        if old.recipient != record.recipient {
                            recipients.remove(old.recipient.as_bytes())?;
                        }
                    }
                    recipients.insert(record.recipient.as_bytes(), id.as_bytes())?;
                    previous.push(old);
                }
                Ok(previous)
            },
        ))?;
        self.flush()?;
        Ok(previous)
    }

    pub fn person(&self, id: &str) -> Result<Option<PersonRecord>, StoreError> {
        self.people
            .get(keys::person(id))?
            .map(|v| parse(keys::PEOPLE, &v))
            .transpose()
    }

    pub fn person_by_recipient(&self, recipient: &str) -> Result<Option<PersonRecord>, StoreError> {
        match self.recipients.get(recipient.as_bytes())? {
            Some(id) => self.person(&String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    pub fn people(&self) -> impl Iterator<Item = Result<PersonRecord, StoreError>> + '_ {
        self.people.iter().map(|item| {
            let (_, v) = item?;
            parse(keys::PEOPLE, &v)
        })
    }

    pub fn people_count(&self) -> usize {
        self.people.len()
    }

    pub fn ledger(&self, person: &str) -> Result<Ledger, StoreError> {
        Ok(self
            .ledgers
            .get(keys::person(person))?
            .map(|v| parse(keys::LEDGERS, &v))
            .transpose()?
            .unwrap_or_default())
    }

    /// Check caps and, if they allow, reserve the slot and put the nudge in
    /// the outbox: one transaction, flushed before returning. A held-back
    /// nudge is written to the decision log only; it is never queued.
    pub fn reserve(&self, req: &ReserveRequest<'_>) -> Result<Reservation, StoreError> {
        let person_key = keys::person(req.person.as_str());
        let outcome = unwrap_tx(
            (
                &self.ledgers,
                &self.outbox,
                &self.decisions,
                &self.decision_by_nudge,
                &self.meta,
            )
                .transaction(|(ledgers, outbox, decisions, by_nudge, meta)| {
                    let mut ledger: Ledger = match ledgers.get(&person_key)? {
                        Some(v) => tx_parse(keys::LEDGERS, &v)?,
                        None => Ledger::default(),
                    };
                    let mut rate: StoreRateLedger = match meta.get(keys::META_STORE_RATE)? {
                        Some(v) => tx_parse(keys::META, &v)?,
                        None => StoreRateLedger::default(),
                    };
                    let verdict = if req.enabled {
                        check_caps(
                            &ledger, &rate, req.caps, req.quiet, req.tz, req.kind, req.rule,
                            req.visit, req.now_ms,
                        )
                    } else {
                        Err(SkipReason::KillSwitch)
                    };
                    let seq = match meta.get(keys::META_NEXT_SEQ)? {
                        Some(v) => u64::from_be_bytes(v.as_ref().try_into().unwrap_or_default()),
                        None => 1,
                    };
                    meta.insert(keys::META_NEXT_SEQ, &(seq + 1).to_be_bytes())?;
                    if verdict.is_ok() {
                        ledger.record(SentNudge {
                            at_ms: req.now_ms,
                            kind: req.kind,
                            rule: req.rule.to_string(),
                            visit: req.visit,
                        });
                        ledgers.insert(person_key.as_slice(), json(&ledger))?;
                        if req.caps.store_per_minute.is_some() {
                            rate.record(req.now_ms);
                            meta.insert(keys::META_STORE_RATE, json(&rate))?;
                        }
                        let entry = OutboxEntry {
                            nudge_id: req.nudge_id.clone(),
                            person: req.person.as_str().to_string(),
                            recipient: req.recipient.to_string(),
                            topic: req.topic.clone(),
                            payload: req.payload.clone(),
                            created_ms: req.now_ms,
                            expires_at_ms: req.expires_at_ms,
                        };
                        outbox.insert(&keys::outbox(seq), json(&entry))?;
                    }
                    let entry = DecisionEntry {
                        at_ms: req.now_ms,
                        person: req.person.as_str().to_string(),
                        nudge_id: req.nudge_id.clone(),
                        rule: req.rule.to_string(),
                        kind: req.kind,
                        zone: req.zone.to_string(),
                        visit: req.visit,
                        outcome: if verdict.is_ok() {
                            DecisionOutcome::Sent
                        } else {
                            DecisionOutcome::Held
                        },
                        reason: verdict.clone().err(),
                    };
                    let decision_key = keys::decision(req.person.as_str(), seq);
                    decisions.insert(decision_key.as_slice(), json(&entry))?;
                    by_nudge.insert(req.nudge_id.as_bytes(), decision_key)?;
                    Ok(match verdict {
                        Ok(()) => Reservation::Reserved { seq },
                        Err(reason) => Reservation::Held(reason),
                    })
                }),
        )?;
        // Acknowledge (and let the publisher see it) only once it is on disk.
        self.flush()?;
        Ok(outcome)
    }

    /// Record a decision that never reached the caps (no consent).
    pub fn log_decision(&self, entry: &DecisionEntry) -> Result<(), StoreError> {
        let seq = self.next_seq()?;
        let key = keys::decision(&entry.person, seq);
        self.decisions.insert(key.as_slice(), json(entry))?;
        self.decision_by_nudge
            .insert(entry.nudge_id.as_bytes(), key)?;
        Ok(())
    }

    fn next_seq(&self) -> Result<u64, StoreError> {
        let previous = self.meta.fetch_and_update(keys::META_NEXT_SEQ, |old| {
            let seq = old
                .and_then(|v| v.try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(1);
            Some((seq + 1).to_be_bytes().to_vec())
        })?;
        Ok(previous
            .and_then(|v| v.as_ref().try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(1))
    }

    pub fn decisions_for(&self, person: &str) -> Result<Vec<DecisionEntry>, StoreError> {
        self.decisions
            .scan_prefix(keys::decision_prefix(person))
            .map(|item| parse(keys::DECISIONS, &item?.1))
            .collect()
    }

    pub fn decision_by_nudge(&self, nudge_id: &str) -> Result<Option<DecisionEntry>, StoreError> {
        match self.decision_by_nudge.get(nudge_id.as_bytes())? {
            Some(key) => self
                .decisions
                .get(key)?
                .map(|v| parse(keys::DECISIONS, &v))
                .transpose(),
            None => Ok(None),
        }
    }

    /// Outbox entries with sequence >= `from`, in order.
    pub fn outbox_from(
        &self,
        from: u64,
    ) -> impl Iterator<Item = Result<(u64, OutboxEntry), StoreError>> + '_ {
        self.outbox.range(keys::outbox(from)..).map(|item| {
            let (k, v) = item?;
            let seq = keys::outbox_seq(&k).ok_or(StoreError::Corrupt {
                tree: keys::OUTBOX,
                reason: "key is not a u64".into(),
            })?;
            Ok((seq, parse(keys::OUTBOX, &v)?))
        })
    }

    /// The broker acknowledged it, or it expired. Not flushed: at worst a
    /// crash redelivers it, and the nudge id makes that harmless.
    pub fn outbox_remove(&self, seq: u64) -> Result<(), StoreError> {
        self.outbox.remove(keys::outbox(seq))?;
        Ok(())
    }

    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    pub fn save_visit(&self, person: &PersonId, seed: VisitSeed) -> Result<(), StoreError> {
        self.visits.insert(
            keys::person(person.as_str()),
            json(&(seed.visit, seed.last_seen_ms)),
        )?;
        Ok(())
    }

    pub fn end_visit(&self, person: &PersonId) -> Result<(), StoreError> {
        self.visits.remove(keys::person(person.as_str()))?;
        Ok(())
    }

    pub fn visits(&self) -> Result<Vec<(PersonId, VisitSeed)>, StoreError> {
        self.visits
            .iter()
            .map(|item| {
                let (k, v) = item?;
                let (visit, last_seen_ms): (i64, i64) = parse(keys::VISITS, &v)?;
                Ok((
                    PersonId::from(String::from_utf8_lossy(&k).as_ref()),
                    VisitSeed {
                        visit,
                        last_seen_ms,
                    },
                ))
            })
            .collect()
    }

    /// Remove everything held about a person from every tree, then flush.
    /// Returns how many entries went. (sled keeps old bytes in its segment
    /// files; crypto-shredding closes that gap, see DESIGN §4 invariant 2.)
    pub fn forget_person(&self, id: &str) -> Result<usize, StoreError> {
        let mut removed = 0;
        if let Some(record) = self.person(id)? {
            self.recipients.remove(record.recipient.as_bytes())?;
            removed += 1;
        }
        removed += usize::from(self.people.remove(keys::person(id))?.is_some());
        removed += usize::from(self.ledgers.remove(keys::person(id))?.is_some());
        removed += usize::from(self.visits.remove(keys::person(id))?.is_some());
        for item in self.decisions.scan_prefix(keys::decision_prefix(id)) {
            let (key, value) = item?;
            if let Ok(entry) = parse::<DecisionEntry>(keys::DECISIONS, &value) {
                self.decision_by_nudge.remove(entry.nudge_id.as_bytes())?;
            }
            self.decisions.remove(key)?;
            removed += 1;
        }
        removed += self.purge_outbox(id)?;
        self.flush()?;
        Ok(removed)
    }

    /// Drop a person's pending nudges (consent withdrawn or erased).
    pub fn purge_outbox(&self, person: &str) -> Result<usize, StoreError> {
        let mut removed = 0;
        for item in self.outbox.iter() {
            let (key, value) = item?;
            if parse::<OutboxEntry>(keys::OUTBOX, &value)?.person == person {
                self.outbox.remove(key)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Delete decision-log entries older than `cutoff_ms`. Returns how many.
    pub fn sweep_decisions(&self, cutoff_ms: i64) -> Result<usize, StoreError> {
        let mut removed = 0;
        for item in self.decisions.iter() {
            let (key, value) = item?;
            let entry: DecisionEntry = parse(keys::DECISIONS, &value)?;
            if entry.at_ms < cutoff_ms {
                self.decisions.remove(key)?;
                self.decision_by_nudge.remove(entry.nudge_id.as_bytes())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests;
