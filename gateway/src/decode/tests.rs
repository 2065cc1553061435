//! Decoder tests: the published vectors, one case per format and per
//! malformed shape, and properties (no panic; encode → decode round trip).

use super::*;
use serde_json::{Value, json};

const VECTORS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../vectors/ble_adverts.json"
));

fn opts() -> DecodeOptions {
    DecodeOptions::default()
}

fn frames_json(hex_text: &str) -> Value {
    decode_hex_to_json(hex_text, &opts()).unwrap()["frames"].clone()
}

fn frames(hex_text: &str) -> Vec<Frame> {
    decode(&hex::decode(hex_text).unwrap(), &opts()).unwrap()
}

/// `hex_text` is exactly one complete AD structure, and not a frame: so the
/// case fails for the reason it names, not because its length is off.
#[track_caller]
fn assert_one_structure_no_frame(hex_text: &str, what: &str) {
    let mut out = Vec::new();
    let n = decode_into(&hex::decode(hex_text).unwrap(), &opts(), &mut out);
    assert_eq!((n, out), (1, vec![]), "{what}: {hex_text}");
}

// ---------------------------------------------------------------- vectors

#[test]
fn every_published_vector_passes() {
    let file: Value = serde_json::from_str(VECTORS).unwrap();
    let cases = file["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let adv = case["adv"].as_str().unwrap();
        let got = decode_hex_to_json(adv, &opts());
        if case.get("error").and_then(Value::as_bool) == Some(true) {
            assert!(got.is_err(), "{name}: expected an error, got {got:?}");
            let line: Value = serde_json::from_str(&decode_line_to_json(adv, &opts())).unwrap();
            assert!(line["error"].is_string(), "{name}: {line}");
        } else {
            let got = got.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got, json!({ "frames": case["frames"] }), "{name}");
            let line: Value = serde_json::from_str(&decode_line_to_json(adv, &opts())).unwrap();
            assert_eq!(line, got, "{name}: line mode");
        }
    }
}

// ---------------------------------------------------------------- formats

#[test]
fn ibeacon_from_the_published_vector() {
    let v = decode_hex_to_json(
        "0201061aff4c000215426c7565436861726d426561636f6e730efe1355c5",
        &opts(),
    )
    .unwrap();
    assert_eq!(
        v,
        json!({"frames": [{"kind": "ibeacon", "uuid": "426c7565-4368-6172-6d42-6561636f6e73", "major": 3838, "minor": 4949, "measured_power": -59}]})
    );
}

#[test]
fn app_token_round_trip() {
    let adv = hex::decode("02010615ffffff018be6cd371c5c891604bfbe49df845096c5").unwrap();
    let frames = decode(&adv, &opts()).unwrap();
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
    assert_eq!(
        frames_json("02010615ffffff018be6cd371c5c891604bfbe49df845096c5"),
        json!([{"kind": "app_token", "company_id": 65535, "version": 1,
                "rotating_id": "8be6cd371c5c891604bfbe49df845096", "tx_power": -59}])
    );
}

#[test]
fn app_token_uses_the_configured_company_id_only() {
    let adv = hex::decode("15ff3412018be6cd371c5c891604bfbe49df845096c5").unwrap();
    assert_eq!(decode(&adv, &opts()).unwrap(), vec![]);
    let custom = DecodeOptions {
        app_company_id: 0x1234,
    };
    let got = decode(&adv, &custom).unwrap();
    assert!(matches!(
        got[..],
        [Frame::AppToken {
            company_id: 0x1234,
            tx_power: -59,
            ..
        }]
    ));
}

#[test]
fn app_token_with_another_version_is_not_a_token() {
    assert_one_structure_no_frame("15ffffff028be6cd371c5c891604bfbe49df845096c5", "v2");
}

#[test]
fn altbeacon_under_any_manufacturer() {
    // Same beacon as the published vector, under Apple's and the test id.
    for (company_le, company) in [("4c00", 0x004C), ("ffff", 0xFFFF), ("0000", 0)] {
        let hex_text = format!("1bff{company_le}beac2f234454cf6d4a0fadf2f4911ba9ffa6ffff0102b800");
        assert_eq!(
            frames_json(&hex_text),
            json!([{"kind": "altbeacon", "manufacturer": company,
                    "id1": "2f234454-cf6d-4a0f-adf2-f4911ba9ffa6", "id2": 65535, "id3": 258,
                    "reference_rssi": -72, "mfg_reserved": 0}])
        );
    }
}

