//! `gateway demo`: everything embedded, nothing to set up. An MQTT broker
//! (rumqttd, demo only) on a free loopback port, the store's digital twin
//! sending sightings over UDP, the real gateway daemon, and a phone that
//! prints each nudge as it arrives.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::daemon::{self, RunSummary};
use crate::identity::PersonRecord;
use crate::store::Store;

#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Stop by itself after this long (wall clock).
    pub run_for: Option<Duration>,
    /// How many times faster than real time the store runs.
    pub speed: f64,
    pub seed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo broker: {0}")]
    Broker(String),
    #[error("demo storage: {0}")]
    Storage(String),
    #[error("demo config: {0}")]
    Config(#[from] config::ConfigError),
    #[error("demo gateway: {0}")]
    Daemon(#[from] daemon::DaemonError),
    #[error("demo simulator: {0}")]
    Simulator(String),
}

#[derive(Clone, Debug, Default)]
pub struct DemoSummary {
    pub gateway: RunSummary,
    pub delivered: usize,
    pub people_enrolled: usize,
}

const STORE_ID: &str = "demo-store";

/// The demo store's site file: the twin's zones, two dwell rules, the caps
/// of docs/design.md §7's minimal site file. Also what dry-run tests use.
pub fn site_toml(broker_port: u16, storage: &std::path::Path) -> String {
    format!(
        r#"
[store]
id = "{STORE_ID}"
timezone = "Europe/Berlin"

[mqtt]
url = "mqtt://127.0.0.1:{broker_port}"
prefix = "retail"

[storage]
path = "{storage}"

[[sources]]
kind = "udp"
bind = "127.0.0.1:0"

[[zones]]
id = "entrance"
scanners = ["entrance"]

[[zones]]
id = "laptops"
scanners = ["laptops"]

[[zones]]
id = "headphones"
scanners = ["headphones"]

[[rules]]
id = "laptop-compare"
zone = "laptops"
dwell_s = 20
interest = "laptops"
kind = "compare"
title = "Comparing laptops?"
body = "Side-by-side specs, reviews and prices for the models on this table."

[[rules]]
id = "headphones-info"
zone = "headphones"
dwell_s = 15
interest = "headphones"
kind = "info"
title = "Headphones: what reviewers measured"
body = "Battery life, noise cancelling and comfort scores for every model on this wall."

[caps]
per_visit = 2
per_day = 3
per_week = 7
min_gap_s = 1200

[presence]
# The twin runs faster than real time, ahead of the wall clock.
max_future_skew_ms = 86400000

[admin]
listen = ""
"#,
        storage = storage
            .display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
    )
}

fn free_port() -> Result<u16, DemoError> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| DemoError::Broker(e.to_string()))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| DemoError::Broker(e.to_string()))
}

/// Start rumqttd on `port` in its own thread. It has no shutdown API: it
/// lives until the process exits, which is what a demo wants.
fn start_broker(port: u16) -> Result<(), DemoError> {
    use std::collections::HashMap;
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: 256 * 1024,
        max_inflight_count: 200,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "demo-v5".into(),
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 64,
            max_outgoing_packet_count: 200,
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 10,
            ..Default::default()
        },
        v5: Some(HashMap::from([("demo".to_string(), server)])),
        ..Default::default()
    };
    std::thread::Builder::new()
        .name("demo-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                eprintln!("demo broker stopped: {e}");
            }
        })
        .map_err(|e| DemoError::Broker(e.to_string()))?;
    // rumqttd reports neither readiness nor bind failure: connect until it answers.
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(DemoError::Broker(format!(
        "did not start listening on 127.0.0.1:{port}"
    )))
}

