//! The simulation: devices advertising on their own schedules, scanners
//! hearing them through the radio model, in simulated time.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::HALL_ZONE;
use crate::adverts;
use crate::checkin::{
    CHECKIN_MAX_BEACONS, CHECKIN_MIN_GAP_MS, CheckIn, CheckInRecord, HeardBeacon,
};
use crate::hours::Hours;
use crate::radio::{Link, Radio, mean_rssi, standard_normal};
use crate::rotating::{INTERVAL_MS, RotatingKey, interval_of_unix_ms};
use crate::route::Route;
use crate::scenario::{Platform, Scenario, Shopper, Stop, StrangerDevice};
use crate::spec::{BeaconFrame, Point, StoreSpec, TlmSpec};

/// Keep at most this many check-ins nobody collected (callers that only
/// use [`Simulation::next_batch`] never collect them).
const MAX_PENDING_CHECKINS: usize = 100_000;

const DAY_MS: f64 = 86_400_000.0;

/// Calibrated TX power at 1 m that the app writes into its token.
pub const APP_TX_POWER_1M: i8 = -59;

/// iPhones and junk devices change their random address about every 15 min.
const JUNK_ROTATION_MS: i64 = 15 * 60 * 1000;

/// One advert heard by one scanner (docs/design.md §7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SightingRecord {
    pub scanner: String,
    /// `aa:bb:cc:dd:ee:ff`, lowercase.
    pub addr: String,
    pub rssi: i16,
    /// Advertising data (AD structures), lowercase hex.
    pub adv: String,
    /// Unix milliseconds.
    pub at_ms: i64,
}

/// Where an advertiser address really was (docs/design.md §8 truth format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroundTruth {
    pub addr: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub zone: String,
}

/// Where a shopper really was, with the address their phone used then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonTruth {
    pub addr: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub zone: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{who}: path stop {index} names unknown zone {zone:?}")]
    UnknownZone {
        who: String,
        index: usize,
        zone: String,
    },
    #[error("scenario: person {0:?} appears twice")]
    DuplicatePerson(String),
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
}

/// How a device's address and advert change over time.
#[derive(Debug, Clone)]
enum Advertiser {
    /// A store beacon or a tag: same address and bytes forever.
    Fixed { addr: String, adv: String },
    /// A phone: new random address (and for the app, new rotating id) at
    /// every epoch boundary.
    Rotating {
        period_ms: i64,
        phase_ms: i64,
        content: RotatingContent,
    },
}

#[derive(Debug, Clone)]
enum RotatingContent {
    AppToken {
        // Boxed: the AES key schedule is large and devices are mostly junk.
        key: Box<RotatingKey>,
        company_id: u16,
    },
    Junk(StrangerDevice),
}

#[derive(Debug, Clone)]
struct Device {
    /// Mixed into per-epoch randomness so devices differ.
    salt: [u8; 32],
    person: Option<String>,
    route: Route,
    interval_ms: u32,
    /// Radiated power at 1 m (phones differ from their calibration).
    tx_power_1m: f64,
    advertiser: Advertiser,
    /// Address and advert hex of the epoch last used.
    current: Option<(i64, String, String)>,
    /// Store beacons with telemetry interleave TLM frames.
    tlm: Option<TlmState>,
    /// iOS shoppers check in over MQTT.
    checkin: Option<CheckinState>,
}

#[derive(Debug, Clone)]
struct TlmState {
    spec: TlmSpec,
    /// When the beacon was powered on (Unix ms).
    boot_ms: i64,
}

impl TlmState {
    /// Adverts sent since power-on: elapsed time over the mean advertising
    /// period (the interval plus BLE's mean 5 ms random delay).
    fn adv_count(&self, at_ms: i64, interval_ms: u32) -> u32 {
        let period = i64::from(interval_ms) + 5;
        u32::try_from((at_ms - self.boot_ms).max(0) / period).unwrap_or(u32::MAX)
    }

    fn advert(&self, at_ms: i64, interval_ms: u32) -> Vec<u8> {
        let elapsed = (at_ms - self.boot_ms).max(0);
        let days = elapsed as f64 / DAY_MS;
        adverts::eddystone_tlm_advert(
            self.spec.battery_mv(days),
            self.spec.temperature_c,
            self.adv_count(at_ms, interval_ms),
            u32::try_from(elapsed / 100).unwrap_or(u32::MAX),
        )
    }
}

#[derive(Debug, Clone)]
struct CheckinState {
    key: Box<RotatingKey>,
    recipient: String,
    last_ms: Option<i64>,
}