#[test]
fn eddystone_uid_with_and_without_rfu_bytes() {
    let with_rfu = "1716aafe00e3123456789012346789010000000000010000";
    let without = "1516aafe00e312345678901234678901000000000001";
    let expected = json!([{"kind": "eddystone_uid", "namespace": "12345678901234678901",
                           "instance": "000000000001", "tx_power": -29}]);
    assert_eq!(frames_json(with_rfu), expected);
    assert_eq!(frames_json(without), expected);
}

#[test]
fn eddystone_url_every_scheme() {
    // "abc" after each scheme byte.
    for (scheme, prefix) in [
        (0, "http://www."),
        (1, "https://www."),
        (2, "http://"),
        (3, "https://"),
    ] {
        let hex_text = format!("0916aafe10ec{scheme:02x}616263");
        assert_eq!(
            frames_json(&hex_text),
            json!([{"kind": "eddystone_url", "url": format!("{prefix}abc"), "tx_power": -20}])
        );
    }
}

#[test]
fn eddystone_url_every_expansion_code() {
    let expected = [
        ".com/", ".org/", ".edu/", ".net/", ".info/", ".biz/", ".gov/", ".com", ".org", ".edu",
        ".net", ".info", ".biz", ".gov",
    ];
    for (code, expansion) in expected.iter().enumerate() {
        // "https://x" + expansion + "y"
        let hex_text = format!("0916aafe100003 78 {code:02x} 79").replace(' ', "");
        assert_eq!(
            frames_json(&hex_text)[0]["url"],
            json!(format!("https://x{expansion}y")),
            "code {code:#04x}"
        );
    }
}

#[test]
fn eddystone_url_empty_and_longest() {
    assert_eq!(frames_json("0616aafe100002")[0]["url"], json!("http://"));
    // 17 encoded bytes is the most the format allows.
    let seventeen = "61".repeat(17);
    assert_eq!(
        frames_json(&format!("1716aafe100002{seventeen}"))[0]["url"],
        json!(format!("http://{}", "a".repeat(17)))
    );
    let eighteen = "61".repeat(18);
    assert_one_structure_no_frame(&format!("1816aafe100002{eighteen}"), "18 bytes");
}

#[test]
fn eddystone_url_with_invalid_scheme_or_reserved_byte_is_not_a_frame() {
    assert_one_structure_no_frame("0916aafe10ec04616263", "scheme 0x04");
    assert_one_structure_no_frame("0916aafe10ecff616263", "scheme 0xff");
    // 0x0E..=0x20 and 0x7F..=0xFF are reserved in the URL body.
    for reserved in ["0e", "20", "7f", "ff"] {
        assert_one_structure_no_frame(&format!("0916aafe10ec0361{reserved}63"), reserved);
    }
}

#[test]
fn eddystone_tlm_fields() {
    // Negative temperature, full counters.
    assert_eq!(
        frames_json("1116aafe20000c80ff80ffffffff00000001"),
        json!([{"kind": "eddystone_tlm", "version": 0, "battery_mv": 3200,
                "temperature_c": -0.5, "adv_count": 4294967295u32, "uptime_s": 0.1}])
    );
    // 0x8000: temperature not supported.
    assert_eq!(
        frames_json("1116aafe200000008000000000000000000a")[0],
        json!({"kind": "eddystone_tlm", "version": 0, "battery_mv": 0,
               "temperature_c": null, "adv_count": 0, "uptime_s": 1.0})
    );
}

#[test]
fn encrypted_tlm_is_not_decoded() {
    assert_one_structure_no_frame("1116aafe20010b1813000000146700002ac4", "TLM v1");
}

#[test]
fn eddystone_eid() {
    assert_eq!(
        frames_json("0d16aafe30f60123456789abcdef"),
        json!([{"kind": "eddystone_eid", "eid": "0123456789abcdef", "tx_power": -10}])
    );
}

#[test]
fn several_frames_in_one_advert_keep_their_order() {
    let got = frames(concat!(
        "020106",
        "0303aafe",
        "0d16aafe30f60123456789abcdef",
        "15ffffff018be6cd371c5c891604bfbe49df845096c5",
        "1aff4c000215426c7565436861726d426561636f6e730efe1355c5",
    ));
    assert!(matches!(
        got[..],
        [
            Frame::EddystoneEid { .. },
            Frame::AppToken { .. },
            Frame::IBeacon { .. }
        ]
    ));
}

