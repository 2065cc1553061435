//! `<p>/chain/<kind>/<store>` (only with `[caps.chain]`): other stores'
//! decisions, erasures and consent changes (docs/design.md, chain-wide
//! caps). Parsed strictly here (every field named, unknown ones refused);
//! our own store's messages, back from the broker, are counted and
//! ignored.
//!
//! Decisions are folded off the pipeline's task by [`ChainFolder`]: many
//! at once in one transaction and one flush (a thousand stores' entries
//! must not hold up this store's sightings), each acked to the broker only
//! once on disk. Erasures and consent changes touch the people the
//! pipeline holds, so they are applied here, in order with the rest.

use super::*;
use crate::chain_message::{
    ChainConsent, ChainDecision, ChainErasure, parse_consent, parse_decision, parse_erasure,
};
use crate::decide::ChainEntry;
use crate::identity::Purpose;
use crate::privacy::ChainPerson;
use crate::store::{FoldOutcome, consent_entry, erasure_entry};
use crate::telemetry::{ChainDirection, ChainOutcome};
use crate::topics::ChainKind;

/// A decision to fold, with the ack that goes once it is on disk.
pub struct FoldRequest {
    pub decision: ChainDecision,
    pub ack: Option<mqtt::Acker>,
}

/// At most this many decisions folded per transaction. A batch's cost
/// grows faster than its size (`benches/chain.rs`: 1 entry 0.5 ms with its
/// flush, 64 entries 5.9 ms, 512 entries 76 ms), and its commit holds
/// sled's transaction lock, which the reservations need too.
const MAX_FOLD_BATCH: usize = 128;
/// The folder's queue: bounded, so a flood waits in the broker.
pub const FOLD_QUEUE: usize = 1024;

/// The task that folds other stores' decisions (see the module's doc).
pub struct ChainFolder {
    pub store: Store,
    pub telemetry: Arc<Telemetry>,
    pub rx: mpsc::Receiver<FoldRequest>,
}

impl ChainFolder {
    /// Until every sender is gone: what is queued is folded first.
    pub async fn run(mut self) {
        let mut batch = Vec::with_capacity(MAX_FOLD_BATCH);
        while let Some(first) = self.rx.recv().await {
            batch.push(first);
            while batch.len() < MAX_FOLD_BATCH {
                match self.rx.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            let entries: Vec<(ChainPerson, ChainEntry)> = batch
                .iter()
                .map(|r| (r.decision.person, r.decision.entry.clone()))
                .collect();
            let store = self.store.clone();
            let folded = tokio::task::spawn_blocking(move || store.chain_fold(&entries, wall_ms()))
                .await
                .unwrap_or_else(|e| Err(StoreError::Flush(e.to_string())));
            match folded {
                Ok(outcomes) => {
                    for (request, outcome) in batch.drain(..).zip(outcomes) {
                        let outcome = match outcome {
                            FoldOutcome::Folded => ChainOutcome::Folded,
                            FoldOutcome::Duplicate => ChainOutcome::Duplicate,
                            FoldOutcome::Erased => ChainOutcome::Erased,
                        };
                        events::chain_entry(
                            &self.telemetry,
                            ChainDirection::In,
                            outcome,
                            ChainKind::Decision,
                        );
                        if let Some(ack) = request.ack {
                            ack.ack();
                        }
                    }
                }
                Err(e) => {
                    // Not acked: the broker delivers them again (to this
                    // session, or the next after a restart).
                    events::storage_error(&self.telemetry, "chain_fold", &e);
                    batch.clear();
                }
            }
        }
    }
}

impl Pipeline {
    /// A message on the chain's topics. Acks it itself: a decision only
    /// once folded (by the [`ChainFolder`]), the rest once applied.
    pub(super) async fn on_chain(&mut self, kind: ChainKind, own: bool, message: IncomingMessage) {
        let IncomingMessage {
            topic,
            payload,
            ack,
            ..
        } = message;
        if own {
            events::chain_entry(&self.telemetry, ChainDirection::In, ChainOutcome::Own, kind);
            if let Some(ack) = ack {
                ack.ack();
            }
            return;
        }
        let result = if payload.len() > MAX_INCOMING_BYTES {
            Err(rejection(
                "payload",
                format!("larger than {MAX_INCOMING_BYTES} bytes"),
            ))
        } else {
            match kind {
                ChainKind::Decision => match parse_decision(&payload) {
                    Ok(decision) => {
                        match &self.chain_folds {
                            // Acked by the folder once on disk.
                            Some(folds) => {
                                if folds.send(FoldRequest { decision, ack }).await.is_err() {
                                    events::storage_error(
                                        &self.telemetry,
                                        "chain_fold",
                                        &"the chain folder has stopped",
                                    );
                                }
                                return;
                            }
                            None => Ok(()),
                        }
                    }
                    Err(e) => Err(e.into()),
                },
                ChainKind::Erasure => match parse_erasure(&payload) {
                    Ok(erasure) => self.on_chain_erasure(erasure).await,
                    Err(e) => Err(e.into()),
                },
                ChainKind::Consent => match parse_consent(&payload) {
                    Ok(consent) => self.on_chain_consent(consent).await,
                    Err(e) => Err(e.into()),
                },
            }
        };
        let outcome = match &result {
            Ok(()) => ChainOutcome::Folded,
            Err(_) => ChainOutcome::Refused,
        };
        events::chain_entry(&self.telemetry, ChainDirection::In, outcome, kind);
        if let Err(rejected) = result {
            self.reject(&topic, "chain", &rejected);
        }
        if let Some(ack) = ack {
            ack.ack();
        }
    }