/// A store iBeacon as an iOS phone hears it.
#[derive(Debug, Clone)]
struct StoreIbeacon {
    position: Point,
    tx_power_1m: f64,
    uuid: String,
    major: u16,
    minor: u16,
}

impl Device {
    fn epoch_of(&self, t_ms: i64) -> i64 {
        match &self.advertiser {
            Advertiser::Fixed { .. } => 0,
            Advertiser::Rotating {
                period_ms,
                phase_ms,
                ..
            } => (t_ms - phase_ms).div_euclid(*period_ms),
        }
    }

    fn epoch_rng(&self, epoch: i64) -> ChaCha8Rng {
        let digest = Sha256::new()
            .chain_update(self.salt)
            .chain_update(epoch.to_le_bytes())
            .finalize();
        ChaCha8Rng::from_seed(digest.into())
    }

    /// Address and advert bytes in `epoch`.
    fn identity(&self, epoch: i64) -> (String, String) {
        match &self.advertiser {
            Advertiser::Fixed { addr, adv } => (addr.clone(), adv.clone()),
            Advertiser::Rotating { content, .. } => {
                let mut rng = self.epoch_rng(epoch);
                let addr = adverts::format_addr(&adverts::random_private_addr(&mut rng));
                let adv = match content {
                    RotatingContent::AppToken { key, company_id } => {
                        // Epochs of the app are exactly rotation intervals.
                        let interval = u32::try_from(epoch.max(0)).unwrap_or(u32::MAX);
                        adverts::app_token_advert(
                            *company_id,
                            &key.identifier(interval),
                            APP_TX_POWER_1M,
                        )
                    }
                    RotatingContent::Junk(kind) => junk_advert(*kind, &mut rng),
                };
                (addr, hex::encode(adv))
            }
        }
    }

    fn addr_in_epoch(&self, epoch: i64) -> String {
        match &self.advertiser {
            Advertiser::Fixed { addr, .. } => addr.clone(),
            Advertiser::Rotating { .. } => {
                adverts::format_addr(&adverts::random_private_addr(&mut self.epoch_rng(epoch)))
            }
        }
    }

    /// `[from, to)` split where the address changes, with the address.
    fn addr_spans(&self, from: i64, to: i64) -> Vec<(i64, i64, String)> {
        let mut out = Vec::new();
        let mut t = from;
        while t < to {
            let epoch = self.epoch_of(t);
            let end = match &self.advertiser {
                Advertiser::Fixed { .. } => to,
                Advertiser::Rotating {
                    period_ms,
                    phase_ms,
                    ..
                } => ((epoch + 1) * period_ms + phase_ms).min(to),
            };
            out.push((t, end, self.addr_in_epoch(epoch)));
            t = end;
        }
        out
    }
}

