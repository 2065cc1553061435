//! The local radio: BLE adverts through BlueZ over D-Bus (btleplug).
//!
//! [`run_bluez`] picks the adapter by name ("hci0") or the first one, scans
//! with an empty filter and BlueZ's `DuplicateData` on (btleplug sets it), and
//! turns the advertisement events into sightings: the advertising data is
//! rebuilt as AD structures (manufacturer data 0xFF with the company id
//! little-endian first; service data 0x16 / 0x20 / 0x21 for 16-, 32- and
//! 128-bit UUIDs) with the latest RSSI and the wall clock.
//!
//! BlueZ reports one advert as several property changes at once (RSSI,
//! ManufacturerData, ServiceData); btleplug turns them into one event each,
//! delivered back to back. The events that are ready together are coalesced
//! per device into one sighting, carrying what changed: the manufacturer
//! data and/or the service data, or everything known when only the RSSI
//! changed.
//!
//! Scanning stops when the adapter goes away, BlueZ restarts or the event
//! stream ends. That is logged, counted (`source_failures_total{source=
//! "bluez"}`, gauge `bluez_scanning` 0/1) and retried with backoff until it
//! scans again. A health check asks for the adapter every second, because a
//! removed adapter does not end btleplug's event stream. Nothing here panics.
//!
//! What is remembered per device (the last manufacturer and service data and
//! RSSI, to rebuild an advert on an RSSI-only update) stays in memory, is
//! capped, and is forgotten after [`DEVICE_MEMORY`] without an update.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use btleplug::api::{Central, CentralEvent, Manager as _, ScanFilter};
use btleplug::platform::{Adapter, Manager, PeripheralId};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::scanners::{AdBuilder, ServiceUuid};
use super::sources::Ingested;
use crate::sighting::{BdAddr, Sighting};
use crate::telemetry::{Source, Telemetry, events};

/// The source name in metrics and in [`Ingested`].
pub const SOURCE: Source = Source::Bluez;
/// Gauge (its exposed name without `gateway_`): 1 while scanning, 0 otherwise.
pub const GAUGE_SCANNING: &str = "bluez_scanning";

/// How long a device's last advert is kept without an update.
pub const DEVICE_MEMORY: Duration = Duration::from_secs(30);
/// At most this many devices are remembered; beyond it the oldest go.
pub const MAX_DEVICES: usize = 4096;
/// How often the adapter is checked while scanning.
const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// Bound on every single D-Bus call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A scan that lasted this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Events read in one go before sightings are emitted (bounds the batch).
const MAX_BATCH: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BluezSettings {
    /// Adapter name, e.g. "hci0"; `None` takes the first adapter.
    pub adapter: Option<String>,
    /// The `scanner` of every sighting (the zone config refers to it).
    pub scanner_id: String,
}

/// Scan until cancelled (or until `out` is closed). Never returns on a
/// scanning failure: it retries with backoff.
pub async fn run_bluez(
    settings: BluezSettings,
    out: mpsc::Sender<Ingested>,
    telemetry: Arc<Telemetry>,
    cancel: CancellationToken,
) {
    events::bluez_scanning(&telemetry, false);
    let mut manager: Option<Manager> = None;
    let mut failures_in_a_row = 0u32;
    let mut backoff = BACKOFF_MIN;
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let started = Instant::now();
        let result = scan(&settings, &mut manager, &out, &telemetry, &cancel).await;
        events::bluez_scanning(&telemetry, false);
        match result {
            Ok(()) => return,
            Err(e) => {
                events::source_failed(&telemetry, SOURCE, &e);
                failures_in_a_row += 1;
                // A D-Bus connection whose bus went away never recovers; a
                // fresh one is made after repeated failures (not on each:
                // every connection keeps a task).
                if failures_in_a_row % 8 == 0 {
                    manager = None;
                }
            }
        }
        if started.elapsed() >= STABLE_AFTER {
            backoff = BACKOFF_MIN;
            failures_in_a_row = 0;
        }
        tracing::info!(
            source = %SOURCE,
            retry_in_ms = backoff.as_millis() as u64,
            "BLE scanning stopped; retrying"
        );
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[derive(Debug, thiserror::Error)]
enum ScanError {
    #[error("{during}: {source}")]
    Bluez {
        during: &'static str,
        source: btleplug::Error,
    },
    #[error("{0}: no answer within {CALL_TIMEOUT:?}")]
    Timeout(&'static str),
    #[error("{0}")]
    Other(String),
}

async fn call<T>(
    during: &'static str,
    fut: impl std::future::Future<Output = Result<T, btleplug::Error>>,
) -> Result<T, ScanError> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(ScanError::Bluez { during, source }),
        Err(_) => Err(ScanError::Timeout(during)),
    }
}

