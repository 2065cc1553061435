//! Sighting sources: UDP datagrams and capture replay (docs/design.md §7). Each
//! parses records strictly, counts and drops bad ones with the field and
//! reason, and never stops on bad input.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::sighting::{MAX_ADV_BYTES, Sighting};
use crate::telemetry::{Source, Telemetry, events};

/// A sighting with the name of the source that heard it.
#[derive(Debug)]
pub struct Ingested {
    pub source: Source,
    pub sighting: Sighting,
    /// When the source received it: the start of the sighting → PUBACK
    /// latency the gateway reports.
    pub received: std::time::Instant,
}

/// Largest datagram we read: a full record with the longest advert fits.
const MAX_DATAGRAM: usize = MAX_ADV_BYTES * 2 + 512;

/// Read one sighting record per datagram until cancelled.
pub async fn run_udp(
    socket: UdpSocket,
    out: mpsc::Sender<Ingested>,
    telemetry: Arc<Telemetry>,
    cancel: CancellationToken,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        let received = tokio::select! {
            _ = cancel.cancelled() => return,
            r = socket.recv_from(&mut buf) => r,
        };
        let arrived = std::time::Instant::now();
        let (len, _peer) = match received {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors and the like surface here; they are not fatal.
                events::source_failed(&telemetry, Source::Udp, &e);
                continue;
            }
        };
        events::sighting_received(&telemetry, Source::Udp);
        if len > MAX_DATAGRAM {
            events::sighting_rejected(
                &telemetry,
                Source::Udp,
                "datagram",
                "record",
                "datagram too large",
            );
            continue;
        }
        let Ok(text) = std::str::from_utf8(&buf[..len]) else {
            events::sighting_rejected(&telemetry, Source::Udp, "datagram", "record", "not UTF-8");
            continue;
        };
        match Sighting::from_json(text.trim()) {
            Ok(sighting) => {
                if out
                    .send(Ingested {
                        source: Source::Udp,
                        sighting,
                        received: arrived,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                events::sighting_rejected(&telemetry, Source::Udp, "datagram", e.field, &e.reason)
            }
        }
    }
}

/// Replay a JSON Lines capture, paced by its `at_ms` divided by `speed`
/// (0 = as fast as possible). Bad lines are reported with file and line.
pub async fn run_replay(
    path: PathBuf,
    speed: f64,
    out: mpsc::Sender<Ingested>,
    telemetry: Arc<Telemetry>,
    cancel: CancellationToken,
) -> Result<u64, std::io::Error> {
    let file = tokio::fs::File::open(&path).await?;
    let mut lines = tokio::io::BufReader::new(file).lines();
    let origin = |line: u64| format!("{}:{line}", path.display());
    let started = tokio::time::Instant::now();
    let mut first_at: Option<i64> = None;
    let mut line_no = 0u64;
    let mut sent = 0u64;
    loop {
        let line = tokio::select! {
            _ = cancel.cancelled() => return Ok(sent),
            l = lines.next_line() => l?,
        };
        let Some(line) = line else { return Ok(sent) };
        line_no += 1;
        if line.trim().is_empty() {
            continue;
        }
        events::sighting_received(&telemetry, Source::Replay);
        let sighting = match Sighting::from_json(&line) {
            Ok(s) => s,
            Err(e) => {
                events::sighting_rejected(
                    &telemetry,
                    Source::Replay,
                    &origin(line_no),
                    e.field,
                    &e.reason,
                );
                continue;
            }
        };
        if speed > 0.0 {
            let first = *first_at.get_or_insert(sighting.at_ms);
            let due =
                Duration::from_secs_f64(((sighting.at_ms - first).max(0) as f64 / 1000.0) / speed);
            tokio::select! {
                _ = cancel.cancelled() => return Ok(sent),
                _ = tokio::time::sleep_until(started + due) => {}
            }
        }
        if out
            .send(Ingested {
                source: Source::Replay,
                sighting,
                received: std::time::Instant::now(),
            })
            .await
            .is_err()
        {
            return Ok(sent);
        }
        sent += 1;
    }
}

/// Check a capture without running it: every bad line, with its number.
pub fn check_capture(path: &Path) -> Result<Vec<String>, std::io::Error> {
    let text = std::fs::read_to_string(path)?;
    Ok(crate::jsonl::lines(&text)
        .filter_map(|(number, l)| {
            Sighting::from_json(l)
                .err()
                .map(|e| format!("{}:{number}: {e}", path.display()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"scanner": "entrance", "addr": "7f:ff:fe:7e:0e:08", "rssi": -63, "adv": "0201061aff4c00", "at_ms": 1795334400123}"#;

    #[tokio::test]
    async fn udp_drops_bad_datagrams_and_keeps_going() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        let telemetry = Arc::new(Telemetry::new());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run_udp(socket, tx, telemetry.clone(), cancel.clone()));
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for payload in ["garbage", &GOOD.replace("-63", "\"loud\""), GOOD] {
            sender.send_to(payload.as_bytes(), addr).await.unwrap();
        }
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.sighting.scanner, "entrance");
        assert_eq!(
            telemetry.counter("sightings_rejected_total", &[("field", "rssi")]),
            1
        );
        assert_eq!(
            telemetry.counter("sightings_rejected_total", &[("field", "record")]),
            1
        );
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn replay_paces_by_speed_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("capture.jsonl");
        let later = GOOD.replace("1795334400123", "1795334410123");
        std::fs::write(&path, format!("{GOOD}\nnot json\n\n{later}\n")).unwrap();
        assert_eq!(
            check_capture(&path).unwrap(),
            vec![format!(
                "{}:2: record: not valid JSON: expected ident at line 1 column 2",
                path.display()
            )]
        );
        let (tx, mut rx) = mpsc::channel(8);
        let telemetry = Arc::new(Telemetry::new());
        let start = tokio::time::Instant::now();
        let task = tokio::spawn(run_replay(
            path,
            2.0,
            tx,
            telemetry.clone(),
            CancellationToken::new(),
        ));
        rx.recv().await.unwrap();
        rx.recv().await.unwrap();
        // Ten seconds of capture at 2x take five seconds.
        assert_eq!(start.elapsed().as_secs(), 5);
        assert_eq!(task.await.unwrap().unwrap(), 2);
        assert_eq!(
            telemetry.counter("sightings_rejected_total", &[("source", "replay")]),
            1
        );
    }
}
