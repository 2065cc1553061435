//! Who walks into the store: opted-in shoppers (whose keys the back office
//! knows) and strangers (whose devices must never be recognised).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::adverts::DEFAULT_APP_COMPANY_ID;
use crate::spec::StoreSpec;

/// The phone a shopper carries. Only Android advertises the app token;
/// iOS apps check in over MQTT instead, so their phone looks like any
/// other iPhone on the radio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    Android,
    Ios,
}

/// Consent purposes of docs/design.md §5. Anything not given is no.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    pub proximity: bool,
    pub product_info: bool,
    pub offers: bool,
    pub thanks: bool,
    pub feedback: bool,
}

impl Consent {
    /// Everything except offers: the typical "help me, don't sell to me".
    pub fn helpful() -> Self {
        Self {
            proximity: true,
            product_info: true,
            offers: false,
            thanks: true,
            feedback: true,
        }
    }
}

/// One stop on a walk through the store. `zone` is a zone id of the store
/// spec or [`crate::HALL_ZONE`] for somewhere on the open floor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stop {
    pub zone: String,
    pub dwell_s: u32,
}

impl Stop {
    pub fn new(zone: &str, dwell_s: u32) -> Self {
        Self {
            zone: zone.to_owned(),
            dwell_s,
        }
    }
}

/// An opted-in customer with the app.
#[derive(Debug, Clone, PartialEq)]
pub struct Shopper {
    /// CRM person id, e.g. `p-1001`.
    pub person: String,
    /// Recipient pseudonym used in delivery topics, e.g. `r-1001`.
    pub recipient: String,
    /// The app install's secret key, shared with the back office.
    pub key: [u8; 16],
    pub interests: Vec<String>,
    pub owns: Vec<String>,
    pub consent: Consent,
    /// Walked in order from the door; after the last stop the shopper walks
    /// back out through the door.
    pub path: Vec<Stop>,
    /// Seconds after the simulation start when the shopper comes in.
    pub arrive_at_s: u32,
    pub platform: Platform,
    pub walk_speed_mps: f64,
    /// Later visits (the first is `arrive_at_s` + `path`), each walked from
    /// the door and back out like the first.
    pub return_visits: Vec<Visit>,
}

/// One more visit of a returning shopper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Visit {
    /// Seconds after the simulation start.
    pub arrive_at_s: u32,
    pub path: Vec<Stop>,
}

impl Shopper {
    /// A shopper numbered `number` (person `p-<number>`, recipient
    /// `r-<number>`), Android, helpful consent, key derived from `seed`,
    /// no interests and an empty path. Adjust the public fields as needed.
    pub fn new(number: u32, seed: u64) -> Self {
        let person = format!("p-{number}");
        Self {
            key: derive_app_key(seed, &person),
            recipient: format!("r-{number}"),
            person,
            interests: Vec::new(),
            owns: Vec::new(),
            consent: Consent::helpful(),
            path: Vec::new(),
            arrive_at_s: 0,
            platform: Platform::Android,
            walk_speed_mps: 1.0,
            return_visits: Vec::new(),
        }
    }

    /// Add a later visit.
    pub fn returning_at(mut self, arrive_at_s: u32, path: Vec<Stop>) -> Self {
        self.return_visits.push(Visit { arrive_at_s, path });
        self
    }

    /// Every visit, first one first: `(arrive_at_s, path)`.
    pub fn visits(&self) -> impl Iterator<Item = (u32, &[Stop])> {
        std::iter::once((self.arrive_at_s, self.path.as_slice())).chain(
            self.return_visits
                .iter()
                .map(|v| (v.arrive_at_s, v.path.as_slice())),
        )
    }

