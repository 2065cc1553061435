//! What may appear in logs and metrics about a person: a short keyed hash,
//! never the CRM id, a key or an e-mail.

use hmac::{Hmac, Mac};
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

/// A person as every store of a chain names them on the chain's topics:
/// `HMAC-SHA256(chain secret, "chain-person-v1" || person id)`, its first
/// 16 bytes (32 lowercase hex characters on the wire). Without the chain
/// secret it can be neither computed from a guessed id nor reversed; the
/// same id under the same secret gives the same hash in every store.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChainPerson(pub [u8; 16]);

impl ChainPerson {
    /// 32 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Exactly 32 lowercase hex characters, as [`ChainPerson::to_hex`] writes.
    pub fn from_hex(text: &str) -> Option<ChainPerson> {
        if text.len() != 32 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(ChainPerson(bytes))
    }
}

impl std::fmt::Debug for ChainPerson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A pseudonym, but one every store of the chain shares: not in logs.
        f.write_str("ChainPerson(..)")
    }
}

/// The chain person hash of `person_id` under `secret` (the first line of
/// `chain.secret_file`, its bytes as they are).
pub fn chain_person(secret: &[u8], person_id: &str) -> ChainPerson {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(b"chain-person-v1");
    mac.update(person_id.as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    ChainPerson(out)
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

    /// The fixed vector of docs/design.md (chain-wide caps): any store, or
    /// a load generator, must compute the same.
    #[test]
    fn chain_person_hash_matches_the_written_vector() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let hash = super::chain_person(secret, "p-1");
        assert_eq!(hash.to_hex(), CHAIN_VECTOR_P1);
        assert_eq!(super::ChainPerson::from_hex(CHAIN_VECTOR_P1), Some(hash));
        assert_ne!(super::chain_person(secret, "p-2"), hash);
        assert_ne!(
            super::chain_person(b"another secret of 16+ bytes", "p-1"),
            hash
        );
        assert_eq!(format!("{hash:?}"), "ChainPerson(..)");
        for bad in [
            "",
            "ABCDEF0123456789ABCDEF0123456789",
            &CHAIN_VECTOR_P1[..31],
            "g".repeat(32).as_str(),
        ] {
            assert_eq!(super::ChainPerson::from_hex(bad), None, "{bad}");
        }
    }

    const CHAIN_VECTOR_P1: &str = "d7d8958469d7ad49398d29056543538d";
}
