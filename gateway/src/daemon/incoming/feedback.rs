//! `<p>/<s>/feedback/<recipient>`: answers to feedback nudges.

use super::*;

impl Pipeline {
    /// An answer to a feedback nudge, kept for the store when the person
    /// consented to feedback and the nudge was theirs.
    pub(super) async fn on_feedback(
        &mut self,
        recipient: &str,
        payload: &[u8],
    ) -> Result<(), Rejection> {
        let text = std::str::from_utf8(payload).map_err(|_| rejection("payload", "not UTF-8"))?;
        let feedback = Feedback::from_json(text)?;
        let record = self.recipient_record(recipient)?;
        if !record.consent.allows(crate::identity::Purpose::Feedback) {
            return Err(rejection("consent", "no consent for feedback"));
        }
        let (person, nudge_id) = (record.person.to_string(), feedback.nudge_id.clone());
        let decision = self
            .blocking(move |store| store.decision_of(&person, &nudge_id))
            .await;
        match decision {
            Ok(Some(d)) if d.outcome == crate::store::DecisionOutcome::Sent => {}
            Ok(_) => return Err(rejection("nudge_id", "not a nudge sent to this recipient")),
            Err(e) => {
                events::storage_error(&self.telemetry, "feedback", &e);
                return Err(rejection("storage", "could not be saved"));
            }
        }
        let entry = FeedbackEntry {
            nudge_id: feedback.nudge_id,
            answer: feedback.answer,
            comment: feedback.comment,
            at_ms: self.clock.now_ms(),
        };
        let (store, person) = (self.store.clone(), record.person.clone());
        if let Err(e) = tokio::task::spawn_blocking(move || store.save_feedback(&person, &entry))
            .await
            .expect("save does not panic")
        {
            events::storage_error(&self.telemetry, "feedback", &e);
            return Err(rejection("storage", "could not be saved"));
        }
        events::feedback_answered(&self.telemetry);
        Ok(())
    }
}
