//! `<p>/crm/people/<person>`: the CRM's person records (retained); an
//! empty payload erases the person.

use super::*;

impl Pipeline {
    /// A person record from the CRM (retained); an empty payload erases.
    /// The record comes again after every fresh session and republish, in
    /// any order with the app's changes: it is folded in part by part, and
    /// only the parts it said later than what is held change (the newest
    /// word wins; an old record never switches a withdrawn purpose back
    /// on). A record not later than the person's erasure is refused.
    pub(super) async fn on_person(
        &mut self,
        person: &str,
        payload: &[u8],
    ) -> Result<(), Rejection> {
        let now = wall_ms();
        if payload.is_empty() {
            let person = PersonId::from(person);
            // The back office clearing a record the gateway does not hold
            // (one it erased already, or a person of another store): there
            // is nothing to erase, and no tombstone to write.
            if !self.people.contains(&person) {
                return Ok(());
            }
            // Every store of a chain hears the CRM itself: the chain is
            // not told again (`tell_chain` false).
            return self.erase(&person, now, false).await;
        }
        let text = std::str::from_utf8(payload).map_err(|_| rejection("payload", "not UTF-8"))?;
        let record = PersonRecord::from_json(text)?;
        if record.person.as_str() != person {
            return Err(rejection("person", "does not match the topic"));
        }
        let erased_at = self
            .store
            .tombstone(person)
            .and_then(|local| {
                // Erased in another store of the chain counts as here.
                Ok(local.max(self.chain_tombstone(person)?))
            })
            .map_err(|e| {
                events::storage_error(&self.telemetry, "tombstone", &e);
                rejection("storage", "could not be checked; nothing changed")
            })?;
        let held = self.people.get(&record.person).map_err(|e| {
            events::storage_error(&self.telemetry, "person_record", &e);
            rejection("storage", "could not be read; nothing changed")
        })?;
        let merged = PersonRecord::fold(held, record, erased_at, now).inspect_err(|_| {
            events::person_record_refused_after_erasure(&self.telemetry, &hashed(person));
        })?;
        self.upsert(merged).await
    }

    pub(super) async fn upsert(&mut self, record: PersonRecord) -> Result<(), Rejection> {
        self.people
            .check(&record)
            .map_err(|e| self.people_rejection(e))?;
        let held = self.people.get(&record.person).map_err(|e| {
            events::storage_error(&self.telemetry, "person_record", &e);
            rejection("storage", "could not be read; nothing changed")
        })?;
        let unchanged = held.as_ref() == Some(&record);
        if unchanged {
            // A retained record seen again after a reconnect: nothing to do.
            return Ok(());
        }
        let upserted = self
            .people
            .upsert(record)
            .map_err(|e| self.people_rejection(e))?;
        if !upserted.withdrawn.is_empty() {
            self.settle_decisions().await;
        }
        let to_store = upserted.to_store.clone();
        let to_index = (self.config.chain.is_some()).then(|| to_store.clone());
        let withdrawn: Vec<String> = upserted
            .withdrawn
            .iter()
            .map(|p| p.as_str().to_string())
            .collect();
        let stored = self
            .blocking(move |store| {
                store.upsert_people(&to_store)?;
                for person in &withdrawn {
                    store.purge_outbox(person)?;
                }
                store.flush()
            })
            .await;
        if let Err(e) = stored {
            events::storage_error(&self.telemetry, "upsert_person", &e);
            self.reload_people();
            return Err(rejection("storage", "could not be saved; nothing changed"));
        }
        if let Some(records) = to_index {
            self.chain_index(&records).await;
        }
        for person in upserted.withdrawn {
            self.forget_presence(&person);
            events::consent_withdrawn(&self.telemetry, crate::identity::Purpose::Proximity);
        }
        Ok(())
    }

    /// After a storage failure, memory goes back to what is on disk.
    pub(super) fn reload_people(&mut self) {
        let now_s = self.clock.now_ms() / 1000;
        let started = std::time::Instant::now();
        match self.store.load_people(now_s) {
            Ok((people, source)) => {
                let ms = started.elapsed().as_millis() as u64;
                events::people_loaded(&self.telemetry, source.into(), people.len(), ms);
                self.people = people;
            }
            Err(e) => events::storage_error(&self.telemetry, "reload_people", &e),
        }
    }

    /// The record of the person a recipient on an app topic belongs to.
    pub(super) fn recipient_record(&self, recipient: &str) -> Result<PersonRecord, Rejection> {
        match self.people.by_recipient(recipient) {
            Ok(Some(record)) => Ok(record),
            Ok(None) => Err(rejection("recipient", "unknown recipient")),
            Err(e) => {
                events::storage_error(&self.telemetry, "person_record", &e);
                Err(rejection("storage", "could not be read; retry"))
            }
        }
    }

    /// A refused upsert: a taken recipient, or a record that could not be
    /// read (nothing changed either way).
    fn people_rejection(&self, e: PeopleError) -> Rejection {
        match e {
            PeopleError::RecipientTaken { .. } => rejection("recipient", e.to_string()),
            PeopleError::Records(e) => {
                events::storage_error(&self.telemetry, "person_record", &e);
                rejection("storage", "could not be read; nothing changed")
            }
        }
    }

    pub(super) fn forget_presence(&mut self, person: &PersonId) {
        self.presence.forget(person);
        self.visit_saved_ms.remove(person);
        self.recognised.remove(person);
    }

    /// Erase a person everywhere, leaving a tombstone dated `erased_at_ms`
    /// that refuses their older records (the CRM's retained one above all);
    /// in a chain, their chain ledger and index entry go too, a chain
    /// tombstone stays, and with `tell_chain` the other stores are told
    /// (`daemon/incoming/chain.rs`).
    pub(super) async fn erase(
        &mut self,
        person: &PersonId,
        erased_at_ms: i64,
        tell_chain: bool,
    ) -> Result<(), Rejection> {
        self.erase_only_here(person, erased_at_ms).await?;
        self.chain_forget(person, erased_at_ms, tell_chain).await;
        Ok(())
    }

    /// [`Pipeline::erase`] without the chain's side (an erasure from the
    /// chain does that by the hash it names).
    pub(super) async fn erase_only_here(
        &mut self,
        person: &PersonId,
        erased_at_ms: i64,
    ) -> Result<(), Rejection> {
        // A queued decision must not write the person back after this.
        self.settle_decisions().await;
        let id = person.as_str().to_string();
        match self
            .blocking(move |store| store.forget_person(&id, erased_at_ms))
            .await
        {
            Ok(_) => {
                self.people.remove(person);
                self.forget_presence(person);
                events::person_erased(&self.telemetry, &hashed(person.as_str()));
                Ok(())
            }
            Err(e) => {
                events::storage_error(&self.telemetry, "erase", &e);
                Err(rejection("storage", "erasure failed; retry"))
            }
        }
    }
}