/// The adapter's name: btleplug's info reads "hci0 (usb:v1D6Bp0245d050A)".
async fn adapter_name(adapter: &Adapter) -> Result<String, ScanError> {
    let info = call("adapter info", adapter.adapter_info()).await?;
    Ok(info
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

async fn pick_adapter(manager: &Manager, wanted: Option<&str>) -> Result<Adapter, ScanError> {
    let adapters = call("list adapters", manager.adapters()).await?;
    let mut names = Vec::new();
    for adapter in adapters {
        let name = adapter_name(&adapter).await?;
        if wanted.is_none_or(|w| w == name) {
            return Ok(adapter);
        }
        names.push(name);
    }
    Err(ScanError::Other(match wanted {
        Some(w) => format!("adapter {w:?} not found (present: {names:?})"),
        None => "no Bluetooth adapter".to_string(),
    }))
}

/// One scanning session: Ok when cancelled or the receiver is gone, Err when
/// scanning stopped for any other reason.
async fn scan(
    settings: &BluezSettings,
    manager: &mut Option<Manager>,
    out: &mpsc::Sender<Ingested>,
    telemetry: &Telemetry,
    cancel: &CancellationToken,
) -> Result<(), ScanError> {
    let mgr = match manager {
        Some(m) => m.clone(),
        None => {
            let m = call("connect to D-Bus", Manager::new()).await?;
            *manager = Some(m.clone());
            m
        }
    };
    let adapter = pick_adapter(&mgr, settings.adapter.as_deref()).await?;
    let name = adapter_name(&adapter).await?;
    let mut events = call("subscribe to events", adapter.events()).await?;
    call("start scan", adapter.start_scan(ScanFilter::default())).await?;
    events::bluez_scanning(telemetry, true);
    tracing::info!(source = %SOURCE, adapter = %name, "BLE scanning started");

    let mut devices = Devices::default();
    let mut health = tokio::time::interval(HEALTH_EVERY);
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    health.tick().await;
    let result = loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            _ = health.tick() => {
                devices.forget_older_than(Instant::now(), DEVICE_MEMORY);
                // A removed adapter or a BlueZ gone from the bus shows here.
                match call("adapter check", adapter.adapter_info()).await {
                    Ok(_) => continue,
                    Err(e) => break Err(e),
                }
            }
            e = events.next() => e,
        };
        let Some(first) = first else {
            break Err(ScanError::Other("BlueZ event stream ended".into()));
        };
        // Take every event that is ready now: one advert's parts together.
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match events.next().now_or_never() {
                Some(Some(e)) => batch.push(e),
                Some(None) | None => break,
            }
        }
        let now = Instant::now();
        let mut changed: Vec<PeripheralId> = Vec::new();
        for event in batch {
            if let Some(id) = devices.apply(event, now) {
                if !changed.contains(&id) {
                    changed.push(id);
                }
            }
        }
        for id in changed {
            let Some(sighting) =
                devices.sighting(&id, &settings.scanner_id, crate::clock::wall_ms())
            else {
                continue;
            };
            events::sighting_received(telemetry, SOURCE);
            let ingested = Ingested {
                source: SOURCE,
                sighting,
                received: std::time::Instant::now(),
            };
            tokio::select! {
                _ = cancel.cancelled() => return stop(&adapter, Ok(())).await,
                sent = out.send(ingested) => if sent.is_err() {
                    return stop(&adapter, Ok(())).await;
                },
            }
        }
    };
    stop(&adapter, result).await
}

async fn stop(adapter: &Adapter, result: Result<(), ScanError>) -> Result<(), ScanError> {
    // Best effort: after a removal or a BlueZ restart there is nothing to stop.
    let _ = tokio::time::timeout(Duration::from_secs(1), adapter.stop_scan()).await;
    result
}

