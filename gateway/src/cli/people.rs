//! `gateway people import | show | export | forget` and `gateway explain`.

use std::path::Path;

use chrono::TimeZone;

use super::CliError;
use crate::config::Config;
use crate::identity::PersonRecord;
use crate::store::{DecisionEntry, DecisionOutcome, Store};

fn open(config: &Config) -> Result<Store, CliError> {
    Store::open_with_cache(&config.storage_path, config.storage_cache_bytes)
        .map_err(|e| CliError::new(e.to_string()))
}

fn store_err(e: crate::store::StoreError) -> CliError {
    CliError::new(e.to_string())
}

/// Parse every line; return the good records and the errors with file:line.
pub fn parse_import(path: &Path, text: &str) -> (Vec<PersonRecord>, Vec<String>) {
    let mut records: Vec<PersonRecord> = Vec::new();
    let mut errors = Vec::new();
    let mut seen_people = std::collections::HashMap::new();
    let mut seen_recipients = std::collections::HashMap::new();
    for (line_no, line) in crate::jsonl::lines(text) {
        match PersonRecord::from_json(line) {
            Ok(record) => {
                if let Some(first) = seen_people.insert(record.person.clone(), line_no) {
                    errors.push(format!(
                        "{}:{line_no}: person: same person as line {first}",
                        path.display()
                    ));
                } else if let Some(first) =
                    seen_recipients.insert(record.recipient.clone(), line_no)
                {
                    errors.push(format!(
                        "{}:{line_no}: recipient: same recipient as line {first}",
                        path.display()
                    ));
                } else {
                    records.push(record);
                }
            }
            Err(e) => errors.push(format!("{}:{line_no}: {e}", path.display())),
        }
    }
    (records, errors)
}

pub fn import(config: &Config, path: &Path, partial: bool) -> Result<String, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::new(format!("{}: {e}", path.display())))?;
    let is_csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let (records, errors) = if is_csv {
        // CSV (header: crate::identity::CSV_HEADER) is checked as a whole:
        // a file whose rows disagree (the same person twice, a shared
        // identity) cannot be applied in part.
        match crate::identity::people_from_csv(&text) {
            Ok(records) => (records, Vec::new()),
            Err(e) if partial => {
                return Err(CliError::new(format!(
                    "{}:{e} (--partial applies to JSON Lines files only)",
                    path.display()
                )));
            }
            Err(e) => {
                return Err(CliError::new(format!(
                    "{}:{e}; nothing imported",
                    path.display()
                )));
            }
        }
    } else {
        parse_import(path, &text)
    };
    if !errors.is_empty() && !partial {
        return Err(CliError::new(format!(
            "{}\n{} bad line(s); nothing imported (use --partial to import the {} good one(s))",
            errors.join("\n"),
            errors.len(),
            records.len()
        )));
    }
    let store = open(config)?;
    // The same rule as the CRM topic: each part of a held person changes
    // only for a newer word, and an erased person's older record is refused.
    let now = crate::clock::wall_ms();
    let mut errors = errors;
    let mut folded = Vec::with_capacity(records.len());
    for record in records {
        let id = record.person.to_string();
        let held = store.person(&id).map_err(store_err)?;
        let erased_at = store.tombstone(&id).map_err(store_err)?;
        match PersonRecord::fold(held, record, erased_at, now) {
            Ok(record) => folded.push(record),
            Err(e) => errors.push(format!("{}: person {id}: {e}", path.display())),
        }
    }
    if !errors.is_empty() && !partial {
        return Err(CliError::new(format!(
            "{}\n{} refused record(s); nothing imported",
            errors.join("\n"),
            errors.len()
        )));
    }
    let records = folded;
    if let Some(taken) = recipients_taken(&store, &records).map_err(store_err)? {
        return Err(CliError::new(format!(
            "{}: person {}: recipient: {:?} already belongs to another person; nothing imported",
            path.display(),
            taken.person,
            taken.recipient
        )));
    }
    // In chunks, so that a million records do not sit in one transaction's
    // memory (1.5 GB at 100,000). Everything that could refuse a record was
    // checked above, while nothing was written; what is left is I/O, and
    // an import stopped by it (or by a crash) is finished by running it
    // again: a record already folded in changes nothing the second time.
    let mut imported = 0;
    for chunk in records.chunks(IMPORT_CHUNK) {
        store.upsert_people(chunk).map_err(|e| {
            CliError::new(format!(
                "{e}; {imported} of {} record(s) were imported before it: run the same import again to finish",
                records.len()
            ))
        })?;
        imported += chunk.len();
    }
    let mut report = format!(
        "imported {} person record(s) into {}",
        records.len(),
        config.storage_path.display()
    );
    if !errors.is_empty() {
        report = format!(
            "{}\n{report}; skipped {} bad line(s)",
            errors.join("\n"),
            errors.len()
        );
    }
    Ok(report)
}

