//! Advertising data (AD structures) for every kind of device the twin has,
//! and BLE address helpers. Pure byte building, no randomness of its own:
//! callers pass the random bytes in so the simulation stays reproducible.

use rand::Rng;

/// Test company id the app token uses unless configured otherwise.
pub const DEFAULT_APP_COMPANY_ID: u16 = 0xFFFF;
/// Version byte of the app token format.
pub const APP_TOKEN_VERSION: u8 = 0x01;
/// Apple's company id, for continuity / Find My junk from strangers.
pub const APPLE_COMPANY_ID: u16 = 0x004C;
/// Anhui Huami (fitness bands), for wearable junk from strangers.
pub const HUAMI_COMPANY_ID: u16 = 0x0157;

/// Flags AD structure: LE General Discoverable, BR/EDR not supported.
const FLAGS_GENERAL: [u8; 3] = [0x02, 0x01, 0x06];

/// Append one AD structure (length, type, data).
fn push_structure(out: &mut Vec<u8>, ad_type: u8, data: &[u8]) {
    // Callers only build structures far below 255 bytes.
    out.push(u8::try_from(data.len() + 1).unwrap_or(u8::MAX));
    out.push(ad_type);
    out.extend_from_slice(data);
}

/// The Android app token: flags, then manufacturer data
/// `company id (LE) | 0x01 | rotating id (16) | tx power at 1 m (i8)`.
pub fn app_token_advert(company_id: u16, rotating_id: &[u8; 16], tx_power_1m: i8) -> Vec<u8> {
    let mut data = Vec::with_capacity(20);
    data.extend_from_slice(&company_id.to_le_bytes());
    data.push(APP_TOKEN_VERSION);
    data.extend_from_slice(rotating_id);
    data.push(tx_power_1m as u8);
    let mut out = FLAGS_GENERAL.to_vec();
    push_structure(&mut out, 0xFF, &data);
    out
}

/// Build a store beacon's advertising data. The error names the bad field
/// (relative to the frame) so spec validation can report it.
pub fn beacon_advert(frame: &crate::spec::BeaconFrame, tx_power_1m: i8) -> Result<Vec<u8>, String> {
    use crate::spec::BeaconFrame;
    let mut out = FLAGS_GENERAL.to_vec();
    match frame {
        BeaconFrame::Ibeacon { uuid, major, minor } => {
            let uuid = parse_uuid(uuid).ok_or("uuid: not a UUID")?;
            out.extend_from_slice(&ibeacon_structure(&uuid, *major, *minor, tx_power_1m));
        }
        BeaconFrame::EddystoneUid {
            namespace,
            instance,
        } => {
            let namespace =
                parse_hex_exact::<10>(namespace).ok_or("namespace: need 20 hex digits")?;
            let instance = parse_hex_exact::<6>(instance).ok_or("instance: need 12 hex digits")?;
            // Complete list of 16-bit service UUIDs: 0xFEAA.
            push_structure(&mut out, 0x03, &[0xAA, 0xFE]);
            let mut data = vec![0xAA, 0xFE, 0x00];
            // Eddystone announces power at 0 m: about 41 dB above the 1 m value.
            data.push(tx_power_1m.saturating_add(41) as u8);
            data.extend_from_slice(&namespace);
            data.extend_from_slice(&instance);
            data.extend_from_slice(&[0x00, 0x00]); // reserved
            push_structure(&mut out, 0x16, &data);
        }
        BeaconFrame::Altbeacon {
            manufacturer,
            id1,
            id2,
            id3,
        } => {
            let id1 = parse_uuid(id1).ok_or("id1: not a UUID")?;
            let mut data = manufacturer.to_le_bytes().to_vec();
            data.extend_from_slice(&[0xBE, 0xAC]);
            data.extend_from_slice(&id1);
            data.extend_from_slice(&id2.to_be_bytes());
            data.extend_from_slice(&id3.to_be_bytes());
            data.push(tx_power_1m as u8);
            data.push(0x00); // manufacturer reserved
            push_structure(&mut out, 0xFF, &data);
        }
    }
    Ok(out)
}

/// Eddystone-TLM (unencrypted, version 0): flags, the 0xFEAA service list,
/// then service data `AA FE | 0x20 | 0x00 | battery mV (u16 BE) |
/// temperature (8.8 signed fixed point, BE) | advert count (u32 BE) |
/// uptime in 0.1 s (u32 BE)`.
pub fn eddystone_tlm_advert(
    battery_mv: u16,
    temperature_c: f64,
    adv_count: u32,
    uptime_ds: u32,
) -> Vec<u8> {
    // -40..85 °C fits i16 8.8 easily; clamp keeps the cast exact anyway.
    let temp = (temperature_c * 256.0).round().clamp(-32768.0, 32767.0) as i16;
    let mut data = vec![0xAA, 0xFE, 0x20, 0x00];
    data.extend_from_slice(&battery_mv.to_be_bytes());
    data.extend_from_slice(&temp.to_be_bytes());
    data.extend_from_slice(&adv_count.to_be_bytes());
    data.extend_from_slice(&uptime_ds.to_be_bytes());
    let mut out = FLAGS_GENERAL.to_vec();
    push_structure(&mut out, 0x03, &[0xAA, 0xFE]);
    push_structure(&mut out, 0x16, &data);
    out
}

