//! Apple iBeacon: manufacturer-specific data of company 0x004C, then type
//! 0x02, length 0x15 (21), the 16-byte proximity UUID, major and minor
//! (big-endian) and the measured power at 1 m (signed).

use super::{Frame, array_at};

pub const APPLE: u16 = 0x004C;
const TYPE_AND_LENGTH: [u8; 2] = [0x02, 0x15];
/// Bytes after the company id.
pub const BODY_LEN: usize = 2 + 16 + 2 + 2 + 1;

/// `body` is what follows the company id.
#[inline]
pub fn parse(body: &[u8]) -> Option<Frame> {
    if body.len() != BODY_LEN || body[..2] != TYPE_AND_LENGTH {
        return None;
    }
    Some(Frame::IBeacon {
        uuid: array_at(body, 2)?,
        major: u16::from_be_bytes(array_at(body, 18)?),
        minor: u16::from_be_bytes(array_at(body, 20)?),
        measured_power: body[22] as i8,
    })
}