/// Records per transaction of an import.
const IMPORT_CHUNK: usize = 5_000;

/// The first record whose recipient belongs to a person other than its
/// own, given the records before it in the file (a recipient one record
/// gives up, a later one may take).
fn recipients_taken<'r>(
    store: &Store,
    records: &'r [PersonRecord],
) -> Result<Option<&'r PersonRecord>, crate::store::StoreError> {
    // Recipients whose owner this file already settled: Some(person) took
    // it, None gave it up.
    let mut settled: std::collections::HashMap<String, Option<&str>> =
        std::collections::HashMap::new();
    for record in records {
        let person = record.person.as_str();
        let taken = match settled.get(&record.recipient) {
            Some(Some(owner)) => *owner != person,
            Some(None) => false,
            None => store.recipient_is_other_persons(&record.recipient, person)?,
        };
        if taken {
            return Ok(Some(record));
        }
        if let Some(held) = store.person(person)? {
            if held.recipient != record.recipient {
                settled.insert(held.recipient, None);
            }
        }
        settled.insert(record.recipient.clone(), Some(person));
    }
    Ok(None)
}

fn local_time(config: &Config, at_ms: i64) -> String {
    chrono::Utc
        .timestamp_millis_opt(at_ms)
        .single()
        .map(|t| {
            t.with_timezone(&config.timezone)
                .format("%Y-%m-%d %H:%M:%S %Z")
                .to_string()
        })
        .unwrap_or_else(|| at_ms.to_string())
}

fn describe(config: &Config, d: &DecisionEntry) -> String {
    let what = match (&d.outcome, &d.reason) {
        (DecisionOutcome::Sent, _) => format!("sent {} nudge {}", d.kind.as_str(), d.nudge_id),
        (DecisionOutcome::Held, Some(reason)) => format!(
            "{} ({} nudge {})",
            reason.explain(),
            d.kind.as_str(),
            d.nudge_id
        ),
        (DecisionOutcome::Held, None) => {
            format!("held back ({} nudge {})", d.kind.as_str(), d.nudge_id)
        }
    };
    format!(
        "{}  rule {} in zone {} (visit {}): {what}",
        local_time(config, d.at_ms),
        d.rule,
        d.zone,
        d.visit
    )
}

pub fn show(config: &Config, person: &str) -> Result<String, CliError> {
    let store = open(config)?;
    let record = store
        .person(person)
        .map_err(store_err)?
        .ok_or_else(|| CliError::new(format!("no person {person:?}")))?;
    let ledger = store.ledger(person).map_err(store_err)?;
    let decisions = store.decisions_for(person).map_err(store_err)?;
    let pending = store
        .outbox_from(0)
        .filter_map(Result::ok)
        .filter(|(_, e)| e.person == person)
        .count();
    let record_json = serde_json::to_string_pretty(&record).unwrap_or_default();
    Ok(format!(
        "{record_json}\nnudges in the last 8 days: {}\ndecision log entries: {}\npending in outbox: {pending}",
        ledger.sent.len(),
        decisions.len()
    ))
}

pub fn export(config: &Config, person: &str) -> Result<String, CliError> {
    let store = open(config)?;
    let record = store
        .person(person)
        .map_err(store_err)?
        .ok_or_else(|| CliError::new(format!("no person {person:?}")))?;
    let export = serde_json::json!({
        "person": record,
        "nudges_for_caps": store.ledger(person).map_err(store_err)?,
        "decisions": store.decisions_for(person).map_err(store_err)?,
        "feedback": store.feedback_for(person).map_err(store_err)?,
        "outbox": store.outbox_from(0).filter_map(Result::ok).filter(|(_, e)| e.person == person).map(|(_, e)| e).collect::<Vec<_>>(),
    });
    Ok(serde_json::to_string_pretty(&export).unwrap_or_default())
}

pub fn forget(config: &Config, person: &str) -> Result<String, CliError> {
    let store = open(config)?;
    if store.person(person).map_err(store_err)?.is_none() {
        return Err(CliError::new(format!("no person {person:?}")));
    }
    let now = crate::clock::wall_ms();
    let removed = store.forget_person(person, now).map_err(store_err)?;
    let Some(chain) = &config.chain else {
        return Ok(format!(
            "forgot {person}: {removed} entries removed and flushed"
        ));
    };
    // In a chain the other stores forget them too: the erasure waits in
    // the chain outbox for the daemon to publish it.
    let hash = chain.person(person);
    let notice = crate::store::erasure_entry(&config.topics, &hash, now);
    let chained = store
        .chain_forget(&hash, now, Some(&notice))
        .map_err(store_err)?;
    Ok(format!(
        "forgot {person}: {} entries removed and flushed; the chain's other stores are told once the gateway runs",
        removed + chained
    ))
}

