//! Where records go: JSON Lines files and UDP datagrams.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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

/// A capture file: one sighting record a line (DESIGN §7).
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

/// The scenario's person records, one a line (DESIGN §5).
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
