//! Health of the store's own beacons, for the retained `<p>/<s>/ops/beacons`
//! topic (docs/design.md §6): battery, temperature, last seen, missing.
//!
//! Pure: [`Fleet::observe`] takes the decoded frames of one sighting and its
//! time; [`Fleet::report`] takes `now_ms`. A beacon is recognised by its
//! identity frame (iBeacon, Eddystone-UID, AltBeacon). Eddystone-TLM carries
//! no identity: it is associated with a beacon by the address that beacon's
//! identity frames were last heard from (beacons interleave UID and TLM from
//! one address). Only the store's beacons are tracked; nothing is kept about
//! any other device.

pub use crate::config::{BeaconKind, FleetBeacon};
use crate::decode::{Frame, uuid_string};
use crate::sighting::BdAddr;

impl BeaconKind {
    fn matches(&self, frame: &Frame) -> bool {
        match (self, frame) {
            (
                BeaconKind::IBeacon { uuid, major, minor },
                Frame::IBeacon {
                    uuid: u,
                    major: ma,
                    minor: mi,
                    ..
                },
            ) => uuid == u && major == ma && minor == mi,
            (
                BeaconKind::EddystoneUid {
                    namespace,
                    instance,
                },
                Frame::EddystoneUid {
                    namespace: n,
                    instance: i,
                    ..
                },
            ) => namespace == n && instance == i,
            (
                BeaconKind::AltBeacon { id1, id2, id3 },
                Frame::AltBeacon {
                    id1: a,
                    id2: b,
                    id3: c,
                    ..
                },
            ) => id1 == a && id2 == b && id3 == c,
            _ => false,
        }
    }

    fn describe(&self) -> serde_json::Value {
        match self {
            BeaconKind::IBeacon { uuid, major, minor } => serde_json::json!({
                "kind": "ibeacon", "uuid": uuid_string(uuid), "major": major, "minor": minor,
            }),
            BeaconKind::EddystoneUid {
                namespace,
                instance,
            } => serde_json::json!({
                "kind": "eddystone_uid",
                "namespace": hex::encode(namespace),
                "instance": hex::encode(instance),
            }),
            BeaconKind::AltBeacon { id1, id2, id3 } => serde_json::json!({
                "kind": "altbeacon", "id1": uuid_string(id1), "id2": id2, "id3": id3,
            }),
        }
    }
}

#[derive(Clone, Debug, Default)]
struct BeaconState {
    last_seen_ms: Option<i64>,
    rssi: Option<i16>,
    /// Where its identity frames were last heard from.
    addr: Option<BdAddr>,
    battery_mv: Option<u16>,
    temperature_c: Option<f64>,
    telemetry_at_ms: Option<i64>,
}

/// The store's beacons and what was last heard from each.
#[derive(Clone, Debug)]
pub struct Fleet {
    beacons: Vec<FleetBeacon>,
    state: Vec<BeaconState>,
}

impl Fleet {
    pub fn new(beacons: Vec<FleetBeacon>) -> Self {
        let state = vec![BeaconState::default(); beacons.len()];
        Fleet { beacons, state }
    }

    pub fn beacons(&self) -> &[FleetBeacon] {
        &self.beacons
    }

    /// Whether any frame is the identity of one of the store's beacons (for
    /// example to decide what `--record` may write).
    pub fn knows(&self, frames: &[Frame]) -> bool {
        frames
            .iter()
            .any(|f| self.beacons.iter().any(|b| b.kind.matches(f)))
    }

    /// The index (in the configured list) of the beacon one of these frames
    /// identifies, if any: what `presence::gain` learns a scanner's gain from.
    pub fn identify(&self, frames: &[Frame]) -> Option<usize> {
        frames
            .iter()
            .find_map(|f| self.beacons.iter().position(|b| b.kind.matches(f)))
    }

    /// Whether `addr` is where one of the store's beacons was last heard.
    pub fn knows_addr(&self, addr: &BdAddr) -> bool {
        self.state.iter().any(|s| s.addr.as_ref() == Some(addr))
    }

    /// Take one sighting's decoded frames into account. Identity frames
    /// first, so a TLM in the same advert finds its beacon. A sighting
    /// older than what is known does not move `last_seen` back.
    pub fn observe(&mut self, frames: &[Frame], addr: BdAddr, rssi: i16, at_ms: i64) {
        for frame in frames {
            for (beacon, state) in self.beacons.iter().zip(self.state.iter_mut()) {
                if beacon.kind.matches(frame) && state.last_seen_ms.is_none_or(|t| at_ms >= t) {
                    state.last_seen_ms = Some(at_ms);
                    state.rssi = Some(rssi);
                    state.addr = Some(addr);
                }
            }
        }
        for frame in frames {
            let Frame::EddystoneTlm {
                battery_mv,
                temperature_c,
                ..
            } = frame
            else {
                continue;
            };
            for state in &mut self.state {
                if state.addr == Some(addr) && state.telemetry_at_ms.is_none_or(|t| at_ms >= t) {
                    // 0 mV means "not supported" in Eddystone-TLM.
                    state.battery_mv = (*battery_mv != 0).then_some(*battery_mv);
                    state.temperature_c = *temperature_c;
                    state.telemetry_at_ms = Some(at_ms);
                }
            }
        }
    }