    pub fn with_interests(mut self, interests: &[&str]) -> Self {
        self.interests = interests.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    pub fn with_consent(mut self, consent: Consent) -> Self {
        self.consent = consent;
        self
    }

    pub fn with_path(mut self, path: Vec<Stop>) -> Self {
        self.path = path;
        self
    }

    pub fn arriving_at(mut self, arrive_at_s: u32) -> Self {
        self.arrive_at_s = arrive_at_s;
        self
    }

    pub fn on(mut self, platform: Platform) -> Self {
        self.platform = platform;
        self
    }

    /// The person record the CRM would publish for this shopper (docs/design.md §5).
    pub fn person_record(&self) -> PersonRecord {
        PersonRecord {
            person: self.person.clone(),
            recipient: self.recipient.clone(),
            timezone: None,
            identities: vec![Identity {
                kind: "app".to_owned(),
                key: hex::encode(self.key),
            }],
            consent: self.consent,
            interests: self.interests.clone(),
            owns: self.owns.clone(),
        }
    }
}

/// Deterministic 16-byte app key for a person under a seed.
pub fn derive_app_key(seed: u64, person: &str) -> [u8; 16] {
    let digest = Sha256::new()
        .chain_update(b"firmware-sim/app-key/")
        .chain_update(seed.to_le_bytes())
        .chain_update(person.as_bytes())
        .finalize();
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// A person record, exactly the shape of docs/design.md §5 (fields in that order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonRecord {
    pub person: String,
    pub recipient: String,
    pub timezone: Option<String>,
    pub identities: Vec<Identity>,
    pub consent: Consent,
    pub interests: Vec<String>,
    pub owns: Vec<String>,
}

/// An app identity: `{"kind": "app", "key": "<32 hex>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub kind: String,
    pub key: String,
}

/// What a stranger's device sends. None of it may ever be recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrangerDevice {
    /// An iPhone's continuity "nearby info" chatter.
    AppleNearby,
    /// An AirTag-like Find My advert (random-looking key bytes).
    AppleFindMy,
    /// A fitness band.
    Wearable,
    /// Another company's iBeacon carried around (a parcel tag).
    ForeignIbeacon,
    /// Our own app, installed but never enrolled: a valid-looking app token
    /// whose key the gateway does not know.
    UnenrolledApp,
}

/// Someone who did not opt in, walking the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Stranger {
    pub device: StrangerDevice,
    pub path: Vec<Stop>,
    pub arrive_at_s: u32,
    pub walk_speed_mps: f64,
}

impl Stranger {
    pub fn new(device: StrangerDevice, arrive_at_s: u32, path: Vec<Stop>) -> Self {
        Self {
            device,
            path,
            arrive_at_s,
            walk_speed_mps: 0.9,
        }
    }
}

/// Everyone who visits during a simulation.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Seed the scenario's keys were derived from (kept for reference).
    pub seed: u64,
    /// Company id in the app token's manufacturer data.
    pub app_company_id: u16,
    pub shoppers: Vec<Shopper>,
    pub strangers: Vec<Stranger>,
}