/// iBeacon manufacturer structure (without flags).
pub fn ibeacon_structure(uuid: &[u8; 16], major: u16, minor: u16, measured_power: i8) -> Vec<u8> {
    let mut data = APPLE_COMPANY_ID.to_le_bytes().to_vec();
    data.extend_from_slice(&[0x02, 0x15]);
    data.extend_from_slice(uuid);
    data.extend_from_slice(&major.to_be_bytes());
    data.extend_from_slice(&minor.to_be_bytes());
    data.push(measured_power as u8);
    let mut out = Vec::with_capacity(data.len() + 2);
    push_structure(&mut out, 0xFF, &data);
    out
}

/// Apple "nearby info" continuity advert, as iPhones send all the time.
pub fn apple_nearby_advert(rng: &mut impl Rng) -> Vec<u8> {
    let mut data = APPLE_COMPANY_ID.to_le_bytes().to_vec();
    data.extend_from_slice(&[0x10, 0x05]);
    data.extend((0..5).map(|_| rng.r#gen::<u8>()));
    // iPhones set flags 0x1a (LE and BR/EDR capable).
    let mut out = vec![0x02, 0x01, 0x1A];
    push_structure(&mut out, 0xFF, &data);
    out
}

/// Apple "Find My" offline-finding advert: 22 random-looking key bytes, a
/// good test that random payloads are never mistaken for an app token.
pub fn apple_find_my_advert(rng: &mut impl Rng) -> Vec<u8> {
    let mut data = APPLE_COMPANY_ID.to_le_bytes().to_vec();
    data.extend_from_slice(&[0x12, 0x19, 0x10]);
    data.extend((0..22).map(|_| rng.r#gen::<u8>()));
    data.extend_from_slice(&[0x01, 0x00]);
    let mut out = Vec::new();
    push_structure(&mut out, 0xFF, &data);
    out
}

/// A fitness band: flags, manufacturer data, shortened local name.
pub fn wearable_advert(rng: &mut impl Rng) -> Vec<u8> {
    let mut data = HUAMI_COMPANY_ID.to_le_bytes().to_vec();
    data.extend((0..8).map(|_| rng.r#gen::<u8>()));
    let mut out = FLAGS_GENERAL.to_vec();
    push_structure(&mut out, 0xFF, &data);
    push_structure(&mut out, 0x08, b"Band 7");
    out
}

/// Another company's iBeacon (a delivery tag, a neighbour's beacon).
pub fn foreign_ibeacon_advert(uuid: &[u8; 16], major: u16, minor: u16) -> Vec<u8> {
    let mut out = FLAGS_GENERAL.to_vec();
    out.extend_from_slice(&ibeacon_structure(uuid, major, minor, -59));
    out
}

/// A random private address, resolvable-private form (top bits `01`), as
/// phones use. Never all zeros or all ones in the random part.
pub fn random_private_addr(rng: &mut impl Rng) -> [u8; 6] {
    let mut addr: [u8; 6] = rng.r#gen();
    addr[0] = (addr[0] & 0x3F) | 0x40;
    addr
}

/// `aa:bb:cc:dd:ee:ff`, lowercase.
pub fn format_addr(addr: &[u8; 6]) -> String {
    addr.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parse `aa:bb:cc:dd:ee:ff` (either case).
pub fn parse_addr(text: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut out {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Parse a hyphenated (or bare) UUID into 16 bytes.
pub fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let bare: String = text.chars().filter(|c| *c != '-').collect();
    if text.len() != 36 && text.len() != 32 {
        return None;
    }
    parse_hex_exact::<16>(&bare)
}

fn parse_hex_exact<const N: usize>(text: &str) -> Option<[u8; N]> {
    let bytes = hex::decode(text).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{BeaconFrame, STORE_IBEACON_UUID};

    #[test]
    fn ibeacon_frame_bytes_are_exact() {
        let frame = BeaconFrame::Ibeacon {
            uuid: STORE_IBEACON_UUID.into(),
            major: 1,
            minor: 7,
        };
        let adv = beacon_advert(&frame, -59).expect("valid frame");
        assert_eq!(
            hex::encode(adv),
            "0201061aff4c000215426c7565436861726d426561636f6e7300010007c5"
        );
    }

    #[test]
    fn app_token_layout() {
        let id = [0xAB; 16];
        let adv = app_token_advert(DEFAULT_APP_COMPANY_ID, &id, -59);
        assert_eq!(adv.len(), 3 + 22);
        assert_eq!(&adv[..3], &[0x02, 0x01, 0x06]);
        assert_eq!(&adv[3..8], &[0x15, 0xFF, 0xFF, 0xFF, 0x01]);
        assert_eq!(&adv[8..24], &id);
        assert_eq!(adv[24] as i8, -59);
    }

    #[test]
    fn eddystone_and_altbeacon_lengths_match_their_length_bytes() {
        for frame in crate::spec::StoreSpec::small_store()
            .beacons
            .iter()
            .map(|b| &b.frame)
        {
            let adv = beacon_advert(frame, -59).expect("valid");
            let mut i = 0;
            while i < adv.len() {
                i += usize::from(adv[i]) + 1;
            }
            assert_eq!(i, adv.len(), "structures tile the advert exactly");
        }
    }

    #[test]
    fn addr_round_trip() {
        let a = [0x7f, 0xff, 0xfe, 0x7e, 0x0e, 0x08];
        assert_eq!(format_addr(&a), "7f:ff:fe:7e:0e:08");
        assert_eq!(parse_addr("7F:ff:fe:7e:0e:08"), Some(a));
        assert_eq!(parse_addr("7f:ff:fe:7e:0e"), None);
        assert_eq!(parse_addr("7f:ff:fe:7e:0e:08:00"), None);
    }
}
