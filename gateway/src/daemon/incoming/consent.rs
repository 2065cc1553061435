//! `<p>/<s>/consent/<recipient>`: consent and preference changes from the
//! app, receipted once on disk.

use super::*;
use crate::identity::ChangeRequest;

impl Pipeline {
    /// A consent or preference change from the app. The receipt goes out
    /// only once the change is on disk (and pending nudges are purged).
    pub(super) async fn on_consent(
        &mut self,
        recipient: &str,
        message: &IncomingMessage,
    ) -> Result<(), Rejection> {
        let text =
            std::str::from_utf8(&message.payload).map_err(|_| rejection("payload", "not UTF-8"))?;
        let change = ConsentChange::from_json(text, recipient)?;
        let record = self.recipient_record(recipient)?;
        let mut updated = record.clone();
        let now = wall_ms();
        let status = match change.apply(&mut updated, change.said_at_ms(now)) {
            Applied::Forget => {
                // The other stores of a chain forget them too.
                self.erase(&record.person, now, true).await?;
                // The back office keeps the person's retained record: tell
                // it, so that it clears it (the tombstone refuses it here
                // meanwhile).
                let notice = serde_json::json!({
                    "person": record.person.as_str(),
                    "erased_at": rfc3339_ms(now),
                });
                self.send(OutgoingMessage {
                    topic: topics::erasures(&self.config.topics),
                    payload: notice.to_string().into_bytes(),
                    correlation_data: None,
                    retain: false,
                });
                "forgotten"
            }
            Applied::Updated { withdrawn } => {
                let person = record.person.as_str().to_string();
                let said_at_ms = change.said_at_ms(now);
                self.upsert(updated).await?;
                if let ChangeRequest::Update { consent, .. } = &change.request {
                    // The other stores of the chain apply it too.
                    self.publish_chain_consent(&record.person, consent, said_at_ms)
                        .await;
                }
                self.purge_withdrawn(person, withdrawn).await?;
                "saved"
            }
        };
        let receipt = serde_json::json!({ "id": change.id, "status": status })
            .to_string()
            .into_bytes();
        self.send(OutgoingMessage {
            topic: topics::receipts(&self.config.topics, recipient),
            payload: receipt.clone(),
            correlation_data: None,
            retain: false,
        });
        if let Some(response_topic) = &message.response_topic {
            if topics::response_topic_allowed(&self.config.topics, recipient, response_topic) {
                self.send(OutgoingMessage {
                    topic: response_topic.clone(),
                    payload: receipt,
                    correlation_data: message.correlation_data.clone(),
                    retain: false,
                });
            } else {
                events::response_topic_refused(&self.telemetry);
            }
        }
        Ok(())
    }
    /// Purposes just withdrawn for `person` (by the app here or by another
    /// store of the chain): nothing pending may go out under them, queued
    /// decisions included, so the decisions are settled, the person's
    /// outbox purged and flushed, and each withdrawal counted.
    pub(super) async fn purge_withdrawn(
        &mut self,
        person: String,
        withdrawn: Vec<crate::identity::Purpose>,
    ) -> Result<(), Rejection> {
        if withdrawn.is_empty() {
            return Ok(());
        }
        self.settle_decisions().await;
        let purged = self
            .blocking(move |store| {
                store
                    .purge_outbox(&person)
                    .and_then(|n| store.flush().map(|()| n))
            })
            .await;
        if let Err(e) = purged {
            events::storage_error(&self.telemetry, "purge_outbox", &e);
            return Err(rejection("storage", "could not purge pending nudges"));
        }
        for purpose in withdrawn {
            events::consent_withdrawn(&self.telemetry, purpose);
        }
        Ok(())
    }
}

fn rfc3339_ms(at_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(at_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
