//! The gateway's site file for a simulated store (`firmware-sim site`):
//! the zones and the scanners that hear them, the store's own beacons and
//! the presence settings that follow from the floor plan and the radio, so
//! that a capture of the twin is scored against the store it came from
//! (`gateway eval-presence --people-only` needs the beacons to leave them
//! out of the person-seconds).
//!
//! The hall distance is where the floor plan puts it: the farthest point of
//! any zone from its scanner (a straight line to the antenna, which hangs
//! above the phone), plus a fifth, because a phone at a zone's far corner
//! reads up to a few dB weaker than the model says (noise, a hand, a
//! pocket). On the shipped stores that gives 5.3 m for the small one (the
//! engine's default, tuned on it) and 9.3 m for the electronics store, where
//! the default 5.3 m would put most of each big zone in the hall
//! (`gateway/tests/presence_eval.rs` measures both).

use serde::Serialize;

use crate::spec::{BeaconFrame, OpeningHours, Point, StoreSpec};

/// Added to the farthest zone point to get the hall distance.
const HALL_MARGIN: f64 = 1.2;

#[derive(Serialize)]
struct Site<'a> {
    store: Store<'a>,
    mqtt: Mqtt,
    presence: Presence,
    zones: Vec<Zone<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    beacons: Vec<Beacon<'a>>,
}

#[derive(Serialize)]
struct Store<'a> {
    id: &'a str,
    timezone: String,
}

#[derive(Serialize)]
struct Mqtt {
    url: &'static str,
    prefix: &'static str,
}

#[derive(Serialize)]
struct Presence {
    path_loss_exponent: f64,
    hall_distance_m: f64,
    antenna_height_m: f64,
}

#[derive(Serialize)]
struct Zone<'a> {
    id: &'a str,
    scanners: [&'a str; 1],
    /// Where its scanner hangs, for the gain learned from the beacons.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    positions: std::collections::BTreeMap<&'a str, Point>,
}

/// A store beacon as the gateway's `[[beacons]]` lists it: the ids that
/// recognise it, without what only the twin needs (an AltBeacon's maker).
#[derive(Serialize)]
struct Beacon<'a> {
    id: &'a str,
    /// Where it is and how loud: what lets the gateway learn each
    /// scanner's gain from it (its `[[beacons]]` x, y, tx_power_1m).
    x: f64,
    y: f64,
    tx_power_1m: i8,
    #[serde(flatten)]
    ids: BeaconIds<'a>,
}

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum BeaconIds<'a> {
    Ibeacon {
        uuid: &'a str,
        major: u16,
        minor: u16,
    },
    EddystoneUid {
        namespace: &'a str,
        instance: &'a str,
    },
    Altbeacon {
        id1: &'a str,
        id2: u16,
        id3: u16,
    },
}

impl<'a> BeaconIds<'a> {
    fn of(frame: &'a BeaconFrame) -> Self {
        match frame {
            BeaconFrame::Ibeacon { uuid, major, minor } => BeaconIds::Ibeacon {
                uuid,
                major: *major,
                minor: *minor,
            },
            BeaconFrame::EddystoneUid {
                namespace,
                instance,
            } => BeaconIds::EddystoneUid {
                namespace,
                instance,
            },
            // The gateway recognises an AltBeacon by its ids, whoever made it.
            BeaconFrame::Altbeacon { id1, id2, id3, .. } => BeaconIds::Altbeacon {
                id1,
                id2: *id2,
                id3: *id3,
            },
        }
    }
}

/// The farthest any point of a zone lies from its own scanner's antenna,
/// in metres (0 for a store without zones).
pub fn farthest_zone_point_m(spec: &StoreSpec) -> f64 {
    let height = spec.radio.scanner_height_m - spec.radio.device_height_m;
    spec.zones
        .iter()
        .filter_map(|zone| {
            let scanner = spec.scanners.iter().find(|s| s.id == zone.scanner)?;
            let a = zone.area;
            let corners = [(a.x0, a.y0), (a.x0, a.y1), (a.x1, a.y0), (a.x1, a.y1)];
            corners
                .iter()
                .map(|&(x, y)| {
                    let flat = scanner.position.distance_to(Point { x, y });
                    flat.hypot(height)
                })
                .reduce(f64::max)
        })
        .fold(0.0, f64::max)
}