impl Scenario {
    /// An empty scenario: add people with the `with_*` methods.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            app_company_id: DEFAULT_APP_COMPANY_ID,
            shoppers: Vec::new(),
            strangers: Vec::new(),
        }
    }

    /// Only these shoppers, no strangers.
    pub fn with_shoppers(seed: u64, shoppers: Vec<Shopper>) -> Self {
        Self {
            shoppers,
            ..Self::new(seed)
        }
    }

    pub fn with_shopper(mut self, shopper: Shopper) -> Self {
        self.shoppers.push(shopper);
        self
    }

    pub fn with_stranger(mut self, stranger: Stranger) -> Self {
        self.strangers.push(stranger);
        self
    }

    /// The demo for the small store, all within five minutes:
    ///
    /// - `p-1001`: interest laptops, consent to product info; entrance →
    ///   laptops (60 s) → headphones (30 s) → leaves. Should get a nudge.
    /// - `p-1002`: interest laptops but no product-info consent; entrance →
    ///   laptops (90 s) → leaves. Must not get a product nudge.
    /// - `p-1003`: interest headphones; entrance → headphones (45 s) →
    ///   laptops (20 s) → leaves.
    /// - `p-1004`: an iOS shopper (no app token on the radio).
    /// - strangers with iPhones, an AirTag, a fitness band, a parcel
    ///   iBeacon and an unenrolled app install.
    pub fn small_demo(seed: u64) -> Self {
        let walk = |stops: &[(&str, u32)]| -> Vec<Stop> {
            stops.iter().map(|(z, d)| Stop::new(z, *d)).collect()
        };
        let helpful_but_no_info = Consent {
            product_info: false,
            ..Consent::helpful()
        };
        Self::new(seed)
            .with_shopper(
                Shopper::new(1001, seed)
                    .with_interests(&["laptops", "headphones"])
                    .with_path(walk(&[
                        ("entrance", 5),
                        ("laptops", 60),
                        ("headphones", 30),
                    ]))
                    .arriving_at(10),
            )
            .with_shopper(
                Shopper::new(1002, seed)
                    .with_interests(&["laptops"])
                    .with_consent(helpful_but_no_info)
                    .with_path(walk(&[("entrance", 5), ("laptops", 90)]))
                    .arriving_at(40),
            )
            .with_shopper(
                Shopper::new(1003, seed)
                    .with_interests(&["headphones"])
                    .with_consent(Consent {
                        offers: true,
                        ..Consent::helpful()
                    })
                    .with_path(walk(&[
                        ("entrance", 5),
                        ("headphones", 45),
                        ("laptops", 20),
                    ]))
                    .arriving_at(120),
            )
            .with_shopper(
                Shopper::new(1004, seed)
                    .with_interests(&["laptops"])
                    .with_path(walk(&[("entrance", 5), ("laptops", 40)]))
                    .arriving_at(60)
                    .on(Platform::Ios),
            )
            .with_stranger(Stranger::new(
                StrangerDevice::AppleNearby,
                0,
                walk(&[("entrance", 10), ("laptops", 120), ("hall", 30)]),
            ))
            .with_stranger(Stranger::new(
                StrangerDevice::AppleNearby,
                30,
                walk(&[("headphones", 200)]),
            ))
            .with_stranger(Stranger::new(
                StrangerDevice::AppleFindMy,
                15,
                walk(&[("laptops", 70), ("headphones", 70)]),
            ))
            // A member of staff with a fitness band, on the floor all along.
            .with_stranger(Stranger::new(
                StrangerDevice::Wearable,
                0,
                walk(&[("hall", 900), ("laptops", 900)]),
            ))
            .with_stranger(Stranger::new(
                StrangerDevice::ForeignIbeacon,
                50,
                walk(&[("entrance", 60), ("hall", 60)]),
            ))
            .with_stranger(Stranger::new(
                StrangerDevice::UnenrolledApp,
                20,
                walk(&[("laptops", 100), ("headphones", 40)]),
            ))
    }

    /// A generic scenario for any store: `shoppers` opted-in shoppers
    /// (every third on iOS) and twice as many strangers, each walking
    /// through three of the store's zones, arriving over the first ten
    /// minutes. Deterministic in the seed.
    pub fn tour(spec: &StoreSpec, seed: u64, shoppers: u32) -> Self {
        let mut rng = ChaCha8Rng::from_seed(scenario_seed(seed, "tour"));
        let zones: Vec<&str> = spec.zones.iter().map(|z| z.id.as_str()).collect();
        let mut scenario = Self::new(seed);
        for n in 0..shoppers {
            let shopper = Shopper::new(2001 + n, seed)
                .with_interests(
                    &zones
                        .get((n as usize + 1) % zones.len().max(1))
                        .map_or(Vec::new(), |z| vec![*z]),
                )
                .with_path(random_path(&zones, &mut rng))
                .arriving_at(rng.gen_range(0..600))
                .on(if n % 3 == 2 {
                    Platform::Ios
                } else {
                    Platform::Android
                });
            scenario.shoppers.push(shopper);
        }
        for n in 0..shoppers * 2 {
            let device = STRANGER_KINDS[n as usize % STRANGER_KINDS.len()];
            let path = random_path(&zones, &mut rng);
            scenario
                .strangers
                .push(Stranger::new(device, rng.gen_range(0..600), path));
        }
        scenario
    }

    /// Returning shoppers over `days` days in the small store (see
    /// [`Scenario::returning_for`]).
    pub fn returning(seed: u64, days: u32) -> Self {
        Self::returning_for(&StoreSpec::small_store(), seed, days)
    }

    /// Eight opted-in shoppers who come back: each visits on two or more of
    /// the `days` days (all of them if `days` < 2), at most once a day, plus
    /// a few strangers every day. Visit times assume the simulation starts
    /// when the store opens on the first day (the CLI's `--days` does that):
    /// day `d` starts `d * 24 h` later, and every visit lies between half an
    /// hour after opening and an hour and a half before closing, so DST
    /// shifts of an hour still fall inside opening hours. Deterministic in
    /// the seed.
    pub fn returning_for(spec: &StoreSpec, seed: u64, days: u32) -> Self {
        let mut rng = ChaCha8Rng::from_seed(scenario_seed(seed, "returning"));
        let zones: Vec<&str> = spec.zones.iter().map(|z| z.id.as_str()).collect();
        let open_s: u32 = spec
            .hours
            .as_ref()
            .and_then(|h| crate::hours::Hours::new(h).ok())
            .and_then(|h| {
                let date = chrono::NaiveDate::from_ymd_opt(2026, 1, 15)?;
                let (a, b) = h.open_span(date);
                u32::try_from((b - a) / 1000).ok()
            })
            .unwrap_or(11 * 3600);
        // Earliest and latest arrival after opening.
        let (lo, hi) = (1800, open_s.saturating_sub(5400).max(1801));
        let days = days.max(1);
        let mut scenario = Self::new(seed);
        for n in 0..8u32 {
            let mut visit_days: Vec<u32> = (0..days).collect();
            visit_days.shuffle(&mut rng);
            let count = if days < 2 {
                days
            } else {
                rng.gen_range(2..=days)
            };
            let mut visit_days: Vec<u32> = visit_days.into_iter().take(count as usize).collect();
            visit_days.sort_unstable();
            let mut shopper = Shopper::new(3001 + n, seed)
                .with_interests(&[zones[n as usize % zones.len().max(1)]])
                .on(if n % 4 == 3 {
                    Platform::Ios
                } else {
                    Platform::Android
                });
            for (i, day) in visit_days.into_iter().enumerate() {
                let at = day * 86_400 + rng.gen_range(lo..hi);
                let path = random_path(&zones, &mut rng);
                shopper = if i == 0 {
                    shopper.with_path(path).arriving_at(at)
                } else {
                    shopper.returning_at(at, path)
                };
            }
            scenario.shoppers.push(shopper);
        }
        for day in 0..days {
            for n in 0..4usize {
                let device = STRANGER_KINDS[(n + day as usize) % STRANGER_KINDS.len()];
                let at = day * 86_400 + rng.gen_range(lo..hi);
                let path = random_path(&zones, &mut rng);
                scenario.strangers.push(Stranger::new(device, at, path));
            }
        }
        scenario
    }

    /// The opted-in shoppers as person records.
    pub fn people(&self) -> Vec<PersonRecord> {
        self.shoppers.iter().map(Shopper::person_record).collect()
    }

    /// The person records as JSON Lines (one object a line, trailing newline),
    /// ready for `gateway people import`.
    pub fn people_jsonl(&self) -> String {
        let mut out = String::new();
        for record in self.people() {
            // Serialising plain strings, bools and vectors cannot fail.
            if let Ok(line) = serde_json::to_string(&record) {
                out.push_str(&line);
                out.push('\n');
            }
        }
        out
    }
}