/// The address in a BlueZ device path: ".../dev_AA_BB_CC_DD_EE_01".
fn addr_from_id(id: &PeripheralId) -> Option<BdAddr> {
    use std::fmt::Write as _;
    let mut text = String::new();
    // Display can fail for a path outside /org/bluez; never panic on it.
    write!(text, "{id}").ok()?;
    let dev = text.rsplit('/').next()?.strip_prefix("dev_")?;
    BdAddr::parse(&dev.replace('_', ":").to_ascii_lowercase()).ok()
}

#[derive(Default)]
struct Device {
    addr: Option<BdAddr>,
    rssi: Option<i16>,
    manufacturer: BTreeMap<u16, Vec<u8>>,
    service: BTreeMap<ServiceUuid, Vec<u8>>,
    /// What the pending sighting carries.
    new_manufacturer: bool,
    new_service: bool,
    updated: Option<Instant>,
}

enum Change {
    Manufacturer(HashMap<u16, Vec<u8>>),
    Service(HashMap<uuid::Uuid, Vec<u8>>),
    Rssi(i16),
}

#[derive(Default)]
struct Devices {
    by_id: HashMap<PeripheralId, Device>,
}

impl Devices {
    /// Take one event into account; the device it concerns, if any.
    fn apply(&mut self, event: CentralEvent, now: Instant) -> Option<PeripheralId> {
        let (id, change) = match event {
            CentralEvent::ManufacturerDataAdvertisement {
                id,
                manufacturer_data,
            } => (id, Change::Manufacturer(manufacturer_data)),
            CentralEvent::ServiceDataAdvertisement { id, service_data } => {
                (id, Change::Service(service_data))
            }
            CentralEvent::RssiUpdate { id, rssi } => (id, Change::Rssi(rssi)),
            _ => return None,
        };
        if !self.by_id.contains_key(&id) && self.by_id.len() >= MAX_DEVICES {
            self.forget_oldest();
        }
        let device = self.by_id.entry(id.clone()).or_default();
        if device.addr.is_none() {
            device.addr = addr_from_id(&id);
        }
        match change {
            Change::Manufacturer(data) => {
                device.manufacturer = data.into_iter().collect();
                device.new_manufacturer = true;
            }
            Change::Service(data) => {
                device.service = data
                    .into_iter()
                    .map(|(u, v)| (ServiceUuid::from_uuid_bytes(*u.as_bytes()), v))
                    .collect();
                device.new_service = true;
            }
            Change::Rssi(rssi) => device.rssi = Some(rssi),
        }
        device.updated = Some(now);
        Some(id)
    }

    /// The sighting for a device's pending change: what changed, or all that
    /// is known when only the RSSI did. None without an RSSI, an address or
    /// any advertising data.
    fn sighting(&mut self, id: &PeripheralId, scanner: &str, at_ms: i64) -> Option<Sighting> {
        let d = self.by_id.get_mut(id)?;
        let (with_mfr, with_svc) = match (d.new_manufacturer, d.new_service) {
            (false, false) => (true, true),
            other => other,
        };
        d.new_manufacturer = false;
        d.new_service = false;
        let mut adv = AdBuilder::new();
        if with_mfr {
            for (company, data) in &d.manufacturer {
                adv.manufacturer(*company, data);
            }
        }
        if with_svc {
            for (uuid, data) in &d.service {
                adv.service_data(*uuid, data);
            }
        }
        if adv.is_empty() {
            return None;
        }
        Some(Sighting {
            scanner: scanner.to_string(),
            addr: d.addr?,
            rssi: d.rssi?.clamp(-127, 20),
            adv: adv.finish(),
            at_ms,
        })
    }

    fn forget_older_than(&mut self, now: Instant, age: Duration) {
        self.by_id
            .retain(|_, d| d.updated.is_some_and(|t| now.duration_since(t) < age));
    }

    fn forget_oldest(&mut self) {
        if let Some(oldest) = self
            .by_id
            .iter()
            .min_by_key(|(_, d)| d.updated)
            .map(|(id, _)| id.clone())
        {
            self.by_id.remove(&oldest);
        }
    }
}
