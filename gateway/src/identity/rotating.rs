//! Rotating identifiers, derived exactly as the Exposure Notification
//! cryptography specification derives a Rolling Proximity Identifier.

use aes::Aes128;
use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};
use hkdf::Hkdf;
use sha2::Sha256;

/// Seconds per rotation interval.
pub const INTERVAL_S: i64 = 600;

/// The interval number for a Unix time in seconds.
pub fn interval_of(unix_s: i64) -> u32 {
    (unix_s.div_euclid(INTERVAL_S)).clamp(0, u32::MAX as i64) as u32
}

/// `RPIK = HKDF-SHA256(key, salt = none, info = "EN-RPIK", 16)`.
pub fn rpik(key: &[u8; 16]) -> [u8; 16] {
    let mut out = [0u8; 16];
    Hkdf::<Sha256>::new(None, key)
        .expand(b"EN-RPIK", &mut out)
        .expect("16 bytes is a valid HKDF-SHA256 output length");
    out
}

/// An AES-128 cipher keyed with a person's RPIK, reusable across intervals.
pub fn rpi_cipher(rpik: &[u8; 16]) -> Aes128 {
    Aes128::new(GenericArray::from_slice(rpik))
}

/// `RPI = AES-128(RPIK, "EN-RPI" ‖ 6 zero bytes ‖ interval u32 LE)`.
/// Generic over the cipher so that callers may keep an encrypt-only
/// [`aes::Aes128Enc`] (no decryption round keys) instead of an [`Aes128`].
pub fn rpi_with<C: BlockEncrypt<BlockSize = aes::cipher::consts::U16>>(
    cipher: &C,
    interval: u32,
) -> [u8; 16] {
    let mut block = [0u8; 16];
    block[..6].copy_from_slice(b"EN-RPI");
    block[12..].copy_from_slice(&interval.to_le_bytes());
    let mut block = GenericArray::from(block);
    cipher.encrypt_block(&mut block);
    block.into()
}

/// The identifier an install with `key` advertises during `interval`.
pub fn rotating_id(key: &[u8; 16], interval: u32) -> [u8; 16] {
    rpi_with(&rpi_cipher(&rpik(key)), interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Vectors {
        key: String,
        start_interval: u32,
        rpik: String,
        rpis: Vec<String>,
    }

    fn vectors() -> Vectors {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../vectors/rotating_id.json");
        serde_json::from_str(
            &std::fs::read_to_string(path).expect("vectors/rotating_id.json present"),
        )
        .unwrap()
    }

    #[test]
    fn published_vectors_pass() {
        let v = vectors();
        let key: [u8; 16] = hex::decode(&v.key).unwrap().try_into().unwrap();
        assert_eq!(hex::encode(rpik(&key)), v.rpik);
        for (i, expected) in v.rpis.iter().enumerate() {
            assert_eq!(
                &hex::encode(rotating_id(&key, v.start_interval + i as u32)),
                expected
            );
        }
    }

    #[test]
    fn interval_boundaries() {
        assert_eq!(interval_of(0), 0);
        assert_eq!(interval_of(599), 0);
        assert_eq!(interval_of(600), 1);
        assert_eq!(interval_of(-5), 0);
    }
}