const STRANGER_KINDS: [StrangerDevice; 5] = [
    StrangerDevice::AppleNearby,
    StrangerDevice::AppleFindMy,
    StrangerDevice::Wearable,
    StrangerDevice::ForeignIbeacon,
    StrangerDevice::UnenrolledApp,
];

fn scenario_seed(seed: u64, purpose: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"firmware-sim/scenario/")
        .chain_update(purpose.as_bytes())
        .chain_update(seed.to_le_bytes())
        .finalize()
        .into()
}

/// Entrance-like first zone, then two random zones, dwelling 20–120 s.
fn random_path(zones: &[&str], rng: &mut ChaCha8Rng) -> Vec<Stop> {
    if zones.is_empty() {
        return vec![Stop::new(crate::HALL_ZONE, 30)];
    }
    let mut path = vec![Stop::new(zones[0], rng.gen_range(3..10))];
    for _ in 0..2 {
        let zone = zones[rng.gen_range(0..zones.len())];
        path.push(Stop::new(zone, rng.gen_range(20..=120)));
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_seed_and_person() {
        assert_eq!(derive_app_key(7, "p-1"), derive_app_key(7, "p-1"));
        assert_ne!(derive_app_key(7, "p-1"), derive_app_key(8, "p-1"));
        assert_ne!(derive_app_key(7, "p-1"), derive_app_key(7, "p-2"));
    }
}
