//! `<p>/<s>/purchases`: purchases from the till, a thank-you for an
//! opted-in buyer.

use super::*;

impl Pipeline {
    /// A purchase from the till: a thank-you for an opted-in buyer, nothing
    /// asked in return. A buyer the gateway does not know is not an error
    /// (most customers did not opt in) and leaves no trace.
    pub(super) async fn on_purchase(&mut self, payload: &[u8]) -> Result<(), Rejection> {
        let text = std::str::from_utf8(payload).map_err(|_| rejection("payload", "not UTF-8"))?;
        let purchase = Purchase::from_json(text)?;
        let person = match &purchase.buyer {
            Buyer::Person(id) => Ok(Some(id.clone())),
            Buyer::Identity(identity) => self.people.person_of(identity),
        };
        let record = person.and_then(|p| match p {
            Some(p) => self.people.get(&p),
            None => Ok(None),
        });
        let record = record.unwrap_or_else(|e| {
            events::storage_error(&self.telemetry, "person_record", &e);
            None
        });
        let Some(record) = record.filter(|r| r.consent.opted_in_to_proximity()) else {
            events::purchase(&self.telemetry, false);
            return Ok(());
        };
        events::purchase(&self.telemetry, true);
        let visit = self.presence.visit_of(&record.person);
        self.decide(
            &record,
            &Happening::Purchase {
                purchase: &purchase,
                visit,
            },
        )
        .await;
        Ok(())
    }
}
