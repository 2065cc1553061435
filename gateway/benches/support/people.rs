//! The enrolled people the memory and pipeline benches build: person `i`
//! (`p-000042`, recipient `r-000042`) interested in laptops, with an app
//! key of their own derived from `i`.

use gateway::identity::{Consent, Identity, PersonId, PersonRecord};

/// Person `i`'s app key: distinct for every `i`, spread over all bytes.
pub fn key(i: usize) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&(i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    k[8..].copy_from_slice(&(!(i as u64)).to_le_bytes());
    k
}

/// People `0..count`, each with `consent`.
pub fn enrolled(count: usize, consent: Consent) -> Vec<PersonRecord> {
    (0..count)
        .map(|i| PersonRecord {
            person: PersonId::from(format!("p-{i:06}").as_str()),
            recipient: format!("r-{i:06}"),
            timezone: None,
            identities: vec![Identity::App { key: key(i) }],
            consent,
            interests: vec!["laptops".into()],
            owns: Vec::new(),
            stamps: Default::default(),
        })
        .collect()
}
