//! What may appear in logs and metrics about a person: a short keyed hash,
//! never the CRM id, a key or an e-mail.

use sha2::{Digest, Sha256};

/// A stable, short, non-reversible tag for a personal identifier, for logs.
/// Salted so a log reader cannot confirm a guessed id by hashing it.
pub fn hashed(id: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"gateway-log-v1\0");
    h.update(salt());
    h.update(id.as_bytes());
    hex::encode(&h.finalize()[..6])
}

fn salt() -> &'static [u8] {
    static SALT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    SALT.get_or_init(|| {
        std::env::var("GATEWAY_LOG_SALT")
            .map(String::into_bytes)
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn hash_is_short_and_hides_the_id() {
        let h = super::hashed("ana@example.com");
        assert_eq!(h.len(), 12);
        assert!(!h.contains("ana"));
        assert_eq!(h, super::hashed("ana@example.com"));
    }
}
