//! Advert decoding: AD structures in, recognised frames out. Pure, no I/O.
//!
//! Never panics on any byte string. A structure too short for the format it
//! claims is not a frame of that format; a truncated trailing structure is
//! ignored while the ones before it still decode; a zero length byte is
//! padding and ends the significant part (docs/design.md §8).
//!
//! Formats, one file each: [`ibeacon`] (Apple), [`altbeacon`] (any
//! manufacturer, beacon code 0xBEAC), [`app_token`] (our own, docs/design.md §5) in
//! manufacturer-specific data, and [`eddystone`] (UID, URL, TLM, EID) in
//! 16-bit-UUID service data. Decoding the frames the gateway sees all the time
//! (iBeacon, app token, AltBeacon, Eddystone UID/TLM/EID) does not allocate:
//! [`decode_into`] reuses the caller's `Vec`. Only an Eddystone-URL frame owns
//! a `String`.

pub mod altbeacon;
pub mod app_token;
pub mod eddystone;
pub mod ibeacon;

#[cfg(test)]
mod tests;

use serde::Serialize;

/// The company id the app token uses when config does not say otherwise:
/// 0xFFFF is the Bluetooth SIG's id reserved for tests.
pub const DEFAULT_APP_COMPANY_ID: u16 = 0xFFFF;

/// AD type: manufacturer-specific data (company id little-endian, then data).
pub const AD_MANUFACTURER_DATA: u8 = 0xFF;
/// AD type: service data with a 16-bit service UUID (little-endian first).
pub const AD_SERVICE_DATA_16: u8 = 0x16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeOptions {
    pub app_company_id: u16,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            app_company_id: DEFAULT_APP_COMPANY_ID,
        }
    }
}

/// One recognised frame. Serialised as docs/design.md §8's table: a `kind` tag and
/// exactly the fields named there.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Frame {
    #[serde(rename = "ibeacon")]
    IBeacon {
        #[serde(serialize_with = "ser_uuid")]
        uuid: [u8; 16],
        major: u16,
        minor: u16,
        measured_power: i8,
    },
    #[serde(rename = "altbeacon")]
    AltBeacon {
        /// Company id of the manufacturer-specific data it came in.
        manufacturer: u16,
        #[serde(serialize_with = "ser_uuid")]
        id1: [u8; 16],
        id2: u16,
        id3: u16,
        /// Average RSSI at 1 m.
        reference_rssi: i8,
        mfg_reserved: u8,
    },
    EddystoneUid {
        #[serde(serialize_with = "ser_hex")]
        namespace: [u8; 10],
        #[serde(serialize_with = "ser_hex")]
        instance: [u8; 6],
        /// Calibrated power at 0 m.
        tx_power: i8,
    },
    EddystoneUrl {
        url: String,
        /// Calibrated power at 0 m.
        tx_power: i8,
    },
    EddystoneTlm {
        version: u8,
        battery_mv: u16,
        /// `None` (JSON null) when the beacon sends 0x8000, "not supported".
        temperature_c: Option<f64>,
        adv_count: u32,
        /// Time since power-on or reboot; the frame counts tenths of seconds.
        uptime_s: f64,
    },
    EddystoneEid {
        #[serde(serialize_with = "ser_hex")]
        eid: [u8; 8],
        /// Calibrated power at 0 m.
        tx_power: i8,
    },
    AppToken {
        company_id: u16,
        version: u8,
        #[serde(serialize_with = "ser_hex")]
        rotating_id: [u8; 16],
        tx_power: i8,
    },
}

/// Eddystone calibrates at 0 m; the path loss from 0 m to 1 m is 41 dB
/// (Eddystone protocol specification, "Tx Power Level").
const EDDYSTONE_0M_TO_1M_DB: i8 = 41;

impl Frame {
    /// The app's rotating identifier and the power it announces, when
    /// this is the app's token: what the pipeline, `simulate` and the
    /// benches look people up by.
    pub fn app_token(&self) -> Option<(&[u8; 16], i8)> {
        match self {
            Frame::AppToken {
                rotating_id,
                tx_power,
                ..
            } => Some((rotating_id, *tx_power)),
            _ => None,
        }
    }