    /// The `<p>/<s>/ops/beacons` payload.
    pub fn report(&self, now_ms: i64) -> serde_json::Value {
        let beacons: Vec<serde_json::Value> = self
            .beacons
            .iter()
            .zip(&self.state)
            .map(|(b, s)| {
                let missing = s.last_seen_ms.is_none_or(|t| {
                    now_ms.saturating_sub(t)
                        > i64::try_from(b.missing_after_s.saturating_mul(1000)).unwrap_or(i64::MAX)
                });
                let low = matches!(
                    (s.battery_mv, b.low_battery_mv),
                    (Some(mv), Some(limit)) if mv < limit
                );
                let status = if missing {
                    "missing"
                } else if low {
                    "low_battery"
                } else {
                    "ok"
                };
                serde_json::json!({
                    "id": b.id,
                    "beacon": b.kind.describe(),
                    "status": status,
                    "battery_mv": s.battery_mv,
                    "temperature_c": s.temperature_c,
                    "last_seen": s.last_seen_ms.and_then(rfc3339),
                    "rssi": s.rssi,
                })
            })
            .collect();
        serde_json::json!({
            "generated_at": rfc3339(now_ms),
            "beacons": beacons,
        })
    }
}

fn rfc3339(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: [u8; 10] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
    const INST: [u8; 6] = [10, 11, 12, 13, 14, 15];
    const UUID: [u8; 16] = [0xE2; 16];
    const T0: i64 = 1_795_334_400_000;

    fn addr(last: u8) -> BdAddr {
        BdAddr([0xC0, 0, 0, 0, 0, last])
    }

    fn uid() -> Frame {
        Frame::EddystoneUid {
            namespace: NS,
            instance: INST,
            tx_power: -20,
        }
    }

    fn tlm(mv: u16, temp: Option<f64>) -> Frame {
        Frame::EddystoneTlm {
            version: 0,
            battery_mv: mv,
            temperature_c: temp,
            adv_count: 1,
            uptime_s: 1.0,
        }
    }

    fn fleet() -> Fleet {
        Fleet::new(vec![
            FleetBeacon {
                id: "door".into(),
                kind: BeaconKind::EddystoneUid {
                    namespace: NS,
                    instance: INST,
                },
                low_battery_mv: Some(2500),
                missing_after_s: 60,
                espresense_id: None,
            },
            FleetBeacon {
                id: "till".into(),
                kind: BeaconKind::IBeacon {
                    uuid: UUID,
                    major: 1,
                    minor: 2,
                },
                low_battery_mv: None,
                missing_after_s: 120,
                espresense_id: None,
            },
        ])
    }

    fn status(report: &serde_json::Value, i: usize) -> &str {
        report["beacons"][i]["status"].as_str().unwrap()
    }

    #[test]
    fn never_seen_is_missing() {
        let r = fleet().report(T0);
        assert_eq!(status(&r, 0), "missing");
        assert_eq!(status(&r, 1), "missing");
        assert!(r["beacons"][0]["last_seen"].is_null());
        assert_eq!(r["generated_at"], "2026-11-22T08:00:00.000Z");
    }

    #[test]
    fn tlm_is_associated_by_address_and_drives_the_status() {
        let mut f = fleet();
        // A TLM before its beacon's UID was heard belongs to no one.
        f.observe(&[tlm(3000, Some(21.5))], addr(1), -60, T0);
        assert!(f.report(T0)["beacons"][0]["battery_mv"].is_null());
        f.observe(&[uid()], addr(1), -61, T0 + 1000);
        f.observe(&[tlm(3000, Some(21.5))], addr(1), -60, T0 + 2000);
        // A TLM from another address is someone else's.
        f.observe(&[tlm(1900, None)], addr(9), -60, T0 + 2500);
        let r = f.report(T0 + 3000);
        let door = &r["beacons"][0];
        assert_eq!(door["status"], "ok");
        assert_eq!(door["battery_mv"], 3000);
        assert_eq!(door["temperature_c"], 21.5);
        assert_eq!(door["last_seen"], "2026-11-22T08:00:01.000Z");
        assert_eq!(door["beacon"]["kind"], "eddystone_uid");
        assert_eq!(door["beacon"]["namespace"], "00010203040506070809");

        // Battery drops; UID and TLM in one advert also works.
        f.observe(&[tlm(2400, Some(20.0)), uid()], addr(1), -62, T0 + 10_000);
        let r = f.report(T0 + 10_000);
        assert_eq!(status(&r, 0), "low_battery");
        assert_eq!(r["beacons"][0]["battery_mv"], 2400);

        // Silent past missing_after_s: missing wins over low battery.
        assert_eq!(status(&f.report(T0 + 10_000 + 60_000), 0), "low_battery");
        assert_eq!(status(&f.report(T0 + 10_000 + 60_001), 0), "missing");
    }

    #[test]
    fn ibeacon_last_seen_never_moves_back_and_unknown_frames_are_ignored() {
        let mut f = fleet();
        let ib = |minor| Frame::IBeacon {
            uuid: UUID,
            major: 1,
            minor,
            measured_power: -59,
        };
        assert!(f.knows(&[ib(2)]));
        assert!(!f.knows(&[ib(3)]));
        f.observe(&[ib(3)], addr(2), -50, T0);
        assert_eq!(status(&f.report(T0), 1), "missing");
        f.observe(&[ib(2)], addr(2), -50, T0 + 5000);
        f.observe(&[ib(2)], addr(2), -70, T0 + 1000);
        let r = f.report(T0 + 6000);
        assert_eq!(status(&r, 1), "ok");
        assert_eq!(r["beacons"][1]["rssi"], -50);
        assert_eq!(r["beacons"][1]["last_seen"], "2026-11-22T08:00:05.000Z");
        assert!(r["beacons"][1]["battery_mv"].is_null());
        assert!(f.knows_addr(&addr(2)));
        assert!(!f.knows_addr(&addr(7)));
    }
}
