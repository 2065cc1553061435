//! `gateway people import | show | export | forget` and `gateway explain`.

use std::path::Path;

use chrono::TimeZone;

use super::CliError;
use crate::config::Config;
use crate::identity::PersonRecord;
use crate::store::{DecisionEntry, DecisionOutcome, PreparedPeople, Store};

fn open(config: &Config) -> Result<Store, CliError> {
    Store::open_with_cache(&config.storage_path, config.storage_cache_bytes)
        .map_err(|e| CliError::new(e.to_string()))
}

/// The store for an import: its page cache bounded by `[storage]
/// import_cache_mb`. An import reads people and recipients in the order
/// of the file, which is random in the trees (keys are tags): with the
/// daemon's 16 MiB sled paged every leaf in and out again (perf: most of
/// the time in sled's page-in and malloc), 265 s for a million people.
fn open_for_import(config: &Config) -> Result<Store, CliError> {
    let cache = config
        .storage_import_cache_bytes
        .max(config.storage_cache_bytes);
    Store::open_with_cache(&config.storage_path, cache).map_err(|e| CliError::new(e.to_string()))
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
    let is_csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    if !is_csv {
        return import_json_lines(config, path, partial);
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::new(format!("{}: {e}", path.display())))?;
    // CSV (header: crate::identity::CSV_HEADER) is checked as a whole: a
    // file whose rows disagree (the same person twice, a shared identity)
    // cannot be applied in part. It is read whole (JSON Lines streams).
    let records = match crate::identity::people_from_csv(&text) {
        Ok(records) => records,
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
    };
    let store = open_for_import(config)?;
    // The same rule as the CRM topic: each part of a held person changes
    // only for a newer word, and an erased person's older record is refused.
    let now = crate::clock::wall_ms();
    let mut errors = Vec::new();
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
        return Err(nothing_imported(&errors));
    }
    let records = folded;
    if let Some(taken) = recipients_taken(&store, &records).map_err(store_err)? {
        return Err(recipient_taken(path, taken));
    }
    let mut imported = 0;
    for chunk in records.chunks(IMPORT_CHUNK) {
        store
            .upsert_people(chunk)
            .map_err(|e| stopped_by_io(e, imported, records.len()))?;
        imported += chunk.len();
    }
    let report = format!(
        "imported {} person record(s) into {}{}",
        records.len(),
        config.storage_path.display(),
        snapshot_after_import(config, &store)
    );
    Ok(with_skipped(report, &errors))
}

/// The report, after the lines skipped (`--partial`), if any.
fn with_skipped(report: String, errors: &[String]) -> String {
    if errors.is_empty() {
        return report;
    }
    format!(
        "{}\n{report}; skipped {} bad line(s)",
        errors.join("\n"),
        errors.len()
    )
}

/// An import stopped by I/O after `imported` of `total` records.
fn stopped_by_io(e: crate::store::StoreError, imported: usize, total: usize) -> CliError {
    CliError::new(format!(
        "{e}; {imported} of {total} record(s) were imported before it: run the same import again to finish"
    ))
}

