//! Google Eddystone: service data for the 16-bit service UUID 0xFEAA (sent
//! little-endian, `aa fe`), then a frame type byte.
//!
//! | type | frame | bytes after the type byte |
//! |---|---|---|
//! | 0x00 | UID | tx power (i8, at 0 m), namespace (10), instance (6), 2 RFU bytes (some beacons omit them) |
//! | 0x10 | URL | tx power (i8, at 0 m), scheme prefix, encoded URL (0..=17 bytes) |
//! | 0x20 | TLM | version; for version 0 (unencrypted): battery mV (u16 BE), temperature (8.8 signed fixed point BE, 0x8000 = not supported), advertising PDU count (u32 BE), time since power-on in 0.1 s (u32 BE) |
//! | 0x30 | EID | tx power (i8, at 0 m), ephemeral id (8) |
//!
//! Encrypted TLM (version 1) is not decoded: without the beacon's key it
//! carries nothing the gateway can read.

use super::{Frame, array_at};

/// 0xFEAA as it appears on air.
pub const SERVICE_UUID_LE: [u8; 2] = [0xAA, 0xFE];

pub const FRAME_UID: u8 = 0x00;
pub const FRAME_URL: u8 = 0x10;
pub const FRAME_TLM: u8 = 0x20;
pub const FRAME_EID: u8 = 0x30;

pub const UID_LEN: usize = 1 + 10 + 6;
pub const UID_LEN_WITH_RFU: usize = UID_LEN + 2;
pub const URL_MAX_ENCODED: usize = 17;
pub const TLM_LEN: usize = 1 + 2 + 2 + 4 + 4;
pub const EID_LEN: usize = 1 + 8;

/// 8.8 fixed point value meaning "temperature not supported".
pub const TLM_TEMPERATURE_UNSUPPORTED: u16 = 0x8000;

/// URL scheme prefixes, by their byte.
pub const SCHEMES: [&str; 4] = ["http://www.", "https://www.", "http://", "https://"];

/// URL expansion codes 0x00..=0x0D, by their byte.
pub const EXPANSIONS: [&str; 14] = [
    ".com/", ".org/", ".edu/", ".net/", ".info/", ".biz/", ".gov/", ".com", ".org", ".edu", ".net",
    ".info", ".biz", ".gov",
];

/// `data` is the service data after the AD type: UUID first.
#[inline]
pub fn parse_service_data(data: &[u8]) -> Option<Frame> {
    let (uuid, rest) = data.split_at_checked(2)?;
    if uuid != SERVICE_UUID_LE {
        return None;
    }
    let (&frame_type, body) = rest.split_first()?;
    match frame_type {
        FRAME_UID => uid(body),
        FRAME_URL => url(body),
        FRAME_TLM => tlm(body),
        FRAME_EID => eid(body),
        _ => None,
    }
}

fn uid(body: &[u8]) -> Option<Frame> {
    if body.len() != UID_LEN && body.len() != UID_LEN_WITH_RFU {
        return None;
    }
    Some(Frame::EddystoneUid {
        namespace: array_at(body, 1)?,
        instance: array_at(body, 11)?,
        tx_power: body[0] as i8,
    })
}

fn url(body: &[u8]) -> Option<Frame> {
    let [tx_power, scheme, ref encoded @ ..] = *body else {
        return None;
    };
    let prefix = SCHEMES.get(scheme as usize)?;
    if encoded.len() > URL_MAX_ENCODED {
        return None;
    }
    let mut url = String::with_capacity(prefix.len() + encoded.len() + 8);
    url.push_str(prefix);
    for &b in encoded {
        match b {
            0x00..=0x0D => url.push_str(EXPANSIONS[b as usize]),
            // Printable ASCII; 0x0E..=0x20 and 0x7F..=0xFF are reserved.
            0x21..=0x7E => url.push(b as char),
            _ => return None,
        }
    }
    Some(Frame::EddystoneUrl {
        url,
        tx_power: tx_power as i8,
    })
}

fn tlm(body: &[u8]) -> Option<Frame> {
    // Version 0 only: unencrypted TLM.
    if body.len() != TLM_LEN || body[0] != 0x00 {
        return None;
    }
    let temperature = u16::from_be_bytes(array_at(body, 3)?);
    Some(Frame::EddystoneTlm {
        version: body[0],
        battery_mv: u16::from_be_bytes(array_at(body, 1)?),
        temperature_c: (temperature != TLM_TEMPERATURE_UNSUPPORTED)
            .then(|| f64::from(temperature as i16) / 256.0),
        adv_count: u32::from_be_bytes(array_at(body, 5)?),
        uptime_s: f64::from(u32::from_be_bytes(array_at(body, 9)?)) / 10.0,
    })
}

fn eid(body: &[u8]) -> Option<Frame> {
    if body.len() != EID_LEN {
        return None;
    }
    Some(Frame::EddystoneEid {
        eid: array_at(body, 1)?,
        tx_power: body[0] as i8,
    })
}
