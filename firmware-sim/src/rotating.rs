//! Rotating identifier of the app token (docs/design.md §5).
//!
//! This is an independent implementation of the Exposure Notification
//! "Rolling Proximity Identifier" derivation, kept separate from the
//! gateway's so that a mistake in one shows up as a mismatch in the other.

use aes::Aes128;
use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};
use hkdf::Hkdf;
use sha2::Sha256;

/// Length of one rotation interval in seconds.
pub const INTERVAL_S: i64 = 600;

/// Length of one rotation interval in milliseconds.
pub const INTERVAL_MS: i64 = INTERVAL_S * 1000;

/// The rotation interval number of a Unix time in milliseconds
/// (`unix_seconds / 600`). Times before 1970 map to interval 0.
pub fn interval_of_unix_ms(unix_ms: i64) -> u32 {
    let interval = unix_ms.div_euclid(INTERVAL_MS);
    u32::try_from(interval.max(0)).unwrap_or(u32::MAX)
}

/// `RPIK = HKDF-SHA256(ikm = key, salt = none, info = "EN-RPIK", 16 bytes)`.
pub fn derive_rpik(key: &[u8; 16]) -> [u8; 16] {
    let hkdf = Hkdf::<Sha256>::new(None, key);
    let mut rpik = [0u8; 16];
    // 16 bytes is far below HKDF-SHA256's 255 * 32 byte limit, so expand
    // cannot fail; the fallback keeps this function total anyway.
    if hkdf.expand(b"EN-RPIK", &mut rpik).is_err() {
        rpik = [0u8; 16];
    }
    rpik
}

/// A key ready to produce identifiers: the AES key schedule is computed once.
#[derive(Clone)]
pub struct RotatingKey {
    cipher: Aes128,
}

impl std::fmt::Debug for RotatingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str("RotatingKey(..)")
    }
}

impl RotatingKey {
    /// Prepare a 16-byte app key (derives its RPIK).
    pub fn new(key: &[u8; 16]) -> Self {
        let rpik = derive_rpik(key);
        Self {
            cipher: Aes128::new(GenericArray::from_slice(&rpik)),
        }
    }

    /// `RPI = AES-128-ECB(RPIK, "EN-RPI" || 6 zero bytes || interval u32 LE)`.
    pub fn identifier(&self, interval: u32) -> [u8; 16] {
        let mut block = [0u8; 16];
        block[..6].copy_from_slice(b"EN-RPI");
        block[12..].copy_from_slice(&interval.to_le_bytes());
        let mut block = GenericArray::from(block);
        self.cipher.encrypt_block(&mut block);
        block.into()
    }

    /// The identifier advertised at a Unix time in milliseconds.
    pub fn identifier_at_unix_ms(&self, unix_ms: i64) -> [u8; 16] {
        self.identifier(interval_of_unix_ms(unix_ms))
    }
}

/// One-shot convenience: the identifier of `key` for `interval`.
pub fn rotating_id(key: &[u8; 16], interval: u32) -> [u8; 16] {
    RotatingKey::new(key).identifier(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_is_unix_seconds_over_600() {
        assert_eq!(interval_of_unix_ms(0), 0);
        assert_eq!(interval_of_unix_ms(599_999), 0);
        assert_eq!(interval_of_unix_ms(600_000), 1);
        assert_eq!(interval_of_unix_ms(1_795_334_400_123), 2_992_224);
        assert_eq!(interval_of_unix_ms(-5), 0);
    }
}
