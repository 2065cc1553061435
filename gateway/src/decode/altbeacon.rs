//! AltBeacon (AltBeacon protocol specification v1.0): manufacturer-specific
//! data of any company, then the beacon code 0xBEAC (big-endian), a 20-byte
//! beacon id, the reference RSSI at 1 m (signed) and one manufacturer
//! reserved byte. The id is reported as `id1` (first 16 bytes, uuid form),
//! `id2` and `id3` (two big-endian u16), as the reference libraries do.

use super::{Frame, array_at};

pub const BEACON_CODE: [u8; 2] = [0xBE, 0xAC];
/// Bytes after the company id.
pub const BODY_LEN: usize = 2 + 20 + 1 + 1;

/// `body` is what follows the company id.
#[inline]
pub fn parse(manufacturer: u16, body: &[u8]) -> Option<Frame> {
    if body.len() != BODY_LEN || body[..2] != BEACON_CODE {
        return None;
    }
    Some(Frame::AltBeacon {
        manufacturer,
        id1: array_at(body, 2)?,
        id2: u16::from_be_bytes(array_at(body, 18)?),
        id3: u16::from_be_bytes(array_at(body, 20)?),
        reference_rssi: body[22] as i8,
        mfg_reserved: body[23],
    })
}
