//! Sightings from remote scanner nodes over MQTT (docs/design.md §6), and the
//! advertising-data builder that every source without raw advert bytes uses.
//!
//! Pure: parsing takes `now_ms` as an argument and does no I/O, so the daemon
//! wires these functions to its MQTT subscriptions and tests drive them with
//! the projects' own example payloads.
//!
//! - [`parse_scanner_record`]: `<p>/<s>/scanners/<node>`, our own scanner-only
//!   gateways, the docs/design.md §7 sighting record as is.
//! - [`parse_openmqttgateway`] + [`AdvertMerger`]: `home/<node>/BTtoMQTT/<mac>`,
//!   OpenMQTTGateway (with `pubadvdata` on) and Theengs Gateway. They publish
//!   the parts of an advert as JSON (`manufacturerdata`, `servicedata` +
//!   `servicedatauuid`, `name`), sometimes one advert as several messages; the
//!   merger joins the parts heard by one node from one address within a
//!   short window and rebuilds the AD structures.
//! - [`parse_espresense`]: `espresense/devices/<id>/<room>`. ESPresense sends a
//!   filtered RSSI per device id and no advert bytes; for `iBeacon:` ids the
//!   iBeacon advert is rebuilt from the id so the decoder recognises it.

use std::collections::{BTreeMap, HashMap};

use sha2::{Digest, Sha256};

use crate::config::{BeaconKind, FleetBeacon};
use crate::decode::{AD_MANUFACTURER_DATA, AD_SERVICE_DATA_16, ibeacon};
use crate::sighting::{BdAddr, MAX_ADV_BYTES, Sighting};

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

/// Largest scanner payload accepted; real ones are a few hundred bytes.
pub const MAX_PAYLOAD_BYTES: usize = 4096;
/// Calibrated iBeacon power used when ESPresense does not send `rssi@1m`
/// (ESPresense's own default reference).
pub const DEFAULT_RSSI_AT_1M: i8 = -59;

/// Why a scanner message was not turned into a sighting. `ignored` marks
/// messages that are fine but of no use here (an ESPresense id that is not
/// an iBeacon, an OpenMQTTGateway message without advert data): count them
/// as drops, do not report them as errors.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ScannerError {
    pub field: &'static str,
    pub reason: String,
    pub ignored: bool,
}

impl ScannerError {
    fn bad(field: &'static str, reason: impl Into<String>) -> Self {
        ScannerError {
            field,
            reason: reason.into(),
            ignored: false,
        }
    }

    fn ignored(field: &'static str, reason: impl Into<String>) -> Self {
        ScannerError {
            field,
            reason: reason.into(),
            ignored: true,
        }
    }
}

fn json_object(payload: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, ScannerError> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(ScannerError::bad(
            "payload",
            format!("larger than {MAX_PAYLOAD_BYTES} bytes"),
        ));
    }
    let text =
        std::str::from_utf8(payload).map_err(|_| ScannerError::bad("payload", "not UTF-8"))?;
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(ScannerError::bad("payload", "must be a JSON object")),
        Err(e) => Err(ScannerError::bad("payload", format!("not valid JSON: {e}"))),
    }
}

fn topic_segments<'a>(topic: &'a str, expected: &str) -> Result<Vec<&'a str>, ScannerError> {
    let segments: Vec<&str> = topic.split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(ScannerError::bad("topic", format!("expected {expected}")));
    }
    Ok(segments)
}

fn scanner_name(name: &str, field: &'static str) -> Result<String, ScannerError> {
    if name.is_empty() || name.len() > 64 {
        return Err(ScannerError::bad(field, "must be 1 to 64 characters"));
    }
    Ok(name.to_string())
}

fn rssi_field(
    obj: &serde_json::Map<String, serde_json::Value>,
    name: &'static str,
) -> Result<i16, ScannerError> {
    let v = obj
        .get(name)
        .ok_or_else(|| ScannerError::bad(name, "missing"))?
        .as_f64()
        .ok_or_else(|| ScannerError::bad(name, "must be a number (dBm)"))?;
    let r = v.round();
    if !(-127.0..=20.0).contains(&r) {
        return Err(ScannerError::bad(name, "must be in -127..=20 dBm"));
    }
    Ok(r as i16)
}

/// "aa:bb:cc:dd:ee:ff", "AA-BB-...", or "aabbccddeeff".
fn parse_mac(text: &str) -> Option<BdAddr> {
    let hex_only: String = text.chars().filter(|c| *c != ':' && *c != '-').collect();
    if hex_only.len() != 12 || text.len() > 17 {
        return None;
    }
    let mut out = [0u8; 6];
    hex::decode_to_slice(&hex_only, &mut out).ok()?;
    Some(BdAddr(out))
}

fn hex_field(
    value: &serde_json::Value,
    field: &'static str,
    max: usize,
) -> Result<Vec<u8>, ScannerError> {
    let text = value
        .as_str()
        .ok_or_else(|| ScannerError::bad(field, "must be a hex string"))?;
    if text.len() > max * 2 {
        return Err(ScannerError::bad(field, format!("longer than {max} bytes")));
    }
    hex::decode(text).map_err(|e| ScannerError::bad(field, format!("not hex: {e}")))
}

// ---------------------------------------------------------------------------
// Our own scanner-only gateways: <p>/<s>/scanners/<node>

/// A docs/design.md §7 sighting record from `<p>/<s>/scanners/<node>`. The record's
/// `scanner` must be the topic's node: a node speaks only for itself.
pub fn parse_scanner_record(topic: &str, payload: &[u8]) -> Result<Sighting, ScannerError> {
    let expected = "<prefix>/<store>/scanners/<node>";
    let segments = topic_segments(topic, expected)?;
    let [.., "scanners", node] = segments[..] else {
        return Err(ScannerError::bad("topic", format!("expected {expected}")));
    };
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(ScannerError::bad(
            "payload",
            format!("larger than {MAX_PAYLOAD_BYTES} bytes"),
        ));
    }
    let text =
        std::str::from_utf8(payload).map_err(|_| ScannerError::bad("payload", "not UTF-8"))?;
    let sighting =
        Sighting::from_json(text.trim()).map_err(|e| ScannerError::bad(e.field, e.reason))?;
    if sighting.scanner != node {
        return Err(ScannerError::bad(
            "scanner",
            format!(
                "record names scanner {:?} but was published by node {node:?}",
                sighting.scanner
            ),
        ));
    }
    Ok(sighting)
}

// ---------------------------------------------------------------------------
// ESPresense: espresense/devices/<id>/<room>

/// An iBeacon advert: flags, then Apple manufacturer data 02 15 uuid major
/// minor power — what a real iBeacon sends, so the decoder recognises it.
pub fn ibeacon_advert(uuid: [u8; 16], major: u16, minor: u16, power_at_1m: i8) -> Vec<u8> {
    let mut body = Vec::with_capacity(ibeacon::BODY_LEN);
    body.extend_from_slice(&[0x02, 0x15]);
    body.extend_from_slice(&uuid);
    body.extend_from_slice(&major.to_be_bytes());
    body.extend_from_slice(&minor.to_be_bytes());
    body.push(power_at_1m as u8);
    let mut adv = AdBuilder::new();
    adv.flags(FLAGS_LE_GENERAL_NO_BREDR);
    adv.manufacturer(ibeacon::APPLE, &body);
    adv.finish()
}

/// `<prefix><uuid>-<major>-<minor>`: ESPresense's id for an iBeacon
/// (`iBeacon:`) and an AltBeacon (`altBeacon:`, the first 16 bytes of the
/// beacon id, then the next two and two as numbers); the UUID hyphenated,
/// lowercase (`src/BleFingerprint.cpp`).
fn parse_espresense_uuid_id(id: &str, prefix: &str) -> Option<([u8; 16], u16, u16)> {
    let rest = id.strip_prefix(prefix)?;
    let mut parts = rest.rsplitn(3, '-');
    let minor = parts.next()?.parse().ok()?;
    let major = parts.next()?.parse().ok()?;
    let uuid_text: String = parts.next()?.chars().filter(|c| *c != '-').collect();
    if uuid_text.len() != 32 {
        return None;
    }
    let mut uuid = [0u8; 16];
    hex::decode_to_slice(&uuid_text, &mut uuid).ok()?;
    Some((uuid, major, minor))
}

