//! A minimal WebSocket-to-TCP bridge for MQTT over WebSockets.
//!
//! Browsers can only speak MQTT over WebSockets. Where the broker has no
//! websockets listener of its own (see `docs/notes/mqtt-over-websockets.md`
//! and deploy/README.md; Debian's Mosquitto has one, next to a plain
//! listener), and for the demo's embedded broker, this bridge accepts a
//! WebSocket upgrade that
//! offers the `mqtt` subprotocol, opens one plain TCP connection to the
//! broker per WebSocket, and copies binary frames both ways. It does not
//! parse MQTT at all: authentication and ACLs stay the broker's, so the
//! browser client gets exactly the rights its MQTT credentials give it.
//!
//! Bounded: at most [`MAX_CONNECTIONS`] bridged connections (more are
//! dropped at accept), a handshake deadline, a message size limit, and one
//! read buffer per direction. One task per connection; all of them stop
//! when the cancellation token fires. Bind to loopback unless a TLS
//! terminating proxy sits in front: the bridge itself has no TLS.
//!
//! In production the broker's own websockets listener (or EMQX, HiveMQ)
//! takes its place; this is for tests, the demo and development.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_util::sync::CancellationToken;

/// The only WebSocket subprotocol accepted (MQTT 3.1.1 and 5 both use it).
pub const SUBPROTOCOL: &str = "mqtt";
/// Bridged connections at once; further ones are closed at accept.
pub const MAX_CONNECTIONS: usize = 256;
/// Largest WebSocket message (and frame) accepted from a client.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Deadline for the WebSocket upgrade and for connecting to the target.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const READ_BUFFER: usize = 16 * 1024;

/// The default listen address: loopback only.
pub fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9001))
}

/// Serves WebSocket clients on `listener`, bridging each to a new TCP
/// connection to `target`, until `cancel` fires. Returns once every
/// connection task has finished.
pub async fn run(listener: TcpListener, target: SocketAddr, cancel: CancellationToken) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut tasks = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => a,
            // Reap finished tasks so the set does not grow without bound.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "wsbridge: accept failed");
                // Out of file descriptors and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "wsbridge: connection limit reached, closing");
            continue;
        };
        let cancel = cancel.clone();
        tasks.spawn(async move {
            if let Err(e) = bridge(stream, target, cancel).await {
                tracing::debug!(%peer, error = %e, "wsbridge: connection ended");
            }
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Picks `mqtt` out of the client's offered subprotocols, or refuses.
#[allow(clippy::result_large_err)] // the callback signature is tungstenite's
fn choose_subprotocol(
    request: &Request,
    mut response: Response,
) -> Result<Response, ErrorResponse> {
    let offered = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL);
    if !offered {
        let mut refusal = ErrorResponse::new(Some(format!(
            "this endpoint speaks only the \"{SUBPROTOCOL}\" WebSocket subprotocol"
        )));
        *refusal.status_mut() = StatusCode::BAD_REQUEST;
        return Err(refusal);
    }
    response.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    Ok(response)
}

async fn bridge(
    stream: TcpStream,
    target: SocketAddr,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let mut ws = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::accept_hdr_async_with_config(stream, choose_subprotocol, Some(config)),
    )
    .await??;
    let tcp = match tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            close(&mut ws, CloseCode::Error, "broker unreachable").await;
            return Err(e.into());
        }
        Err(e) => {
            close(&mut ws, CloseCode::Error, "broker unreachable").await;
            return Err(e.into());
        }
    };
    tcp.set_nodelay(true)?;
    copy_both_ways(ws, tcp, cancel).await
}

/// The copy loop. Each `select!` branch is cancel-safe (a stream's `next`,
/// a socket's `read`), and the write of one direction completes before the
/// next read, which gives natural back-pressure with one buffer each way.
async fn copy_both_ways(
    mut ws: WebSocketStream<TcpStream>,
    mut tcp: TcpStream,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let (mut from_broker, mut to_broker) = tcp.split();
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                close(&mut ws, CloseCode::Away, "bridge shutting down").await;
                break;
            }
            message = ws.next() => match message {
                Some(Ok(Message::Binary(data))) => to_broker.write_all(&data).await?,
                // tungstenite answers pings itself; pongs and raw frames carry nothing.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    close(&mut ws, CloseCode::Unsupported, "MQTT is binary").await;
                    break;
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(e)) => return Err(e.into()),
            },
            read = from_broker.read(&mut buf) => match read? {
                0 => {
                    close(&mut ws, CloseCode::Normal, "broker closed").await;
                    break;
                }
                n => ws.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await?,
            },
        }
    }
    let _ = to_broker.shutdown().await;
    Ok(())
}

