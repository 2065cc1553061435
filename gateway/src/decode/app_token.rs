//! The app token (docs/design.md §5): manufacturer-specific data with the configured
//! company id, then version 0x01, the 16-byte rotating identifier and one
//! signed byte of calibrated TX power at 1 m.

use super::{Frame, array_at};

pub const VERSION: u8 = 0x01;
/// Bytes after the company id.
pub const BODY_LEN: usize = 1 + 16 + 1;

/// `body` is what follows the company id.
#[inline]
pub fn parse(company_id: u16, body: &[u8]) -> Option<Frame> {
    if body.len() != BODY_LEN || body[0] != VERSION {
        return None;
    }
    Some(Frame::AppToken {
        company_id,
        version: VERSION,
        rotating_id: array_at(body, 1)?,
        tx_power: body[17] as i8,
    })
}