/// `eddy:<namespace>-<instance>`, ESPresense's id for an Eddystone-UID.
/// ESPresense prints the namespace's fifth byte twice (its format string
/// repeats `strServiceData[6]`, `src/BleFingerprint.cpp`), so a namespace
/// of 11 bytes whose fifth and sixth are equal is that output and the
/// repeat is dropped; 10 bytes are taken as they are; anything else is not
/// an id this parser knows.
fn parse_espresense_eddystone_id(id: &str) -> Option<([u8; 10], [u8; 6])> {
    let rest = id.strip_prefix("eddy:")?;
    let (ns_text, inst_text) = rest.split_once('-')?;
    let ns = hex::decode(ns_text).ok()?;
    let namespace: [u8; 10] = match ns.len() {
        10 => ns.try_into().ok()?,
        11 if ns[4] == ns[5] => {
            let mut out = [0u8; 10];
            out[..5].copy_from_slice(&ns[..5]);
            out[5..].copy_from_slice(&ns[6..]);
            out
        }
        _ => return None,
    };
    let mut instance = [0u8; 6];
    if inst_text.len() != 12 {
        return None;
    }
    hex::decode_to_slice(inst_text, &mut instance).ok()?;
    Some((namespace, instance))
}

/// The company id ESPresense requires of an AltBeacon: it takes only
/// manufacturer data whose first two bytes read "beac" as it prints them
/// (`manuf == "beac"`, `src/BleFingerprint.cpp`).
pub const ESPRESENSE_ALTBEACON_COMPANY: u16 = 0xBEAC;

/// An AltBeacon advert: flags, then manufacturer data `company`, BE AC,
/// the 20-byte beacon id (`id1`, `id2`, `id3`), reference RSSI, reserved 0.
pub fn altbeacon_advert(
    company: u16,
    id1: [u8; 16],
    id2: u16,
    id3: u16,
    rssi_at_1m: i8,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(crate::decode::altbeacon::BODY_LEN);
    body.extend_from_slice(&crate::decode::altbeacon::BEACON_CODE);
    body.extend_from_slice(&id1);
    body.extend_from_slice(&id2.to_be_bytes());
    body.extend_from_slice(&id3.to_be_bytes());
    body.push(rssi_at_1m as u8);
    body.push(0);
    let mut adv = AdBuilder::new();
    adv.flags(FLAGS_LE_GENERAL_NO_BREDR);
    adv.manufacturer(company, &body);
    adv.finish()
}

/// An Eddystone-UID advert: flags, then 0xFEAA service data: frame 0x00,
/// the power at 0 m, namespace, instance, two reserved bytes.
pub fn eddystone_uid_advert(namespace: [u8; 10], instance: [u8; 6], power_at_0m: i8) -> Vec<u8> {
    let mut data = Vec::with_capacity(crate::decode::eddystone::UID_LEN_WITH_RFU + 1);
    data.push(crate::decode::eddystone::FRAME_UID);
    data.push(power_at_0m as u8);
    data.extend_from_slice(&namespace);
    data.extend_from_slice(&instance);
    data.extend_from_slice(&[0, 0]);
    let mut adv = AdBuilder::new();
    adv.flags(FLAGS_LE_GENERAL_NO_BREDR);
    adv.service_data(ServiceUuid::U16(0xFEAA), &data);
    adv.finish()
}

/// What ESPresense adds to an Eddystone power at 0 m to report it at 1 m
/// (`EDDYSTONE_ADD_1M`); the Eddystone specification's 41 dB path loss.
pub const ESPRESENSE_EDDYSTONE_ADD_1M: i16 = -41;

/// A stable pseudo address for an ESPresense id when the message has no
/// `mac`: the first six bytes of SHA-256("espresense:" + id), with the
/// locally-administered bit set and the group bit clear in the first octet.
/// Stable, so presence smoothing per (scanner, address) works from message
/// to message and the same beacon heard in several rooms has one address;
/// locally administered, so it can never equal a real public (IEEE
/// assigned) address of another device.
pub fn pseudo_addr(id: &str) -> BdAddr {
    let digest = Sha256::new()
        .chain_update(b"espresense:")
        .chain_update(id.as_bytes())
        .finalize();
    let mut out = [0u8; 6];
    out.copy_from_slice(&digest[..6]);
    out[0] = (out[0] & 0xFC) | 0x02;
    BdAddr(out)
}

/// One ESPresense device report. The beacon ids become sightings with the
/// advert rebuilt from the id: `iBeacon:` and `altBeacon:` with the power
/// at 1 m from `rssi@1m`, `eddy:` (Eddystone-UID) with the power at 0 m
/// `rssi@1m` + 41 (ESPresense subtracts 41 dB from the beacon's own 0 m
/// figure). Other ids are `ignored` errors: ESPresense sends no advert
/// bytes, and nothing is guessed.
///
/// RSSI: the node's receiver adjustment is honoured. Since ESPresense 4
/// (commit 20d09fd3) a node reports `rssi` as heard minus its `rxAdj` and
/// says so in `rxAdj`; it is the node's calibrated figure and is taken as
/// it is. Older firmware sends no `rxAdj` and added it to `rssi@1m`
/// instead, so `rssi@1m` without `rxAdj` may carry it; either way the
/// difference `rssi - rssi@1m`, which is what distance depends on, is the
/// node's own.
pub fn parse_espresense(
    topic: &str,
    payload: &[u8],
    now_ms: i64,
) -> Result<Sighting, ScannerError> {
    parse_espresense_report(topic, payload, now_ms, &[]).map(|r| r.sighting)
}

/// A parsed ESPresense report: the sighting and the node's receiver
/// adjustment when it said it (for the per-node status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EspresenseReport {
    pub sighting: Sighting,
    pub rx_adj: Option<i8>,
}

/// [`parse_espresense`], keeping the node's `rxAdj`, and knowing the
/// store's beacons: one whose `espresense_id` is the message's id (an alias
/// given on the nodes, which then report no `iBeacon:`/`eddy:` id) is
/// rebuilt from its configured ids.
pub fn parse_espresense_report(
    topic: &str,
    payload: &[u8],
    now_ms: i64,
    beacons: &[FleetBeacon],
) -> Result<EspresenseReport, ScannerError> {
    let expected = "espresense/devices/<id>/<room>";
    let segments = topic_segments(topic, expected)?;
    let ["espresense", "devices", topic_id, room] = segments[..] else {
        return Err(ScannerError::bad("topic", format!("expected {expected}")));
    };
    let scanner = scanner_name(room, "room")?;
    let obj = json_object(payload)?;
    let id = match obj.get("id") {
        None => topic_id,
        Some(serde_json::Value::String(id)) if id == topic_id => id.as_str(),
        Some(serde_json::Value::String(_)) => {
            return Err(ScannerError::bad("id", "differs from the id in the topic"));
        }
        Some(_) => return Err(ScannerError::bad("id", "must be a string")),
    };
    enum Ids {
        IBeacon([u8; 16], u16, u16),
        AltBeacon([u8; 16], u16, u16),
        Eddystone([u8; 10], [u8; 6]),
    }
    let beacon = if let Some((u, ma, mi)) = parse_espresense_uuid_id(id, "iBeacon:") {
        Ids::IBeacon(u, ma, mi)
    } else if let Some((u, ma, mi)) = parse_espresense_uuid_id(id, "altBeacon:") {
        Ids::AltBeacon(u, ma, mi)
    } else if let Some((ns, inst)) = parse_espresense_eddystone_id(id) {
        Ids::Eddystone(ns, inst)
    } else if let Some(aliased) = beacons
        .iter()
        .find(|b| b.espresense_id.as_deref() == Some(id))
    {
        match aliased.kind {
            BeaconKind::IBeacon { uuid, major, minor } => Ids::IBeacon(uuid, major, minor),
            BeaconKind::AltBeacon { id1, id2, id3 } => Ids::AltBeacon(id1, id2, id3),
            BeaconKind::EddystoneUid {
                namespace,
                instance,
            } => Ids::Eddystone(namespace, instance),
        }
    } else {
        return Err(ScannerError::ignored(
            "id",
            "not an iBeacon:, altBeacon: or eddy: id nor a beacon's espresense_id; ESPresense sends no advert bytes for others",
        ));
    };
    let rssi = rssi_field(&obj, "rssi")?;
    let rx_adj = match obj.get("rxAdj") {
        None => None,
        Some(v) => Some(
            whole_number(v)
                .filter(|a| (-100..=100).contains(a))
                .ok_or_else(|| {
                    ScannerError::bad("rxAdj", "must be a whole number in -100..=100 dB")
                })? as i8,
        ),
    };
    let power = match obj.get("rssi@1m") {
        None => DEFAULT_RSSI_AT_1M,
        Some(v) => v
            .as_f64()
            .map(f64::round)
            .filter(|p| (-127.0..=20.0).contains(p))
            .ok_or_else(|| ScannerError::bad("rssi@1m", "must be a number in -127..=20 dBm"))?
            as i8,
    };
    let addr = match obj.get("mac") {
        None => pseudo_addr(id),
        Some(v) => v.as_str().and_then(parse_mac).ok_or_else(|| {
            ScannerError::bad("mac", "must be a MAC address like \"aabbccddeeff\"")
        })?,
    };
    let adv = match beacon {
        Ids::IBeacon(uuid, major, minor) => ibeacon_advert(uuid, major, minor, power),
        Ids::AltBeacon(id1, id2, id3) => {
            altbeacon_advert(ESPRESENSE_ALTBEACON_COMPANY, id1, id2, id3, power)
        }
        Ids::Eddystone(namespace, instance) => {
            let at_0m = i16::from(power) - ESPRESENSE_EDDYSTONE_ADD_1M;
            let at_0m = i8::try_from(at_0m).map_err(|_| {
                ScannerError::bad("rssi@1m", "too high for an Eddystone power at 0 m")
            })?;
            eddystone_uid_advert(namespace, instance, at_0m)
        }
    };
    Ok(EspresenseReport {
        sighting: Sighting {
            scanner,
            addr,
            rssi,
            adv,
            at_ms: now_ms,
        },
        rx_adj,
    })
}

