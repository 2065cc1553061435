//! What the durable-decision benches and `examples/durable_decisions.rs`
//! share: a site, caps that never hold a nudge back, and enrolled people.

use gateway::decide::{Caps, NudgeKind};
use gateway::identity::{Consent, Identity, PersonId, PersonRecord};
use gateway::store::ReserveCandidate;

/// The minimal site file the measured configuration starts from (the
/// shipped example of docs/design.md §7; the example overrides its caps, quiet
/// hours and kill switch).
pub const SITE: &str = include_str!("../../../config/example-site.toml");

/// Generous: every decision is a grant, so each writes ledger + outbox +
/// decision log (the heaviest path).
pub fn unlimited_caps() -> Caps {
    Caps {
        per_visit: 1_000_000,
        per_day: 1_000_000,
        per_week: 1_000_000,
        min_gap_s: 0,
        per_kind_per_day: None,
        rule_cooldown_s: 0,
        store_per_minute: None,
    }
}

/// Person `i`, opted in to everything, with an app key of their own.
pub fn enrolled(i: u64, person: PersonId, recipient: String) -> PersonRecord {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&i.to_le_bytes());
    PersonRecord {
        person,
        recipient,
        timezone: None,
        identities: vec![Identity::App { key }],
        consent: Consent {
            proximity: true,
            product_info: true,
            offers: true,
            thanks: true,
            feedback: true,
        },
        interests: Vec::new(),
        owns: Vec::new(),
        // Enrolled before anything is said about them: any later word wins.
        stamps: Default::default(),
    }
}

/// The nudge the benches reserve: the laptop compare, at the laptops,
/// in the visit that starts `now_ms`, valid 15 minutes.
// Not every file that includes this module reserves one.
#[allow(dead_code)]
pub fn laptop_compare(
    nudge_id: String,
    recipient: &str,
    payload: String,
    now_ms: i64,
) -> ReserveCandidate {
    ReserveCandidate {
        topic: format!("retail/s/nudges/{recipient}"),
        payload,
        nudge_id,
        kind: NudgeKind::Compare,
        rule: "laptop-compare".into(),
        zone: "laptops".into(),
        visit: now_ms,
        now_ms,
        expires_at_ms: now_ms + 900_000,
        held: None,
    }
}
