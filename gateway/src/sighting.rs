//! The sighting record (docs/design.md §7): what every source turns an advert into.
//!
//! Parsing is strict: every problem names the field and the reason, so a bad
//! UDP datagram or capture line is reported and dropped without touching state.

use std::fmt;

/// A Bluetooth device address. Its `Debug` does not print the bytes: a
/// stranger's address must never reach a log line by accident.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BdAddr(pub [u8; 6]);

impl BdAddr {
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let mut out = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut out {
            let part = parts
                .next()
                .ok_or("expected six hex pairs separated by ':'")?;
            if part.len() != 2 {
                return Err("expected six hex pairs separated by ':'");
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| "not hexadecimal")?;
        }
        if parts.next().is_some() {
            return Err("expected six hex pairs separated by ':'");
        }
        Ok(BdAddr(out))
    }
}

impl fmt::Display for BdAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for BdAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BdAddr(..)")
    }
}

/// One advert heard by one scanner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sighting {
    pub scanner: String,
    pub addr: BdAddr,
    pub rssi: i16,
    /// Advertising data: a sequence of AD structures.
    pub adv: Vec<u8>,
    /// Unix milliseconds.
    pub at_ms: i64,
}

/// Why a sighting record was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct SightingError {
    pub field: &'static str,
    pub reason: String,
}

impl SightingError {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        SightingError {
            field,
            reason: reason.into(),
        }
    }
}

const FIELDS: [&str; 5] = ["scanner", "addr", "rssi", "adv", "at_ms"];

/// The last Unix millisecond of the year 9999: a time field beyond it is a
/// broken clock or a typo, and arithmetic on it (ticks, windows) could
/// overflow.
pub const MAX_UNIX_MS: i64 = 253_402_300_799_999;

/// What a time field must be, for error messages.
pub const UNIX_MS_RULE: &str = "must be a non-negative integer (Unix ms) before the year 10000";

/// A JSON time field as Unix ms, if it is one [`UNIX_MS_RULE`] allows.
pub fn unix_ms(value: &serde_json::Value) -> Option<i64> {
    value.as_i64().filter(|t| (0..=MAX_UNIX_MS).contains(t))
}

/// Largest advertising payload we accept: extended advertising allows 1650
/// bytes; anything larger is not an advert.
pub const MAX_ADV_BYTES: usize = 1650;

impl Sighting {
    /// Parse one JSON record (one UDP datagram or one capture line).
    pub fn from_json(text: &str) -> Result<Self, SightingError> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| SightingError::new("record", format!("not valid JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| SightingError::new("record", "must be a JSON object"))?;
        if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(SightingError {
                field: "record",
                reason: format!("unknown field {unknown:?}"),
            });
        }
        let field = |name: &'static str| {
            obj.get(name)
                .ok_or_else(|| SightingError::new(name, "missing"))
        };
        let scanner = match field("scanner")? {
            serde_json::Value::String(s) if !s.is_empty() && s.len() <= 64 => s.clone(),
            serde_json::Value::String(_) => {
                return Err(SightingError::new("scanner", "must be 1 to 64 characters"));
            }
            _ => return Err(SightingError::new("scanner", "must be a string")),
        };
        let addr = match field("addr")? {
            serde_json::Value::String(s) => {
                BdAddr::parse(&s.to_ascii_lowercase()).map_err(|r| SightingError::new("addr", r))?
            }
            _ => {
                return Err(SightingError::new(
                    "addr",
                    "must be a string like \"aa:bb:cc:dd:ee:ff\"",
                ));
            }
        };
        let rssi = field("rssi")?
            .as_i64()
            .filter(|r| (-127..=20).contains(r))
            .ok_or_else(|| SightingError::new("rssi", "must be an integer in -127..=20 dBm"))?
            as i16;
        let adv = match field("adv")? {
            serde_json::Value::String(s) => {
                if s.len() > MAX_ADV_BYTES * 2 {
                    return Err(SightingError::new(
                        "adv",
                        format!("longer than {MAX_ADV_BYTES} bytes"),
                    ));
                }
                hex::decode(s).map_err(|e| SightingError::new("adv", format!("not hex: {e}")))?
            }
            _ => return Err(SightingError::new("adv", "must be a hex string")),
        };
        let at_ms =
            unix_ms(field("at_ms")?).ok_or_else(|| SightingError::new("at_ms", UNIX_MS_RULE))?;
        Ok(Sighting {
            scanner,
            addr,
            rssi,
            adv,
            at_ms,
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::json!({
            "scanner": self.scanner,
            "addr": self.addr.to_string(),
            "rssi": self.rssi,
            "adv": hex::encode(&self.adv),
            "at_ms": self.at_ms,
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"scanner": "entrance", "addr": "7f:ff:fe:7e:0e:08", "rssi": -63, "adv": "0201061aff4c00", "at_ms": 1795334400123}"#;

    #[test]
    fn parses_the_design_example_and_round_trips() {
        let s = Sighting::from_json(GOOD).unwrap();
        assert_eq!(s.scanner, "entrance");
        assert_eq!(s.addr.to_string(), "7f:ff:fe:7e:0e:08");
        assert_eq!(s.rssi, -63);
        assert_eq!(s.adv, vec![0x02, 0x01, 0x06, 0x1a, 0xff, 0x4c, 0x00]);
        assert_eq!(Sighting::from_json(&s.to_json()).unwrap(), s);
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (GOOD.replace("\"entrance\"", "7"), "scanner"),
            (GOOD.replace("7f:ff:fe:7e:0e:08", "7f:ff"), "addr"),
            (GOOD.replace("-63", "-300"), "rssi"),
            (GOOD.replace("0201061aff4c00", "zz"), "adv"),
            (GOOD.replace("1795334400123", "-1"), "at_ms"),
            (GOOD.replace("1795334400123", "253402300800000"), "at_ms"),
            (
                GOOD.replace("1795334400123", "9223372036854775807"),
                "at_ms",
            ),
            (GOOD.replace("\"rssi\": -63, ", ""), "rssi"),
            (GOOD.replace("}", ", \"extra\": 1}"), "record"),
            ("not json".to_string(), "record"),
        ];
        for (text, field) in cases {
            let err = Sighting::from_json(&text).unwrap_err();
            assert_eq!(err.field, field, "{text} -> {err}");
        }
    }

    #[test]
    fn addr_debug_hides_the_bytes() {
        let a = BdAddr::parse("7f:ff:fe:7e:0e:08").unwrap();
        assert!(!format!("{a:?}").contains("7f"));
    }
}