/// The hall distance the floor plan gives, rounded to 0.1 m.
pub fn hall_distance_m(spec: &StoreSpec) -> f64 {
    (farthest_zone_point_m(spec) * HALL_MARGIN * 10.0).round() / 10.0
}

/// The site file, as TOML text with a header saying where it came from.
pub fn site_toml(spec: &StoreSpec) -> String {
    let timezone = spec
        .hours
        .as_ref()
        .map_or_else(|| OpeningHours::default().timezone, |h| h.timezone.clone());
    let site = Site {
        store: Store {
            id: &spec.store.id,
            timezone,
        },
        mqtt: Mqtt {
            url: "mqtt://127.0.0.1:1883",
            prefix: "retail",
        },
        presence: Presence {
            path_loss_exponent: spec.radio.path_loss_exponent,
            hall_distance_m: hall_distance_m(spec),
            antenna_height_m: ((spec.radio.scanner_height_m - spec.radio.device_height_m) * 100.0)
                .round()
                / 100.0,
        },
        zones: spec
            .zones
            .iter()
            .map(|z| Zone {
                id: &z.id,
                scanners: [&z.scanner],
                positions: spec
                    .scanners
                    .iter()
                    .filter(|s| s.id == z.scanner)
                    .map(|s| (s.id.as_str(), s.position))
                    .collect(),
            })
            .collect(),
        beacons: spec
            .beacons
            .iter()
            .map(|b| Beacon {
                id: &b.id,
                x: b.position.x,
                y: b.position.y,
                tx_power_1m: b.tx_power_1m,
                ids: BeaconIds::of(&b.frame),
            })
            .collect(),
    };
    let body = toml::to_string(&site).expect("a site of strings and numbers serialises");
    format!(
        "# Gateway site file for the simulated store {:?}, written by `firmware-sim site`.\n\
         # Zones and beacons are the store file's. path_loss_exponent is its radio's;\n\
         # hall_distance_m is the farthest point of a zone from its scanner ({:.1} m)\n\
         # plus a fifth. Scanner and beacon positions let the gateway learn each\n\
         # scanner's gain from the beacons. Set [mqtt] and add [[sources]] and [[rules]] for a real run.\n\n{body}",
        spec.store.id,
        farthest_zone_point_m(spec),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_small_store_gets_its_zones_beacons_and_the_tuned_hall() {
        let spec = StoreSpec::small_store();
        // Laptops and headphones: 6 x 6 m with the scanner 3 m from the
        // near edges and 1.3 m above the phone; the far corners are
        // sqrt(3^2 + 3^2 + 1.3^2) = 4.44 m away.
        assert!((farthest_zone_point_m(&spec) - 4.44).abs() < 0.01);
        assert_eq!(hall_distance_m(&spec), 5.3);
        let text = site_toml(&spec);
        let site: toml::Table = text.parse().expect("valid TOML");
        assert_eq!(site["store"]["id"].as_str(), Some("store-042"));
        assert_eq!(site["store"]["timezone"].as_str(), Some("Europe/Berlin"));
        assert_eq!(site["presence"]["hall_distance_m"].as_float(), Some(5.3));
        assert_eq!(site["presence"]["path_loss_exponent"].as_float(), Some(2.2));
        let zones = site["zones"].as_array().unwrap();
        assert_eq!(zones.len(), 3);
        assert_eq!(zones[1]["id"].as_str(), Some("laptops"));
        assert_eq!(zones[1]["scanners"][0].as_str(), Some("laptops"));
        let beacons = site["beacons"].as_array().unwrap();
        let kinds: Vec<&str> = beacons
            .iter()
            .map(|b| b["kind"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            [
                "ibeacon",
                "ibeacon",
                "ibeacon",
                "eddystone_uid",
                "altbeacon"
            ]
        );
        assert_eq!(beacons[0]["minor"].as_integer(), Some(1));
        assert_eq!(beacons[3]["instance"].as_str(), Some("000000000001"));
        assert_eq!(beacons[4]["id3"].as_integer(), Some(100));
        assert!(beacons[4].get("manufacturer").is_none());
    }

    #[test]
    fn a_zone_far_from_its_scanner_moves_the_hall_out() {
        let mut spec = StoreSpec::small_store();
        spec.zones[1].area.x1 = 20.0;
        assert!(farthest_zone_point_m(&spec) > 9.0);
        assert!(hall_distance_m(&spec) > 10.8);
    }
}
