//! Incoming MQTT messages, one module per topic (people, consent,
//! purchases, feedback, check-ins, scanner nodes): classified, rate
//! limited, size checked and rejected with a named field here.

mod chain;
mod checkin;
mod consent;
mod feedback;
mod person;
mod purchase;
mod scanner;

pub use chain::{ChainFolder, FOLD_QUEUE, FoldRequest};
pub use checkin::beacon_scanner_id;

use super::*;

/// Largest incoming payload accepted on any topic.
pub const MAX_INCOMING_BYTES: usize = 16 * 1024;
const _: () = assert!(mqtt::MAX_INCOMING_PACKET_BYTES as usize > 2 * MAX_INCOMING_BYTES);

/// A rejected incoming message: reported by kind and reason, never by content.
#[derive(Debug)]
pub(super) struct Rejection {
    field: String,
    reason: String,
}

impl From<crate::identity::RecordError> for Rejection {
    fn from(e: crate::identity::RecordError) -> Self {
        Rejection {
            field: e.field,
            reason: e.reason,
        }
    }
}

pub(super) fn rejection(field: &str, reason: impl Into<String>) -> Rejection {
    Rejection {
        field: field.to_string(),
        reason: reason.into(),
    }
}

impl Pipeline {
    pub(super) async fn on_incoming(&mut self, message: IncomingMessage) {
        if let Some(feed) = topics::scanner_feed(&self.scanner_filters, &message.topic) {
            self.on_scanner_message(feed, &message).await;
            if let Some(ack) = message.ack {
                ack.ack();
            }
            return;
        }
        let topic = message.topic.clone();
        let kind = classify(&self.config.topics, &topic);
        let label = kind.kind();
        events::incoming(&self.telemetry, label);
        if let Incoming::Chain { kind, own, .. } = kind {
            // Not rate limited per recipient (there is none); acked by the
            // chain's handler, a decision only once folded.
            self.on_chain(kind, own, message).await;
            return;
        }
        if let Incoming::Consent(recipient)
        | Incoming::CheckIn(recipient)
        | Incoming::Feedback(recipient) = kind
            && !self.rate_limit.allow(label, recipient)
        {
            // Unread and unreported (a report per message would be the
            // flood again, on gateway/errors), but acked: unacked, it
            // would hold one of the broker's in-flight slots for good.
            events::incoming_rate_limited(&self.telemetry, label);
            if let Some(ack) = message.ack {
                ack.ack();
            }
            return;
        }
        let result = if message.payload.len() > MAX_INCOMING_BYTES {
            Err(rejection(
                "payload",
                format!("larger than {MAX_INCOMING_BYTES} bytes"),
            ))
        } else {
            match kind {
                Incoming::Person(person) => self.on_person(person, &message.payload).await,
                Incoming::Consent(recipient) => self.on_consent(recipient, &message).await,
                Incoming::CheckIn(recipient) => self.on_checkin(recipient, &message.payload).await,
                Incoming::Feedback(recipient) => {
                    self.on_feedback(recipient, &message.payload).await
                }
                Incoming::Purchase => self.on_purchase(&message.payload).await,
                Incoming::Chain { .. } => Ok(()),
                Incoming::Unknown => Err(rejection("topic", "not a topic the gateway reads")),
            }
        };
        if let Err(rejected) = result {
            self.reject(&topic, label, &rejected);
        }
        // Acknowledge to the broker only now: whatever it asked for is
        // flushed (or it was refused and nothing changed).
        if let Some(ack) = message.ack {
            ack.ack();
        }
    }

    pub(super) fn reject(&mut self, topic: &str, kind: &'static str, rejected: &Rejection) {
        events::incoming_rejected(&self.telemetry, kind, &rejected.field, &rejected.reason);
        if !self.error_reports.allow_at(wall_ms() / 1000) {
            events::error_report_suppressed(&self.telemetry);
            return;
        }
        // The field may be a key the sender chose: named, but cut short.
        let report = serde_json::json!({
            "topic": truncated(topic, MAX_TOPIC_ECHO_CHARS),
            "field": truncated(&rejected.field, MAX_ECHO_CHARS),
            "reason": truncated(&rejected.reason, MAX_REASON_CHARS),
        });
        self.send(OutgoingMessage {
            topic: topics::errors(&self.config.topics),
            payload: report.to_string().into_bytes(),
            correlation_data: None,
            retain: false,
        });
    }
}
