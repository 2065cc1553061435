//! Where records go: JSON Lines files, UDP datagrams, MQTT v5.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::checkin::CheckInRecord;
use crate::espresense::EspresenseMessage;
use crate::scenario::Scenario;
use crate::sim::{GroundTruth, SightingRecord};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot write {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serialise record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("udp to {target}: {source}")]
    Udp {
        target: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("speed must be positive, 0 or infinite, not {0}")]
    BadSpeed(f64),
    #[error("mqtt {broker}: {message}")]
    Mqtt { broker: String, message: String },
}

/// Write items as JSON Lines. Returns how many were written.
pub fn write_jsonl<T: Serialize>(
    mut writer: impl Write,
    items: impl IntoIterator<Item = T>,
) -> Result<usize, std::io::Error> {
    let mut count = 0;
    for item in items {
        serde_json::to_writer(&mut writer, &item)?;
        writer.write_all(b"\n")?;
        count += 1;
    }
    writer.flush()?;
    Ok(count)
}

/// Create (or replace) `path` and write items as JSON Lines into it.
pub fn write_jsonl_file<T: Serialize>(
    path: &Path,
    items: impl IntoIterator<Item = T>,
) -> Result<usize, OutputError> {
    let file_error = |source| OutputError::File {
        path: path.display().to_string(),
        source,
    };
    let file = File::create(path).map_err(file_error)?;
    write_jsonl(BufWriter::new(file), items).map_err(file_error)
}

/// A capture file: one sighting record a line (docs/design.md §7).
pub fn write_capture_file(
    path: &Path,
    records: impl IntoIterator<Item = SightingRecord>,
) -> Result<usize, OutputError> {
    write_jsonl_file(path, records)
}

/// A ground truth file: one `{"addr", "from_ms", "to_ms", "zone"}` a line.
pub fn write_truth_file(path: &Path, truth: &[GroundTruth]) -> Result<usize, OutputError> {
    write_jsonl_file(path, truth)
}

/// The scenario's person records, one a line (docs/design.md §5).
pub fn write_people_file(path: &Path, scenario: &Scenario) -> Result<usize, OutputError> {
    write_jsonl_file(path, scenario.people())
}

/// What [`send_udp`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct UdpReport {
    pub records_sent: u64,
    pub duration: Duration,
    /// True if it stopped because the token was cancelled.
    pub cancelled: bool,
}

/// Send each record as one JSON datagram to `target`, paced by `at_ms`:
/// real time at `speed = 1`, N× faster at `speed = N`, as fast as possible
/// at `speed = 0` or infinity. Stops at the end of `records` or when
/// `cancel` fires.
pub async fn send_udp(
    records: impl IntoIterator<Item = SightingRecord>,
    target: SocketAddr,
    speed: f64,
    cancel: CancellationToken,
) -> Result<UdpReport, OutputError> {
    if speed.is_nan() || speed < 0.0 {
        return Err(OutputError::BadSpeed(speed));
    }
    let unpaced = speed == 0.0 || speed.is_infinite();
    let udp_error = |source| OutputError::Udp { target, source };
    let bind: SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(bind).await.map_err(udp_error)?;
    let started = Instant::now();
    let mut first_at_ms = None;
    let mut sent = 0u64;
    let mut cancelled = false;
    for record in records {
        if cancel.is_cancelled() {
            cancelled = true;
            break;
        }
        let first = *first_at_ms.get_or_insert(record.at_ms);
        if unpaced {
            // Let other tasks (and the canceller) run now and then.
            if sent % 256 == 0 {
                tokio::task::yield_now().await;
            }
        } else {
            let sim_elapsed_ms = (record.at_ms - first).max(0) as f64;
            let due = started + Duration::from_secs_f64(sim_elapsed_ms / 1000.0 / speed);
            tokio::select! {
                () = cancel.cancelled() => {
                    cancelled = true;
                    break;
                }
                () = tokio::time::sleep_until(due) => {}
            }
        }
        let datagram = serde_json::to_vec(&record)?;
        socket.send_to(&datagram, target).await.map_err(udp_error)?;
        sent += 1;
    }
    Ok(UdpReport {
        records_sent: sent,
        duration: started.elapsed(),
        cancelled,
    })
}

/// One MQTT message to publish, with the sim time that paces it.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttMessage {
    pub topic: String,
    pub payload: Vec<u8>,
    pub at_ms: i64,
}

/// What [`publish_mqtt`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttReport {
    /// Handed to the client.
    pub published: u64,
    /// Acknowledged by the broker (QoS 1 PUBACK).
    pub acked: u64,
    pub duration: Duration,
    pub cancelled: bool,
}

/// How long to wait for outstanding PUBACKs at the end.
const ACK_GRACE: Duration = Duration::from_secs(10);