pub fn explain(config: &Config, id: &str) -> Result<String, CliError> {
    let store = open(config)?;
    if let Some(decision) = store.decision_by_nudge(id).map_err(store_err)? {
        return Ok(describe(config, &decision));
    }
    let decisions = store.decisions_for(id).map_err(store_err)?;
    if decisions.is_empty() {
        return Err(CliError::new(format!(
            "no decision recorded for person or nudge {id:?}"
        )));
    }
    Ok(decisions
        .iter()
        .map(|d| describe(config, d))
        .collect::<Vec<_>>()
        .join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A site file in `dir` with its storage there too.
    fn site_in(dir: &Path) -> Config {
        let site = dir.join("site.toml");
        std::fs::write(
            &site,
            format!(
                "[store]\nid = \"s-1\"\n[storage]\npath = {:?}\n",
                dir.join("db").display().to_string()
            ),
        )
        .unwrap();
        crate::config::load(Some(&site)).unwrap()
    }

    /// The store, once the last opener's sled has let go of it: sled's
    /// flusher thread holds the database (and its file lock) for up to a
    /// flush interval after the handle is dropped. Between processes the
    /// lock goes with the process.
    fn reopen(config: &Config) -> Store {
        for _ in 0..100 {
            if let Ok(store) = open(config) {
                return store;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        open(config).unwrap()
    }

    /// [`import`] once the store is free (see [`reopen`]).
    fn import_when_free(config: &Config, path: &Path) -> Result<String, CliError> {
        for _ in 0..100 {
            match import(config, path, false) {
                Err(e) if e.message.contains("in use by another process") => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                done => return done,
            }
        }
        import(config, path, false)
    }

    fn write(dir: &Path, name: &str, lines: &[&str]) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, lines.join("\n")).unwrap();
        path
    }

    #[test]
    fn an_import_larger_than_a_chunk_lands_whole_and_a_taken_recipient_stops_it_before_any_write() {
        let dir = tempfile::tempdir().unwrap();
        let config = site_in(dir.path());
        let many: Vec<String> = (0..IMPORT_CHUNK + 7)
            .map(|i| format!(r#"{{"person": "p-{i}", "recipient": "r-{i}"}}"#))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        import_when_free(&config, &write(dir.path(), "many.jsonl", &many)).unwrap();
        let store = reopen(&config);
        assert_eq!(store.people().count(), IMPORT_CHUNK + 7);
        drop(store);

        // p-1 gives r-1 up and q-1 takes it later in the same file: fine.
        // q-2 takes r-2, which p-2 keeps: refused, and q-1 is not written.
        let refused = write(
            dir.path(),
            "refused.jsonl",
            &[
                r#"{"person": "p-1", "recipient": "r-1b", "updated_at": "2030-01-01T00:00:00Z"}"#,
                r#"{"person": "q-1", "recipient": "r-1"}"#,
                r#"{"person": "q-2", "recipient": "r-2"}"#,
            ],
        );
        let e = import_when_free(&config, &refused).unwrap_err();
        assert!(
            e.message.contains(
                "person q-2: recipient: \"r-2\" already belongs to another person; nothing imported"
            ),
            "{}",
            e.message
        );
        let store = reopen(&config);
        assert_eq!(
            store.person("q-1").unwrap(),
            None,
            "nothing of the file was written"
        );
        assert_eq!(store.person("p-1").unwrap().unwrap().recipient, "r-1");
        drop(store);

        let swap = write(
            dir.path(),
            "swap.jsonl",
            &[
                r#"{"person": "p-1", "recipient": "r-1b", "updated_at": "2030-01-01T00:00:00Z"}"#,
                r#"{"person": "q-1", "recipient": "r-1"}"#,
            ],
        );
        import_when_free(&config, &swap).unwrap();
        let store = reopen(&config);
        assert_eq!(store.person("q-1").unwrap().unwrap().recipient, "r-1");
    }

    #[test]
    fn import_names_file_line_and_field_and_catches_duplicates() {
        let good = r#"{"person": "p-1", "recipient": "r-1"}"#;
        let text = format!(
            "{good}\n{{\"person\": \"p-2\", \"recipient\": \"r-2\", \"pets\": 1}}\n\n{good}\n"
        );
        let (records, errors) = parse_import(Path::new("people.jsonl"), &text);
        assert_eq!(records.len(), 1);
        assert_eq!(
            errors,
            [
                "people.jsonl:2: pets: unknown field",
                "people.jsonl:4: person: same person as line 1"
            ]
        );
    }
}