// ---------------------------------------------------------------------------
// OpenMQTTGateway / Theengs Gateway: home/<node>/BTtoMQTT/<mac>

/// Part of an advert as one OpenMQTTGateway / Theengs message carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partial {
    pub node: String,
    pub addr: BdAddr,
    pub rssi: i16,
    /// Company id and the data after it.
    pub manufacturer: Option<(u16, Vec<u8>)>,
    /// Service UUID and the data after it.
    pub service: Option<(ServiceUuid, Vec<u8>)>,
    pub name: Option<String>,
    pub at_ms: i64,
}

/// One `home/<node>/BTtoMQTT/<mac>` message (OpenMQTTGateway with
/// `pubadvdata` on, or Theengs Gateway): `id` (or `mac`, which
/// OpenMQTTGateway uses when `id` holds an iBeacon UUID) and `rssi`, plus any
/// of `manufacturerdata` (hex, company id little-endian first),
/// `servicedata` with `servicedatauuid` ("0xfeaa", "feaa" or a full UUID),
/// and `name`. Decoded sensor fields are ignored. A message with none of the
/// advert fields is an `ignored` error (turn `pubadvdata` on).
pub fn parse_openmqttgateway(
    topic: &str,
    payload: &[u8],
    now_ms: i64,
) -> Result<Partial, ScannerError> {
    let expected = "<base>/<node>/BTtoMQTT/<mac>";
    let segments = topic_segments(topic, expected)?;
    let [_, node, "BTtoMQTT", topic_mac] = segments[..] else {
        return Err(ScannerError::bad("topic", format!("expected {expected}")));
    };
    let node = scanner_name(node, "node")?;
    let obj = json_object(payload)?;
    let from_field = |name: &'static str| -> Result<Option<BdAddr>, ScannerError> {
        match obj.get(name) {
            None => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(parse_mac(s)),
            Some(_) => Err(ScannerError::bad(name, "must be a string")),
        }
    };
    let addr = match (from_field("mac")?, from_field("id")?, parse_mac(topic_mac)) {
        (Some(a), _, _) | (None, Some(a), _) | (None, None, Some(a)) => a,
        (None, None, None) => {
            return Err(ScannerError::bad(
                "id",
                "no MAC address in \"mac\", \"id\" or the topic",
            ));
        }
    };
    let rssi = rssi_field(&obj, "rssi")?;
    let manufacturer = match obj.get("manufacturerdata") {
        None => None,
        Some(v) => {
            let bytes = hex_field(v, "manufacturerdata", 254)?;
            if bytes.len() < 2 {
                return Err(ScannerError::bad(
                    "manufacturerdata",
                    "shorter than a company id",
                ));
            }
            Some((
                u16::from_le_bytes([bytes[0], bytes[1]]),
                bytes[2..].to_vec(),
            ))
        }
    };
    // Raw advert data wins; the decoded fields only stand in for it.
    let manufacturer = match manufacturer {
        Some(m) => Some(m),
        None => decoded_ibeacon(&obj)?.map(|body| (ibeacon::APPLE, body)),
    };
    let service = match (obj.get("servicedata"), obj.get("servicedatauuid")) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(ScannerError::bad(
                "servicedatauuid",
                "missing (servicedata needs it)",
            ));
        }
        (None, Some(_)) => {
            return Err(ScannerError::bad(
                "servicedata",
                "missing (servicedatauuid without data)",
            ));
        }
        (Some(data), Some(uuid)) => {
            let uuid = uuid
                .as_str()
                .ok_or_else(|| ScannerError::bad("servicedatauuid", "must be a string"))?;
            let uuid =
                ServiceUuid::parse(uuid).map_err(|r| ScannerError::bad("servicedatauuid", r))?;
            Some((uuid, hex_field(data, "servicedata", 238)?))
        }
    };
    let name = match obj.get("name") {
        None => None,
        Some(serde_json::Value::String(n)) if n.len() <= 248 => Some(n.clone()),
        Some(_) => {
            return Err(ScannerError::bad(
                "name",
                "must be a string of at most 248 bytes",
            ));
        }
    };
    if manufacturer.is_none() && service.is_none() && name.is_none() {
        return Err(ScannerError::ignored(
            "payload",
            "no advert data and no decoded iBeacon (uuid, major, minor); other beacons need pubadvdata on",
        ));
    }
    Ok(Partial {
        node,
        addr,
        rssi,
        manufacturer,
        service,
        name,
        at_ms: now_ms,
    })
}

/// The iBeacon advert the Theengs decoder's fields describe, when a message
/// carries them instead of the raw advert: OpenMQTTGateway (`pubadvdata`
/// off, its default) and Theengs Gateway (`publish_advdata` off, its
/// default) publish `model_id: "IBEACON"`, `mfid`, `uuid`, `major`, `minor`
/// and the advert's calibrated-power byte either as `txpower` (dBm, when the
/// byte is negative) or as `volt` (the same byte read as tenths of a volt,
/// when it is not: `src/devices/iBeacon_json.h` of theengs/decoder). With
/// `volt` present, a `txpower` beside it is OpenMQTTGateway's TX Power
/// Level of the advert, not the iBeacon's calibrated power, and is not used.
/// `major`/`minor` are decoded as signed, so above 32767 they arrive
/// negative (-1 is 65535). `None` when the message is not a decoded iBeacon;
/// an error naming the field when it is one with a field missing or wrong.
fn decoded_ibeacon(
    obj: &serde_json::Map<String, serde_json::Value>,
) -> Result<Option<Vec<u8>>, ScannerError> {
    let says_ibeacon =
        matches!(obj.get("model_id"), Some(serde_json::Value::String(m)) if m == "IBEACON");
    let has_fields = ["uuid", "major", "minor"]
        .iter()
        .all(|k| obj.contains_key(*k));
    if !says_ibeacon && !has_fields {
        return Ok(None);
    }
    if let Some(mfid) = obj.get("mfid") {
        if mfid
            .as_str()
            .is_none_or(|m| !m.eq_ignore_ascii_case("4c00"))
        {
            return Err(ScannerError::bad(
                "mfid",
                "an iBeacon's must be \"4c00\" (Apple)",
            ));
        }
    }
    let uuid_text = obj
        .get("uuid")
        .ok_or_else(|| ScannerError::bad("uuid", "missing (model_id IBEACON needs it)"))?
        .as_str()
        .ok_or_else(|| ScannerError::bad("uuid", "must be a string of 32 hex digits"))?;
    let uuid_hex: String = uuid_text.chars().filter(|c| *c != '-').collect();
    let mut uuid = [0u8; 16];
    if uuid_hex.len() != 32 || hex::decode_to_slice(&uuid_hex, &mut uuid).is_err() {
        return Err(ScannerError::bad("uuid", "must be 32 hex digits"));
    }
    let major = signed_u16(obj, "major")?;
    let minor = signed_u16(obj, "minor")?;
    // `volt` first: the decoder writes either `txpower` (byte negative) or
    // `volt` (byte not negative), never both, so a `txpower` next to `volt`
    // is not the decoder's. OpenMQTTGateway puts the advert's own TX Power
    // Level (AD type 0x0A) in `txpower` before decoding
    // (`BLEdata["txpower"] = advertisedDevice->getTXPower()`,
    // main/ZgatewayBT.cpp); the decoder overwrites it only in the first case.
    let power = match (obj.get("txpower"), obj.get("volt")) {
        (Some(p), None) => {
            let p = whole_number(p)
                .filter(|p| (-128..=127).contains(p))
                .ok_or_else(|| {
                    ScannerError::bad("txpower", "must be a whole number in -128..=127 dBm")
                })?;
            p as i8
        }
        (_, Some(v)) => {
            // The byte read as tenths of a volt: 0..=127 (the sign bit clear).
            let tenths = v
                .as_f64()
                .map(|v| (v * 10.0).round())
                .filter(|t| (0.0..=127.0).contains(t))
                .ok_or_else(|| ScannerError::bad("volt", "must be a number in 0..=12.7"))?;
            tenths as i8
        }
        (None, None) => {
            return Err(ScannerError::bad(
                "txpower",
                "missing (a decoded iBeacon carries txpower or volt)",
            ));
        }
    };
    let mut body = Vec::with_capacity(ibeacon::BODY_LEN);
    body.extend_from_slice(&[0x02, 0x15]);
    body.extend_from_slice(&uuid);
    body.extend_from_slice(&major.to_be_bytes());
    body.extend_from_slice(&minor.to_be_bytes());
    body.push(power as u8);
    Ok(Some(body))
}