#[test]
fn tx_power_at_1m_per_kind() {
    let power = |h: &str| frames(h)[0].tx_power_at_1m();
    assert_eq!(
        power("1aff4c000215426c7565436861726d426561636f6e730efe1355c5"),
        Some(-59)
    );
    assert_eq!(
        power("15ffffff018be6cd371c5c891604bfbe49df845096c5"),
        Some(-59)
    );
    assert_eq!(
        power("1bff1801beac2f234454cf6d4a0fadf2f4911ba9ffa600010002c509"),
        Some(-59)
    );
    // Eddystone calibrates at 0 m: 41 dB less at 1 m.
    assert_eq!(power("0d16aafe30f60123456789abcdef"), Some(-51));
    assert_eq!(power("0d16aafe30800123456789abcdef"), Some(-128));
    assert_eq!(power("1116aafe200000008000000000000000000a"), None);
}

// ---------------------------------------------------------------- malformed

#[test]
fn not_hex_and_no_structure_are_errors() {
    for bad in ["zz01", "0", "02010", "0201 06", "0x020106"] {
        assert!(
            matches!(
                decode_hex_to_json(bad, &opts()),
                Err(DecodeError::NotHex(_))
            ),
            "{bad}"
        );
    }
    for none in ["", "05ff", "00", "0000020106", "ff"] {
        assert_eq!(
            decode_hex_to_json(none, &opts()),
            Err(DecodeError::NoValidStructure),
            "{none:?}"
        );
    }
}

#[test]
fn hex_case_and_surrounding_whitespace_are_accepted() {
    assert_eq!(
        frames_json("  0D16AAFE30F60123456789ABCDEF\n"),
        frames_json("0d16aafe30f60123456789abcdef")
    );
}

#[test]
fn structures_too_short_for_their_format_are_not_frames() {
    for (what, hex_text) in [
        (
            "iBeacon one byte short",
            "19ff4c000215426c7565436861726d426561636f6e730efe1355",
        ),
        (
            "app token one byte short",
            "14ffffff018be6cd371c5c891604bfbe49df845096",
        ),
        (
            "AltBeacon one byte short",
            "1aff1801beac2f234454cf6d4a0fadf2f4911ba9ffa600010002c5",
        ),
        ("manufacturer data without a company id", "02ff4c"),
        ("manufacturer data with company id only", "03ff4c00"),
        (
            "Eddystone UID one byte short",
            "1416aafe00e3123456789012346789010000000000",
        ),
        (
            "Eddystone TLM one byte short",
            "1016aafe20000b1813000000146700002a",
        ),
        ("Eddystone EID one byte short", "0c16aafe30f60123456789abcd"),
        ("Eddystone URL without scheme", "0516aafe10f8"),
        ("Eddystone without frame type", "0316aafe"),
        ("service data without uuid", "0216aa"),
        ("empty structure", "01ff"),
    ] {
        assert_one_structure_no_frame(hex_text, what);
    }
}

#[test]
fn structures_too_long_for_their_format_are_not_frames() {
    for hex_text in [
        "1bff4c000215426c7565436861726d426561636f6e730efe1355c500",
        "16ffffff018be6cd371c5c891604bfbe49df845096c500",
        "1cff1801beac2f234454cf6d4a0fadf2f4911ba9ffa600010002c50900",
        "1216aafe20000b1813000000146700002ac400",
        "0e16aafe30f60123456789abcdef00",
    ] {
        assert_one_structure_no_frame(hex_text, "");
    }
}

#[test]
fn wrong_length_byte() {
    // The iBeacon's length byte says one more than there is: the structure is
    // truncated, the flags before it still count.
    assert_eq!(
        decode_hex_to_json(
            "0201061bff4c000215426c7565436861726d426561636f6e730efe1355c5",
            &opts()
        )
        .unwrap(),
        json!({"frames": []})
    );
    // One less: the iBeacon is short, and its last byte (0xc5) becomes a
    // length byte running past the end.
    assert_eq!(
        frames_json("02010619ff4c000215426c7565436861726d426561636f6e730efe1355c5"),
        json!([])
    );
    // A length byte running past the end of the only structure: an error.
    assert_eq!(
        decode_hex_to_json("1aff4c000215", &opts()),
        Err(DecodeError::NoValidStructure)
    );
}