    /// The local person a chain hash names, if enrolled here.
    async fn chain_local(&self, person: ChainPerson) -> Result<Option<PersonId>, Rejection> {
        self.blocking(move |store| store.chain_index_person(&person))
            .await
            .map_err(|e| {
                events::storage_error(&self.telemetry, "chain_index", &e);
                rejection("storage", "could not be looked up; nothing changed")
            })
    }

    /// Another store forgot the person: erase them here too (their local
    /// tombstone refuses an older CRM record), then the chain side (ledger,
    /// index, pending entries; a chain tombstone). Not published again.
    async fn on_chain_erasure(&mut self, erasure: ChainErasure) -> Result<(), Rejection> {
        // Never later than now: a far-future date would refuse the
        // person's records for as long.
        let erased_at_ms = erasure.erased_at_ms.min(wall_ms());
        if let Some(local) = self.chain_local(erasure.person).await? {
            self.erase_only_here(&local, erased_at_ms).await?;
        }
        let person = erasure.person;
        self.blocking(move |store| store.chain_forget(&person, erased_at_ms, None))
            .await
            .map_err(|e| {
                events::storage_error(&self.telemetry, "chain_forget", &e);
                rejection("storage", "erasure failed; retry")
            })?;
        Ok(())
    }

    /// Another store's consent change: each purpose changes here only if
    /// it is the newest word on it (`PersonRecord::set_consent`); a
    /// withdrawal purges what is pending here for it.
    async fn on_chain_consent(&mut self, change: ChainConsent) -> Result<(), Rejection> {
        let Some(local) = self.chain_local(change.person).await? else {
            return Ok(());
        };
        let held = self.people.get(&local).map_err(|e| {
            events::storage_error(&self.telemetry, "person_record", &e);
            rejection("storage", "could not be read; nothing changed")
        })?;
        let Some(mut updated) = held else {
            return Ok(());
        };
        let at_ms = change.at_ms.min(wall_ms());
        let withdrawn = updated.set_consent(&change.consent, at_ms);
        let person = local.as_str().to_string();
        self.upsert(updated).await?;
        self.purge_withdrawn(person, withdrawn).await
    }

    /// Tell the other stores (through the chain outbox, durably) that the
    /// app changed these purposes here.
    pub(super) async fn publish_chain_consent(
        &self,
        person: &PersonId,
        consent: &[(Purpose, bool)],
        at_ms: i64,
    ) {
        let Some(chain) = &self.config.chain else {
            return;
        };
        if consent.is_empty() {
            return;
        }
        let entry = consent_entry(
            &self.config.topics,
            &chain.person(person.as_str()),
            consent,
            at_ms,
        );
        match self
            .blocking(move |store| store.chain_queue(&[entry]))
            .await
        {
            Ok(()) => events::chain_entries_queued(&self.telemetry, 1),
            Err(e) => events::storage_error(&self.telemetry, "chain_queue", &e),
        }
    }

    /// The chain side of a local erasure: the chain's trees, and the
    /// erasure for the other stores (`publish`), in one transaction.
    pub(super) async fn chain_forget(&self, person: &PersonId, erased_at_ms: i64, publish: bool) {
        let Some(chain) = &self.config.chain else {
            return;
        };
        let hash = chain.person(person.as_str());
        let notice = publish.then(|| erasure_entry(&self.config.topics, &hash, erased_at_ms));
        match self
            .blocking(move |store| store.chain_forget(&hash, erased_at_ms, notice.as_ref()))
            .await
        {
            Ok(_) if publish => events::chain_entries_queued(&self.telemetry, 1),
            Ok(_) => {}
            Err(e) => events::storage_error(&self.telemetry, "chain_forget", &e),
        }
    }

