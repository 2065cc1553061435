//! What every fuzz input must satisfy: the decoder never panics, and its
//! entry points agree with one another.

use gateway::decode::{
    DecodeOptions, decode, decode_hex_to_json, decode_into, decode_line_to_json,
};

/// Run every decoder entry point on `data` and check the invariants. Panics
/// (which the fuzzer reports) when one does not hold.
pub fn check(data: &[u8]) {
    // The first two bytes also serve as a configured app company id, so
    // tokens under any id get exercised.
    let custom = DecodeOptions {
        app_company_id: u16::from_le_bytes([
            data.first().copied().unwrap_or(0xFF),
            data.get(1).copied().unwrap_or(0xFF),
        ]),
    };
    for opts in [DecodeOptions::default(), custom] {
        let mut out = Vec::new();
        let structures = decode_into(data, &opts, &mut out);
        assert!(out.len() <= structures, "more frames than structures");
        for frame in &out {
            let _ = frame.tx_power_at_1m();
            let v = serde_json::to_value(frame).expect("a frame serialises");
            assert!(v["kind"].is_string(), "frame without kind: {v}");
        }
        match decode(data, &opts) {
            Ok(frames) => {
                assert!(structures > 0);
                assert_eq!(frames, out, "decode and decode_into disagree");
            }
            Err(_) => assert_eq!(structures, 0, "error although structures were seen"),
        }

        let hex_text = hex::encode(data);
        let via_hex = decode_hex_to_json(&hex_text, &opts);
        assert_eq!(via_hex.is_ok(), structures > 0);
        if let Ok(v) = &via_hex {
            assert_eq!(v["frames"].as_array().map(Vec::len), Some(out.len()));
        }
        let line = decode_line_to_json(&hex_text.to_uppercase(), &opts);
        let parsed: serde_json::Value = serde_json::from_str(&line).expect("line mode writes JSON");
        if let Ok(v) = via_hex {
            assert_eq!(parsed, v, "line mode and decode_hex_to_json disagree");
        }

        // The raw bytes as a line of text: any string, hex or not.
        let text = String::from_utf8_lossy(data);
        let line = decode_line_to_json(&text, &opts);
        assert!(!line.contains('\n'), "line mode output spans lines");
        serde_json::from_str::<serde_json::Value>(&line).expect("line mode writes JSON");
    }
}

/// Valid adverts to start from: the published vectors and one of each kind.
pub const SEEDS: &[&str] = &[
    "0201061aff4c000215426c7565436861726d426561636f6e730efe1355c5",
    "02011a1bff1801beac2f234454cf6d4a0fadf2f4911ba9ffa600010002c50900",
    "0201060303aafe1716aafe00e3123456789012346789010000000000010000",
    "0303aafe1316aafe10f8036769746875620063697472757a",
    "0201060303aafe1116aafe20000b1813000000146700002ac4e4",
    "1116aafe200000008000000000000000000a",
    "0d16aafe30f60123456789abcdef",
    "02010615ffffff018be6cd371c5c891604bfbe49df845096c5",
];