/// A JSON Lines import, streamed: the file is read twice, one line at a
/// time, and never held (at a million people holding it, parsed, cost
/// 1.3 GB). The first pass checks everything that could refuse a record
/// (its syntax, the same person or recipient twice, a record not later
/// than its person's erasure, a recipient another person holds) while
/// nothing is written; the second reads the good lines again, in the
/// people tree's order, and writes them in chunks. What the first pass
/// keeps grows with the file only by two fingerprints a record (the
/// duplicate checks; a fingerprint match is confirmed on the earlier line
/// itself), where each good line is and its place in the tree (32 bytes),
/// and the recipients the file's people give up.
fn import_json_lines(config: &Config, path: &Path, partial: bool) -> Result<String, CliError> {
    let store = open_for_import(config)?;
    // The same rule as the CRM topic: each part of a held person changes
    // only for a newer word, and an erased person's older record is refused.
    let now = crate::clock::wall_ms();
    let mut errors = Vec::new();
    let mut refused = Vec::new();
    let mut taken: Option<PersonRecord> = None;
    let mut people = Seen::default();
    let mut recipients = Seen::default();
    // Recipients a person of this file gives up: a later record may take
    // them although the store still names their old owner.
    let mut given_up = std::collections::HashSet::new();
    // The good lines, to be written in the people tree's order; and those
    // that take a recipient an earlier line gives up, to be written after
    // them in the file's order (the giver must be written first).
    let mut in_tree_order = Vec::new();
    let mut after = Vec::new();
    let mut lines = JsonLines::open(path)?;
    while let Some(line) = lines.next_line()? {
        let (number, offset, len) = (line.number, line.offset, line.len);
        let record = match line
            .text
            .map_err(String::from)
            .and_then(|text| PersonRecord::from_json(&text).map_err(|e| e.to_string()))
        {
            Ok(record) => record,
            Err(e) => {
                errors.push(format!("{}:{number}: {e}", path.display()));
                continue;
            }
        };
        let same_person = people.first(path, record.person.as_str(), number, offset, |r| {
            r.person.as_str()
        })?;
        let same_recipient = match same_person {
            Some(_) => None,
            None => recipients.first(path, &record.recipient, number, offset, |r| &r.recipient)?,
        };
        if let Some(first) = same_person {
            errors.push(format!(
                "{}:{number}: person: same person as line {first}",
                path.display()
            ));
            continue;
        }
        if let Some(first) = same_recipient {
            errors.push(format!(
                "{}:{number}: recipient: same recipient as line {first}",
                path.display()
            ));
            continue;
        }
        let id = record.person.to_string();
        let held = store.person(&id).map_err(store_err)?;
        let erased_at = store.tombstone(&id).map_err(store_err)?;
        let held_recipient = held.as_ref().map(|h| h.recipient.clone());
        let record = match PersonRecord::fold(held, record, erased_at, now) {
            Ok(record) => record,
            Err(e) => {
                refused.push(format!("{}: person {id}: {e}", path.display()));
                continue;
            }
        };
        // Taken: the recipient belongs to a person other than this one,
        // given the records before it (a recipient one record gives up, a
        // later one may take). Each recipient is named once in the file.
        let takes_given_up = given_up.contains(&record.recipient);
        if taken.is_none()
            && !takes_given_up
            && store
                .recipient_is_other_persons(&record.recipient, &id)
                .map_err(store_err)?
        {
            taken = Some(record.clone());
        }
        if let Some(held) = held_recipient.filter(|h| *h != record.recipient) {
            given_up.insert(held);
        }
        let pending = Pending {
            order: store.people_tree_order(&id),
            offset,
            len,
            number,
        };
        if takes_given_up {
            after.push(pending);
        } else {
            in_tree_order.push(pending);
        }
    }
    let good = in_tree_order.len() + after.len();
    drop(people);
    drop(recipients);
    drop(given_up);
    if !errors.is_empty() && !partial {
        return Err(CliError::new(format!(
            "{}\n{} bad line(s); nothing imported (use --partial to import the {} good one(s))",
            errors.join("\n"),
            errors.len(),
            good + refused.len()
        )));
    }
    if !refused.is_empty() && !partial {
        return Err(nothing_imported(&refused));
    }
    errors.extend(refused);
    if let Some(taken) = taken {
        return Err(recipient_taken(path, &taken));
    }
    // In chunks, so that a million records do not sit in one transaction's
    // memory (1.5 GB at 100,000). Everything that could refuse a record was
    // checked above, while nothing was written; what is left is I/O, and
    // an import stopped by it (or by a crash) is finished by running it
    // again: a record already folded in changes nothing the second time.
    // In the people tree's order: in the file's order (random in the tree)
    // every record paged a leaf in, 78 s for a million people.
    in_tree_order.sort_unstable_by_key(|p| p.order);
    // One thread reads, parses, folds and seals the next chunk while this
    // one writes the last (the sled transaction and flush, over half of
    // the work). At most three chunks are in memory: one being read, one
    // queued, one being written.
    let mut imported = 0;
    let mut written_chunks = 0;
    let (sender, chunks) = std::sync::mpsc::sync_channel(1);
    let pending = in_tree_order.iter().chain(&after);
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| read_chunks(&store, path, pending, now, sender));
        let mut written = Ok(());
        for chunk in chunks.iter() {
            if let Err(e) = store.upsert_prepared_people(&chunk) {
                written = Err(stopped_by_io(e, imported, good));
                break;
            }
            imported += chunk.len();
            written_chunks += 1;
            if written_chunks % TRIM_EVERY_CHUNKS == 0 {
                release_freed_heap();
            }
        }
        // The reader stops at its next chunk once this end is gone.
        drop(chunks);
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(CliError::new("the import's reader failed".to_string())));
        written.and(read)
    })?;
    let report = format!(
        "imported {imported} person record(s) into {}{}",
        config.storage_path.display(),
        snapshot_after_import(config, &store)
    );
    Ok(with_skipped(report, &errors))
}

