//! Load generator: a sustained, precisely paced stream of sighting records
//! over UDP from many devices, most of them strangers, to see how a
//! gateway copes. Unlike the twin this reads the wall clock: `at_ms` is
//! the real send time, so the enrolled shoppers' app tokens carry the
//! identifier of the current interval and the gateway can resolve them.
//!
//! Pacing is a token bucket refilled every millisecond tick: at each tick
//! every record whose scheduled time (`start + i / rate`) has come is sent
//! in one batch. Targets must be loopback addresses.
//!
//! With `arrive_over`, the devices do not all come at once: the device at
//! place p of the rotation arrives at `frac(p * 0.618...)` of it (a Weyl
//! sequence: at any moment those arrived are spread evenly around the
//! rotation, so the records sent are too), and its slots in the rotation
//! before that are skipped, so that every device is heard `rate / devices`
//! times a second from its arrival on, and shoppers reach a rule's dwell
//! (and are decided on) at a steady pace instead of all at once.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::adverts;
use crate::rotating::{RotatingKey, interval_of_unix_ms};
use crate::scenario::{Scenario, Shopper, StrangerDevice};
use crate::sim::APP_TX_POWER_1M;
use crate::spec::StoreSpec;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "--target {0}: only loopback targets are allowed (127.0.0.0/8 or ::1); load tests stay on this machine"
    )]
    NotLoopback(SocketAddr),
    #[error("--rate must be at least 1")]
    ZeroRate,
    #[error("--devices must be at least 1")]
    ZeroDevices,
    #[error("--duration must be between 1 ms and 24 h")]
    BadDuration,
    #[error("--arrive-over must not be longer than --duration")]
    BadArrival,
    #[error("--strangers must be a share between 0 and 1, not {0}")]
    BadStrangers(f64),
    #[error("udp to {target}: {source}")]
    Udp {
        target: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub target: SocketAddr,
    /// Adverts (datagrams) per second.
    pub rate: u32,
    pub devices: u32,
    pub duration: Duration,
    /// Share of the devices that are strangers, 0..=1.
    pub strangers: f64,
    pub seed: u64,
    /// The devices arrive evenly over this long (zero: all at the start).
    pub arrive_over: Duration,
}

/// What was sent. `max_lag_ms` is the worst delay of a record behind its
/// scheduled send time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadReport {
    pub target: String,
    pub records_sent: u64,
    pub from_enrolled: u64,
    pub from_strangers: u64,
    pub send_errors: u64,
    pub devices: u32,
    pub enrolled_devices: u32,
    pub duration_s: f64,
    pub target_rate: u32,
    pub achieved_rate: f64,
    pub max_lag_ms: f64,
    pub cancelled: bool,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {} records to {} in {:.2} s: {:.0}/s (target {}/s), max lag {:.2} ms; \
             {} from {} enrolled shoppers, {} from {} strangers, {} send errors{}",
            self.records_sent,
            self.target,
            self.duration_s,
            self.achieved_rate,
            self.target_rate,
            self.max_lag_ms,
            self.from_enrolled,
            self.enrolled_devices,
            self.from_strangers,
            self.devices - self.enrolled_devices,
            self.send_errors,
            if self.cancelled { " (interrupted)" } else { "" }
        )
    }
}

impl LoadConfig {
    pub fn validate(&self) -> Result<(), LoadError> {
        if !self.target.ip().is_loopback() {
            return Err(LoadError::NotLoopback(self.target));
        }
        if self.rate == 0 {
            return Err(LoadError::ZeroRate);
        }
        if self.devices == 0 {
            return Err(LoadError::ZeroDevices);
        }
        if self.duration.is_zero() || self.duration > Duration::from_secs(86_400) {
            return Err(LoadError::BadDuration);
        }
        if !(0.0..=1.0).contains(&self.strangers) {
            return Err(LoadError::BadStrangers(self.strangers));
        }
        if self.arrive_over > self.duration {
            return Err(LoadError::BadArrival);
        }
        Ok(())
    }

    /// How many devices are enrolled shoppers (the rest are strangers).
    pub fn enrolled_devices(&self) -> u32 {
        // In [0, devices] after the clamp, so the cast is exact.
        (f64::from(self.devices) * (1.0 - self.strangers))
            .round()
            .clamp(0.0, f64::from(self.devices)) as u32
    }

    /// The enrolled shoppers (`p-100000`, ...), Android, helpful consent:
    /// write their person records with `people_jsonl` for `people import`.
    pub fn scenario(&self) -> Scenario {
        let shoppers = (0..self.enrolled_devices())
            .map(|n| Shopper::new(100_000 + n, self.seed))
            .collect();
        Scenario::with_shoppers(self.seed, shoppers)
    }
}

enum Source {
    Enrolled {
        key: Box<RotatingKey>,
        /// Interval and advert hex last built.
        cached: Option<(u32, String)>,
    },
    Stranger(String),
}

struct LoadDevice {
    addr: String,
    source: Source,
}