/// The store's broker for the demo when the phones' page is served and the
/// installed Mosquitto has its own websockets listener: Mosquitto on the
/// demo's MQTT port plus a websockets listener, both on loopback. Killed
/// (and its temp dir removed) when dropped.
struct DemoMosquitto {
    child: std::process::Child,
    ws_port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for DemoMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start Mosquitto with a websockets listener, or say why not (not
/// installed, or its websockets listener does not open). Mosquitto keeps
/// running when one listener fails, so the listener itself is checked.
fn start_mosquitto(port: u16) -> Result<DemoMosquitto, String> {
    let ws_port = free_port().map_err(|e| e.to_string())?;
    let dir = tempfile::Builder::new()
        .prefix("gateway-demo-mosquitto-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "allow_anonymous true\nlistener {port} 127.0.0.1\nlistener {ws_port} 127.0.0.1\nprotocol websockets\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut last = String::from("mosquitto not found");
    for bin in ["mosquitto", "/usr/sbin/mosquitto"] {
        let child = std::process::Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                last = format!("{bin}: {e}");
                continue;
            }
        };
        let mut broker = DemoMosquitto {
            child,
            ws_port,
            _dir: dir,
        };
        for _ in 0..100 {
            if let Ok(Some(status)) = broker.child.try_wait() {
                return Err(format!("mosquitto exited at start ({status})"));
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok()
                && TcpStream::connect(("127.0.0.1", ws_port)).is_ok()
            {
                return Ok(broker);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        return Err("mosquitto's websockets listener did not open".into());
    }
    Err(last)
}

/// Where `scripts/demo` builds the reference phone client (web/).
fn web_dist() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../web/dist")
}

fn content_type(path: &std::path::Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

/// A tiny static file server for the demo's phone page, loopback only.
async fn serve_web(
    listener: tokio::net::TcpListener,
    root: std::path::PathBuf,
    cancel: CancellationToken,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((mut stream, _)) = accepted else {
            continue;
        };
        let root = root.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await
            else {
                return;
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .split('?')
                .next()
                .unwrap_or("/");
            let relative = if path == "/" {
                "index.html"
            } else {
                path.trim_start_matches('/')
            };
            let file = root.join(relative);
            // Only files inside the page's own directory.
            let body = if relative
                .split('/')
                .any(|part| part == ".." || part.is_empty())
            {
                None
            } else {
                tokio::fs::read(&file).await.ok()
            };
            let head = match &body {
                Some(b) => format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    content_type(&file),
                    b.len()
                ),
                None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_string(),
            };
            let _ = stream.write_all(head.as_bytes()).await;
            if let Some(b) = body {
                let _ = stream.write_all(&b).await;
            }
            let _ = stream.shutdown().await;
        });
    }
}

/// Render a nudge the way the phone would show it.
pub fn render_nudge(topic: &str, payload: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(n) => format!(
            "📱 {topic}\n   {} [{}]\n   {}\n   why: {}\n",
            n["title"].as_str().unwrap_or("?"),
            n["kind"].as_str().unwrap_or("?"),
            n["body"].as_str().unwrap_or(""),
            n["why"]["text"].as_str().unwrap_or(""),
        ),
        Err(_) => format!("📱 {topic}\n   (unreadable payload)\n"),
    }
}

