//! Phones over WebSockets (issue #22): where the installed Mosquitto has its
//! own websockets listener, a client speaks MQTT over `ws://` to it
//! directly; where it has not (Debian's 2.0.11 is built without), the same
//! client goes through the gateway's bridge (`io/wsbridge.rs`) to the
//! broker's TCP listener, and the test says which it used. Either way the
//! client is a real WebSocket client (subprotocol `mqtt`) exchanging real
//! MQTT 3.1.1 packets with a real Mosquitto, and a TCP client's publish
//! reaches it. Phones on the store's Wi-Fi use `wss://`: the TLS test
//! gives Mosquitto's websockets listener a certificate from a throwaway CA
//! (made here, as in delivery.rs) and checks that a client trusting that CA
//! gets through, and that one trusting another CA, or speaking plain
//! `ws://`, does not.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use e2e::{Mosquitto, MosquittoOptions, Phone, QoS, free_tcp_port};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

/// A broker with a websockets listener, or the reason there is none.
fn broker_with_websockets() -> anyhow::Result<Result<(Mosquitto, u16), String>> {
    let ws_port = free_tcp_port()?;
    match Mosquitto::start(
        MosquittoOptions::default()
            .extra(format!("listener {ws_port} 127.0.0.1"))
            .extra("protocol websockets"),
    ) {
        // Mosquitto keeps running when one of several listeners fails to
        // open, so the listener itself is what tells.
        Ok(broker) => {
            let open = e2e::wait_until_blocking(Duration::from_secs(3), || {
                std::net::TcpStream::connect(("127.0.0.1", ws_port)).is_ok()
            });
            if open.is_ok() {
                Ok(Ok((broker, ws_port)))
            } else {
                let log = broker.log();
                let why = log
                    .lines()
                    .find(|l| l.contains("rror") || l.contains("websockets"))
                    .unwrap_or("its websockets listener does not accept connections");
                Ok(Err(format!(
                    "the installed Mosquitto has no websockets listener ({})",
                    why.trim()
                )))
            }
        }
        Err(e) => Ok(Err(format!(
            "the installed Mosquitto did not start with a websockets listener ({})",
            e.to_string().lines().next().unwrap_or_default()
        ))),
    }
}

fn remaining(buf: &[u8]) -> Option<(usize, usize)> {
    // MQTT variable-length "remaining length": (value, bytes used).
    let mut value = 0usize;
    for (i, b) in buf.iter().enumerate().skip(1).take(4) {
        value |= usize::from(b & 0x7F) << (7 * (i - 1));
        if b & 0x80 == 0 {
            return Some((value, i));
        }
    }
    None
}

/// Read whole MQTT packets from binary WebSocket messages.
async fn next_packet<S>(ws: &mut S, buf: &mut Vec<u8>) -> anyhow::Result<Vec<u8>>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        if let Some((len, used)) = remaining(buf) {
            let total = 1 + used + len;
            if buf.len() >= total {
                return Ok(buf.drain(..total).collect());
            }
        }
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .context("no MQTT packet over the WebSocket")?
            .context("WebSocket closed")??;
        match msg {
            Message::Binary(b) => buf.extend_from_slice(&b),
            Message::Close(_) => bail!("WebSocket closed by the server"),
            _ => {}
        }
    }
}

/// A WebSocket request for MQTT (subprotocol `mqtt`, as browsers' MQTT
/// clients send it).
fn mqtt_request(
    url: &str,
) -> anyhow::Result<tokio_tungstenite::tungstenite::handshake::client::Request> {
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse()?);
    Ok(request)
}

fn check_subprotocol(response: &tokio_tungstenite::tungstenite::handshake::client::Response) {
    assert_eq!(
        response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok()),
        Some("mqtt")
    );
}

async fn mqtt_over_websocket(url: &str, broker_port: u16) -> anyhow::Result<()> {
    let (ws, response) = tokio_tungstenite::connect_async(mqtt_request(url)?).await?;
    check_subprotocol(&response);
    mqtt_exchange(ws, broker_port).await
}

