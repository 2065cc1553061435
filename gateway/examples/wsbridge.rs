//! Runs the WebSocket-to-TCP bridge (`gateway::io::wsbridge`) on its own,
//! for the browser client's tests and for development:
//!
//! ```text
//! cargo run -p gateway --example wsbridge -- --listen 127.0.0.1:9001 --target 127.0.0.1:1883
//! ```
//!
//! `--listen 127.0.0.1:0` picks a free port; the first line on standard
//! output is `wsbridge listening on <addr>` either way. Stops on Ctrl-C or
//! SIGTERM.

use std::net::SocketAddr;

use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(about = "WebSocket (subprotocol mqtt) to TCP bridge for MQTT in the browser")]
struct Args {
    /// Where browsers connect (loopback by default: the bridge has no TLS).
    #[arg(long, default_value_t = gateway::io::wsbridge::default_listen())]
    listen: SocketAddr,
    /// The broker's plain TCP listener.
    #[arg(long, default_value = "127.0.0.1:1883")]
    target: SocketAddr,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GATEWAY_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("wsbridge listening on {}", listener.local_addr()?);
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        stop.cancel();
    });
    gateway::io::wsbridge::run(listener, args.target, cancel).await;
    Ok(())
}