#[test]
fn zero_length_structures_are_padding() {
    // Padding after a frame: the frame decodes.
    assert_eq!(
        frames_json("0d16aafe30f60123456789abcdef000000"),
        frames_json("0d16aafe30f60123456789abcdef")
    );
    // A zero length byte ends the significant part: what follows is ignored.
    assert_eq!(
        frames_json("020106000d16aafe30f60123456789abcdef"),
        json!([])
    );
    // Padding first: nothing significant at all.
    assert_eq!(
        decode_hex_to_json("000d16aafe30f60123456789abcdef", &opts()),
        Err(DecodeError::NoValidStructure)
    );
}

#[test]
fn truncated_trailing_structure_is_ignored() {
    let got = frames_json("0d16aafe30f60123456789abcdef1aff4c000215426c75");
    assert_eq!(got.as_array().unwrap().len(), 1);
    assert_eq!(got[0]["kind"], "eddystone_eid");
}

#[test]
fn wrong_eddystone_frame_type_or_uuid_is_not_a_frame() {
    for hex_text in [
        "0d16aafe40f60123456789abcdef", // 0x40: unknown frame type
        "0d16aafe31f60123456789abcdef", // 0x31
        "0d16feaa30f60123456789abcdef", // UUID byte order swapped
        "0d16aafd30f60123456789abcdef", // another service
        "0d20aafe30f60123456789abcdef", // 32-bit service data AD type
    ] {
        assert_one_structure_no_frame(hex_text, "");
    }
}

#[test]
fn decode_into_counts_structures_and_reuses_the_vec() {
    let adv = hex::decode("0201060303aafe1116aafe20000b1813000000146700002ac4e4").unwrap();
    let mut out = Vec::with_capacity(4);
    let ptr = out.as_ptr();
    assert_eq!(decode_into(&adv, &opts(), &mut out), 3);
    assert_eq!(out.len(), 1);
    assert_eq!(decode_into(&adv, &opts(), &mut out), 3);
    assert_eq!(out.len(), 1);
    assert_eq!(out.as_ptr(), ptr);
    assert_eq!(decode_into(&[], &opts(), &mut out), 0);
    assert!(out.is_empty());
}

#[test]
fn line_mode_gives_frames_or_an_error_object() {
    let ok: Value = serde_json::from_str(&decode_line_to_json(
        "0d16aafe30f60123456789abcdef",
        &opts(),
    ))
    .unwrap();
    assert_eq!(ok["frames"][0]["kind"], "eddystone_eid");
    for bad in ["zz", "", "05ff"] {
        let line = decode_line_to_json(bad, &opts());
        assert!(!line.contains('\n'));
        let err: Value = serde_json::from_str(&line).unwrap();
        assert!(
            err["error"].as_str().is_some_and(|s| !s.is_empty()),
            "{line}"
        );
        assert_eq!(err.as_object().unwrap().len(), 1);
    }
}

#[test]
fn ad_structures_yields_type_and_data() {
    let adv = hex::decode("0201060103").unwrap();
    let got: Vec<_> = ad_structures(&adv).collect();
    assert_eq!(got, vec![(0x01, &[0x06][..]), (0x03, &[][..])]);
}