/// A JSON number with no fractional part.
fn whole_number(v: &serde_json::Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
            .map(|f| f as i64)
    })
}

/// A 16-bit field the Theengs decoder reports signed (-32768..=65535 taken,
/// negatives wrapped: -1 is 65535).
fn signed_u16(
    obj: &serde_json::Map<String, serde_json::Value>,
    name: &'static str,
) -> Result<u16, ScannerError> {
    let v = obj
        .get(name)
        .ok_or_else(|| ScannerError::bad(name, "missing (model_id IBEACON needs it)"))?;
    let n = whole_number(v)
        .filter(|n| (-32768..=65535).contains(n))
        .ok_or_else(|| ScannerError::bad(name, "must be a whole number in -32768..=65535"))?;
    Ok((n & 0xFFFF) as u16)
}

/// How long the parts of one advert are waited for.
pub const MERGE_WINDOW_MS: i64 = 300;
/// Adverts being merged at once, at most.
pub const MERGE_MAX_ENTRIES: usize = 1024;

#[derive(Debug)]
struct Pending {
    first_ms: i64,
    at_ms: i64,
    rssi: i16,
    manufacturer: BTreeMap<u16, Vec<u8>>,
    service: BTreeMap<ServiceUuid, Vec<u8>>,
    name: Option<String>,
}

impl Pending {
    fn new(p: &Partial) -> Self {
        Pending {
            first_ms: p.at_ms,
            at_ms: p.at_ms,
            rssi: p.rssi,
            manufacturer: BTreeMap::new(),
            service: BTreeMap::new(),
            name: None,
        }
    }

    /// Whether the partial repeats a part already here (then it belongs to
    /// the next advert).
    fn conflicts(&self, p: &Partial) -> bool {
        p.manufacturer
            .as_ref()
            .is_some_and(|(c, _)| self.manufacturer.contains_key(c))
            || p.service
                .as_ref()
                .is_some_and(|(u, _)| self.service.contains_key(u))
            || (p.name.is_some() && self.name.is_some())
    }

    fn add(&mut self, p: Partial) {
        self.at_ms = self.at_ms.max(p.at_ms);
        self.rssi = p.rssi;
        if let Some((c, d)) = p.manufacturer {
            self.manufacturer.insert(c, d);
        }
        if let Some((u, d)) = p.service {
            self.service.insert(u, d);
        }
        if p.name.is_some() {
            self.name = p.name;
        }
    }

    fn into_sighting(self, node: String, addr: BdAddr) -> Sighting {
        let mut adv = AdBuilder::new();
        for (c, d) in &self.manufacturer {
            adv.manufacturer(*c, d);
        }
        for (u, d) in &self.service {
            adv.service_data(*u, d);
        }
        if let Some(name) = &self.name {
            adv.local_name(name);
        }
        Sighting {
            scanner: node,
            addr,
            rssi: self.rssi,
            adv: adv.finish(),
            at_ms: self.at_ms,
        }
    }
}

/// Joins the parts of one advert that OpenMQTTGateway may publish as
/// separate messages, per (node, address), over a short window. A part that
/// repeats one already held starts the next advert (the held one is emitted).
/// Memory is bounded: at the cap, the oldest pending advert is emitted early
/// and counted in [`AdvertMerger::early_flushes`].
#[derive(Debug)]
pub struct AdvertMerger {
    window_ms: i64,
    max_entries: usize,
    pending: HashMap<(String, BdAddr), Pending>,
    early_flushes: u64,
}

impl Default for AdvertMerger {
    fn default() -> Self {
        Self::new(MERGE_WINDOW_MS, MERGE_MAX_ENTRIES)
    }
}

impl AdvertMerger {
    pub fn new(window_ms: i64, max_entries: usize) -> Self {
        AdvertMerger {
            window_ms: window_ms.max(0),
            max_entries: max_entries.max(1),
            pending: HashMap::new(),
            early_flushes: 0,
        }
    }

    /// Take one part; returns the adverts complete now (including any whose
    /// window has passed).
    pub fn push(&mut self, partial: Partial, now_ms: i64) -> Vec<Sighting> {
        let mut out = Vec::new();
        let key = (partial.node.clone(), partial.addr);
        if let Some(held) = self.pending.get(&key) {
            if held.conflicts(&partial) {
                if let Some(held) = self.pending.remove(&key) {
                    out.push(held.into_sighting(key.0.clone(), key.1));
                }
            }
        }
        if !self.pending.contains_key(&key) && self.pending.len() >= self.max_entries {
            let oldest = self
                .pending
                .iter()
                .min_by_key(|(_, p)| p.first_ms)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                if let Some(p) = self.pending.remove(&k) {
                    self.early_flushes += 1;
                    out.push(p.into_sighting(k.0, k.1));
                }
            }
        }
        self.pending
            .entry(key)
            .or_insert_with(|| Pending::new(&partial))
            .add(partial);
        out.extend(self.flush_due(now_ms));
        out
    }

    /// The adverts whose window has passed.
    pub fn flush_due(&mut self, now_ms: i64) -> Vec<Sighting> {
        let due: Vec<(String, BdAddr)> = self
            .pending
            .iter()
            .filter(|(_, p)| now_ms.saturating_sub(p.first_ms) >= self.window_ms)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out: Vec<Sighting> = due
            .into_iter()
            .filter_map(|k| {
                let p = self.pending.remove(&k)?;
                Some(p.into_sighting(k.0, k.1))
            })
            .collect();
        out.sort_by_key(|s| s.at_ms);
        out
    }

    /// When the next advert falls due, for the caller's timer.
    pub fn next_due_ms(&self) -> Option<i64> {
        self.pending
            .values()
            .map(|p| p.first_ms.saturating_add(self.window_ms))
            .min()
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Adverts emitted before their window passed because of the cap.
    pub fn early_flushes(&self) -> u64 {
        self.early_flushes
    }
}

// ---------------------------------------------------------------------------
// Per-node accounting, for the fleet report

/// The node a scanner topic comes from, when the topic has one:
/// `espresense/devices/<id>/<room>`, `<base>/<node>/BTtoMQTT/<mac>`,
/// `<p>/<s>/scanners/<node>`.
pub fn node_of_topic(topic: &str) -> Option<&str> {
    let segments: Vec<&str> = topic.split('/').collect();
    match segments[..] {
        ["espresense", "devices", _, room] => Some(room),
        [_, node, "BTtoMQTT", _] => Some(node),
        [.., "scanners", node] => Some(node),
        _ => None,
    }
    .filter(|n| !n.is_empty() && n.len() <= 64)
}

/// What came of one node's messages.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NodeCounts {
    /// Messages that gave (or joined) a sighting.
    pub accepted: u64,
    /// Messages of no use here, by field (`id`, `payload`).
    pub ignored: BTreeMap<&'static str, u64>,
    /// Messages refused, by the field that was wrong.
    pub rejected: BTreeMap<&'static str, u64>,
    /// ESPresense's receiver adjustment, as the node last said it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rx_adj: Option<i8>,
}

/// Counts per scanner node and field. Bounded by the configuration: only
/// nodes named in a zone's `scanners` get their own entry; every other
/// name a message carries (the wire chooses it) is counted under
/// [`NodeTally::OTHER`], so no input can grow it.
#[derive(Clone, Debug, Default)]
pub struct NodeTally {
    known: std::collections::BTreeSet<String>,
    counts: BTreeMap<String, NodeCounts>,
}

impl NodeTally {
    pub const OTHER: &'static str = "(other)";

    pub fn new(known: impl IntoIterator<Item = String>) -> Self {
        NodeTally {
            known: known.into_iter().collect(),
            counts: BTreeMap::new(),
        }
    }

    /// A new configuration: its nodes, the counts of those still in it.
    pub fn set_known(&mut self, known: impl IntoIterator<Item = String>) {
        self.known = known.into_iter().collect();
        let known = &self.known;
        self.counts
            .retain(|n, _| n == Self::OTHER || known.contains(n));
    }

    fn entry(&mut self, topic: &str) -> &mut NodeCounts {
        let name = match node_of_topic(topic) {
            Some(n) if self.known.contains(n) => n,
            _ => Self::OTHER,
        };
        if !self.counts.contains_key(name) {
            self.counts.insert(name.to_string(), NodeCounts::default());
        }
        self.counts.get_mut(name).expect("inserted above")
    }