    /// Calibrated power at 1 m, when the frame carries one. Eddystone's
    /// 0 m figure is converted to 1 m.
    pub fn tx_power_at_1m(&self) -> Option<i8> {
        match self {
            Frame::IBeacon { measured_power, .. } => Some(*measured_power),
            Frame::AltBeacon { reference_rssi, .. } => Some(*reference_rssi),
            Frame::AppToken { tx_power, .. } => Some(*tx_power),
            Frame::EddystoneUid { tx_power, .. }
            | Frame::EddystoneUrl { tx_power, .. }
            | Frame::EddystoneEid { tx_power, .. } => {
                Some(tx_power.saturating_sub(EDDYSTONE_0M_TO_1M_DB))
            }
            Frame::EddystoneTlm { .. } => None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("not hex: {0}")]
    NotHex(String),
    #[error("no valid AD structure")]
    NoValidStructure,
}

/// Lowercase, hyphenated 8-4-4-4-12 form.
pub fn uuid_string(bytes: &[u8; 16]) -> String {
    let h = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn ser_uuid<S: serde::Serializer>(b: &[u8; 16], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&uuid_string(b))
}

fn ser_hex<S: serde::Serializer, const N: usize>(b: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(b))
}

/// The first `N` bytes of `data` as an array, if there are that many.
#[inline]
pub(crate) fn array_at<const N: usize>(data: &[u8], at: usize) -> Option<[u8; N]> {
    data.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// Iterate the complete AD structures as (type, data). Stops at the first
/// structure that runs past the end; a zero length byte is padding and ends
/// the significant part.
pub fn ad_structures(adv: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = adv;
    std::iter::from_fn(move || {
        let (&len, tail) = rest.split_first()?;
        let len = len as usize;
        if len == 0 || tail.len() < len {
            rest = &[];
            return None;
        }
        let (structure, after) = tail.split_at(len);
        rest = after;
        Some((structure[0], &structure[1..]))
    })
}

/// Decode every recognised frame into `out` (cleared first). Returns the
/// number of complete AD structures seen, so callers can tell "no frame I
/// know" from "not advertising data at all". Does not allocate unless `out`
/// must grow or an Eddystone-URL frame is found.
pub fn decode_into(adv: &[u8], opts: &DecodeOptions, out: &mut Vec<Frame>) -> usize {
    out.clear();
    let mut structures = 0;
    for (ad_type, data) in ad_structures(adv) {
        structures += 1;
        let frame = match ad_type {
            AD_MANUFACTURER_DATA => manufacturer_frame(data, opts),
            AD_SERVICE_DATA_16 => eddystone::parse_service_data(data),
            _ => None,
        };
        if let Some(frame) = frame {
            out.push(frame);
        }
    }
    structures
}

/// Decode advertising data; an error when it holds no valid structure at all.
pub fn decode(adv: &[u8], opts: &DecodeOptions) -> Result<Vec<Frame>, DecodeError> {
    let mut frames = Vec::new();
    if decode_into(adv, opts, &mut frames) == 0 {
        return Err(DecodeError::NoValidStructure);
    }
    Ok(frames)
}

/// `gateway decode`: hex in, `{"frames": [...]}` out. Surrounding whitespace
/// is ignored; upper- and lowercase hex are both accepted.
pub fn decode_hex_to_json(
    hex_text: &str,
    opts: &DecodeOptions,
) -> Result<serde_json::Value, DecodeError> {
    let bytes = hex::decode(hex_text.trim()).map_err(|e| DecodeError::NotHex(e.to_string()))?;
    let frames = decode(&bytes, opts)?;
    Ok(serde_json::json!({ "frames": frames }))
}

/// `gateway decode -`: one input line in, one JSON line out (no newline):
/// `{"frames": [...]}`, or `{"error": "..."}` for a bad line.
pub fn decode_line_to_json(line: &str, opts: &DecodeOptions) -> String {
    let value = match decode_hex_to_json(line, opts) {
        Ok(v) => v,
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    };
    value.to_string()
}

fn manufacturer_frame(data: &[u8], opts: &DecodeOptions) -> Option<Frame> {
    let company = u16::from_le_bytes(array_at::<2>(data, 0)?);
    let body = &data[2..];
    if company == opts.app_company_id {
        if let Some(frame) = app_token::parse(company, body) {
            return Some(frame);
        }
    }
    if company == ibeacon::APPLE {
        if let Some(frame) = ibeacon::parse(body) {
            return Some(frame);
        }
    }
    altbeacon::parse(company, body)
}