/// The second pass's reader: the records of `pending` read again, folded
/// with what the store holds, and sent in chunks of [`IMPORT_CHUNK`].
/// Stops when the receiver is gone.
fn read_chunks<'p>(
    store: &Store,
    path: &Path,
    pending: impl Iterator<Item = &'p Pending>,
    now: i64,
    chunks: std::sync::mpsc::SyncSender<PreparedPeople>,
) -> Result<(), CliError> {
    let mut lines = LinesAt::open(path)?;
    let mut chunk = Vec::with_capacity(IMPORT_CHUNK);
    for pending in pending {
        let text = lines.line(pending)?;
        let record = PersonRecord::from_json(text)
            .map_err(|e| CliError::new(format!("{}:{}: {e}", path.display(), pending.number)))?;
        let id = record.person.to_string();
        let held = store.person(&id).map_err(store_err)?;
        let erased_at = store.tombstone(&id).map_err(store_err)?;
        // Folded as in the first pass: the store is locked to this
        // process, and each person is in the file once (so the chunks
        // written meanwhile do not change what is read here).
        let record = PersonRecord::fold(held, record, erased_at, now)
            .map_err(|e| CliError::new(format!("{}: person {id}: {e}", path.display())))?;
        chunk.push(record);
        if chunk.len() == IMPORT_CHUNK {
            let sealed = store.prepare_people(&chunk).map_err(store_err)?;
            chunk.clear();
            if chunks.send(sealed).is_err() {
                return Ok(());
            }
        }
    }
    if !chunk.is_empty() {
        let _ = chunks.send(store.prepare_people(&chunk).map_err(store_err)?);
    }
    Ok(())
}

/// Writes the people snapshot the daemon starts from, so that its next
/// start does not scan sled (`store::snapshot`). The import itself is done
/// and durable: a snapshot that cannot be written only makes that start
/// slower, so it is said, not an error.
fn snapshot_after_import(config: &Config, store: &Store) -> String {
    if let Err(e) = store.write_people_snapshot() {
        return format!(
            " (people snapshot not written: {e}; the gateway's next start reads every record instead)"
        );
    }
    // In a chain, the index from chain hash to person is brought up to
    // date here, while memory does not matter, instead of at the daemon's
    // start (where sled would keep what the check pages in).
    let Some(chain) = &config.chain else {
        return String::new();
    };
    let index_of = chain.person("");
    match store
        .chain_index_sync(&index_of, |id| chain.person(id))
        .and_then(|_| store.mark_chain_index_complete())
    {
        Ok(()) => String::new(),
        Err(e) => format!(
            " (chain index not brought up to date: {e}; the gateway does it when it starts)"
        ),
    }
}

