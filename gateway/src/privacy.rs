//! What may appear in logs and metrics about a person: a short keyed hash,
//! never the CRM id, a key or an e-mail.

use sha2::{Digest, Sha256};

/// A stable, short, non-reversible tag for a personal identifier, for logs.
/// Salted so a log reader cannot confirm a guessed id by hashing it: logs
/// outlive an erasure, and an unsalted hash of a guessed id would still
/// find the person in them.
pub fn hashed(id: &str) -> String {
    hash_with(salt(), id)
}

/// [`hashed`] if a salt is already in place (installed, or made by an
/// earlier [`hashed`]), else `None`: pure, for `Debug` impls, which must
/// not make one (that takes randomness or the clock).
pub fn hashed_if_salted(id: &str) -> Option<String> {
    SALT.get().map(|salt| hash_with(salt, id))
}

fn hash_with(salt: &[u8], id: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"gateway-log-v1\0");
    h.update(salt);
    h.update(id.as_bytes());
    hex::encode(&h.finalize()[..6])
}

static SALT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// The salt for the rest of the process: the daemon installs the one kept
/// in its state directory (made at random on first start, so hashes stay
/// comparable across restarts of one gateway and nowhere else) before it
/// logs anyone. Returns false if hashes were already made with another.
pub fn install_salt(salt: &[u8]) -> bool {
    SALT.set(salt.to_vec()).is_ok() || SALT.get().is_some_and(|s| s == salt)
}

/// Without an installed salt (a CLI command, a test), a random one for
/// this process: never none.
fn salt() -> &'static [u8] {
    SALT.get_or_init(|| {
        let mut salt = vec![0u8; 16];
        if getrandom::getrandom(&mut salt).is_err() {
            // No randomness at all: the time still keeps hashes from
            // matching another process's.
            salt = format!("{:?}", std::time::SystemTime::now()).into_bytes();
        }
        salt
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
        // Once a salt is in place, the pure form gives the same hash.
        assert_eq!(super::hashed_if_salted("ana@example.com"), Some(h));
    }
}