#[derive(Serialize)]
struct RecordRef<'a> {
    scanner: &'a str,
    addr: &'a str,
    rssi: i16,
    adv: &'a str,
    at_ms: i64,
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Run the load until the duration is over or `stop` is set. Blocking:
/// call it from a thread (or `spawn_blocking`).
pub fn run_load(config: &LoadConfig, stop: Arc<AtomicBool>) -> Result<LoadReport, LoadError> {
    config.validate()?;
    let target = config.target;
    let udp_error = |source| LoadError::Udp { target, source };
    let bind: SocketAddr = if target.is_ipv4() {
        ([127, 0, 0, 1], 0).into()
    } else {
        ([0, 0, 0, 0, 0, 0, 0, 1], 0).into()
    };
    let socket = UdpSocket::bind(bind).map_err(udp_error)?;

    let scanners: Vec<String> = StoreSpec::small_store()
        .scanners
        .into_iter()
        .map(|s| s.id)
        .collect();
    let scenario = config.scenario();
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0x6c6f_6164);
    let kinds = [
        StrangerDevice::AppleNearby,
        StrangerDevice::AppleFindMy,
        StrangerDevice::Wearable,
        StrangerDevice::ForeignIbeacon,
        StrangerDevice::UnenrolledApp,
    ];
    let mut devices: Vec<LoadDevice> = scenario
        .shoppers
        .iter()
        .map(|s| LoadDevice {
            addr: adverts::format_addr(&adverts::random_private_addr(&mut rng)),
            source: Source::Enrolled {
                key: Box::new(RotatingKey::new(&s.key)),
                cached: None,
            },
        })
        .collect();
    for n in devices.len()..config.devices as usize {
        let adv = match kinds[n % kinds.len()] {
            StrangerDevice::AppleNearby => adverts::apple_nearby_advert(&mut rng),
            StrangerDevice::AppleFindMy => adverts::apple_find_my_advert(&mut rng),
            StrangerDevice::Wearable => adverts::wearable_advert(&mut rng),
            StrangerDevice::ForeignIbeacon => {
                adverts::foreign_ibeacon_advert(&rng.r#gen(), rng.r#gen(), rng.r#gen())
            }
            StrangerDevice::UnenrolledApp => adverts::app_token_advert(
                adverts::DEFAULT_APP_COMPANY_ID,
                &rng.r#gen(),
                APP_TX_POWER_1M,
            ),
        };
        devices.push(LoadDevice {
            addr: adverts::format_addr(&adverts::random_private_addr(&mut rng)),
            source: Source::Stranger(hex::encode(adv)),
        });
    }
    // Interleave: spread the enrolled devices through the rotation.
    let order: Vec<usize> = {
        let mut order: Vec<usize> = (0..devices.len()).collect();
        rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rng);
        order
    };

    let rate = f64::from(config.rate);
    let total = (config.duration.as_secs_f64() * rate).round() as u64;
    // When the device at each place of the rotation arrives, in seconds:
    // evenly over `arrive_over`, and evenly around the rotation at any time.
    let arrives_s = |place: usize| {
        const GOLDEN: f64 = 0.618_033_988_749_894_9;
        config.arrive_over.as_secs_f64() * (place as f64 * GOLDEN).fract()
    };
    let mut buf = Vec::with_capacity(256);
    // Places of the rotation gone through (sent, or skipped: not arrived).
    let mut sent = 0u64;
    let mut skipped = 0u64;
    let mut from_enrolled = 0u64;
    let mut send_errors = 0u64;
    let mut max_lag = Duration::ZERO;
    let mut cancelled = false;
    let started = Instant::now();
    let mut last_send = started;
    let tick = Duration::from_millis(1);
    while sent < total {
        if stop.load(Ordering::Relaxed) {
            cancelled = true;
            break;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let due = ((elapsed * rate).floor() as u64 + 1).min(total);
        let at_ms = now_unix_ms();
        while sent < due {
            let place = (sent % order.len() as u64) as usize;
            if arrives_s(place) > elapsed {
                skipped += 1;
                sent += 1;
                continue;
            }
            let index = order[place];
            let device = &mut devices[index];
            let adv: &str = match &mut device.source {
                Source::Stranger(adv) => adv,
                Source::Enrolled { key, cached } => {
                    let interval = interval_of_unix_ms(at_ms);
                    if cached.as_ref().is_none_or(|(i, _)| *i != interval) {
                        let adv = adverts::app_token_advert(
                            adverts::DEFAULT_APP_COMPANY_ID,
                            &key.identifier(interval),
                            APP_TX_POWER_1M,
                        );
                        *cached = Some((interval, hex::encode(adv)));
                    }
                    from_enrolled += 1;
                    cached.as_ref().map_or("", |(_, adv)| adv.as_str())
                }
            };
            let record = RecordRef {
                scanner: &scanners[(sent % scanners.len() as u64) as usize],
                addr: &device.addr,
                rssi: rng.gen_range(-95..=-40),
                adv,
                at_ms,
            };
            buf.clear();
            // Serialising strings and integers into a Vec cannot fail.
            let ok = serde_json::to_writer(&mut buf, &record).is_ok()
                && socket.send_to(&buf, target).is_ok();
            if !ok {
                send_errors += 1;
            }
            let now = Instant::now();
            let scheduled = started + Duration::from_secs_f64(sent as f64 / rate);
            max_lag = max_lag.max(now.saturating_duration_since(scheduled));
            last_send = now;
            sent += 1;
        }
        if sent >= total {
            break;
        }
        // Sleep to the next millisecond tick (or to the next record's time
        // if that is later, for low rates).
        let next_due = started + Duration::from_secs_f64(sent as f64 / rate);
        let wake = next_due.max(Instant::now() + tick);
        if let Some(wait) = wake.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let duration = last_send.duration_since(started);
    let sent = sent - skipped;
    // The first record goes at t = 0, so n records span (n - 1) / rate.
    let achieved_rate = if sent > 1 && !duration.is_zero() {
        (sent - 1) as f64 / duration.as_secs_f64()
    } else {
        sent as f64
    };
    Ok(LoadReport {
        target: target.to_string(),
        records_sent: sent,
        from_enrolled,
        from_strangers: sent - from_enrolled,
        send_errors,
        devices: config.devices,
        enrolled_devices: config.enrolled_devices(),
        duration_s: duration.as_secs_f64(),
        target_rate: config.rate,
        achieved_rate,
        max_lag_ms: max_lag.as_secs_f64() * 1000.0,
        cancelled,
    })
}