/// One non-blank line of a JSON Lines file: its number (from 1), where it
/// starts, and its text (or why it is not text).
struct Line {
    number: usize,
    offset: u64,
    /// Its bytes in the file, line end included.
    len: usize,
    text: Result<String, &'static str>,
}

/// A line the first pass found good, for the second to read again.
struct Pending {
    /// [`Store::people_tree_order`] of its person.
    order: u64,
    offset: u64,
    len: usize,
    number: usize,
}

/// The lines of a file read again by where they start (in any order).
struct LinesAt {
    path: std::path::PathBuf,
    file: std::fs::File,
    buf: Vec<u8>,
}

impl LinesAt {
    fn open(path: &Path) -> Result<Self, CliError> {
        let file = std::fs::File::open(path)
            .map_err(|e| CliError::new(format!("{}: {e}", path.display())))?;
        Ok(LinesAt {
            path: path.to_path_buf(),
            file,
            buf: Vec::new(),
        })
    }

    /// The text of a line the first pass read.
    fn line(&mut self, line: &Pending) -> Result<&str, CliError> {
        use std::os::unix::fs::FileExt;
        let changed = || {
            CliError::new(format!(
                "{}:{}: changed while it was read",
                self.path.display(),
                line.number
            ))
        };
        self.buf.resize(line.len, 0);
        self.file
            .read_exact_at(&mut self.buf, line.offset)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => changed(),
                _ => CliError::new(format!("{}: {e}", self.path.display())),
            })?;
        std::str::from_utf8(&self.buf)
            .map(|text| text.trim_end_matches(['\n', '\r']))
            .map_err(|_| changed())
    }
}

/// A JSON Lines file read one line at a time.
struct JsonLines {
    path: std::path::PathBuf,
    reader: std::io::BufReader<std::fs::File>,
    number: usize,
    offset: u64,
    buf: Vec<u8>,
}

impl JsonLines {
    fn open(path: &Path) -> Result<Self, CliError> {
        let file = std::fs::File::open(path)
            .map_err(|e| CliError::new(format!("{}: {e}", path.display())))?;
        Ok(JsonLines {
            path: path.to_path_buf(),
            reader: std::io::BufReader::with_capacity(1 << 16, file),
            number: 0,
            offset: 0,
            buf: Vec::new(),
        })
    }

    /// The next non-blank line, `None` at the end.
    fn next_line(&mut self) -> Result<Option<Line>, CliError> {
        use std::io::BufRead;
        loop {
            self.buf.clear();
            let read = self
                .reader
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| CliError::new(format!("{}: {e}", self.path.display())))?;
            if read == 0 {
                return Ok(None);
            }
            let offset = self.offset;
            self.offset += read as u64;
            self.number += 1;
            let text = match std::str::from_utf8(&self.buf) {
                Ok(text) => text.trim_end_matches(['\n', '\r']),
                Err(_) => {
                    return Ok(Some(Line {
                        number: self.number,
                        offset,
                        len: read,
                        text: Err("not UTF-8"),
                    }));
                }
            };
            if text.trim().is_empty() {
                continue;
            }
            return Ok(Some(Line {
                number: self.number,
                offset,
                len: read,
                text: Ok(text.to_string()),
            }));
        }
    }

    /// The record on the line starting at `offset` (a line the first pass
    /// parsed).
    fn record_at(path: &Path, offset: u64) -> Result<PersonRecord, CliError> {
        use std::io::{Seek, SeekFrom};
        let mut lines = JsonLines::open(path)?;
        lines
            .reader
            .seek(SeekFrom::Start(offset))
            .map_err(|e| CliError::new(format!("{}: {e}", path.display())))?;
        let changed = || CliError::new(format!("{}: changed while it was read", path.display()));
        let text = lines
            .next_line()?
            .ok_or_else(changed)?
            .text
            .map_err(|_| changed())?;
        PersonRecord::from_json(&text).map_err(|_| changed())
    }
}