/// Publish messages over MQTT v5, QoS 1, not retained, to the broker at
/// `host:port` (plain TCP), paced by `at_ms` like [`send_udp`]. Waits for
/// every PUBACK (up to 10 s) before disconnecting. A broker that cannot be
/// reached is an error, not a silent drop.
pub async fn publish_mqtt(
    messages: impl IntoIterator<Item = MqttMessage>,
    host: &str,
    port: u16,
    speed: f64,
    cancel: CancellationToken,
) -> Result<MqttReport, OutputError> {
    use rumqttc::v5::mqttbytes::QoS;
    use std::sync::atomic::Ordering;

    if speed.is_nan() || speed < 0.0 {
        return Err(OutputError::BadSpeed(speed));
    }
    let broker = format!("{host}:{port}");
    let mqtt_error = |message: String| OutputError::Mqtt {
        broker: broker.clone(),
        message,
    };
    let unpaced = speed == 0.0 || speed.is_infinite();
    let client_id = format!("firmware-sim-{}", std::process::id());
    let AckedClient {
        client,
        acked,
        driver,
    } = connect_acked(client_id, host.to_owned(), port, 64)
        .await
        .map_err(mqtt_error)?;

    let started = Instant::now();
    let mut first_at_ms = None;
    let mut published = 0u64;
    let mut cancelled = false;
    for message in messages {
        if cancel.is_cancelled() || driver.is_finished() {
            cancelled = cancel.is_cancelled();
            break;
        }
        let first = *first_at_ms.get_or_insert(message.at_ms);
        if !unpaced {
            let sim_elapsed_ms = (message.at_ms - first).max(0) as f64;
            let due = started + Duration::from_secs_f64(sim_elapsed_ms / 1000.0 / speed);
            tokio::select! {
                () = cancel.cancelled() => {
                    cancelled = true;
                    break;
                }
                () = tokio::time::sleep_until(due) => {}
            }
        }
        client
            .publish(message.topic, QoS::AtLeastOnce, false, message.payload)
            .await
            .map_err(|err| mqtt_error(format!("publish: {err}")))?;
        published += 1;
    }
    let deadline = Instant::now() + ACK_GRACE;
    while acked.load(Ordering::SeqCst) < published
        && Instant::now() < deadline
        && !driver.is_finished()
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = client.disconnect().await;
    let outcome = tokio::time::timeout(Duration::from_secs(5), driver).await;
    if let Ok(Ok(Err(message))) = outcome {
        if acked.load(Ordering::SeqCst) < published {
            return Err(mqtt_error(message));
        }
    }
    Ok(MqttReport {
        published,
        acked: acked.load(Ordering::SeqCst),
        duration: started.elapsed(),
        cancelled,
    })
}

/// An MQTT v5 client whose event loop runs in `driver`, counting the
/// PUBACKs it sees in `acked`; the driver ends `Ok` once the client
/// disconnects, `Err` with the reason when the connection is lost.
pub(crate) struct AckedClient {
    pub client: rumqttc::v5::AsyncClient,
    pub acked: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub driver: tokio::task::JoinHandle<Result<(), String>>,
}

/// Connect (`capacity`: the client's request queue) and start the driver.
/// The first poll connects: fail early and clearly (the error says why)
/// when nobody listens.
pub(crate) async fn connect_acked(
    client_id: String,
    host: String,
    port: u16,
    capacity: usize,
) -> Result<AckedClient, String> {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    let mut options = MqttOptions::new(client_id, host, port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, capacity);
    match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
        Ok(Ok(_)) => {}
        Ok(Err(err)) => return Err(format!("cannot connect: {err}")),
        Err(_) => return Err("no CONNACK within 10 s".into()),
    }
    let acked = Arc::new(AtomicU64::new(0));
    let driver_acked = Arc::clone(&acked);
    let driver = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    driver_acked.fetch_add(1, Ordering::SeqCst);
                }
                Ok(Event::Incoming(Packet::Disconnect(_))) => {
                    return Err("broker disconnected".to_owned());
                }
                Ok(_) => {}
                Err(rumqttc::v5::ConnectionError::RequestsDone) => return Ok(()),
                Err(err) => return Err(err.to_string()),
            }
        }
    });
    Ok(AckedClient {
        client,
        acked,
        driver,
    })
}

/// iOS check-ins as MQTT messages on `<prefix>/<store>/checkin/<recipient>`.
pub fn checkin_messages(
    records: impl IntoIterator<Item = CheckInRecord>,
    prefix: &str,
    store: &str,
) -> Result<Vec<MqttMessage>, OutputError> {
    records
        .into_iter()
        .map(|r| {
            Ok(MqttMessage {
                topic: r.topic(prefix, store),
                payload: serde_json::to_vec(&r.payload)?,
                at_ms: r.at_ms(),
            })
        })
        .collect()
}

/// ESPresense reports as MQTT messages on their own topics.
pub fn espresense_messages(
    messages: impl IntoIterator<Item = EspresenseMessage>,
) -> Result<Vec<MqttMessage>, OutputError> {
    messages
        .into_iter()
        .map(|m| {
            Ok(MqttMessage {
                payload: serde_json::to_vec(&m.payload)?,
                topic: m.topic,
                at_ms: m.at_ms,
            })
        })
        .collect()
}

/// Publish iOS check-ins (docs/design.md §5) to `<prefix>/<store>/checkin/<recipient>`
/// over MQTT v5, QoS 1, paced by their `at_ms` at `speed`.
pub async fn publish_checkins(
    records: impl IntoIterator<Item = CheckInRecord>,
    host: &str,
    port: u16,
    prefix: &str,
    store: &str,
    speed: f64,
    cancel: CancellationToken,
) -> Result<MqttReport, OutputError> {
    let messages = checkin_messages(records, prefix, store)?;
    publish_mqtt(messages, host, port, speed, cancel).await
}

/// Publish ESPresense reports on `espresense/devices/<id>/<room>`.
pub async fn publish_espresense(
    messages: impl IntoIterator<Item = EspresenseMessage>,
    host: &str,
    port: u16,
    speed: f64,
    cancel: CancellationToken,
) -> Result<MqttReport, OutputError> {
    let messages = espresense_messages(messages)?;
    publish_mqtt(messages, host, port, speed, cancel).await
}