// ---------------------------------------------------------------- properties

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Test-only encoder: one frame → one AD structure (length, type, data).
    fn encode(frame: &Frame) -> Vec<u8> {
        let (ad_type, data): (u8, Vec<u8>) = match frame {
            Frame::IBeacon {
                uuid,
                major,
                minor,
                measured_power,
            } => {
                let mut d = vec![0x4C, 0x00, 0x02, 0x15];
                d.extend_from_slice(uuid);
                d.extend_from_slice(&major.to_be_bytes());
                d.extend_from_slice(&minor.to_be_bytes());
                d.push(*measured_power as u8);
                (AD_MANUFACTURER_DATA, d)
            }
            Frame::AltBeacon {
                manufacturer,
                id1,
                id2,
                id3,
                reference_rssi,
                mfg_reserved,
            } => {
                let mut d = manufacturer.to_le_bytes().to_vec();
                d.extend_from_slice(&[0xBE, 0xAC]);
                d.extend_from_slice(id1);
                d.extend_from_slice(&id2.to_be_bytes());
                d.extend_from_slice(&id3.to_be_bytes());
                d.push(*reference_rssi as u8);
                d.push(*mfg_reserved);
                (AD_MANUFACTURER_DATA, d)
            }
            Frame::AppToken {
                company_id,
                version,
                rotating_id,
                tx_power,
            } => {
                let mut d = company_id.to_le_bytes().to_vec();
                d.push(*version);
                d.extend_from_slice(rotating_id);
                d.push(*tx_power as u8);
                (AD_MANUFACTURER_DATA, d)
            }
            Frame::EddystoneUid {
                namespace,
                instance,
                tx_power,
            } => {
                let mut d = vec![0xAA, 0xFE, 0x00, *tx_power as u8];
                d.extend_from_slice(namespace);
                d.extend_from_slice(instance);
                d.extend_from_slice(&[0, 0]);
                (AD_SERVICE_DATA_16, d)
            }
            Frame::EddystoneUrl { url, tx_power } => {
                let mut d = vec![0xAA, 0xFE, 0x10, *tx_power as u8];
                d.extend(encode_url(url));
                (AD_SERVICE_DATA_16, d)
            }
            Frame::EddystoneTlm {
                version,
                battery_mv,
                temperature_c,
                adv_count,
                uptime_s,
            } => {
                let mut d = vec![0xAA, 0xFE, 0x20, *version];
                d.extend_from_slice(&battery_mv.to_be_bytes());
                let t = match temperature_c {
                    Some(c) => ((c * 256.0).round() as i16) as u16,
                    None => 0x8000,
                };
                d.extend_from_slice(&t.to_be_bytes());
                d.extend_from_slice(&adv_count.to_be_bytes());
                d.extend_from_slice(&((uptime_s * 10.0).round() as u32).to_be_bytes());
                (AD_SERVICE_DATA_16, d)
            }
            Frame::EddystoneEid { eid, tx_power } => {
                let mut d = vec![0xAA, 0xFE, 0x30, *tx_power as u8];
                d.extend_from_slice(eid);
                (AD_SERVICE_DATA_16, d)
            }
        };
        let mut out = vec![u8::try_from(data.len() + 1).unwrap(), ad_type];
        out.extend(data);
        out
    }

    /// Scheme byte, then the body with the longest expansion at each point.
    fn encode_url(url: &str) -> Vec<u8> {
        let (scheme, prefix) = eddystone::SCHEMES
            .iter()
            .enumerate()
            .filter(|(_, p)| url.starts_with(*p))
            .max_by_key(|(_, p)| p.len())
            .expect("a known scheme");
        let mut out = vec![scheme as u8];
        let mut rest = &url[prefix.len()..];
        while !rest.is_empty() {
            let expansion = eddystone::EXPANSIONS
                .iter()
                .enumerate()
                .filter(|(_, e)| rest.starts_with(*e))
                .max_by_key(|(_, e)| e.len());
            if let Some((code, e)) = expansion {
                out.push(code as u8);
                rest = &rest[e.len()..];
            } else {
                out.push(rest.as_bytes()[0]);
                rest = &rest[1..];
            }
        }
        out
    }

    /// A URL a beacon can send: a scheme, then up to 17 tokens, each a
    /// printable character or an expansion.
    fn url() -> impl Strategy<Value = String> {
        let token = prop_oneof![
            (0x21u8..=0x7E).prop_map(|b| (b as char).to_string()),
            (0usize..eddystone::EXPANSIONS.len())
                .prop_map(|i| eddystone::EXPANSIONS[i].to_string()),
        ];
        (0usize..4, prop::collection::vec(token, 0..=17))
            .prop_map(|(s, tokens)| format!("{}{}", eddystone::SCHEMES[s], tokens.concat()))
    }

    fn frame(app_company_id: u16) -> impl Strategy<Value = Frame> {
        prop_oneof![
            (any::<[u8; 16]>(), any::<u16>(), any::<u16>(), any::<i8>()).prop_map(
                |(uuid, major, minor, measured_power)| Frame::IBeacon {
                    uuid,
                    major,
                    minor,
                    measured_power
                }
            ),
            (
                any::<u16>(),
                any::<[u8; 16]>(),
                any::<u16>(),
                any::<u16>(),
                any::<i8>(),
                any::<u8>()
            )
                .prop_map(
                    |(manufacturer, id1, id2, id3, reference_rssi, mfg_reserved)| {
                        Frame::AltBeacon {
                            manufacturer,
                            id1,
                            id2,
                            id3,
                            reference_rssi,
                            mfg_reserved,
                        }
                    }
                ),
            (any::<[u8; 16]>(), any::<i8>()).prop_map(move |(rotating_id, tx_power)| {
                Frame::AppToken {
                    company_id: app_company_id,
                    version: 1,
                    rotating_id,
                    tx_power,
                }
            }),
            (any::<[u8; 10]>(), any::<[u8; 6]>(), any::<i8>()).prop_map(
                |(namespace, instance, tx_power)| Frame::EddystoneUid {
                    namespace,
                    instance,
                    tx_power
                }
            ),
            (url(), any::<i8>()).prop_map(|(url, tx_power)| Frame::EddystoneUrl { url, tx_power }),
            (any::<u16>(), any::<i16>(), any::<u32>(), any::<u32>()).prop_map(
                |(battery_mv, t, adv_count, tenths)| Frame::EddystoneTlm {
                    version: 0,
                    battery_mv,
                    temperature_c: (t != i16::MIN).then(|| f64::from(t) / 256.0),
                    adv_count,
                    uptime_s: f64::from(tenths) / 10.0,
                }
            ),
            (any::<[u8; 8]>(), any::<i8>())
                .prop_map(|(eid, tx_power)| Frame::EddystoneEid { eid, tx_power }),
        ]
    }

    fn with_company() -> impl Strategy<Value = (u16, Frame)> {
        any::<u16>().prop_flat_map(|c| (Just(c), frame(c)))
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(adv in prop::collection::vec(any::<u8>(), 0..80),
                                       company in any::<u16>()) {
            let opts = DecodeOptions { app_company_id: company };
            let mut out = Vec::new();
            let n = decode_into(&adv, &opts, &mut out);
            prop_assert!(out.len() <= n);
            let _ = decode_line_to_json(&hex::encode(&adv), &opts);
        }

        #[test]
        fn arbitrary_structures_never_panic(
            structures in prop::collection::vec(
                (prop::sample::select(vec![0x01u8, 0x03, 0x16, 0xFF, 0x09]),
                 prop::sample::select(vec![vec![], vec![0xAA, 0xFE], vec![0x4C, 0x00, 0x02, 0x15],
                                           vec![0xFF, 0xFF, 0x01], vec![0x18, 0x01, 0xBE, 0xAC]]),
                 prop::sample::select(vec![0x00u8, 0x10, 0x20, 0x30]),
                 prop::collection::vec(any::<u8>(), 0..30)),
                0..4),
            tail in prop::collection::vec(any::<u8>(), 0..4),
        ) {
            let mut adv = Vec::new();
            for (ad_type, head, frame_type, body) in structures {
                let mut data = head;
                data.push(frame_type);
                data.extend(body);
                adv.push((data.len() + 1) as u8);
                adv.push(ad_type);
                adv.extend(data);
            }
            adv.extend(tail);
            let _ = decode(&adv, &DecodeOptions::default());
        }

        #[test]
        fn arbitrary_text_lines_never_panic(line in ".{0,80}") {
            let out = decode_line_to_json(&line, &DecodeOptions::default());
            prop_assert!(serde_json::from_str::<Value>(&out).is_ok());
        }

        #[test]
        fn encode_then_decode_gives_the_frame_back((company, frame) in with_company()) {
            let opts = DecodeOptions { app_company_id: company };
            let mut adv = vec![0x02, 0x01, 0x06];
            adv.extend(encode(&frame));
            prop_assert_eq!(decode(&adv, &opts).unwrap(), vec![frame.clone()]);
            // JSON shape: the tag plus the fields, never anything else.
            let v = serde_json::to_value(&frame).unwrap();
            prop_assert!(v["kind"].is_string());
        }

        #[test]
        fn several_frames_then_junk_decode_in_order(
            (company, frames) in any::<u16>()
                .prop_flat_map(|c| (Just(c), prop::collection::vec(frame(c), 1..4))),
            junk_len in 1u8..40,
            junk in prop::collection::vec(any::<u8>(), 0..39),
        ) {
            let opts = DecodeOptions { app_company_id: company };
            let mut adv = Vec::new();
            for f in &frames {
                adv.extend(encode(f));
            }
            // A truncated trailing structure: its length runs past the end.
            let junk = &junk[..junk.len().min(junk_len as usize - 1)];
            adv.push(junk_len);
            adv.extend_from_slice(junk);
            let mut out = Vec::new();
            prop_assert_eq!(decode_into(&adv, &opts, &mut out), frames.len());
            prop_assert_eq!(out, frames);
        }
    }
}