/// Values seen on earlier lines of a file, by fingerprint (a keyed 64-bit
/// hash): 24 bytes a line instead of the value.
#[derive(Default)]
struct Seen {
    hasher: std::hash::RandomState,
    lines: hashbrown::HashTable<(u64, u64, usize)>,
}

impl Seen {
    /// The line that named `value` first, if an earlier one did (then
    /// confirmed by reading that line: a shared fingerprint is not enough);
    /// otherwise remembers this line.
    fn first(
        &mut self,
        path: &Path,
        value: &str,
        number: usize,
        offset: u64,
        field: impl Fn(&PersonRecord) -> &str,
    ) -> Result<Option<usize>, CliError> {
        use std::hash::BuildHasher;
        let fingerprint = self.hasher.hash_one(value);
        for &(f, earlier, line) in self.lines.iter_hash(fingerprint) {
            if f == fingerprint && field(&JsonLines::record_at(path, earlier)?) == value {
                return Ok(Some(line));
            }
        }
        self.lines
            .insert_unique(fingerprint, (fingerprint, offset, number), |e| e.0);
        Ok(None)
    }
}

/// Records per transaction of an import.
const IMPORT_CHUNK: usize = 5_000;

/// How often (in chunks written) an import hands freed heap back.
const TRIM_EVERY_CHUNKS: usize = 4;

/// Hands the heap freed since the last call back to the kernel. sled's
/// nodes are copied on every write and freed later, so glibc's heap fills
/// with holes between the nodes its cache keeps: at a million people that
/// was 280 MB free but resident (`mallinfo2`) beside 470 MB in use. A
/// no-op off glibc.
fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and has no preconditions; it
    // only returns free pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The first record whose recipient belongs to a person other than its
/// own, given the records before it in the file (a recipient one record
/// gives up, a later one may take).
/// The import refused for these records (each line names file, line or
/// person and the reason); nothing was written.
fn nothing_imported(refused: &[String]) -> CliError {
    CliError::new(format!(
        "{}\n{} refused record(s); nothing imported",
        refused.join("\n"),
        refused.len()
    ))
}