/// CONNECT, SUBSCRIBE, and a TCP client's publish received, over an open
/// WebSocket (plain or TLS).
async fn mqtt_exchange<S>(
    mut ws: tokio_tungstenite::WebSocketStream<S>,
    broker_port: u16,
) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    // CONNECT, MQTT 3.1.1, clean session, keep-alive 30 s, client id "ws-phone".
    let mut connect = vec![0x10, 0];
    connect.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30, 0, 8]);
    connect.extend_from_slice(b"ws-phone");
    connect[1] = (connect.len() - 2) as u8;
    ws.send(Message::Binary(connect.into())).await?;
    let connack = next_packet(&mut ws, &mut buf).await?;
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK, accepted");
    // SUBSCRIBE id 1 to "ws/test" QoS 0.
    let mut subscribe = vec![0x82, 0, 0, 1, 0, 7];
    subscribe.extend_from_slice(b"ws/test");
    subscribe.push(0);
    subscribe[1] = (subscribe.len() - 2) as u8;
    ws.send(Message::Binary(subscribe.into())).await?;
    let suback = next_packet(&mut ws, &mut buf).await?;
    assert_eq!(suback, [0x90, 3, 0, 1, 0], "SUBACK, granted QoS 0");
    // A TCP client publishes; the WebSocket client receives it.
    let publisher = Phone::connect_to(broker_port, "tcp-publisher", "unused/#").await?;
    publisher
        .client()
        .publish("ws/test", QoS::AtLeastOnce, false, b"hello".to_vec())
        .await?;
    let publish = next_packet(&mut ws, &mut buf).await?;
    assert_eq!(publish[0] & 0xF0, 0x30, "PUBLISH");
    assert!(publish.ends_with(b"ws/testhello"), "{publish:?}");
    ws.send(Message::Binary(vec![0xE0, 0].into())).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_speaks_mqtt_over_websockets_to_the_broker() -> anyhow::Result<()> {
    match broker_with_websockets()? {
        Ok((broker, ws_port)) => {
            println!("websockets: Mosquitto's own listener on port {ws_port}");
            mqtt_over_websocket(&format!("ws://127.0.0.1:{ws_port}/mqtt"), broker.port()).await
        }
        Err(reason) => {
            println!(
                "skipping Mosquitto's own websockets listener: {reason}; using the gateway's bridge"
            );
            let broker = Mosquitto::start(MosquittoOptions::default())?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let bridge = listener.local_addr()?;
            let cancel = CancellationToken::new();
            let task = tokio::spawn(gateway::io::wsbridge::run(
                listener,
                std::net::SocketAddr::from(([127, 0, 0, 1], broker.port())),
                cancel.clone(),
            ));
            let result = mqtt_over_websocket(&format!("ws://{bridge}/mqtt"), broker.port()).await;
            cancel.cancel();
            task.await?;
            result
        }
    }
}

/// A TLS connection to `port` on loopback that trusts only `ca_der`.
async fn tls_to(
    port: u16,
    ca_der: &[u8],
) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(ca_der.to_vec()))?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_speaks_mqtt_over_tls_websockets_to_the_broker() -> anyhow::Result<()> {
    // Without websockets at all there is no TLS to test here: the bridge
    // (the other test) goes behind a TLS-terminating proxy instead.
    match broker_with_websockets()? {
        Ok((broker, _)) => drop(broker),
        Err(reason) => {
            println!("skipping wss: {reason}");
            return Ok(());
        }
    }
    let e2e::Pki {
        ca_der,
        cert: cert_pem,
        key: key_pem,
        ..
    } = e2e::Pki::named("websockets test CA")?;
    let other_ca_der = e2e::Pki::named("some other CA")?.ca_der;
    let wss_port = free_tcp_port()?;
    // The deploy block (deploy/mosquitto/mosquitto.conf, `listener 8884`),
    // on a free loopback port, with this test's certificate.
    let broker = Mosquitto::start(
        MosquittoOptions::default()
            .file("wss.crt", cert_pem)
            .file("wss.key", key_pem)
            .extra(format!("listener {wss_port} 127.0.0.1"))
            .extra("protocol websockets")
            .extra("certfile {dir}/wss.crt")
            .extra("keyfile {dir}/wss.key"),
    )?;
    // This Mosquitto has websockets: the TLS listener must open too.
    e2e::wait_until_blocking(Duration::from_secs(3), || {
        std::net::TcpStream::connect(("127.0.0.1", wss_port)).is_ok()
    })
    .map_err(|e| anyhow::anyhow!("no TLS websockets listener ({e}):\n{}", broker.log()))?;
    println!("wss: Mosquitto's own websockets listener with TLS on port {wss_port}");
    let url = format!("wss://localhost:{wss_port}/mqtt");

    // Trusting the CA that signed the broker's certificate: MQTT goes through.
    let tls = tls_to(wss_port, &ca_der).await?;
    let (ws, response) = tokio_tungstenite::client_async(mqtt_request(&url)?, tls).await?;
    check_subprotocol(&response);
    mqtt_exchange(ws, broker.port()).await?;

    // Trusting another CA: the TLS handshake fails.
    let refused = tls_to(wss_port, &other_ca_der).await;
    let error = refused
        .err()
        .context("a client trusting another CA got through")?;
    assert!(
        format!("{error:#}").contains("certificate"),
        "expected a certificate error, got {error:#}"
    );

    // Plain ws:// to the TLS listener: no WebSocket.
    let plain = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(mqtt_request(&format!("ws://127.0.0.1:{wss_port}/mqtt"))?),
    )
    .await;
    assert!(
        !matches!(plain, Ok(Ok(_))),
        "plain ws:// was accepted by the TLS listener"
    );
    Ok(())
}
