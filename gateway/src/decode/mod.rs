//! Advert decoding: AD structures in, recognised frames out. Pure, no I/O.
//!
//! Never panics on any byte string. A structure too short for the format it
//! claims is not a frame of that format; a truncated trailing structure is
//! ignored while the ones before it still decode (DESIGN §8).

use serde::Serialize;

/// The company id the app token uses when config does not say otherwise:
/// 0xFFFF is the Bluetooth SIG's id reserved for tests.
pub const DEFAULT_APP_COMPANY_ID: u16 = 0xFFFF;
const APPLE: u16 = 0x004C;
const AD_MANUFACTURER_DATA: u8 = 0xFF;

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
    AppToken {
        company_id: u16,
        version: u8,
        #[serde(serialize_with = "ser_hex")]
        rotating_id: [u8; 16],
        tx_power: i8,
    },
}

impl Frame {
    /// Calibrated power at 1 m, when the frame carries one.
    pub fn tx_power_at_1m(&self) -> Option<i8> {
        match self {
            Frame::IBeacon { measured_power, .. } => Some(*measured_power),
            Frame::AppToken { tx_power, .. } => Some(*tx_power),
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

fn ser_hex<S: serde::Serializer>(b: &[u8; 16], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(b))
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
/// know" from "not advertising data at all".
pub fn decode_into(adv: &[u8], opts: &DecodeOptions, out: &mut Vec<Frame>) -> usize {
    out.clear();
    let mut structures = 0;
    for (ad_type, data) in ad_structures(adv) {
        structures += 1;
        if ad_type == AD_MANUFACTURER_DATA {
            if let Some(frame) = manufacturer_frame(data, opts) {
                out.push(frame);
            }
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

/// `gateway decode`: hex in, `{"frames": [...]}` out.
pub fn decode_hex_to_json(
    hex_text: &str,
    opts: &DecodeOptions,
) -> Result<serde_json::Value, DecodeError> {
    let bytes = hex::decode(hex_text.trim()).map_err(|e| DecodeError::NotHex(e.to_string()))?;
    let frames = decode(&bytes, opts)?;
    Ok(serde_json::json!({ "frames": frames }))
}

fn manufacturer_frame(data: &[u8], opts: &DecodeOptions) -> Option<Frame> {
    let company = u16::from_le_bytes([*data.first()?, *data.get(1)?]);
    let body = &data[2..];
    if company == opts.app_company_id && body.len() == 18 && body[0] == 0x01 {
        let mut rotating_id = [0u8; 16];
        rotating_id.copy_from_slice(&body[1..17]);
        return Some(Frame::AppToken {
            company_id: company,
            version: body[0],
            rotating_id,
            tx_power: body[17] as i8,
        });
    }
    if company == APPLE && body.len() == 23 && body[0] == 0x02 && body[1] == 0x15 {
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&body[2..18]);
        return Some(Frame::IBeacon {
            uuid,
            major: u16::from_be_bytes([body[18], body[19]]),
            minor: u16::from_be_bytes([body[20], body[21]]),
            measured_power: body[22] as i8,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ibeacon_from_the_published_vector() {
        let v = decode_hex_to_json(
            "0201061aff4c000215426c7565436861726d426561636f6e730efe1355c5",
            &DecodeOptions::default(),
        )
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"frames": [{"kind": "ibeacon", "uuid": "426c7565-4368-6172-6d42-6561636f6e73", "major": 3838, "minor": 4949, "measured_power": -59}]})
        );
    }

    #[test]
    fn app_token_round_trip() {
        let adv = hex::decode("02010615ffffff018be6cd371c5c891604bfbe49df845096c5").unwrap();
        let frames = decode(&adv, &DecodeOptions::default()).unwrap();
        assert_eq!(
            frames,
            vec![Frame::AppToken {
                company_id: 0xFFFF,
                version: 1,
                rotating_id: hex::decode("8be6cd371c5c891604bfbe49df845096")
                    .unwrap()
                    .try_into()
                    .unwrap(),
                tx_power: -59
            }]
        );
    }

    #[test]
    fn not_hex_and_no_structure_are_errors() {
        assert!(matches!(
            decode_hex_to_json("zz01", &DecodeOptions::default()),
            Err(DecodeError::NotHex(_))
        ));
        assert_eq!(
            decode_hex_to_json("05ff", &DecodeOptions::default()),
            Err(DecodeError::NoValidStructure)
        );
    }
}
