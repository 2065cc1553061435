//! Sightings from remote scanner nodes over MQTT (DESIGN §6), and the
//! advertising-data builder that every source without raw advert bytes uses.
//!
//! Pure: parsing takes `now_ms` as an argument and does no I/O, so the daemon
//! wires these functions to its MQTT subscriptions and tests drive them with
//! the projects' own example payloads.
//!
//! - [`parse_scanner_record`]: `<p>/<s>/scanners/<node>`, our own scanner-only
//!   gateways, the DESIGN §7 sighting record as is.
//! - [`parse_openmqttgateway`] + [`AdvertMerger`]: `home/<node>/BTtoMQTT/<mac>`,
//!   OpenMQTTGateway (with `pubadvdata` on) and Theengs Gateway. They publish
//!   the parts of an advert as JSON (`manufacturerdata`, `servicedata` +
//!   `servicedatauuid`, `name`), sometimes one advert as several messages; the
//!   merger joins the parts heard by one node from one address within a
//!   short window and rebuilds the AD structures.
//! - [`parse_espresense`]: `espresense/devices/<id>/<room>`. ESPresense sends a
//!   filtered RSSI per device id and no advert bytes; for `iBeacon:` ids the
//!   iBeacon advert is rebuilt from the id so the decoder recognises it.

use crate::decode::{AD_MANUFACTURER_DATA, AD_SERVICE_DATA_16};
use crate::sighting::MAX_ADV_BYTES;

/// AD type: flags.
pub const AD_FLAGS: u8 = 0x01;
/// AD type: complete local name.
pub const AD_COMPLETE_LOCAL_NAME: u8 = 0x09;
/// AD type: service data with a 32-bit service UUID.
pub const AD_SERVICE_DATA_32: u8 = 0x20;
/// AD type: service data with a 128-bit service UUID.
pub const AD_SERVICE_DATA_128: u8 = 0x21;
/// Flags of a typical beacon: LE General Discoverable, BR/EDR not supported.
pub const FLAGS_LE_GENERAL_NO_BREDR: u8 = 0x06;

/// The Bluetooth base UUID 0000xxxx-0000-1000-8000-00805F9B34FB, big-endian,
/// with the 16/32-bit part zero.
const BLUETOOTH_BASE_UUID: [u8; 16] = [
    0, 0, 0, 0, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0x80, 0x5F, 0x9B, 0x34, 0xFB,
];

/// A service UUID in its shortest form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceUuid {
    U16(u16),
    U32(u32),
    /// Big-endian, as written in text.
    U128([u8; 16]),
}

impl ServiceUuid {
    /// From the 16 big-endian bytes of a full UUID: a UUID on the Bluetooth
    /// base becomes its 16- or 32-bit short form.
    pub fn from_uuid_bytes(be: [u8; 16]) -> Self {
        if be[4..] == BLUETOOTH_BASE_UUID[4..] {
            let short = u32::from_be_bytes([be[0], be[1], be[2], be[3]]);
            match u16::try_from(short) {
                Ok(s) => ServiceUuid::U16(s),
                Err(_) => ServiceUuid::U32(short),
            }
        } else {
            ServiceUuid::U128(be)
        }
    }

    /// "0xfeaa", "feaa", "0000feaa", "0000feaa-0000-1000-8000-00805f9b34fb"
    /// or 32 hex digits.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let t = text.trim();
        let t = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        let hex_only: String = t.chars().filter(|c| *c != '-').collect();
        if !hex_only.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err("not a hexadecimal UUID");
        }
        match hex_only.len() {
            4 => u16::from_str_radix(&hex_only, 16)
                .map(ServiceUuid::U16)
                .map_err(|_| "not a hexadecimal UUID"),
            8 => {
                let v = u32::from_str_radix(&hex_only, 16).map_err(|_| "not a hexadecimal UUID")?;
                Ok(match u16::try_from(v) {
                    Ok(s) => ServiceUuid::U16(s),
                    Err(_) => ServiceUuid::U32(v),
                })
            }
            32 => {
                let mut be = [0u8; 16];
                hex::decode_to_slice(&hex_only, &mut be).map_err(|_| "not a hexadecimal UUID")?;
                Ok(ServiceUuid::from_uuid_bytes(be))
            }
            _ => Err("expected a 16-, 32- or 128-bit UUID"),
        }
    }
}

/// Builds advertising data: a sequence of AD structures (length, type,
/// data), never longer than [`MAX_ADV_BYTES`]. A structure that would not
/// fit (data over 254 bytes, or the total over the limit) is refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdBuilder {
    bytes: Vec<u8>,
}

impl AdBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Append one AD structure. False (and nothing appended) if it does not fit.
    pub fn push(&mut self, ad_type: u8, parts: &[&[u8]]) -> bool {
        let data_len: usize = parts.iter().map(|p| p.len()).sum();
        let Ok(len) = u8::try_from(data_len + 1) else {
            return false;
        };
        if self.bytes.len() + 1 + usize::from(len) > MAX_ADV_BYTES {
            return false;
        }
        self.bytes.push(len);
        self.bytes.push(ad_type);
        for p in parts {
            self.bytes.extend_from_slice(p);
        }
        true
    }

    pub fn flags(&mut self, flags: u8) -> bool {
        self.push(AD_FLAGS, &[&[flags]])
    }

    /// Manufacturer-specific data: company id little-endian, then `data`.
    pub fn manufacturer(&mut self, company: u16, data: &[u8]) -> bool {
        self.push(AD_MANUFACTURER_DATA, &[&company.to_le_bytes(), data])
    }

    /// Service data: the UUID little-endian in its shortest form, then `data`.
    pub fn service_data(&mut self, uuid: ServiceUuid, data: &[u8]) -> bool {
        match uuid {
            ServiceUuid::U16(u) => self.push(AD_SERVICE_DATA_16, &[&u.to_le_bytes(), data]),
            ServiceUuid::U32(u) => self.push(AD_SERVICE_DATA_32, &[&u.to_le_bytes(), data]),
            ServiceUuid::U128(be) => {
                let mut le = be;
                le.reverse();
                self.push(AD_SERVICE_DATA_128, &[&le, data])
            }
        }
    }

    pub fn local_name(&mut self, name: &str) -> bool {
        self.push(AD_COMPLETE_LOCAL_NAME, &[name.as_bytes()])
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn finish(self) -> Vec<u8> {
        self.bytes
    }
}