fn junk_advert(kind: StrangerDevice, rng: &mut impl Rng) -> Vec<u8> {
    match kind {
        StrangerDevice::AppleNearby => adverts::apple_nearby_advert(rng),
        StrangerDevice::AppleFindMy => adverts::apple_find_my_advert(rng),
        StrangerDevice::Wearable => adverts::wearable_advert(rng),
        StrangerDevice::ForeignIbeacon => {
            let uuid: [u8; 16] = rng.r#gen();
            adverts::foreign_ibeacon_advert(&uuid, rng.r#gen(), rng.r#gen())
        }
        StrangerDevice::UnenrolledApp => {
            // A real app token format, but a key nobody enrolled.
            let key = RotatingKey::new(&rng.r#gen());
            adverts::app_token_advert(
                adverts::DEFAULT_APP_COMPANY_ID,
                &key.identifier(rng.r#gen()),
                APP_TX_POWER_1M,
            )
        }
    }
}

/// Independent random streams per purpose, all from the one seed.
fn seeded(seed: u64, purpose: &str, index: u64) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"firmware-sim/")
        .chain_update(purpose.as_bytes())
        .chain_update(seed.to_le_bytes())
        .chain_update(index.to_le_bytes())
        .finalize()
        .into()
}

/// The running twin. Iterate it (or call [`Simulation::next_batch`]) for
/// sighting records in time order; store beacons make the stream endless.
///
/// Everything is a function of the spec, the scenario, the start time and
/// the seed: the wall clock is never read.
#[derive(Debug, Clone)]
pub struct Simulation {
    spec: StoreSpec,
    start_ms: i64,
    radio: Radio,
    devices: Vec<Device>,
    /// `links[device][scanner]`.
    links: Vec<Vec<Link>>,
    /// Next advert of each device: `(at_ms, device)`; ties go to the lower
    /// device index, which keeps the output deterministic.
    queue: BinaryHeap<Reverse<(i64, usize)>>,
    pending: VecDeque<SightingRecord>,
    rng: ChaCha8Rng,
    hours: Option<Hours>,
    /// Separate stream for what phones hear, so check-ins never disturb
    /// the sighting records.
    checkin_rng: ChaCha8Rng,
    store_ibeacons: Vec<StoreIbeacon>,
    pending_checkins: VecDeque<CheckInRecord>,
}

impl Simulation {
    /// Build the twin. Fails if the spec is invalid or a path names a zone
    /// the store does not have.
    pub fn new(
        spec: StoreSpec,
        scenario: Scenario,
        start_unix_ms: i64,
        seed: u64,
    ) -> Result<Self, SimError> {
        spec.validate()?;
        check_scenario(&spec, &scenario)?;
        let mut layout_rng = ChaCha8Rng::from_seed(seeded(seed, "layout", 0));
        let mut devices = Vec::new();
        let mut next_salt = {
            let mut n = 0u64;
            move || {
                n += 1;
                seeded(seed, "device", n)
            }
        };

        for beacon in &spec.beacons {
            // Validation guarantees the frame and address are well formed.
            let adv = adverts::beacon_advert(&beacon.frame, beacon.tx_power_1m).unwrap_or_default();
            devices.push(Device {
                salt: next_salt(),
                person: None,
                route: Route::fixed(beacon.position, start_unix_ms),
                interval_ms: beacon.interval_ms,
                tx_power_1m: f64::from(beacon.tx_power_1m),
                advertiser: Advertiser::Fixed {
                    addr: beacon.addr.to_lowercase(),
                    adv: hex::encode(adv),
                },
                current: None,
                tlm: beacon.tlm.as_ref().map(|t| TlmState {
                    spec: t.clone(),
                    boot_ms: start_unix_ms - (t.age_days * DAY_MS).round() as i64,
                }),
                checkin: None,
            });
        }

        for shopper in &scenario.shoppers {
            devices.push(shopper_device(
                &spec,
                shopper,
                start_unix_ms + i64::from(shopper.arrive_at_s) * 1000,
                &shopper.path,
                scenario.app_company_id,
                &mut layout_rng,
                next_salt(),
            ));
        }

        for stranger in &scenario.strangers {
            let arrive = start_unix_ms + i64::from(stranger.arrive_at_s) * 1000;
            let route = Route::walk(
                &spec,
                &stranger.path,
                arrive,
                stranger.walk_speed_mps,
                &mut layout_rng,
            );
            let salt = next_salt();
            let (advertiser, interval_ms) = match stranger.device {
                StrangerDevice::ForeignIbeacon | StrangerDevice::Wearable => {
                    // Tags and bands keep one static random address.
                    let mut rng = ChaCha8Rng::from_seed(salt);
                    let mut addr = adverts::random_private_addr(&mut rng);
                    addr[0] |= 0xC0;
                    let adv = junk_advert(stranger.device, &mut rng);
                    let fixed = Advertiser::Fixed {
                        addr: adverts::format_addr(&addr),
                        adv: hex::encode(adv),
                    };
                    (fixed, layout_rng.gen_range(500..=1000))
                }
                StrangerDevice::AppleFindMy => (
                    Advertiser::Rotating {
                        period_ms: JUNK_ROTATION_MS,
                        phase_ms: layout_rng.gen_range(0..JUNK_ROTATION_MS),
                        content: RotatingContent::Junk(stranger.device),
                    },
                    2000,
                ),
                StrangerDevice::AppleNearby | StrangerDevice::UnenrolledApp => (
                    Advertiser::Rotating {
                        period_ms: if stranger.device == StrangerDevice::UnenrolledApp {
                            INTERVAL_MS
                        } else {
                            JUNK_ROTATION_MS
                        },
                        phase_ms: 0,
                        content: RotatingContent::Junk(stranger.device),
                    },
                    layout_rng.gen_range(200..=1000),
                ),
            };
            devices.push(Device {
                salt,
                person: None,
                route,
                interval_ms,
                tx_power_1m: -59.0 + layout_rng.gen_range(-4.0..4.0),
                advertiser,
                current: None,
                tlm: None,
                checkin: None,
            });
        }

        // Returning shoppers' later visits: one more device each (a new
        // random address, the same key), after everyone else so scenarios
        // without them are unchanged.
        for shopper in &scenario.shoppers {
            for visit in &shopper.return_visits {
                devices.push(shopper_device(
                    &spec,
                    shopper,
                    start_unix_ms + i64::from(visit.arrive_at_s) * 1000,
                    &visit.path,
                    scenario.app_company_id,
                    &mut layout_rng,
                    next_salt(),
                ));
            }
        }

        let mut rng = ChaCha8Rng::from_seed(seeded(seed, "radio", 0));
        let mut queue = BinaryHeap::new();
        for (index, device) in devices.iter().enumerate() {
            // Devices do not advertise in lockstep: random first offset.
            let first = device.route.start_ms() + rng.gen_range(0..i64::from(device.interval_ms));
            queue.push(Reverse((first, index)));
        }
        let radio = Radio::new(&spec);
        let links = vec![vec![Link::default(); radio.scanner_count()]; devices.len()];
        // Validation guarantees hours parse when present.
        let hours = spec.hours.as_ref().and_then(|h| Hours::new(h).ok());
        let store_ibeacons = spec
            .beacons
            .iter()
            .filter_map(|b| match &b.frame {
                BeaconFrame::Ibeacon { uuid, major, minor } => Some(StoreIbeacon {
                    position: b.position,
                    tx_power_1m: f64::from(b.tx_power_1m),
                    uuid: uuid.to_lowercase(),
                    major: *major,
                    minor: *minor,
                }),
                _ => None,
            })
            .collect();
        Ok(Self {
            spec,
            start_ms: start_unix_ms,
            radio,
            devices,
            links,
            queue,
            pending: VecDeque::new(),
            rng,
            hours,
            checkin_rng: ChaCha8Rng::from_seed(seeded(seed, "checkin", 0)),
            store_ibeacons,
            pending_checkins: VecDeque::new(),
        })
    }

    /// The store's opening hours, if it has any.
    pub fn hours(&self) -> Option<&Hours> {
        self.hours.as_ref()
    }

    /// Like [`Simulation::next_batch`], plus the iOS check-ins made before
    /// `until_ms` and not returned yet (in time order). Check-ins come from
    /// a random stream of their own: asking for them never changes the
    /// sighting records.
    pub fn next_batch_with_checkins(
        &mut self,
        until_ms: i64,
    ) -> (Vec<SightingRecord>, Vec<CheckInRecord>) {
        let records = self.next_batch(until_ms);
        let mut checkins = Vec::new();
        while let Some(front) = self.pending_checkins.front() {
            if front.at_ms() >= until_ms {
                break;
            }
            checkins.extend(self.pending_checkins.pop_front());
        }
        (records, checkins)
    }

    pub fn spec(&self) -> &StoreSpec {
        &self.spec
    }

    pub fn start_unix_ms(&self) -> i64 {
        self.start_ms
    }

    /// All records with `at_ms < until_ms` not returned yet, in time order.
    pub fn next_batch(&mut self, until_ms: i64) -> Vec<SightingRecord> {
        let mut out = Vec::new();
        loop {
            if let Some(front) = self.pending.front() {
                if front.at_ms >= until_ms {
                    break;
                }
                out.extend(self.pending.pop_front());
                continue;
            }
            match self.queue.peek() {
                Some(Reverse((at, _))) if *at < until_ms => self.step(),
                _ => break,
            }
        }
        out
    }

    /// Records of the first `duration` after the start (or the rest of them
    /// if some were already taken).
    pub fn run_for(&mut self, duration: std::time::Duration) -> Vec<SightingRecord> {
        let ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        self.next_batch(self.start_ms.saturating_add(ms))
    }

    /// Process the next advert event into `pending`.
    fn step(&mut self) {
        let Some(Reverse((at_ms, index))) = self.queue.pop() else {
            return;
        };
        let device = &mut self.devices[index];
        if let Some(hours) = &self.hours {
            if !hours.is_open(at_ms) {
                // Closed: nothing is heard. Resume at the next opening if
                // the device is still around then (beacons always are).
                let next = hours.next_open(at_ms);
                let phase = at_ms.rem_euclid(i64::from(device.interval_ms));
                if next > at_ms && next + phase < device.route.end_ms() {
                    self.queue.push(Reverse((next + phase, index)));
                }
                return;
            }
        }
        let Some(position) = device.route.position_at(at_ms) else {
            return; // left the store: no more adverts
        };
        let epoch = device.epoch_of(at_ms);
        if device.current.as_ref().is_none_or(|(e, _, _)| *e != epoch) {
            let (addr, adv) = device.identity(epoch);
            device.current = Some((epoch, addr, adv));
        }
        let tx_power = device.tx_power_1m;
        let interval = i64::from(device.interval_ms);
        let tlm_adv = device.tlm.as_ref().and_then(|tlm| {
            (tlm.adv_count(at_ms, device.interval_ms) % tlm.spec.every.max(1) == 0)
                .then(|| hex::encode(tlm.advert(at_ms, device.interval_ms)))
        });
        for scanner in 0..self.radio.scanner_count() {
            let link = &mut self.links[index][scanner];
            let heard = self
                .radio
                .receive(&mut self.rng, link, scanner, position, tx_power, at_ms);
            if let (Some(rssi), Some((_, addr, adv))) = (heard, &self.devices[index].current) {
                self.pending.push_back(SightingRecord {
                    scanner: self.spec.scanners[scanner].id.clone(),
                    addr: addr.clone(),
                    rssi,
                    adv: tlm_adv.as_ref().unwrap_or(adv).clone(),
                    at_ms,
                });
            }
        }
        self.maybe_check_in(index, position, at_ms);
        // BLE adds a random 0-10 ms delay to every advertising event.
        let next = at_ms + interval + self.rng.gen_range(0..=10);
        self.queue.push(Reverse((next, index)));
    }

    /// An iOS shopper's phone ranges the store's iBeacons at each of its
    /// advertising events; at most every 30 s it checks in with the ones
    /// it hears.
    fn maybe_check_in(&mut self, index: usize, position: Point, at_ms: i64) {
        let Some(state) = &self.devices[index].checkin else {
            return;
        };
        if state
            .last_ms
            .is_some_and(|last| at_ms - last < CHECKIN_MIN_GAP_MS)
        {
            return;
        }
        let p = &self.spec.radio;
        let mut heard = Vec::new();
        for beacon in &self.store_ibeacons {
            // Draw for every beacon, heard or not, to keep the stream stable.
            let noise = standard_normal(&mut self.checkin_rng) * p.noise_sigma_db;
            // The beacon sits on a shelf about half a metre above the phone.
            let distance = beacon.position.distance_to(position).hypot(0.5);
            let rssi = mean_rssi(beacon.tx_power_1m, distance, p.path_loss_exponent) + noise;
            if rssi.is_finite() && rssi >= f64::from(p.floor_dbm) {
                heard.push(HeardBeacon {
                    uuid: beacon.uuid.clone(),
                    major: beacon.major,
                    minor: beacon.minor,
                    // Between the floor (>= -100) and 0 after the clamp.
                    rssi: rssi.round().clamp(-100.0, 0.0) as i16,
                });
            }
        }
        if heard.is_empty() {
            return;
        }
        heard.sort_by_key(|b| std::cmp::Reverse(b.rssi));
        heard.truncate(CHECKIN_MAX_BEACONS);
        let Some(state) = &mut self.devices[index].checkin else {
            return;
        };
        state.last_ms = Some(at_ms);
        let rotating_id = hex::encode(state.key.identifier(interval_of_unix_ms(at_ms)));
        let record = CheckInRecord::new(
            &state.recipient,
            CheckIn {
                rotating_id,
                at_ms,
                beacons: heard,
            },
        );
        if self.pending_checkins.len() >= MAX_PENDING_CHECKINS {
            self.pending_checkins.pop_front();
        }
        self.pending_checkins.push_back(record);
    }

    /// Ground truth of every advertiser over `[start, end_ms)`: which zone
    /// (or "hall") each address was in, sorted by start time then address.
    pub fn ground_truth(&self, end_ms: i64) -> Vec<GroundTruth> {
        let mut out: Vec<GroundTruth> = self
            .devices
            .iter()
            .flat_map(|d| self.device_truth(d, end_ms))
            .map(|t| GroundTruth {
                addr: t.addr,
                from_ms: t.from_ms,
                to_ms: t.to_ms,
                zone: t.zone,
            })
            .collect();
        out.sort_by(|a, b| (a.from_ms, &a.addr).cmp(&(b.from_ms, &b.addr)));
        out
    }

    /// Ground truth of each opted-in shopper over `[start, end_ms)`, by
    /// person id, in time order.
    pub fn truth_by_person(&self, end_ms: i64) -> BTreeMap<String, Vec<PersonTruth>> {
        let mut out = BTreeMap::new();
        for device in &self.devices {
            if let Some(person) = &device.person {
                let spans: &mut Vec<PersonTruth> = out.entry(person.clone()).or_default();
                spans.extend(self.device_truth(device, end_ms));
                spans.sort_by_key(|t| t.from_ms);
            }
        }
        out
    }

    /// Every address an opted-in shopper's phone used before `end_ms`.
    pub fn shopper_addrs(&self, end_ms: i64) -> BTreeSet<String> {
        self.truth_by_person(end_ms)
            .into_values()
            .flatten()
            .map(|t| t.addr)
            .collect()
    }

    fn device_truth(&self, device: &Device, end_ms: i64) -> Vec<PersonTruth> {
        let mut out = Vec::new();
        // While the store is closed nothing is heard, and truth says nothing.
        let open = match &self.hours {
            Some(hours) => hours.open_intervals(self.start_ms, end_ms),
            None => vec![(self.start_ms, end_ms)],
        };
        for span in device.route.zone_spans(&self.spec, self.start_ms, end_ms) {
            let clipped = open.iter().filter_map(|&(a, b)| {
                let (from, to) = (a.max(span.from_ms), b.min(span.to_ms));
                (from < to).then_some((from, to))
            });
            for (from_ms, to_ms, addr) in clipped.flat_map(|(a, b)| device.addr_spans(a, b)) {
                out.push(PersonTruth {
                    addr,
                    from_ms,
                    to_ms,
                    zone: span.zone.clone(),
                });
            }
        }
        out
    }
}

impl Iterator for Simulation {
    type Item = SightingRecord;

    fn next(&mut self) -> Option<SightingRecord> {
        loop {
            if let Some(record) = self.pending.pop_front() {
                return Some(record);
            }
            if self.queue.is_empty() {
                return None;
            }
            self.step();
        }
    }
}

/// The phone of one shopper visit. Draws from `layout_rng` in a fixed order
/// (route, address phase for iOS, interval, power).
fn shopper_device(
    spec: &StoreSpec,
    shopper: &Shopper,
    arrive_ms: i64,
    path: &[Stop],
    app_company_id: u16,
    layout_rng: &mut ChaCha8Rng,
    salt: [u8; 32],
) -> Device {
    let route = Route::walk(spec, path, arrive_ms, shopper.walk_speed_mps, layout_rng);
    let (advertiser, checkin) = match shopper.platform {
        Platform::Android => (
            Advertiser::Rotating {
                period_ms: INTERVAL_MS,
                phase_ms: 0,
                content: RotatingContent::AppToken {
                    key: Box::new(RotatingKey::new(&shopper.key)),
                    company_id: app_company_id,
                },
            },
            None,
        ),
        Platform::Ios => (
            Advertiser::Rotating {
                period_ms: JUNK_ROTATION_MS,
                phase_ms: layout_rng.gen_range(0..JUNK_ROTATION_MS),
                content: RotatingContent::Junk(StrangerDevice::AppleNearby),
            },
            Some(CheckinState {
                key: Box::new(RotatingKey::new(&shopper.key)),
                recipient: shopper.recipient.clone(),
                last_ms: None,
            }),
        ),
    };
    Device {
        salt,
        person: Some(shopper.person.clone()),
        route,
        interval_ms: layout_rng.gen_range(200..=1000),
        tx_power_1m: f64::from(APP_TX_POWER_1M) + layout_rng.gen_range(-3.0..3.0),
        advertiser,
        current: None,
        tlm: None,
        checkin,
    }
}

fn check_scenario(spec: &StoreSpec, scenario: &Scenario) -> Result<(), SimError> {
    let known = |zone: &str| zone == HALL_ZONE || spec.zone(zone).is_some();
    let mut people = BTreeSet::new();
    for shopper in &scenario.shoppers {
        if !people.insert(shopper.person.as_str()) {
            return Err(SimError::DuplicatePerson(shopper.person.clone()));
        }
        let stops = shopper.visits().flat_map(|(_, path)| path.iter());
        for (index, stop) in stops.enumerate() {
            if !known(&stop.zone) {
                return Err(SimError::UnknownZone {
                    who: shopper.person.clone(),
                    index,
                    zone: stop.zone.clone(),
                });
            }
        }
    }
    for (n, stranger) in scenario.strangers.iter().enumerate() {
        for (index, stop) in stranger.path.iter().enumerate() {
            if !known(&stop.zone) {
                return Err(SimError::UnknownZone {
                    who: format!("stranger {n}"),
                    index,
                    zone: stop.zone.clone(),
                });
            }
        }
    }
    Ok(())
}
