//! The admin endpoint on a separate (loopback by default) port:
//! `/metrics` (OpenMetrics text), `/livez`, `/readyz`. A deliberately tiny
//! HTTP/1.1 responder: three GETs, no keep-alive, bounded request size.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::telemetry::{CONTENT_TYPE, Telemetry};

/// What `/readyz` looks at.
#[derive(Clone)]
pub struct Readiness {
    pub mqtt_connected: watch::Receiver<bool>,
    /// Sources currently running.
    pub sources_running: Arc<AtomicUsize>,
    pub storage_open: Arc<std::sync::atomic::AtomicBool>,
    /// Kinds of the subscriptions the broker refused (fixed labels).
    pub refused_subscriptions: watch::Receiver<Vec<&'static str>>,
}

impl Readiness {
    /// Ready = storage open, at least one source running, the broker
    /// connected or the outbox accepting (it accepts while storage is open),
    /// and no subscription refused: a gateway that cannot hear consent
    /// withdrawals must not look healthy.
    pub fn check(&self) -> Result<String, String> {
        let storage = self.storage_open.load(Ordering::Relaxed);
        let sources = self.sources_running.load(Ordering::Relaxed);
        let mqtt = *self.mqtt_connected.borrow();
        let refused = self.refused_subscriptions.borrow().join(",");
        let detail = format!(
            "storage_open={storage} sources_running={sources} mqtt_connected={mqtt} subscriptions_refused={}\n",
            if refused.is_empty() { "none" } else { &refused }
        );
        if storage && sources > 0 && refused.is_empty() {
            Ok(detail)
        } else {
            Err(detail)
        }
    }
}

const MAX_CONNECTIONS: usize = 16;
const MAX_REQUEST: usize = 4096;

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

pub async fn serve(
    listener: TcpListener,
    telemetry: Arc<Telemetry>,
    readiness: Readiness,
    cancel: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else { continue };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        let (telemetry, readiness) = (telemetry.clone(), readiness.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                respond(stream, &telemetry, &readiness),
            )
            .await;
            drop(permit);
        });
    }
}

async fn respond(
    mut stream: TcpStream,
    telemetry: &Telemetry,
    readiness: &Readiness,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    while len < buf.len() && !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let request = String::from_utf8_lossy(&buf[..len]);
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", CONTENT_TYPE, telemetry.render()),
        ("GET", "/livez") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", "/readyz") => match readiness.check() {
            Ok(detail) => ("200 OK", "text/plain", detail),
            Err(detail) => ("503 Service Unavailable", "text/plain", detail),
        },
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_liveness_and_readiness() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let telemetry = Arc::new(Telemetry::new());
        for _ in 0..3 {
            crate::telemetry::events::sighting_received(&telemetry, crate::telemetry::Source::Udp);
        }
        let (_tx, rx) = watch::channel(false);
        let (refused_tx, refused_rx) = watch::channel(Vec::new());
        let readiness = Readiness {
            mqtt_connected: rx,
            sources_running: Arc::new(AtomicUsize::new(0)),
            storage_open: Arc::new(true.into()),
            refused_subscriptions: refused_rx,
        };
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            telemetry,
            readiness.clone(),
            cancel.clone(),
        ));
        assert!(
            get(addr, "/metrics")
                .await
                .contains("gateway_sightings_total{source=\"udp\"} 3")
        );
        assert!(get(addr, "/livez").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        readiness.sources_running.store(1, Ordering::Relaxed);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        refused_tx.send_replace(vec!["consent"]);
        let refused = get(addr, "/readyz").await;
        assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
        assert!(
            refused.contains("subscriptions_refused=consent"),
            "{refused}"
        );
        refused_tx.send_replace(Vec::new());
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        cancel.cancel();
        task.await.unwrap();
    }
}