    pub fn accepted(&mut self, topic: &str, rx_adj: Option<i8>) {
        let e = self.entry(topic);
        e.accepted += 1;
        if rx_adj.is_some() {
            e.rx_adj = rx_adj;
        }
    }

    pub fn refused(&mut self, topic: &str, error: &ScannerError) {
        let e = self.entry(topic);
        let by_field = if error.ignored {
            &mut e.ignored
        } else {
            &mut e.rejected
        };
        *by_field.entry(error.field).or_insert(0) += 1;
    }

    pub fn get(&self, node: &str) -> Option<&NodeCounts> {
        self.counts.get(node)
    }

    pub fn report(&self) -> serde_json::Value {
        serde_json::to_value(&self.counts).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{DecodeOptions, Frame, decode};

    fn frames(adv: &[u8]) -> Vec<Frame> {
        decode(adv, &DecodeOptions::default()).unwrap()
    }

    const UUID: &str = "1de4b189115e45f6b44e509352269977";

    fn uuid_bytes(text: &str) -> [u8; 16] {
        hex::decode(text.replace('-', ""))
            .unwrap()
            .try_into()
            .unwrap()
    }

    #[test]
    fn service_uuids_take_their_shortest_form() {
        assert_eq!(ServiceUuid::parse("0xfeaa"), Ok(ServiceUuid::U16(0xFEAA)));
        assert_eq!(ServiceUuid::parse("feaa"), Ok(ServiceUuid::U16(0xFEAA)));
        assert_eq!(
            ServiceUuid::parse("0000feaa-0000-1000-8000-00805f9b34fb"),
            Ok(ServiceUuid::U16(0xFEAA))
        );
        assert_eq!(
            ServiceUuid::parse("1234feaa-0000-1000-8000-00805f9b34fb"),
            Ok(ServiceUuid::U32(0x1234_FEAA))
        );
        let full = "e2c56db5-dffb-48d2-b060-d0f5a71096e0";
        assert_eq!(
            ServiceUuid::parse(full),
            Ok(ServiceUuid::U128(uuid_bytes(full)))
        );
        assert!(ServiceUuid::parse("xyz").is_err());
        assert!(ServiceUuid::parse("123").is_err());
    }

    #[test]
    fn builder_writes_little_endian_ids_and_refuses_oversize() {
        let mut b = AdBuilder::new();
        assert!(b.manufacturer(0x004C, &[1, 2]));
        assert!(b.service_data(ServiceUuid::U16(0xFEAA), &[0x10]));
        assert!(b.service_data(ServiceUuid::U128(uuid_bytes(UUID)), &[]));
        assert!(!b.manufacturer(1, &[0; 300]));
        let adv = b.finish();
        assert_eq!(&adv[..5], &[0x05, 0xFF, 0x4C, 0x00, 0x01]);
        assert_eq!(&adv[6..11], &[0x04, 0x16, 0xAA, 0xFE, 0x10]);
        assert_eq!(adv[11..13], [17, AD_SERVICE_DATA_128]);
        assert_eq!(adv[13], 0x77, "128-bit UUID little-endian");
    }

    // OpenMQTTGateway's documented iBeacon message (docs/use/ble.md), with
    // the advert data that pubadvdata adds.
    fn omg_ibeacon() -> String {
        format!(
            r#"{{"id":"60:87:57:4C:9B:C2","mac_type":1,"rssi":-78,"distance":7.85288,"brand":"GENERIC","model":"iBeacon","model_id":"IBEACON","mfid":"4c00","uuid":"{UUID}","major":0,"minor":0,"txpower":-66,"manufacturerdata":"4c000215{UUID}00000000be"}}"#
        )
    }

    #[test]
    fn openmqttgateway_ibeacon_rebuilds_the_advert() {
        let p = parse_openmqttgateway(
            "home/OpenMQTTGateway/BTtoMQTT/6087574C9BC2",
            omg_ibeacon().as_bytes(),
            1000,
        )
        .unwrap();
        assert_eq!(p.node, "OpenMQTTGateway");
        assert_eq!(p.addr.to_string(), "60:87:57:4c:9b:c2");
        assert_eq!(p.rssi, -78);
        let mut m = AdvertMerger::default();
        assert!(
            m.push(p, 1000).is_empty(),
            "waits for the rest of the advert"
        );
        let out = m.flush_due(1000 + MERGE_WINDOW_MS);
        assert_eq!(out.len(), 1);
        assert_eq!(
            frames(&out[0].adv),
            vec![Frame::IBeacon {
                uuid: uuid_bytes(UUID),
                major: 0,
                minor: 0,
                measured_power: -66
            }]
        );
        assert_eq!(out[0].scanner, "OpenMQTTGateway");
        assert_eq!(m.pending(), 0);
    }

    #[test]
    fn openmqttgateway_beacon_uuid_as_id_takes_the_mac_field() {
        // presenceUseBeaconUuid: the MAC moves to "mac" (docs/use/ble.md).
        let text = omg_ibeacon()
            .replace(r#""id":"60:87:57:4C:9B:C2""#, &format!(r#""id":"{UUID}""#))
            .replace(
                r#""txpower":-66"#,
                r#""txpower":-66,"mac":"60:87:57:4C:9B:C2""#,
            );
        let p = parse_openmqttgateway(&format!("home/gw1/BTtoMQTT/{UUID}"), text.as_bytes(), 0)
            .unwrap();
        assert_eq!(p.addr.to_string(), "60:87:57:4c:9b:c2");
    }

    #[test]
    fn theengs_service_data_and_split_messages_merge() {
        // Theengs Gateway: servicedatauuid is the 16-bit part ("feaa").
        let tlm = r#"{"servicedatauuid":"feaa","servicedata":"20000bb81580000004d20000c350","id":"AA:BB:CC:DD:EE:01","rssi":-70}"#;
        let mfr = r#"{"id":"AA:BB:CC:DD:EE:01","rssi":-69,"manufacturerdata":"4c000215e2c56db5dffb48d2b060d0f5a71096e00007002ac5","name":"shelf-3"}"#;
        let topic = "home/entrance/BTtoMQTT/AABBCCDDEE01";
        let mut m = AdvertMerger::new(300, 16);
        let a = parse_openmqttgateway(topic, tlm.as_bytes(), 10_000).unwrap();
        let b = parse_openmqttgateway(topic, mfr.as_bytes(), 10_100).unwrap();
        assert!(m.push(a, 10_000).is_empty());
        assert!(m.push(b, 10_100).is_empty());
        assert_eq!(m.next_due_ms(), Some(10_300));
        assert!(m.flush_due(10_299).is_empty());
        let out = m.flush_due(10_300);
        assert_eq!(out.len(), 1);
        let s = &out[0];
        assert_eq!(
            (s.rssi, s.at_ms, s.scanner.as_str()),
            (-69, 10_100, "entrance")
        );
        let f = frames(&s.adv);
        assert!(
            matches!(
                f[0],
                Frame::IBeacon {
                    major: 7,
                    minor: 42,
                    ..
                }
            ),
            "{f:?}"
        );
        assert!(
            matches!(
                f[1],
                Frame::EddystoneTlm {
                    battery_mv: 3000,
                    ..
                }
            ),
            "{f:?}"
        );
        // The name is rebuilt as a complete local name.
        assert!(s.adv.windows(8).any(|w| w == b"\x08\x09shelf-"));
    }

    #[test]
    fn a_repeated_part_starts_the_next_advert() {
        let topic = "home/n1/BTtoMQTT/AABBCCDDEE01";
        let msg = |rssi: i32| {
            format!(
                r#"{{"id":"aa:bb:cc:dd:ee:01","rssi":{rssi},"servicedatauuid":"0xfeaa","servicedata":"00e8000102030405060708090a0b0c0d0e0f"}}"#
            )
        };
        let mut m = AdvertMerger::default();
        assert!(
            m.push(
                parse_openmqttgateway(topic, msg(-60).as_bytes(), 0).unwrap(),
                0
            )
            .is_empty()
        );
        let out = m.push(
            parse_openmqttgateway(topic, msg(-61).as_bytes(), 50).unwrap(),
            50,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].rssi, -60);
        assert!(matches!(
            frames(&out[0].adv)[..],
            [Frame::EddystoneUid { .. }]
        ));
        assert_eq!(m.pending(), 1);
    }

    #[test]
    fn merger_memory_is_capped() {
        let mut m = AdvertMerger::new(300, 2);
        let mut emitted = 0;
        for i in 0..5u8 {
            let msg = format!(
                r#"{{"id":"aa:bb:cc:dd:ee:{i:02x}","rssi":-60,"manufacturerdata":"ffff01"}}"#
            );
            let p =
                parse_openmqttgateway("home/n/BTtoMQTT/x", msg.as_bytes(), i64::from(i)).unwrap();
            emitted += m.push(p, i64::from(i)).len();
        }
        assert_eq!(m.pending(), 2);
        assert_eq!(emitted, 3);
        assert_eq!(m.early_flushes(), 3);
    }

    #[test]
    fn openmqttgateway_errors_name_the_field() {
        let t = "home/n/BTtoMQTT/AABBCCDDEE01";
        let cases: [(&str, &str, bool); 8] = [
            // The older documented message: service data without its UUID.
            (
                r#"{"id":"45:e1:74:12:6e:00","rssi":-89,"distance":21.51847,"servicedata":"fe0000000000000000000000000000000000000000"}"#,
                "servicedatauuid",
                false,
            ),
            (
                r#"{"id":"45:e1:74:12:6e:00","rssi":"loud","name":"x"}"#,
                "rssi",
                false,
            ),
            (r#"{"id":"45:e1:74:12:6e:00","name":"x"}"#, "rssi", false),
            (
                r#"{"id":"45:e1:74:12:6e:00","rssi":-50,"manufacturerdata":"zz"}"#,
                "manufacturerdata",
                false,
            ),
            (
                r#"{"id":"45:e1:74:12:6e:00","rssi":-50,"manufacturerdata":"4c"}"#,
                "manufacturerdata",
                false,
            ),
            (
                r#"{"id":"45:e1:74:12:6e:00","rssi":-50,"servicedata":"00","servicedatauuid":"nope"}"#,
                "servicedatauuid",
                false,
            ),
            // Decoded sensor data only: nothing to rebuild, a quiet drop.
            (
                r#"{"id":"4C:33:A6:60:3C:79","rssi":-50,"hum":"52.6","tempc":"19.2"}"#,
                "payload",
                true,
            ),
            ("[1,2]", "payload", false),
        ];
        for (payload, field, ignored) in cases {
            let e = parse_openmqttgateway(t, payload.as_bytes(), 0).unwrap_err();
            assert_eq!((e.field, e.ignored), (field, ignored), "{payload}: {e}");
        }
        let e = parse_openmqttgateway("home/n/other/x", b"{}", 0).unwrap_err();
        assert_eq!(e.field, "topic");
        let big = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        assert_eq!(
            parse_openmqttgateway(t, &big, 0).unwrap_err().field,
            "payload"
        );
    }

    const ESP_ID: &str = "iBeacon:e5ca1ade-f007-ba11-0000-000000000000-100-1";

    #[test]
    fn espresense_ibeacon_id_becomes_an_ibeacon_advert() {
        let topic = format!("espresense/devices/{ESP_ID}/kitchen");
        let payload = format!(
            r#"{{"id":"{ESP_ID}","idType":30,"rssi@1m":-65,"rssi":-72.4,"raw":2.41,"distance":2.13,"speed":0.01,"mac":"e5ca1adef007","interval":1001}}"#
        );
        let s = parse_espresense(&topic, payload.as_bytes(), 1_795_334_400_123).unwrap();
        assert_eq!(s.scanner, "kitchen");
        assert_eq!(s.rssi, -72);
        assert_eq!(s.addr.to_string(), "e5:ca:1a:de:f0:07");
        assert_eq!(s.at_ms, 1_795_334_400_123);
        assert_eq!(
            frames(&s.adv),
            vec![Frame::IBeacon {
                uuid: uuid_bytes("e5ca1ade-f007-ba11-0000-000000000000"),
                major: 100,
                minor: 1,
                measured_power: -65
            }]
        );
    }

    #[test]
    fn espresense_without_mac_gets_a_stable_local_pseudo_address() {
        let topic = format!("espresense/devices/{ESP_ID}/hall");
        let s1 = parse_espresense(&topic, br#"{"rssi":-80}"#, 0).unwrap();
        let s2 = parse_espresense(&topic.replace("hall", "till"), br#"{"rssi":-70}"#, 5).unwrap();
        assert_eq!(s1.addr, s2.addr);
        assert_eq!(s1.addr, pseudo_addr(ESP_ID));
        assert_eq!(s1.addr.0[0] & 0x03, 0x02, "locally administered, unicast");
        assert_ne!(pseudo_addr(ESP_ID), pseudo_addr("iBeacon:other-1-2"));
        assert!(matches!(
            frames(&s1.adv)[..],
            [Frame::IBeacon {
                measured_power: DEFAULT_RSSI_AT_1M,
                ..
            }]
        ));
    }

    #[test]
    fn espresense_other_ids_are_quiet_drops_and_bad_fields_are_named() {
        for id in [
            "apple:1005:9-26",
            "tile:abcdef",
            "eddy:0102-0304",
            "iBeacon:zz-1-2",
        ] {
            let e = parse_espresense(&format!("espresense/devices/{id}/k"), br#"{"rssi":-70}"#, 0)
                .unwrap_err();
            assert!(e.ignored && e.field == "id", "{id}: {e:?}");
        }
        let topic = format!("espresense/devices/{ESP_ID}/kitchen");
        for (payload, field) in [
            (r#"{"rssi":"x"}"#, "rssi"),
            (r#"{"rssi@1m":-59}"#, "rssi"),
            (r#"{"rssi":-70,"rssi@1m":"loud"}"#, "rssi@1m"),
            (r#"{"rssi":-70,"mac":"not a mac"}"#, "mac"),
            (r#"{"rssi":-70,"id":"iBeacon:other-1-2"}"#, "id"),
            ("not json", "payload"),
        ] {
            let e = parse_espresense(&topic, payload.as_bytes(), 0).unwrap_err();
            assert_eq!(e.field, field, "{payload}: {e}");
            assert!(!e.ignored);
        }
        assert_eq!(
            parse_espresense("espresense/rooms/kitchen/status", b"online", 0)
                .unwrap_err()
                .field,
            "topic"
        );
    }

    const RECORD: &str = r#"{"scanner": "entrance", "addr": "7f:ff:fe:7e:0e:08", "rssi": -63, "adv": "0201061aff4c00", "at_ms": 1795334400123}"#;

    #[test]
    fn scanner_records_must_come_from_their_own_node() {
        let s =
            parse_scanner_record("retail/store-042/scanners/entrance", RECORD.as_bytes()).unwrap();
        assert_eq!(s.scanner, "entrance");
        let e =
            parse_scanner_record("retail/store-042/scanners/till", RECORD.as_bytes()).unwrap_err();
        assert_eq!(e.field, "scanner");
        let e = parse_scanner_record(
            "retail/store-042/scanners/entrance",
            RECORD.replace("-63", "5000").as_bytes(),
        )
        .unwrap_err();
        assert_eq!(e.field, "rssi");
        let e = parse_scanner_record("retail/store-042/nudges/entrance", RECORD.as_bytes())
            .unwrap_err();
        assert_eq!(e.field, "topic");
    }

    // ---- Decoded messages (pubadvdata / publish_advdata off, the defaults)

    /// Provenance of every payload below: vectors/scanner-nodes/README.md.
    const OMG_DOC_IBEACON: &str = r#"{"id":"58:78:20:76:BC:24","mac_type":1,"rssi":-79,"brand":"GENERIC","model":"iBeacon","model_id":"IBEACON","mfid":"4c00","uuid":"1de4b189115e45f6b44e509352269977","major":0,"minor":0,"txpower":-66}"#;

    fn one_advert(topic: &str, payload: &str) -> Sighting {
        let p = parse_openmqttgateway(topic, payload.as_bytes(), 5_000).unwrap();
        let mut m = AdvertMerger::default();
        assert!(m.push(p, 5_000).is_empty());
        let mut out = m.flush_due(5_000 + MERGE_WINDOW_MS);
        assert_eq!(out.len(), 1);
        out.remove(0)
    }

    #[test]
    fn openmqttgateway_documented_decoded_ibeacon_is_understood() {
        // OpenMQTTGateway docs/use/ble.md, the message of issue #22.
        let s = one_advert(
            "home/OpenMQTTGateway/BTtoMQTT/58782076BC24",
            OMG_DOC_IBEACON,
        );
        assert_eq!(s.addr.to_string(), "58:78:20:76:bc:24");
        assert_eq!((s.rssi, s.scanner.as_str()), (-79, "OpenMQTTGateway"));
        assert_eq!(
            frames(&s.adv),
            vec![Frame::IBeacon {
                uuid: uuid_bytes(UUID),
                major: 0,
                minor: 0,
                measured_power: -66
            }]
        );
    }

    /// The same sighting as the raw advert gives: the decoded fields of the
    /// Theengs decoder's own test (tests/BLE/test_ble.cpp: input
    /// manufacturerdata, expected output) rebuild exactly the input bytes.
    #[test]
    fn theengs_decoder_test_vectors_rebuild_their_raw_advert() {
        let cases = [
            (
                "4c000215426c7565436861726d426561636f6e730efe1355c5",
                r#"{"brand":"GENERIC","model":"iBeacon","model_id":"IBEACON","type":"BCON","mfid":"4c00","uuid":"426c7565436861726d426561636f6e73","major":3838,"minor":4949,"txpower":-59}"#,
            ),
            (
                "4c000215fda50693a4e24fb1afcfc6eb07647825000100021a",
                r#"{"brand":"GENERIC","model":"iBeacon","model_id":"IBEACON","type":"BCON","mfid":"4c00","uuid":"fda50693a4e24fb1afcfc6eb07647825","major":1,"minor":2,"volt":2.6}"#,
            ),
        ];
        let topic = "home/TheengsGateway/BTtoMQTT/AABBCCDDEEFF";
        for (raw, decoded) in cases {
            // The decoder's output has no id and rssi; the gateway adds them.
            let decoded = decoded.replacen('{', r#"{"id":"AA:BB:CC:DD:EE:FF","rssi":-70,"#, 1);
            let raw_msg =
                format!(r#"{{"id":"AA:BB:CC:DD:EE:FF","rssi":-70,"manufacturerdata":"{raw}"}}"#);
            let from_decoded = one_advert(topic, &decoded);
            let from_raw = one_advert(topic, &raw_msg);
            assert_eq!(from_decoded, from_raw, "{decoded}");
        }
    }

    /// `txpower` means different things: the Theengs decoder's is the
    /// iBeacon's calibrated power (written only when that byte is
    /// negative, else `volt`), OpenMQTTGateway's, set before decoding, is
    /// the advert's TX Power Level AD (main/ZgatewayBT.cpp, procBLETask).
    /// The decoder's test vector with `volt` 2.6, as OpenMQTTGateway
    /// publishes it for an advert that also carries TX Power Level 4 dBm,
    /// still rebuilds the raw advert (power byte 0x1a).
    #[test]
    fn openmqttgateway_txpower_beside_volt_is_not_the_calibrated_power() {
        let topic = "home/OpenMQTTGateway/BTtoMQTT/AABBCCDDEEFF";
        let decoded = r#"{"id":"AA:BB:CC:DD:EE:FF","mac_type":0,"rssi":-70,"txpower":4,"brand":"GENERIC","model":"iBeacon","model_id":"IBEACON","type":"BCON","mfid":"4c00","uuid":"fda50693a4e24fb1afcfc6eb07647825","major":1,"minor":2,"volt":2.6}"#;
        let raw = r#"{"id":"AA:BB:CC:DD:EE:FF","rssi":-70,"manufacturerdata":"4c000215fda50693a4e24fb1afcfc6eb07647825000100021a"}"#;
        assert_eq!(one_advert(topic, decoded), one_advert(topic, raw));
        assert!(matches!(
            frames(&one_advert(topic, decoded).adv)[..],
            [Frame::IBeacon {
                measured_power: 0x1a,
                ..
            }]
        ));
    }

    /// Neither project decodes Eddystone or AltBeacon frames (see
    /// vectors/scanner-nodes/README.md, "What was looked for and is not
    /// there"): OpenMQTTGateway on its defaults strips the raw data
    /// (`pubadvdata` off: `servicedata`, `servicedatauuid`,
    /// `manufacturerdata` removed in PublishDeviceData, main/ZgatewayBT.cpp)
    /// and sends no decoded field in their place, so such a beacon arrives
    /// as `id`, `rssi` and at most the advert's own `txpower`: a counted
    /// quiet drop whose reason says what to switch on, never a guess.
    /// Theengs Gateway keeps the raw fields of what it cannot decode
    /// (`publish_all`, its default): the raw advert, rebuilt as before.
    #[test]
    fn eddystone_and_altbeacon_on_default_settings() {
        let t = "home/OpenMQTTGateway/BTtoMQTT/AABBCCDDEEFF";
        let e = parse_openmqttgateway(
            t,
            br#"{"id":"AA:BB:CC:DD:EE:FF","rssi":-70,"txpower":-4}"#,
            0,
        )
        .unwrap_err();
        assert_eq!((e.field, e.ignored), ("payload", true));
        assert!(e.reason.contains("pubadvdata"), "{e}");
        // Theengs Gateway, undecoded Eddystone-UID and AltBeacon adverts
        // (servicedatauuid as it writes it: the 16-bit part, "feaa"). Made
        // here from the formats' specifications: neither project has a
        // test or doc payload for them, having no decoder for them.
        let uid = r#"{"id":"AA:BB:CC:DD:EE:FF","rssi":-70,"servicedatauuid":"feaa","servicedata":"00e800010203040506070809a0b0c0d0e0f00000"}"#;
        let alt = r#"{"id":"AA:BB:CC:DD:EE:FF","rssi":-70,"manufacturerdata":"1801beace2c56db5dffb48d2b060d0f5a71096e00007002ac500"}"#;
        assert!(matches!(
            frames(&one_advert(t, uid).adv)[..],
            [Frame::EddystoneUid { tx_power: -24, .. }]
        ));
        assert!(matches!(
            frames(&one_advert(t, alt).adv)[..],
            [Frame::AltBeacon {
                manufacturer: 0x0118,
                id2: 7,
                id3: 42,
                ..
            }]
        ));
    }

    #[test]
    fn theengs_negative_major_minor_are_the_high_values() {
        // value_from_hex_data reads major/minor signed: 0x8001 arrives as
        // -32767, 0xFFFF as -1.
        let msg = OMG_DOC_IBEACON
            .replace(r#""major":0"#, r#""major":-32767"#)
            .replace(r#""minor":0"#, r#""minor":-1"#);
        let s = one_advert("home/gw/BTtoMQTT/58782076BC24", &msg);
        assert!(matches!(
            frames(&s.adv)[..],
            [Frame::IBeacon {
                major: 0x8001,
                minor: 0xFFFF,
                ..
            }]
        ));
    }

    #[test]
    fn raw_advert_data_wins_over_decoded_fields() {
        let msg = OMG_DOC_IBEACON.replace(
            r#""txpower":-66"#,
            r#""txpower":-66,"manufacturerdata":"4c000215e2c56db5dffb48d2b060d0f5a71096e00007002ac5""#,
        );
        let s = one_advert("home/gw/BTtoMQTT/58782076BC24", &msg);
        assert!(matches!(
            frames(&s.adv)[..],
            [Frame::IBeacon {
                major: 7,
                minor: 42,
                measured_power: -59,
                ..
            }]
        ));
    }

    #[test]
    fn partial_decoded_ibeacons_are_refused_by_field_never_guessed() {
        let t = "home/gw/BTtoMQTT/58782076BC24";
        for (edit, field) in [
            ((r#","major":0"#, ""), "major"),
            (
                (
                    r#""uuid":"1de4b189115e45f6b44e509352269977""#,
                    r#""uuid":"1de4""#,
                ),
                "uuid",
            ),
            ((r#","txpower":-66"#, ""), "txpower"),
            ((r#""txpower":-66"#, r#""txpower":"loud""#), "txpower"),
            ((r#""minor":0"#, r#""minor":70000"#), "minor"),
            ((r#""mfid":"4c00""#, r#""mfid":"0600""#), "mfid"),
        ] {
            let msg = OMG_DOC_IBEACON.replace(edit.0, edit.1);
            let e = parse_openmqttgateway(t, msg.as_bytes(), 0).unwrap_err();
            assert_eq!((e.field, e.ignored), (field, false), "{msg}: {e}");
        }
        // Another decoded device (no iBeacon fields): a quiet drop. Theengs
        // Gateway's documented example payload (docs/use/use.md), shortened:
        // its "name" (an advert part of its own) and some readings left out.
        let e = parse_openmqttgateway(
            t,
            br#"{"id":"F3:52:85","rssi":-82,"brand":"BlueMaestro","model":"TempoDisc","model_id":"BM_V23","tempc":24.1}"#,
            0,
        )
        .unwrap_err();
        assert_eq!((e.field, e.ignored), ("payload", true));
    }

    // ---- ESPresense

    #[test]
    fn espresense_altbeacon_and_eddystone_ids_become_their_adverts() {
        let id = "altBeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0-7-42";
        let s = parse_espresense(
            &format!("espresense/devices/{id}/hall"),
            format!(r#"{{"id":"{id}","rssi@1m":-60,"rssi":-71.5,"rxAdj":0}}"#).as_bytes(),
            0,
        )
        .unwrap();
        assert_eq!(
            frames(&s.adv),
            vec![Frame::AltBeacon {
                manufacturer: ESPRESENSE_ALTBEACON_COMPANY,
                id1: uuid_bytes("e2c56db5-dffb-48d2-b060-d0f5a71096e0"),
                id2: 7,
                id3: 42,
                reference_rssi: -60,
                mfg_reserved: 0,
            }]
        );
        // ESPresense prints namespace byte 5 twice: 11 bytes, then instance.
        let id = "eddy:0001020304040506070809-0a0b0c0d0e0f";
        let s = parse_espresense(
            &format!("espresense/devices/{id}/hall"),
            br#"{"rssi@1m":-61,"rssi":-70}"#,
            0,
        )
        .unwrap();
        assert_eq!(
            frames(&s.adv),
            vec![Frame::EddystoneUid {
                namespace: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
                instance: [10, 11, 12, 13, 14, 15],
                tx_power: -20,
            }]
        );
        assert_eq!(frames(&s.adv)[0].tx_power_at_1m(), Some(-61));
        // A fixed firmware's 10-byte namespace is taken as it is.
        let fixed = "eddy:00010203040506070809-0a0b0c0d0e0f";
        let s2 = parse_espresense(
            &format!("espresense/devices/{fixed}/hall"),
            br#"{"rssi@1m":-61,"rssi":-70}"#,
            0,
        )
        .unwrap();
        assert_eq!(frames(&s2.adv), frames(&s.adv));
        // 11 bytes without the repeat is not ESPresense's output: not guessed.
        let odd = "eddy:0001020304ff0506070809-0a0b0c0d0e0f";
        let e = parse_espresense(
            &format!("espresense/devices/{odd}/hall"),
            br#"{"rssi":-70}"#,
            0,
        )
        .unwrap_err();
        assert!(e.ignored && e.field == "id");
    }

    #[test]
    fn espresense_rx_adj_is_kept_and_checked() {
        // ESPresense 4 (BleFingerprint::fill): rssi is already raw - rxAdj.
        let topic = format!("espresense/devices/{ESP_ID}/office");
        let r = parse_espresense_report(
            &topic,
            br#"{"mac":"dd8800003777","rssi@1m":-59,"rssi":-81.10,"rxAdj":20,"rssiVar":7.42,"distance":6.58,"var":4.00,"int":2028}"#,
            7,
            &[],
        )
        .unwrap();
        assert_eq!((r.sighting.rssi, r.rx_adj), (-81, Some(20)));
        assert!(matches!(
            frames(&r.sighting.adv)[..],
            [Frame::IBeacon {
                measured_power: -59,
                ..
            }]
        ));
        for bad in [r#"{"rssi":-70,"rxAdj":"x"}"#, r#"{"rssi":-70,"rxAdj":300}"#] {
            let e = parse_espresense_report(&topic, bad.as_bytes(), 0, &[]).unwrap_err();
            assert_eq!((e.field, e.ignored), ("rxAdj", false), "{bad}");
        }
    }

    /// A real ESPresense capture (ESPresense-companion's test data, see
    /// vectors/scanner-nodes/README.md): one device heard by ten rooms.
    const COMPANION_CAPTURE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../vectors/scanner-nodes/espresense-companion-stationary.jsonp"
    ));

    fn capture() -> Vec<(String, String)> {
        COMPANION_CAPTURE
            .lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                (
                    v["topic"].as_str().unwrap().to_string(),
                    v["payload"].to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn espresense_capture_replayed_gives_a_sighting_per_room() {
        let messages = capture();
        let rooms: std::collections::BTreeSet<&str> = messages
            .iter()
            .map(|(t, _)| t.rsplit('/').next().unwrap())
            .collect();
        assert!(rooms.len() >= 5, "{rooms:?}");
        // As captured, the id is a user's alias (watch:darrell): ESPresense
        // sends no advert for it, so each message is a counted quiet drop.
        for (topic, payload) in &messages {
            let e = parse_espresense(topic, payload.as_bytes(), 0).unwrap_err();
            assert!(e.ignored && e.field == "id", "{topic}: {e}");
        }
        // The same capture with the alias replaced by the iBeacon id behind
        // such an alias (ESPresense's enrollment id, src/Enrollment.cpp):
        // every message is a sighting from its room's node, with the node's
        // RSSI and the device's MAC.
        let id = "iBeacon:e5ca1ade-f007-ba11-0000-000000000000-1-2";
        let mut seen = std::collections::BTreeSet::new();
        for (i, (topic, payload)) in messages.iter().enumerate() {
            let topic = topic.replace("watch:darrell", id);
            let payload = payload.replace("watch:darrell", id);
            let s = parse_espresense(&topic, payload.as_bytes(), i as i64).unwrap();
            let v: serde_json::Value = serde_json::from_str(&payload).unwrap();
            assert_eq!(s.scanner, topic.rsplit('/').next().unwrap());
            assert_eq!(f64::from(s.rssi), v["rssi"].as_f64().unwrap().round());
            assert_eq!(s.addr.to_string(), "58:b1:29:44:94:d3");
            assert!(matches!(
                frames(&s.adv)[..],
                [Frame::IBeacon {
                    major: 1,
                    minor: 2,
                    ..
                }]
            ));
            seen.insert(s.scanner);
        }
        assert_eq!(
            seen.iter().map(String::as_str).collect::<Vec<_>>(),
            rooms.iter().copied().collect::<Vec<_>>()
        );

        // As captured, with the alias given to a store beacon in the site
        // file (`espresense_id`): every message, unchanged, is a sighting of
        // that beacon from its room's node.
        let aliased = crate::config::FleetBeacon {
            id: "watch-darrell".into(),
            kind: BeaconKind::AltBeacon {
                id1: [0xA5; 16],
                id2: 7,
                id3: 9,
            },
            low_battery_mv: None,
            missing_after_s: 600,
            espresense_id: Some("watch:darrell".into()),
        };
        let mut seen = std::collections::BTreeSet::new();
        for (i, (topic, payload)) in messages.iter().enumerate() {
            let r = parse_espresense_report(
                topic,
                payload.as_bytes(),
                i as i64,
                std::slice::from_ref(&aliased),
            )
            .unwrap();
            let v: serde_json::Value = serde_json::from_str(payload).unwrap();
            assert_eq!(
                f64::from(r.sighting.rssi),
                v["rssi"].as_f64().unwrap().round()
            );
            assert!(matches!(
                frames(&r.sighting.adv)[..],
                [Frame::AltBeacon { id2: 7, id3: 9, .. }]
            ));
            seen.insert(r.sighting.scanner);
        }
        assert_eq!(seen.len(), rooms.len());
    }

    #[test]
    fn node_tally_counts_per_node_and_field_bounded_by_the_configured_nodes() {
        let mut t = NodeTally::new(["kitchen".to_string(), "gw1".to_string()]);
        let bad = ScannerError::bad("minor", "missing");
        let quiet = ScannerError::ignored("id", "alias");
        t.refused("home/gw1/BTtoMQTT/AABBCCDDEEFF", &bad);
        t.refused("espresense/devices/watch:x/kitchen", &quiet);
        t.accepted("espresense/devices/iBeacon:x-1-2/kitchen", Some(20));
        for i in 0..100 {
            t.refused(&format!("espresense/devices/x/room-{i}"), &bad);
        }
        assert_eq!(t.get("gw1").unwrap().rejected["minor"], 1);
        let k = t.get("kitchen").unwrap();
        assert_eq!((k.accepted, k.ignored["id"], k.rx_adj), (1, 1, Some(20)));
        assert_eq!(t.get(NodeTally::OTHER).unwrap().rejected["minor"], 100);
        assert_eq!(t.report().as_object().unwrap().len(), 3, "bounded");
        t.set_known(["kitchen".to_string()]);
        assert!(t.get("gw1").is_none());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_input_never_panics(
            topic in "\\PC{0,80}",
            node in "[a-zA-Z0-9:_-]{0,20}",
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            json_like in "\\{(\"(id|mac|rssi|rssi@1m|rxAdj|manufacturerdata|servicedata|servicedatauuid|name|model_id|mfid|uuid|major|minor|txpower|volt)\":(-?[0-9]{1,4}(\\.[0-9])?|\"[0-9a-fA-F:x-]{0,40}\"|null|\\[\\]),?){0,6}\\}",
            now in proptest::prelude::any::<i64>(),
        ) {
            let topics = [
                topic.clone(),
                format!("espresense/devices/{node}/{node}"),
                format!("home/{node}/BTtoMQTT/{node}"),
                format!("p/s/scanners/{node}"),
            ];
            let mut merger = AdvertMerger::new(300, 4);
            for t in &topics {
                for p in [&payload[..], json_like.as_bytes()] {
                    let _ = parse_espresense(t, p, now);
                    let _ = parse_scanner_record(t, p);
                    if let Ok(partial) = parse_openmqttgateway(t, p, now) {
                        let _ = merger.push(partial, now);
                    }
                }
            }
            let _ = merger.flush_due(now);
            let _ = merger.flush_due(i64::MAX);
            let _ = ServiceUuid::parse(&topic);
        }
    }
}