/// Run the demo until `run_for` elapses or `cancel` fires; print to `out`.
pub async fn run(
    options: DemoOptions,
    cancel: CancellationToken,
    out: Arc<Mutex<dyn Write + Send>>,
) -> Result<DemoSummary, DemoError> {
    let say = |line: String| {
        let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    };
    let port = free_port()?;
    // Phones' browsers need MQTT over WebSockets: Mosquitto's own listener
    // where the installed one has it, else rumqttd and the gateway's bridge.
    let web = web_dist().join("index.html").exists();
    let (mosquitto, no_mosquitto) = if web {
        match start_mosquitto(port) {
            Ok(m) => (Some(m), String::new()),
            Err(reason) => (None, reason),
        }
    } else {
        (None, String::new())
    };
    if mosquitto.is_none() {
        start_broker(port)?;
    }
    let dir = tempfile::Builder::new()
        .prefix("gateway-demo-")
        .tempdir()
        .map_err(|e| DemoError::Storage(e.to_string()))?;
    let storage = dir.path().join("db");
    let config: Config = config::from_layers(
        "<demo>",
        Some(&site_toml(port, &storage)),
        Default::default(),
    )?;

    let scenario = firmware_sim::Scenario::small_demo(options.seed);
    let people: Vec<PersonRecord> =
        crate::jsonl::parse_all(&scenario.people_jsonl(), PersonRecord::from_json).map_err(
            |(line, e)| DemoError::Simulator(format!("simulator people file:{line}: {e}")),
        )?;
    {
        let store = Store::open(&storage).map_err(|e| DemoError::Storage(e.to_string()))?;
        store
            .upsert_people(&people)
            .map_err(|e| DemoError::Storage(e.to_string()))?;
    }
    say(format!(
        "demo: broker on 127.0.0.1:{port}, {} opted-in shoppers and some strangers, store running {}× real time\n",
        people.len(),
        options.speed
    ));

    // The phone: subscribes to every nudge of this store.
    let mut phone_opts = MqttOptions::new("demo-phone", "127.0.0.1", port);
    phone_opts.set_keep_alive(Duration::from_secs(10));
    let (phone, mut phone_loop) = AsyncClient::new(phone_opts, 16);
    let filter = format!("{}/nudges/+", config.store_topic());
    phone
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .map_err(|e| DemoError::Broker(e.to_string()))?;
    let delivered = Arc::new(Mutex::new(std::collections::HashSet::<String>::new()));
    let phone_stop = CancellationToken::new();
    let phone_task = {
        let (delivered, out, stop) = (delivered.clone(), out.clone(), phone_stop.clone());
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => return,
                    e = phone_loop.poll() => e,
                };
                match event {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let id = serde_json::from_slice::<serde_json::Value>(&p.payload)
                            .ok()
                            .and_then(|v| v["id"].as_str().map(str::to_string))
                            .unwrap_or_default();
                        // QoS 1 may deliver twice: the app drops duplicates by id.
                        if delivered
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(id)
                        {
                            let text = render_nudge(&String::from_utf8_lossy(&p.topic), &p.payload);
                            let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
                            let _ = out.write_all(text.as_bytes());
                            let _ = out.flush();
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        })
    };

    // The reference phone client, when scripts/demo has built it: the page
    // on loopback, and MQTT over WebSockets from Mosquitto's own listener
    // or, failing that, the gateway's bridge in front of rumqttd.
    let web_cancel = CancellationToken::new();
    if web {
        let page = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| DemoError::Broker(e.to_string()))?;
        let page_addr = page
            .local_addr()
            .map_err(|e| DemoError::Broker(e.to_string()))?;
        let ws_url = match &mosquitto {
            Some(m) => {
                tracing::info!(port = m.ws_port, "websockets: Mosquitto's own listener");
                say(format!(
                    "demo: broker is the installed Mosquitto; phones use its own websockets listener on 127.0.0.1:{}\n",
                    m.ws_port
                ));
                format!("ws://127.0.0.1:{}/mqtt", m.ws_port)
            }
            None => {
                let bridge = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .map_err(|e| DemoError::Broker(e.to_string()))?;
                let bridge_addr = bridge
                    .local_addr()
                    .map_err(|e| DemoError::Broker(e.to_string()))?;
                tokio::spawn(crate::io::wsbridge::run(
                    bridge,
                    SocketAddr::from(([127, 0, 0, 1], port)),
                    web_cancel.clone(),
                ));
                tracing::info!(bridge = %bridge_addr, reason = %no_mosquitto, "websockets: the gateway's bridge");
                say(format!(
                    "demo: phones use the gateway's WebSocket bridge on {bridge_addr} in front of the embedded broker ({no_mosquitto})\n"
                ));
                format!("ws://{bridge_addr}/mqtt")
            }
        };
        tokio::spawn(serve_web(page, web_dist(), web_cancel.clone()));
        say("demo: each shopper's phone in a browser (open one before their visit: nudges are not kept for phones that are away):\n".to_string());
        for person in &people {
            let key = person
                .app_keys()
                .next()
                .map(hex::encode)
                .unwrap_or_default();
            let consent: Vec<&str> = crate::identity::Purpose::ALL
                .into_iter()
                .filter(|p| person.consent.get(*p))
                .map(|p| p.as_str())
                .collect();
            // The app key is a secret: never in a URL (history, logs,
            // Referer); the page takes it from its settings form.
            say(format!(
                "  {}: http://{page_addr}/?broker={ws_url}&prefix=retail&store={STORE_ID}&recipient={}&consent={}\n      app key, for the page's connection settings: {key}\n",
                person.recipient,
                person.recipient,
                consent.join(",")
            ));
        }
    }

    let gateway_cancel = CancellationToken::new();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let gateway = tokio::spawn(daemon::run(
        config,
        daemon::RunOptions::default(),
        gateway_cancel.clone(),
        Some(started_tx),
    ));
    let handles = match started_rx.await {
        Ok(h) => h,
        Err(_) => {
            return match gateway.await {
                Ok(Err(e)) => Err(e.into()),
                _ => Err(DemoError::Broker(
                    "gateway stopped before it started".into(),
                )),
            };
        }
    };
    let target = handles.udp_addrs[0];

    // The store: 12 simulated minutes, from now, so rotating identifiers match.
    let start_ms = crate::clock::wall_ms();
    let mut sim = firmware_sim::Simulation::new(
        firmware_sim::StoreSpec::small_store(),
        scenario,
        start_ms,
        options.seed,
    )
    .map_err(|e| DemoError::Simulator(e.to_string()))?;
    let records = sim.run_for(Duration::from_secs(12 * 60));
    let sim_cancel = CancellationToken::new();
    let sim_task = tokio::spawn(firmware_sim::output::send_udp(
        records,
        target,
        options.speed,
        sim_cancel.clone(),
    ));

    let stop_reason = tokio::select! {
        _ = cancel.cancelled() => "stopped",
        _ = async { match options.run_for { Some(d) => tokio::time::sleep(d).await, None => std::future::pending().await } } => "time is up",
    };
    sim_cancel.cancel();
    let _ = sim_task.await;
    // Give delivery a moment for what was just reserved.
    tokio::time::sleep(Duration::from_millis(300)).await;
    gateway_cancel.cancel();
    let summary = gateway
        .await
        .map_err(|e| DemoError::Broker(e.to_string()))??;
    tokio::time::sleep(Duration::from_millis(200)).await;
    phone_stop.cancel();
    web_cancel.cancel();
    let _ = phone_task.await;
    let delivered = delivered.lock().unwrap_or_else(|e| e.into_inner()).len();
    say(format!(
        "\ndemo {stop_reason}: {} sightings, {} people recognised, {} nudges sent ({} delivered to phones), {} held back by caps, {} held back for other reasons (consent, quiet hours)\n",
        summary.sightings,
        summary.people_recognised,
        summary.nudges_reserved,
        delivered,
        summary.nudges_held_by_caps,
        summary.nudges_held_other
    ));
    Ok(DemoSummary {
        gateway: summary,
        delivered,
        people_enrolled: people.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real Mosquitto, when installed: either both listeners answer or
    /// the reason it cannot serve websockets is given. Stopped on drop.
    #[test]
    fn demo_mosquitto_serves_websockets_or_says_why() {
        let port = free_port().unwrap();
        match start_mosquitto(port) {
            Ok(broker) => {
                assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
                assert!(TcpStream::connect(("127.0.0.1", broker.ws_port)).is_ok());
                println!("demo: Mosquitto's own websockets listener");
            }
            Err(reason) => {
                assert!(!reason.is_empty());
                println!("demo falls back to the bridge: {reason}");
            }
        }
    }
}