/// The import refused because `taken`'s recipient is another person's;
/// nothing was written.
fn recipient_taken(path: &Path, taken: &PersonRecord) -> CliError {
    CliError::new(format!(
        "{}: person {}: recipient: {:?} already belongs to another person; nothing imported",
        path.display(),
        taken.person,
        taken.recipient
    ))
}

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
        import_when_free_partial(config, path, false)
    }

    fn import_when_free_partial(
        config: &Config,
        path: &Path,
        partial: bool,
    ) -> Result<String, CliError> {
        for _ in 0..100 {
            match import(config, path, partial) {
                Err(e) if e.message.contains("in use by another process") => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                done => return done,
            }
        }
        import(config, path, partial)
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
    fn people_written_in_the_trees_order_still_take_recipients_given_up_earlier_in_the_file() {
        // The second pass writes in the people tree's order, not the
        // file's; a record that takes a recipient an earlier one gives up
        // must still be written after it. Twenty such pairs, chunks apart:
        // in the tree's order alone each taker would come first with even
        // odds, and its transaction would find the recipient taken.
        let dir = tempfile::tempdir().unwrap();
        let config = site_in(dir.path());
        let pairs = 20;
        let held: Vec<String> = (0..pairs)
            .map(|i| format!(r#"{{"person": "p-{i}", "recipient": "r-{i}"}}"#))
            .collect();
        let held: Vec<&str> = held.iter().map(String::as_str).collect();
        import_when_free(&config, &write(dir.path(), "held.jsonl", &held)).unwrap();

        let mut lines: Vec<String> = (0..pairs)
            .map(|i| {
                format!(
                    r#"{{"person": "p-{i}", "recipient": "r-{i}-new", "updated_at": "2030-01-01T00:00:00Z"}}"#
                )
            })
            .collect();
        lines.extend(
            (0..IMPORT_CHUNK).map(|i| format!(r#"{{"person": "f-{i}", "recipient": "rf-{i}"}}"#)),
        );
        lines.extend((0..pairs).map(|i| format!(r#"{{"person": "q-{i}", "recipient": "r-{i}"}}"#)));
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let report = import_when_free(&config, &write(dir.path(), "swap.jsonl", &lines)).unwrap();
        assert!(
            report.starts_with(&format!("imported {} person record(s)", lines.len())),
            "{report}"
        );

        let store = reopen(&config);
        assert_eq!(store.people().count(), 2 * pairs + IMPORT_CHUNK);
        for i in 0..pairs {
            let p = store.person(&format!("p-{i}")).unwrap().unwrap();
            assert_eq!(p.recipient, format!("r-{i}-new"));
            let q = store.person(&format!("q-{i}")).unwrap().unwrap();
            assert_eq!(q.recipient, format!("r-{i}"));
            // The recipients index followed: each is its new owner's.
            assert!(
                !store
                    .recipient_is_other_persons(&format!("r-{i}"), &format!("q-{i}"))
                    .unwrap()
            );
            assert!(
                store
                    .recipient_is_other_persons(&format!("r-{i}"), &format!("p-{i}"))
                    .unwrap()
            );
            assert!(
                !store
                    .recipient_is_other_persons(&format!("r-{i}-new"), &format!("p-{i}"))
                    .unwrap()
            );
        }
        assert_eq!(store.person("f-0").unwrap().unwrap().recipient, "rf-0");
        let last = IMPORT_CHUNK - 1;
        assert_eq!(
            store
                .person(&format!("f-{last}"))
                .unwrap()
                .unwrap()
                .recipient,
            format!("rf-{last}")
        );
    }

    #[test]
    fn a_streamed_import_names_file_and_line_writes_nothing_when_refused_and_skips_with_partial() {
        let dir = tempfile::tempdir().unwrap();
        let config = site_in(dir.path());
        let path = dir.path().join("people.jsonl");
        let mut text = Vec::new();
        text.extend_from_slice(b"{\"person\": \"p-1\", \"recipient\": \"r-1\"}\r\n\n");
        text.extend_from_slice(b"{\"person\": \"p-2\", \"recipient\": \"r-1\"}\n");
        text.extend_from_slice(b"{\"person\": \"p-1\", \"recipient\": \"r-9\"}\n");
        text.extend_from_slice(b"{\"person\": \"p-3\", \"recipient\": \"r-\xff\"}\n");
        text.extend_from_slice(b"{\"person\": \"p-4\", \"recipient\": \"r-4\", \"pets\": 1}\n");
        text.extend_from_slice(b"{\"person\": \"p-5\", \"recipient\": \"r-5\"}");
        std::fs::write(&path, &text).unwrap();
        let e = import_when_free(&config, &path).unwrap_err();
        let shown = path.display();
        assert_eq!(
            e.message,
            format!(
                "{shown}:3: recipient: same recipient as line 1\n\
                 {shown}:4: person: same person as line 1\n\
                 {shown}:5: not UTF-8\n\
                 {shown}:6: pets: unknown field\n\
                 4 bad line(s); nothing imported (use --partial to import the 2 good one(s))"
            )
        );
        assert_eq!(reopen(&config).people().count(), 0, "nothing written");
        let report = import_when_free_partial(&config, &path, true).unwrap();
        assert!(report.ends_with("; skipped 4 bad line(s)"), "{report}");
        let store = reopen(&config);
        let mut people: Vec<String> = store
            .people()
            .map(|r| r.unwrap().person.to_string())
            .collect();
        people.sort();
        assert_eq!(people, ["p-1", "p-5"]);
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