    /// Record in the chain index who the people just written are.
    pub(super) async fn chain_index(&self, records: &[PersonRecord]) {
        let Some(chain) = &self.config.chain else {
            return;
        };
        let entries: Vec<(ChainPerson, String)> = records
            .iter()
            .map(|r| {
                (
                    chain.person(r.person.as_str()),
                    r.person.as_str().to_string(),
                )
            })
            .collect();
        let indexed = self
            .blocking(move |store| {
                let refs: Vec<(ChainPerson, &str)> =
                    entries.iter().map(|(p, id)| (*p, id.as_str())).collect();
                store.chain_index_put(&refs)
            })
            .await;
        if let Err(e) = indexed {
            events::storage_error(&self.telemetry, "chain_index", &e);
        }
    }

    /// When the person was last erased anywhere in the chain (the chain
    /// tombstone), so that an old CRM record cannot bring back someone
    /// another store forgot and this one never knew.
    pub(super) fn chain_tombstone(&self, person: &str) -> Result<Option<i64>, StoreError> {
        match &self.config.chain {
            Some(chain) => self.store.chain_tombstone(&chain.person(person)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain_message::tests::{PERSON, field};
    use crate::decide::NudgeKind;

    #[test]
    fn a_decision_parses_with_exactly_its_fields() {
        let payload = format!(
            r#"{{"v": 1, "person": "{PERSON}", "kind": "info", "rule": "laptop-dwell",
                "at_ms": 1795334400123, "nudge_id": "0193a5c2-1"}}"#
        );
        let decision = parse_decision(payload.as_bytes()).unwrap();
        assert_eq!(decision.person.to_hex(), PERSON);
        assert_eq!(decision.entry.kind, NudgeKind::Info);
        assert_eq!(decision.entry.rule, "laptop-dwell");
        assert_eq!(decision.entry.at_ms, 1_795_334_400_123);
        assert_eq!(decision.entry.nudge_id, "0193a5c2-1");
        // What this store publishes parses back to the same.
        let again = crate::store::decision_payload(&decision.person, &decision.entry);
        assert_eq!(parse_decision(again.as_bytes()).unwrap(), decision);
    }

    #[test]
    fn erasures_and_consent_parse_strictly() {
        let erasure = format!(r#"{{"v": 1, "person": "{PERSON}", "erased_at_ms": 1795334400123}}"#);
        assert_eq!(
            parse_erasure(erasure.as_bytes()).unwrap().erased_at_ms,
            1_795_334_400_123
        );
        let extra = format!(
            r#"{{"v": 1, "person": "{PERSON}", "erased_at_ms": 1795334400123, "why": "x"}}"#
        );
        assert_eq!(field(parse_erasure(extra.as_bytes())).0, "why");
        let missing = format!(r#"{{"v": 1, "person": "{PERSON}"}}"#);
        assert_eq!(field(parse_erasure(missing.as_bytes())).0, "erased_at_ms");

        let consent = format!(
            r#"{{"v": 1, "person": "{PERSON}", "consent": {{"offers": false}}, "at_ms": 1795334400123}}"#
        );
        let parsed = parse_consent(consent.as_bytes()).unwrap();
        assert_eq!(parsed.consent, vec![(Purpose::Offers, false)]);
        let unknown = consent.replace("offers", "spam");
        assert_eq!(field(parse_consent(unknown.as_bytes())).0, "consent.spam");
        let empty = consent.replace(r#"{"offers": false}"#, "{}");
        assert_eq!(field(parse_consent(empty.as_bytes())).0, "consent");
        // What this store publishes parses back.
        let names = topics::TopicNames::new("retail", "s1").with_chain(true);
        let entry = consent_entry(&names, &parsed.person, &parsed.consent, parsed.at_ms);
        assert_eq!(entry.topic, "retail/chain/consent/s1");
        assert_eq!(parse_consent(entry.payload.as_bytes()).unwrap(), parsed);
        let entry = erasure_entry(&names, &parsed.person, 1_795_334_400_000);
        assert_eq!(entry.topic, "retail/chain/erasures/s1");
        assert_eq!(
            parse_erasure(entry.payload.as_bytes())
                .unwrap()
                .erased_at_ms,
            1_795_334_400_000
        );
    }
}