/// Best-effort close frame, bounded in time.
async fn close(ws: &mut WebSocketStream<TcpStream>, code: CloseCode, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(Some(frame))).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    type ClientResponse = tokio_tungstenite::tungstenite::http::Response<Option<Vec<u8>>>;

    /// A TCP server that echoes everything back, one task per connection.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn start_bridge(
        target: SocketAddr,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(run(listener, target, cancel.clone()));
        (addr, cancel, handle)
    }

    async fn connect(
        bridge: SocketAddr,
        protocol: Option<&str>,
    ) -> Result<(WebSocketStream<TcpStream>, ClientResponse), tokio_tungstenite::tungstenite::Error>
    {
        let mut request = format!("ws://{bridge}/mqtt").into_client_request().unwrap();
        if let Some(p) = protocol {
            request
                .headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_str(p).unwrap());
        }
        let tcp = TcpStream::connect(bridge).await.unwrap();
        tokio_tungstenite::client_async(request, tcp).await
    }

    async fn next_binary(ws: &mut WebSocketStream<TcpStream>) -> Vec<u8> {
        let deadline = Duration::from_secs(5);
        loop {
            match tokio::time::timeout(deadline, ws.next()).await.unwrap() {
                Some(Ok(Message::Binary(b))) => return b.to_vec(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a binary message, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn binary_frames_go_through_to_tcp_and_back() {
        let echo = echo_server().await;
        let (bridge, cancel, handle) = start_bridge(echo).await;

        let (mut ws, response) = connect(bridge, Some("mqtt")).await.unwrap();
        assert_eq!(
            response.headers().get("sec-websocket-protocol").unwrap(),
            "mqtt"
        );
        // A CONNECT-like packet, and a larger one than the read buffer.
        ws.send(Message::Binary(Bytes::from_static(&[
            0x10, 0x02, 0x00, 0x04,
        ])))
        .await
        .unwrap();
        assert_eq!(next_binary(&mut ws).await, vec![0x10, 0x02, 0x00, 0x04]);
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        ws.send(Message::Binary(Bytes::from(big.clone())))
            .await
            .unwrap();
        let mut back = Vec::new();
        while back.len() < big.len() {
            back.extend(next_binary(&mut ws).await);
        }
        assert_eq!(back, big, "TCP may re-chunk, but the bytes arrive in order");

        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .expect("bridge stops on cancel")
            .unwrap();
        // The client is told the bridge went away.
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                    Some(Ok(_)) => continue,
                    _ => return None,
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(closed, Some(CloseCode::Away));
    }

    #[tokio::test]
    async fn other_subprotocols_are_refused() {
        let echo = echo_server().await;
        let (bridge, cancel, handle) = start_bridge(echo).await;
        assert!(connect(bridge, None).await.is_err(), "no subprotocol");
        assert!(connect(bridge, Some("binary")).await.is_err(), "wrong one");
        // Offered among others, `mqtt` is chosen.
        let (_ws, response) = connect(bridge, Some("wamp, mqtt")).await.unwrap();
        assert_eq!(
            response.headers().get("sec-websocket-protocol").unwrap(),
            "mqtt"
        );
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn an_unreachable_target_closes_the_websocket() {
        // A port that was free a moment ago: nothing listens there.
        let gone = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let (bridge, cancel, handle) = start_bridge(gone).await;
        let (mut ws, _) = connect(bridge, Some("mqtt")).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap();
        match first {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Error),
            other => panic!("expected a close frame, got {other:?}"),
        }
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn text_frames_are_refused() {
        let echo = echo_server().await;
        let (bridge, cancel, handle) = start_bridge(echo).await;
        let (mut ws, _) = connect(bridge, Some("mqtt")).await.unwrap();
        ws.send(Message::text("hello")).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap();
        match first {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(frame.code, CloseCode::Unsupported)
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .unwrap()
            .unwrap();
    }
}
