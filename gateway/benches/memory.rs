//! Resident memory of the daemon's in-memory state at store scale:
//! 100,000 enrolled people (one app key each, `People::load`) and 10,000
//! devices present across 50 scanners (`PresenceEngine` fed until 10,000
//! are present). RSS from /proc/self/statm before and after each step.
//! Target: under 64 MB for both together.
//!
//! `cargo bench -p gateway --bench memory` (no criterion: one pass, a
//! fresh process, so nothing else is resident).

use std::time::Instant;

use gateway::identity::{Consent, PersonId, PersonRecord};
use gateway::people::{MemoryRecords, People};
use gateway::presence::{PresenceConfig, PresenceEngine, ZoneId};

const START_S: i64 = 1_795_485_600;
const PEOPLE: usize = 100_000;
const PRESENT: usize = 10_000;
const SCANNERS: usize = 50;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0) as u64
}

/// Resident after handing freed heap back to the kernel: the live set.
fn trimmed_resident_bytes() -> u64 {
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
    resident_bytes()
}

fn status_field(name: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(name))
        .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

#[path = "support/people.rs"]
mod people;

fn main() {
    // `cargo bench` passes --bench; a filter that does not mention memory
    // means another bench was asked for.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args
        .iter()
        .any(|a| !a.starts_with('-') && !"memory".contains(a.as_str()))
    {
        return;
    }
    let base = resident_bytes();
    println!("memory: baseline resident {:.1} MB", mb(base));

    let mut config = PresenceConfig::default();
    for s in 0..SCANNERS {
        config.scanner_zone.insert(
            format!("scanner-{s:02}"),
            ZoneId::from(format!("zone-{:02}", s / 2)),
        );
    }
    config.dwell_thresholds_s = [20, 60, 300].into_iter().collect();
    let scanners: Vec<String> = (0..SCANNERS).map(|s| format!("scanner-{s:02}")).collect();
    let ids: Vec<PersonId> = (0..PRESENT)
        .map(|i| PersonId::from(format!("p-{:06}", i * (PEOPLE / PRESENT)).as_str()))
        .collect();
    let before_presence = resident_bytes();
    let mut engine = PresenceEngine::new(config);
    let mut out = Vec::new();
    let mut now = START_S * 1000;
    // 5 adverts/s per person, each heard by 3 scanners, 10 s of store time.
    let mut noise = 0x9E37_79B9_7F4A_7C15u64;
    for _round in 0..50 {
        for (i, id) in ids.iter().enumerate() {
            for k in 0..3 {
                noise ^= noise >> 12;
                noise ^= noise << 25;
                noise ^= noise >> 27;
                let n = (noise.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 59) as i16 - 8;
                engine.observe(
                    id,
                    &scanners[(i + k) % SCANNERS],
                    -62 - 6 * k as i16 + n,
                    now + (i as i64 % 200),
                    &mut out,
                );
            }
        }
        out.clear();
        now += 200;
        engine.tick(now, &mut out);
        out.clear();
    }
    let with_presence = resident_bytes();
    println!(
        "memory: PresenceEngine with {} present across {SCANNERS} scanners: \
         resident {:.1} MB ({:.0} bytes/person)",
        engine.present_count(),
        mb(with_presence - before_presence),
        (with_presence - before_presence) as f64 / PRESENT as f64
    );
    // Records as they come out of the store: built first, measured apart.
    let records = people_records();
    let with_records = resident_bytes();
    let t = Instant::now();
    // Only the hot part stays: whole records are read from the store when
    // needed (here an empty map stands for it; nothing below reads one).
    let people = People::load(
        records
            .iter()
            .cloned()
            .map(Ok::<_, std::convert::Infallible>),
        records.len(),
        std::sync::Arc::new(MemoryRecords::new()),
        START_S,
    )
    .unwrap_or_else(|e| match e {});
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let with_people = resident_bytes();
    println!(
        "memory: People::load of {PEOPLE} records (1 app key each) took {load_ms:.0} ms; \
         resident {:.1} MB over the input Vec<PersonRecord> ({:.1} MB, dropped below), \
         {:.0} bytes/person; heap_bytes() says {:?}",
        mb(with_people.saturating_sub(with_records)),
        mb(with_records - with_presence),
        with_people.saturating_sub(with_records) as f64 / PEOPLE as f64,
        people.heap_bytes()
    );
    let people_bytes = with_people.saturating_sub(with_records);
    drop(records);

    let with_both = resident_bytes();
    let total = with_both - base;
    println!(
        "memory: TOTAL people + presence {:.1} MB over baseline; process resident {:.1} MB \
         (VmRSS {}, VmHWM {}); target < 64 MB: {}",
        mb(total),
        mb(with_both),
        status_field("VmRSS:"),
        status_field("VmHWM:"),
        if with_both < 64_000_000 {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "memory: live set after malloc_trim: {:.1} MB over baseline (freed heap the \
         allocator kept: {:.1} MB)",
        mb(trimmed_resident_bytes().saturating_sub(base)),
        mb(with_both.saturating_sub(trimmed_resident_bytes()))
    );
    println!(
        "memory: people {} (sanity {}), present {}",
        people.len(),
        people.contains(&ids[0]),
        engine.present_count()
    );
    components(&people_records(), &ids, people_bytes);
}

/// The enrolled people's records, as they come out of the store.
fn people_records() -> Vec<PersonRecord> {
    let consent = Consent {
        proximity: true,
        product_info: true,
        offers: false,
        thanks: true,
        feedback: false,
    };
    people::enrolled(PEOPLE, consent)
}

/// What dominates: each part built alone, measured as a trimmed live set.
fn components(records: &[PersonRecord], ids: &[PersonId], people_bytes: u64) {
    use gateway::identity::{IdentityIndex, RotatingIdTable};
    use std::collections::HashMap;
    let base = trimmed_resident_bytes();
    let mut table = RotatingIdTable::new();
    for (owner, r) in records.iter().enumerate() {
        for k in r.app_keys() {
            table.insert_key(owner as u32, *k);
        }
    }
    table.roll_to(START_S);
    let after = trimmed_resident_bytes();
    println!(
        "memory: part: RotatingIdTable {} keys / {} ids: {:.1} MB resident \
         ({:.0} bytes/key; heap_bytes() says {:.1} MB)",
        table.key_count(),
        table.id_count(),
        mb(after.saturating_sub(base)),
        after.saturating_sub(base) as f64 / PEOPLE as f64,
        mb(table.heap_bytes() as u64)
    );
    println!(
        "memory: part: People besides the table (entries, person and recipient \
         indexes, interned strings, e-mail/card index): {:.1} MB ({:.0} bytes/person)",
        mb(people_bytes.saturating_sub(after.saturating_sub(base))),
        people_bytes.saturating_sub(after.saturating_sub(base)) as f64 / PEOPLE as f64
    );
    drop(table);
    // For comparison: the structures People kept before it was compacted.
    let base = trimmed_resident_bytes();
    let mut index = IdentityIndex::new();
    for r in records {
        let _ = index.apply_record(r);
    }
    let after = trimmed_resident_bytes();
    println!(
        "memory: old layout, for comparison: IdentityIndex of {} identities \
         (app keys included): {:.1} MB resident",
        index.len(),
        mb(after.saturating_sub(base))
    );
    drop(index);
    let base = trimmed_resident_bytes();
    let map: HashMap<PersonId, PersonRecord> = records
        .iter()
        .map(|r| (r.person.clone(), r.clone()))
        .collect();
    let after = trimmed_resident_bytes();
    println!(
        "memory: old layout, for comparison: HashMap<PersonId, PersonRecord> of {}: \
         {:.1} MB resident \
         (size_of PersonRecord {} bytes + its heap strings/vecs)",
        map.len(),
        mb(after.saturating_sub(base)),
        std::mem::size_of::<PersonRecord>()
    );
    drop(map);
    let _ = ids;
}
