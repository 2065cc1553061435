//! MQTT v5 delivery: the outbox pump, the retained status with its last
//! will, and incoming subscriptions.
//!
//! rumqttc facts that shape this (docs/notes/mqtt-rumqttc-rumqttd.md):
//! it reconnects only inside `poll()` and without backoff, so the event
//! loop task sleeps (jittered, growing) after errors; when the broker comes
//! back without our session rumqttc silently drops in-flight publishes, so
//! an outbox entry leaves sled only on its PUBACK, and everything in flight
//! is republished after a session loss. The nudge id makes redelivery
//! harmless for the app.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    Filter, LastWill, Packet, PublishProperties, RetainForwardRule, SubscribeReasonCode,
};
use rumqttc::v5::{AsyncClient, ClientError, Event, EventLoop, MqttOptions};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, TlsSettings};
use crate::store::Store;
use crate::telemetry::{LatencyStamps, Publish, SecretField, Telemetry, events};
use crate::topics::{Subscription, subscription_of};

/// At most this many of our publishes await a PUBACK at once; well under
/// rumqttc's request channel and in-flight window so `try_publish` rarely
/// finds them full.
const MAX_IN_FLIGHT: usize = 32;
const REQUEST_CHANNEL: usize = 64;
/// Receive Maximum we advertise in CONNECT (MQTT v5 §3.1.2.11.3): the
/// broker sends at most this many QoS 1 messages we have not acknowledged.
/// It bounds everything between the socket and the pipeline: the messages
/// waiting for room in the pipeline's channel and the acks waiting for room
/// in rumqttc's request channel. Without it Mosquitto kept sending (65,535
/// unacknowledged by default, more with no limit configured).
pub const RECEIVE_MAXIMUM: u16 = 64;

/// rumqttc's own bound on QoS 1 publishes awaiting a PUBACK (the broker
/// may grant fewer). Delivery keeps at most [`MAX_IN_FLIGHT`] nudges out;
/// status, chain entries and Home Assistant's messages add a few, so this
/// is never what limits us. rumqttc sizes a table of this many slots when
/// the client is made, 216 bytes each: left at its default (65,535) that
/// was 14 MB of the daemon's resident memory (heaptrack, BENCHMARKS.md
/// §2a).
pub const OUTGOING_INFLIGHT: u16 = 256;
/// Acks waiting for rumqttc's request channel: one per packet id at most.
pub const ACK_QUEUE: usize = u16::MAX as usize;
const LINK_EVENTS: usize = 1024;
/// Largest packet we accept, advertised to the broker in CONNECT (MQTT v5
/// Maximum Packet Size). rumqttc's own default is 10 KiB and is *not*
/// advertised: a 12 KiB message made the connection fail on every
/// redelivery, so one oversized QoS 1 message stalled delivery for good.
/// Now anything up to this size reaches the pipeline, which rejects
/// payloads over `MAX_INCOMING_BYTES` with a report; the broker drops larger
/// ones for us (spec: it must not send them).
pub const MAX_INCOMING_PACKET_BYTES: u32 = crate::config::MAX_MQTT_PACKET_BYTES;
// The largest payload we publish is `mqtt.max_publish_bytes`, the
// broker's `message_size_limit`: a broker refuses a larger one with PUBACK
// 0x95, a code rumqttc 0.25 cannot parse, so it would drop the connection
// and send the message again on the next, for ever. Refusing it here keeps
// delivery going.

/// How long the broker keeps our session (and our subscriptions) while we
/// are away.
const SESSION_EXPIRY_S: u32 = 3600;

/// The kind of the subscription to the gateway's own Home Assistant
/// discovery configs ([`Delivery::retained_watch`]).
pub const HOMEASSISTANT_KIND: &str = "homeassistant_discovery";
/// Retained configs waiting for the Home Assistant task, at most.
pub const RETAINED_WATCH_QUEUE: usize = 256;

/// A retained message found under [`Delivery::retained_watch`]'s filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetainedCopy {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// A filter whose retained messages go to another task instead of the
/// pipeline: the Home Assistant discovery configs this gateway publishes,
/// so that those an earlier run left behind can be cleared.
pub struct RetainedWatch {
    pub filter: String,
    pub found: mpsc::Sender<RetainedCopy>,
}

/// A message received on one of our subscriptions.
#[derive(Clone, Debug)]
pub struct IncomingMessage {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// MQTT v5 request/response: where to answer, and what to echo.
    pub response_topic: Option<String>,
    pub correlation_data: Option<Vec<u8>>,
    /// Acknowledges the message to the broker. Acks are manual: the
    /// gateway acks only once what the message asked for is on disk, so a
    /// crash before that makes the broker deliver it again.
    pub ack: Option<Acker>,
}

/// The PUBACK for one received QoS 1 message, sent when [`Acker::ack`] is called.
///
/// Acks go, in order, through a bounded channel to the task that polls the
/// MQTT event loop, which hands them to rumqttc as its request channel has
/// room. Nothing here waits or spawns, and a queued ack is a packet id, not
/// the message: the channel holds [`ACK_QUEUE`] of them, as many as there
/// are packet ids, so it is never full (the broker cannot have more QoS 1
/// messages unacknowledged, whether or not it keeps to our Receive Maximum).
#[derive(Clone, Debug)]
pub struct Acker {
    acks: mpsc::Sender<PendingAck>,
    ack: PendingAck,
}

/// What a PUBACK needs: the packet id and QoS, not the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingAck {
    pkid: u16,
    qos: QoS,
}

impl PendingAck {
    fn request(self) -> rumqttc::v5::mqttbytes::v5::Publish {
        let mut publish =
            rumqttc::v5::mqttbytes::v5::Publish::new("", self.qos, Vec::<u8>::new(), None);
        publish.pkid = self.pkid;
        publish
    }
}

impl Acker {
    pub fn ack(self) {
        // Never wait here. Full cannot happen (one entry per packet id);
        // closed means the connection task has stopped: the broker delivers
        // the message again to the next one.
        let _ = self.acks.try_send(self.ack);
    }
}

/// A message the gateway sends besides nudges (receipts, rejected-input
/// errors). Not kept in the outbox: what it reports is already durable, and
/// the app may resend its request (same id) to get another one.
#[derive(Clone, Debug)]
pub struct OutgoingMessage {
    pub topic: String,
    pub payload: Vec<u8>,
    pub correlation_data: Option<Vec<u8>>,
    pub retain: bool,
}

#[derive(Debug)]
enum LinkEvent {
    Connected {
        session_present: bool,
    },
    Disconnected {
        kind: &'static str,
        reason: String,
    },
    Sent {
        pkid: u16,
    },
    Acked {
        pkid: u16,
        ok: bool,
    },
    /// The broker's answer to our SUBSCRIBE, one code per filter, in order.
    SubAcked {
        codes: Vec<SubscribeReasonCode>,
    },
}

/// A SUBACK code as the broker sent it, for the log (MQTT v5 §3.9.3).
fn suback_code(code: &SubscribeReasonCode) -> u8 {
    use SubscribeReasonCode as C;
    match code {
        C::Success(qos) => *qos as u8,
        C::Failure | C::Unspecified => 0x80,
        C::ImplementationSpecific => 0x83,
        C::NotAuthorized => 0x87,
        C::TopicFilterInvalid => 0x8F,
        C::PkidInUse => 0x91,
        C::QuotaExceeded => 0x97,
        C::SharedSubscriptionsNotSupported => 0x9E,
        C::SubscriptionIdNotSupported => 0xA1,
        C::WildcardSubscriptionsNotSupported => 0xA2,
    }
}

/// The kinds of the filters a SUBACK refused, in subscription order, or
/// `None` when the SUBACK does not answer our subscription list.
pub fn refused_kinds(
    subscriptions: &[Subscription],
    codes: &[SubscribeReasonCode],
) -> Option<Vec<(&'static str, u8)>> {
    if codes.len() != subscriptions.len() {
        return None;
    }
    Some(
        subscriptions
            .iter()
            .zip(codes)
            .filter(|(_, code)| !matches!(code, SubscribeReasonCode::Success(_)))
            .map(|(s, code)| (s.kind, suback_code(code)))
            .collect(),
    )
}

/// Of the refused filters, those that make the gateway not ready: all but
/// the Home Assistant watch, which only tidies up.
pub fn kinds_blocking_readiness(refused: Vec<(&'static str, u8)>) -> Vec<&'static str> {
    refused
        .into_iter()
        .map(|(kind, _)| kind)
        .filter(|kind| *kind != HOMEASSISTANT_KIND)
        .collect()
}

/// The SUBSCRIBE filters: QoS 1, and no retained copies except where
/// retained messages are the protocol (the CRM's records, and only when the
/// subscription is new: a resumed session already has them).
fn filters(subscriptions: &[Subscription]) -> Vec<Filter> {
    subscriptions
        .iter()
        .map(|s| {
            let mut filter = Filter::new(s.filter.clone(), QoS::AtLeastOnce);
            filter.retain_forward_rule = if s.kind == HOMEASSISTANT_KIND {
                // Every connect: a resumed session keeps the subscription,
                // and the leftovers are what a restart is to find.
                RetainForwardRule::OnEverySubscribe
            } else if s.retained_wanted {
                RetainForwardRule::OnNewSubscribe
            } else {
                RetainForwardRule::Never
            };
            filter
        })
        .collect()
}

/// Whether a received message is a retained copy nobody should act on:
/// retained on a topic whose messages are requests, not state.
pub fn ignore_retained(subscription: Option<&Subscription>, retain: bool) -> bool {
    retain && !subscription.is_some_and(|s| s.retained_wanted)
}

pub fn status_payload(config: &Config, online: bool) -> String {
    serde_json::json!({
        "status": if online { "online" } else { "offline" },
        "version": env!("CARGO_PKG_VERSION"),
        "config_hash": config.hash,
        "store": config.store_id,
    })
    .to_string()
}

/// A TLS setting that cannot be used, with the config field it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsProblem {
    pub field: &'static str,
    pub reason: String,
}

fn read_pem(field: &'static str, path: &std::path::Path) -> Result<Vec<u8>, TlsProblem> {
    std::fs::read(path).map_err(|e| TlsProblem {
        field,
        reason: format!("{}: {e}", path.display()),
    })
}

/// The TLS settings of `config` loaded into rustls, as a config problem
/// (`mqtt.<field>: reason`) if they cannot be: what `check-config` and
/// `run` add to the config's own checks of the files (which see only that
/// they are PEM with a certificate and a key, not whether rustls takes them
/// or the key fits the certificate).
pub fn check_tls(config: &Config) -> Result<(), crate::config::Problem> {
    match &config.mqtt.tls {
        None => Ok(()),
        Some(tls) => tls_client_config(tls)
            .map(|_| ())
            .map_err(|e| crate::config::Problem {
                path: format!("mqtt.{}", e.field),
                reason: e.reason,
            }),
    }
}

/// The rustls client configuration for `mqtts://`: rustls' `ring` provider
/// (no aws-lc), the CA file's certificates (or the system trust store) as
/// roots, full server certificate verification, and a client certificate
/// when configured.
pub fn tls_client_config(tls: &TlsSettings) -> Result<rustls::ClientConfig, TlsProblem> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            let pem = read_pem("ca_file", path)?;
            let certs = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsProblem {
                    field: "ca_file",
                    reason: format!("{}: not PEM: {e}", path.display()),
                })?;
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsProblem {
                    field: "ca_file",
                    reason: format!("{}: no usable CA certificate", path.display()),
                });
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err(TlsProblem {
                    field: "ca_file",
                    reason: "no system CA certificates found; set mqtt.ca_file".into(),
                });
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsProblem {
            field: "url",
            reason: format!("TLS setup: {e}"),
        })?
        .with_root_certificates(roots);
    match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert_path), Some(key_path)) => {
            let pem = read_pem("client_cert_file", cert_path)?;
            let chain = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsProblem {
                    field: "client_cert_file",
                    reason: format!("{}: not PEM: {e}", cert_path.display()),
                })?;
            if chain.is_empty() {
                return Err(TlsProblem {
                    field: "client_cert_file",
                    reason: format!("{}: no certificate", cert_path.display()),
                });
            }
            let pem = read_pem("client_key_file", key_path)?;
            let key = rustls_pemfile::private_key(&mut pem.as_slice())
                .ok()
                .flatten()
                .ok_or_else(|| TlsProblem {
                    field: "client_key_file",
                    reason: format!("{}: no private key", key_path.display()),
                })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsProblem {
                    field: "client_key_file",
                    reason: format!("does not fit the client certificate: {e}"),
                })
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(TlsProblem {
            field: "client_key_file",
            reason: "client_cert_file and client_key_file go together".into(),
        }),
    }
}

fn options(config: &Config) -> Result<MqttOptions, TlsProblem> {
    let mut opts = MqttOptions::new(
        config.mqtt.client_id.clone(),
        config.mqtt.host.clone(),
        config.mqtt.port,
    );
    opts.set_keep_alive(config.mqtt.keep_alive);
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(SESSION_EXPIRY_S));
    opts.set_manual_acks(true);
    opts.set_max_packet_size(Some(MAX_INCOMING_PACKET_BYTES));
    opts.set_receive_maximum(Some(RECEIVE_MAXIMUM));
    opts.set_outgoing_inflight_upper_limit(OUTGOING_INFLIGHT);
    opts.set_last_will(LastWill::new(
        config.status_topic(),
        status_payload(config, false),
        QoS::AtLeastOnce,
        true,
        None,
    ));
    if let Some(username) = &config.mqtt.username {
        let password = config
            .mqtt
            .password
            .as_ref()
            .map_or("", |p| p.expose())
            .to_string();
        opts.set_credentials(username.clone(), password);
    }
    if let Some(tls) = &config.mqtt.tls {
        let client_config = tls_client_config(tls)?;
        opts.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
            Arc::new(client_config),
        )));
    }
    Ok(opts)
}

/// Warns (log and metric) when a secret file is readable by group or others:
/// with `DynamicUser=` it would have to be, which is why the unit passes the
/// password as a credential instead.
pub fn check_secret_file(telemetry: &Telemetry, field: SecretField, path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o044 != 0 {
            events::secret_file_exposed(telemetry, field, mode);
        }
    }
}

/// A short, stable label for why a connection attempt failed, for the
/// `mqtt_connect_errors_total{reason}` counter.
fn error_kind(error: &rumqttc::v5::ConnectionError) -> &'static str {
    use rumqttc::v5::ConnectionError as E;
    match error {
        E::Tls(_) => "tls",
        E::ConnectionRefused(_) => "refused",
        E::Io(_) => "io",
        E::Timeout(_) => "timeout",
        E::MqttState(_) => "protocol",
        _ => "other",
    }
}

/// Delay before reconnect attempt `attempt` (0-based): 100 ms doubling to
/// 10 s, with ±25 % jitter so that a fleet of gateways does not reconnect in
/// lockstep after a broker restart.
pub fn backoff(attempt: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << attempt.min(7)).min(10_000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let jitter = (nanos % (base / 2 + 1)) as i64 - (base / 4) as i64;
    Duration::from_millis((base as i64 + jitter).max(1) as u64)
}

/// The rumqttc event loop as a stream. `StreamExt::next` on it is
/// cancel-safe: a `poll()` in progress is kept, not dropped, when another
/// branch of a `select!` wins (dropping one half-way could lose a packet it
/// had taken from the socket or the request channel). After an error the
/// next poll waits a backoff first.
fn events(
    eventloop: EventLoop,
) -> impl futures_util::Stream<Item = Result<Event, rumqttc::v5::ConnectionError>> {
    futures_util::stream::unfold(
        (eventloop, 0u32, false),
        |(mut eventloop, mut failures, failed)| async move {
            if failed {
                tokio::time::sleep(backoff(failures)).await;
                failures = failures.saturating_add(1);
            }
            let event = eventloop.poll().await;
            match &event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => failures = 0,
                Ok(_) => {}
                Err(_) => return Some((event, (eventloop, failures, true))),
            }
            Some((event, (eventloop, failures, false)))
        },
    )
}

/// Messages received and not yet in the pipeline's channel, and acks from
/// the pipeline not yet in rumqttc's request channel. The event loop is not
/// polled while [`RECEIVE_MAXIMUM`] messages wait (a broker that keeps to
/// it never makes us stop); acks are bounded by the packet id space.
struct Intake {
    waiting: VecDeque<IncomingMessage>,
    acks_tx: mpsc::Sender<PendingAck>,
    acks: mpsc::Receiver<PendingAck>,
    /// An ack taken from `acks` that rumqttc's request channel had no room for.
    held: Option<PendingAck>,
}

impl Intake {
    fn new() -> Intake {
        let (acks_tx, acks) = mpsc::channel(ACK_QUEUE);
        Intake {
            waiting: VecDeque::new(),
            acks_tx,
            acks,
            held: None,
        }
    }

    fn acker(&self, publish: &rumqttc::v5::mqttbytes::v5::Publish) -> Option<Acker> {
        (publish.qos != QoS::AtMostOnce).then(|| Acker {
            acks: self.acks_tx.clone(),
            ack: PendingAck {
                pkid: publish.pkid,
                qos: publish.qos,
            },
        })
    }

    /// Whether the event loop may be polled for more.
    fn has_room(&self) -> bool {
        self.waiting.len() < RECEIVE_MAXIMUM as usize
    }

    /// Hands queued acks to rumqttc, in order, while its request channel
    /// has room. Never waits.
    fn forward_acks(&mut self, client: &AsyncClient) {
        loop {
            let ack = match self.held.take() {
                Some(ack) => ack,
                None => match self.acks.try_recv() {
                    Ok(ack) => ack,
                    Err(_) => return,
                },
            };
            match client.try_ack(&ack.request()) {
                Ok(()) => {}
                Err(ClientError::TryRequest(_)) => {
                    self.held = Some(ack);
                    return;
                }
                // The event loop is gone: we are stopping.
                Err(_) => return,
            }
        }
    }

    /// Moves waiting messages into the pipeline's channel while it has room.
    /// Err when the pipeline is gone.
    fn forward_messages(&mut self, incoming: &mpsc::Sender<IncomingMessage>) -> Result<(), ()> {
        while let Some(message) = self.waiting.pop_front() {
            match incoming.try_send(message) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(message)) => {
                    self.waiting.push_front(message);
                    return Ok(());
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(()),
            }
        }
        Ok(())
    }
}

/// Where received messages go: the pipeline, by subscription, except the
/// retained copies of the watched filter.
struct Routes {
    subscriptions: Arc<Vec<Subscription>>,
    retained_watch: Option<mpsc::Sender<RetainedCopy>>,
}

/// Poll the event loop until told to stop, turning what matters into
/// `LinkEvent`s and incoming messages.
///
/// The event loop keeps being polled while received messages wait for room
/// in the pipeline's channel (up to [`RECEIVE_MAXIMUM`] of them), so the
/// acks the pipeline sends meanwhile go out: awaiting the pipeline here
/// instead stalled the acks, which piled up behind rumqttc's full request
/// channel while the broker kept sending.
async fn drive_event_loop(
    client: AsyncClient,
    eventloop: EventLoop,
    link: mpsc::Sender<LinkEvent>,
    incoming: mpsc::Sender<IncomingMessage>,
    routes: Routes,
    telemetry: Arc<Telemetry>,
    stop: CancellationToken,
) {
    let Routes {
        subscriptions,
        retained_watch,
    } = routes;
    let events = events(eventloop);
    tokio::pin!(events);
    let mut intake = Intake::new();
    loop {
        intake.forward_acks(&client);
        if intake.forward_messages(&incoming).is_err() {
            return;
        }
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            // Room in the pipeline: the front waiting message goes in.
            permit = incoming.reserve(), if !intake.waiting.is_empty() => {
                let Ok(permit) = permit else { return };
                if let Some(message) = intake.waiting.pop_front() {
                    permit.send(message);
                }
                continue;
            }
            // An ack from the pipeline (at most one held back at a time).
            ack = intake.acks.recv(), if intake.held.is_none() => {
                intake.held = ack;
                continue;
            }
            event = events.next(), if intake.has_room() => match event {
                Some(event) => event,
                None => return,
            },
        };
        let link_event = match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => Some(LinkEvent::Connected {
                session_present: ack.session_present,
            }),
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                use rumqttc::v5::mqttbytes::v5::PubAckReason;
                let ok = matches!(
                    ack.reason,
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                );
                Some(LinkEvent::Acked { pkid: ack.pkid, ok })
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => Some(LinkEvent::SubAcked {
                codes: ack.return_codes,
            }),
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let topic = String::from_utf8_lossy(&publish.topic).into_owned();
                let subscription = subscription_of(&subscriptions, &topic);
                if subscription.is_some_and(|s| s.kind == HOMEASSISTANT_KIND) {
                    // Only the broker's retained copies matter (our own
                    // publishes come back live, not retained); an empty one
                    // is already a removal. Never waits: a full queue drops
                    // the copy, and the next connect sends it again.
                    if publish.retain && !publish.payload.is_empty() {
                        if let Some(found) = &retained_watch {
                            let copy = RetainedCopy {
                                topic,
                                payload: publish.payload.to_vec(),
                            };
                            if found.try_send(copy).is_err() {
                                events::retained_copy_dropped(&telemetry, HOMEASSISTANT_KIND);
                            }
                        }
                    }
                    if let Some(acker) = intake.acker(&publish) {
                        acker.ack();
                    }
                    continue;
                }
                if ignore_retained(subscription, publish.retain) {
                    events::retained_message_ignored(
                        &telemetry,
                        subscription.map_or("unknown", |s| s.kind),
                    );
                    if let Some(acker) = intake.acker(&publish) {
                        acker.ack();
                    }
                    continue;
                }
                let (response_topic, correlation_data) = match &publish.properties {
                    Some(p) => (
                        p.response_topic.clone(),
                        p.correlation_data.as_ref().map(|c| c.to_vec()),
                    ),
                    None => (None, None),
                };
                intake.waiting.push_back(IncomingMessage {
                    topic,
                    payload: publish.payload.to_vec(),
                    retain: publish.retain,
                    response_topic,
                    correlation_data,
                    ack: intake.acker(&publish),
                });
                None
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => {
                Some(LinkEvent::Sent { pkid })
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => None,
            Err(error) => Some(LinkEvent::Disconnected {
                kind: error_kind(&error),
                reason: error.to_string(),
            }),
        };
        if let Some(link_event) = link_event {
            // Delivery reads link events all the time; a full channel is
            // a moment's wait, and stopping cancels it.
            tokio::select! {
                _ = stop.cancelled() => return,
                sent = link.send(link_event) => if sent.is_err() { return },
            }
        }
    }
}

/// What one publish we made stands for, to act on its PUBACK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    Outbox(u64),
    /// An entry of the chain outbox (`[caps.chain]`).
    Chain(u64),
    Status,
    Other,
}

struct Pump {
    stamps: LatencyStamps,
    /// Outbox sequence → when its triggering sighting arrived.
    timing: HashMap<u64, std::time::Instant>,
    config: Arc<Config>,
    store: Store,
    telemetry: Arc<Telemetry>,
    client: AsyncClient,
    connected: bool,
    /// Publishes handed to rumqttc, in order, not yet given a packet id.
    unsent: VecDeque<Pending>,
    /// Packet id → what it carries, until its PUBACK.
    in_flight: HashMap<u16, Pending>,
    /// Next outbox sequence to look at.
    cursor: u64,
    /// Next chain outbox sequence to look at.
    chain_cursor: u64,
    subscriptions: Arc<Vec<Subscription>>,
    /// Our SUBSCRIBE still has to be handed to rumqttc (after a connect,
    /// when its request channel was full).
    subscribe_pending: bool,
    /// Kinds of the filters the broker last refused, for `/readyz`.
    refused: watch::Sender<Vec<&'static str>>,
}

impl Pump {
    fn outstanding(&self) -> usize {
        self.unsent.len() + self.in_flight.len()
    }

    fn on_link(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Connected { session_present } => {
                events::mqtt_connection(
                    &self.telemetry,
                    true,
                    if session_present {
                        "session resumed"
                    } else {
                        "new session"
                    },
                );
                self.connected = true;
                // Every time, session or not: whoever held our client id
                // in between may have unsubscribed us, and a resumed
                // session would then silently hear nothing.
                self.subscribe_pending = true;
                if !session_present {
                    // rumqttc dropped what was in flight: send it again, from
                    // the oldest.
                    let mut lost = Vec::new();
                    let mut lost_chain = Vec::new();
                    for (_, pending) in self.in_flight.drain() {
                        match pending {
                            Pending::Outbox(seq) => lost.push(seq),
                            Pending::Chain(seq) => lost_chain.push(seq),
                            Pending::Status | Pending::Other => {}
                        }
                    }
                    if let Some(oldest) = lost.iter().min() {
                        self.cursor = self.cursor.min(*oldest);
                    }
                    // The chain's entries likewise: the same PUBACK rule.
                    if let Some(oldest) = lost_chain.iter().min() {
                        self.chain_cursor = self.chain_cursor.min(*oldest);
                    }
                }
                self.publish_status(true);
            }
            LinkEvent::Disconnected { kind, reason } => {
                events::mqtt_connect_failed(&self.telemetry, kind);
                if self.connected {
                    events::mqtt_connection(&self.telemetry, false, &reason);
                } else if kind == "tls" || kind == "refused" || self.telemetry.may_warn() {
                    // Not connected and failing: say why (a wrong CA or bad
                    // credentials never fix themselves), at most once per
                    // backoff step.
                    tracing::error!(kind, error = %reason, "cannot connect to the MQTT broker");
                }
                self.connected = false;
            }
            LinkEvent::SubAcked { codes } => self.on_suback(&codes),
            LinkEvent::Sent { pkid } => {
                // A packet id we already track is rumqttc retransmitting.
                if !self.in_flight.contains_key(&pkid) {
                    if let Some(pending) = self.unsent.pop_front() {
                        self.in_flight.insert(pkid, pending);
                    }
                }
            }
            LinkEvent::Acked { pkid, ok } => {
                let pending = self.in_flight.remove(&pkid);
                if let Some(Pending::Chain(seq)) = pending {
                    match self.store.chain_outbox_remove(seq) {
                        Ok(()) if ok => events::chain_entry_acked(&self.telemetry),
                        Ok(()) => events::chain_entry_refused_by_broker(&self.telemetry, seq),
                        Err(e) => events::storage_error(&self.telemetry, "chain_outbox_remove", &e),
                    }
                }
                if let Some(Pending::Outbox(seq)) = pending {
                    if let Some(arrived) = self.timing.remove(&seq).filter(|_| ok) {
                        events::sighting_to_puback(&self.telemetry, arrived.elapsed());
                    }
                    match self.store.outbox_remove(seq) {
                        Ok(()) if ok => events::nudge_acked(&self.telemetry, &seq.to_string()),
                        Ok(()) => events::nudge_refused_by_broker(&self.telemetry, seq),
                        Err(e) => events::storage_error(&self.telemetry, "outbox_remove", &e),
                    }
                }
            }
        }
    }

    fn subscribe(&mut self) {
        if !self.connected || !self.subscribe_pending || self.subscriptions.is_empty() {
            return;
        }
        match self.client.try_subscribe_many(filters(&self.subscriptions)) {
            Ok(()) => self.subscribe_pending = false,
            // Full: the next turn of the loop tries again.
            Err(ClientError::TryRequest(_)) => {}
            Err(e) => {
                self.subscribe_pending = false;
                tracing::error!(error = %e, "subscribe request refused by the MQTT client");
            }
        }
    }

    fn on_suback(&mut self, codes: &[SubscribeReasonCode]) {
        let Some(refused) = refused_kinds(&self.subscriptions, codes) else {
            tracing::warn!(
                codes = codes.len(),
                filters = self.subscriptions.len(),
                "a SUBACK that does not answer our subscriptions; ignored"
            );
            return;
        };
        for (kind, code) in &refused {
            events::subscription_refused(&self.telemetry, kind, *code);
        }
        events::subscribed(&self.telemetry, refused.len());
        // The Home Assistant watch only tidies up: refused (an ACL that
        // lets the gateway write discovery but not read it), it is logged
        // and counted, and the gateway stays ready.
        let kinds = kinds_blocking_readiness(refused);
        self.refused.send_if_modified(|current| {
            let changed = *current != kinds;
            *current = kinds;
            changed
        });
    }

    fn publish_status(&mut self, online: bool) {
        let payload = status_payload(&self.config, online);
        if self
            .client
            .try_publish(self.config.status_topic(), QoS::AtLeastOnce, true, payload)
            .is_ok()
        {
            self.unsent.push_back(Pending::Status);
        }
    }

    fn publish_other(&mut self, message: OutgoingMessage) {
        let limit = self.config.mqtt.max_publish_bytes;
        if message.payload.len() > limit {
            events::publish_too_large(
                &self.telemetry,
                Publish::Other,
                message.payload.len(),
                limit,
            );
            return;
        }
        let properties = PublishProperties {
            correlation_data: message.correlation_data.map(Into::into),
            content_type: Some("application/json".into()),
            ..Default::default()
        };
        match self.client.try_publish_with_properties(
            message.topic,
            QoS::AtLeastOnce,
            message.retain,
            message.payload,
            properties,
        ) {
            Ok(()) => self.unsent.push_back(Pending::Other),
            Err(e) => events::reply_dropped(&self.telemetry, &e),
        }
    }

    /// Hand chain outbox entries to rumqttc while connected and under the
    /// window, after the nudges (a customer waits for those). QoS 1, not
    /// retained, no expiry: a late entry still counts in the other stores.
    fn pump_chain(&mut self) {
        let to_send = self.window(
            self.store.chain_outbox_from(self.chain_cursor),
            "chain_outbox_read",
        );
        for (seq, entry) in to_send {
            if !self.hand_over(entry.topic, entry.payload, None) {
                break;
            }
            self.unsent.push_back(Pending::Chain(seq));
            self.chain_cursor = seq + 1;
        }
    }

    /// Hand one JSON message to rumqttc (QoS 1, not retained, with
    /// `expiry_s` as its message expiry when given). False when it did not
    /// take it (its request queue full, or refused: logged): the batch
    /// stops there and the next pump starts again from that entry.
    fn hand_over(&self, topic: String, payload: String, expiry_s: Option<u32>) -> bool {
        let properties = PublishProperties {
            message_expiry_interval: expiry_s,
            content_type: Some("application/json".into()),
            payload_format_indicator: Some(1),
            ..Default::default()
        };
        match self.client.try_publish_with_properties(
            topic,
            QoS::AtLeastOnce,
            false,
            payload,
            properties,
        ) {
            Ok(()) => true,
            Err(ClientError::TryRequest(_)) => false,
            Err(e) => {
                tracing::warn!(error = %e, "publish request refused by the MQTT client");
                false
            }
        }
    }

    /// The entries `items` holds that fit in the in-flight window, read in
    /// order; a read error (counted as `during`) ends the batch, the rest
    /// waits for the next pump.
    fn window<T, E: std::fmt::Display>(
        &self,
        items: impl IntoIterator<Item = Result<T, E>>,
        during: &'static str,
    ) -> Vec<T> {
        let mut to_send = Vec::new();
        for item in items {
            if self.outstanding() + to_send.len() >= MAX_IN_FLIGHT {
                break;
            }
            match item {
                Ok(entry) => to_send.push(entry),
                Err(e) => {
                    events::storage_error(&self.telemetry, during, &e);
                    break;
                }
            }
        }
        to_send
    }

    /// Hand outbox entries to rumqttc while connected and under the window.
    fn pump(&mut self) {
        if !self.connected {
            return;
        }
        self.subscribe();
        self.pump_nudges();
        if self.config.chain.is_some() {
            self.pump_chain();
        }
    }

    fn pump_nudges(&mut self) {
        let now_ms = crate::clock::wall_ms();
        let to_send = self.window(self.store.outbox_from(self.cursor), "outbox_read");
        for (seq, entry) in to_send {
            let limit = self.config.mqtt.max_publish_bytes;
            if entry.payload.len() > limit {
                if let Err(e) = self.store.outbox_remove(seq) {
                    events::storage_error(&self.telemetry, "outbox_remove", &e);
                }
                events::publish_too_large(
                    &self.telemetry,
                    Publish::Nudge,
                    entry.payload.len(),
                    limit,
                );
                self.cursor = seq + 1;
                continue;
            }
            if entry.expires_at_ms <= now_ms {
                if let Err(e) = self.store.outbox_remove(seq) {
                    events::storage_error(&self.telemetry, "outbox_expire", &e);
                }
                events::nudge_expired(&self.telemetry, &entry.nudge_id);
                self.cursor = seq + 1;
                continue;
            }
            let remaining_s =
                ((entry.expires_at_ms - now_ms + 999) / 1000).clamp(1, u32::MAX as i64) as u32;
            if !self.hand_over(entry.topic, entry.payload, Some(remaining_s)) {
                break;
            }
            if let Some(arrived) = self
                .stamps
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&entry.nudge_id)
            {
                self.timing.insert(seq, arrived);
            }
            self.unsent.push_back(Pending::Outbox(seq));
            self.cursor = seq + 1;
            events::nudge_published(&self.telemetry);
        }
    }
}

/// Everything delivery needs from the daemon.
pub struct Delivery {
    pub config: Arc<Config>,
    pub store: Store,
    pub telemetry: Arc<Telemetry>,
    /// Poked when a reservation put something in the outbox.
    pub outbox_ready: Arc<Notify>,
    /// Messages arriving on `subscriptions`.
    pub incoming: mpsc::Sender<IncomingMessage>,
    /// Receipts and error reports to publish (QoS 1, not retained).
    pub outgoing: mpsc::Receiver<OutgoingMessage>,
    pub subscriptions: Vec<Subscription>,
    /// The link state, for `/readyz` and the demo.
    pub connected: watch::Sender<bool>,
    /// The kinds of subscriptions the broker refused, for `/readyz`.
    pub refused_subscriptions: watch::Sender<Vec<&'static str>>,
    /// Reloaded configurations: the retained status names the config hash.
    pub config_updates: watch::Receiver<Arc<Config>>,
    /// Arrival times of the sightings behind reserved nudges.
    pub latency_stamps: LatencyStamps,
    /// Subscribed with `subscriptions`; its retained copies go to the Home
    /// Assistant task, not to `incoming`.
    pub retained_watch: Option<RetainedWatch>,
}

impl Delivery {
    /// Run delivery until `cancel`; then publish `offline` and disconnect.
    pub async fn run(self, cancel: CancellationToken) {
        let Delivery {
            latency_stamps,
            mut config_updates,
            config,
            store,
            telemetry,
            outbox_ready,
            incoming,
            mut outgoing,
            subscriptions,
            connected,
            refused_subscriptions,
            retained_watch,
        } = self;
        let mut subscriptions = subscriptions;
        let retained_watch = retained_watch.map(|w| {
            subscriptions.push(Subscription {
                filter: w.filter,
                kind: HOMEASSISTANT_KIND,
                retained_wanted: true,
            });
            w.found
        });
        let subscriptions = Arc::new(subscriptions);
        let opts = match options(&config) {
            Ok(opts) => opts,
            Err(problem) => {
                // Validation read the same files; they changed since. Stay
                // not-ready (the outbox keeps everything) until stopped.
                events::mqtt_connect_failed(&telemetry, "tls");
                events::mqtt_not_connected(&telemetry);
                tracing::error!(field = problem.field, reason = %problem.reason, "mqtt TLS settings unusable; not connecting");
                cancel.cancelled().await;
                return;
            }
        };
        // Nudges leave in small bursts (a batch of reservations becomes
        // visible at once): with Nagle's algorithm the second publish of a
        // burst waits for the broker's delayed ACK, 40 ms on Linux.
        let mut opts = opts;
        let mut network = opts.network_options();
        network.set_tcp_nodelay(true);
        opts.set_network_options(network);
        let (client, eventloop) = AsyncClient::new(opts, REQUEST_CHANNEL);
        let (link_tx, mut link_rx) = mpsc::channel(LINK_EVENTS);
        let stop_loop = CancellationToken::new();
        let loop_task = tokio::spawn(drive_event_loop(
            client.clone(),
            eventloop,
            link_tx,
            incoming,
            Routes {
                subscriptions: subscriptions.clone(),
                retained_watch,
            },
            telemetry.clone(),
            stop_loop.clone(),
        ));
        events::mqtt_not_connected(&telemetry);
        events::subscriptions_refused_now(&telemetry, 0);
        if let Some(path) = &config.mqtt.password_file {
            check_secret_file(&telemetry, SecretField::MqttPasswordFile, path);
        }
        if config.mqtt.password_in_clear() {
            tracing::warn!(
                "mqtt: a password over plain mqtt:// travels in the clear; use mqtts://"
            );
        }
        let mut pump = Pump {
            subscriptions,
            subscribe_pending: false,
            refused: refused_subscriptions,
            stamps: latency_stamps,
            timing: HashMap::new(),
            config: config.clone(),
            store,
            telemetry,
            client: client.clone(),
            connected: false,
            unsent: VecDeque::new(),
            in_flight: HashMap::new(),
            cursor: 0,
            chain_cursor: 0,
        };
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                event = link_rx.recv() => match event {
                    Some(event) => {
                        let was_connected = pump.connected;
                        pump.on_link(event);
                        if was_connected != pump.connected {
                            let _ = connected.send(pump.connected);
                        }
                    }
                    None => break,
                },
                _ = outbox_ready.notified() => {}
                Some(message) = outgoing.recv(), if pump.connected => pump.publish_other(message),
                Ok(()) = config_updates.changed() => {
                    // Only the hash and what it describes change live; the
                    // connection settings stay until a restart.
                    pump.config = config_updates.borrow_and_update().clone();
                    if pump.connected {
                        pump.publish_status(true);
                    }
                }
                _ = sweep.tick() => {
                    // sled's `len()` walks the whole tree: refreshing the
                    // gauge on every PUBACK made draining a backlog
                    // quadratic (460 nudges/s from 5,000 queued). Once a
                    // second, connected or not (an outage must show).
                    events::outbox_depth(&pump.telemetry, pump.store.outbox_len());
                    if pump.config.chain.is_some() {
                        events::chain_outbox_length(&pump.telemetry, pump.store.chain_outbox_len());
                    }
                }
            }
            pump.pump();
        }
        // Graceful: say goodbye so the retained status is right at once, rather
        // than after the broker notices the keep-alive lapse.
        if pump.connected {
            let _ = client.try_publish(
                config.status_topic(),
                QoS::AtLeastOnce,
                true,
                status_payload(&config, false),
            );
            let _ = client.try_disconnect();
        }
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            // Keep draining link events so the event loop task never blocks on us.
            while link_rx.recv().await.is_some() {}
        })
        .await;
        stop_loop.cancel();
        let _ = loop_task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_home_assistant_watch_gets_retained_copies_on_every_subscribe_and_never_blocks_readiness()
    {
        let mut subs =
            crate::topics::all_subscriptions(&crate::topics::TopicNames::new("retail", "store-1"));
        subs.push(Subscription {
            filter: "homeassistant/sensor/store-1/+/config".into(),
            kind: HOMEASSISTANT_KIND,
            retained_wanted: true,
        });
        let rules: Vec<(&str, RetainForwardRule)> = subs
            .iter()
            .zip(filters(&subs))
            .map(|(s, f)| (s.kind, f.retain_forward_rule))
            .collect();
        for (kind, rule) in &rules {
            let expected = match *kind {
                HOMEASSISTANT_KIND => RetainForwardRule::OnEverySubscribe,
                "crm_person" => RetainForwardRule::OnNewSubscribe,
                _ => RetainForwardRule::Never,
            };
            assert_eq!(*rule, expected, "{kind}");
        }
        assert_eq!(
            crate::telemetry::TopicKind::of(HOMEASSISTANT_KIND).as_str(),
            HOMEASSISTANT_KIND
        );
        assert_eq!(
            kinds_blocking_readiness(vec![(HOMEASSISTANT_KIND, 0x87), ("consent", 0x87)]),
            vec!["consent"]
        );
        assert!(kinds_blocking_readiness(vec![(HOMEASSISTANT_KIND, 0x87)]).is_empty());
    }

    #[test]
    fn backoff_grows_is_jittered_and_bounded() {
        for attempt in 0..20 {
            let d = backoff(attempt).as_millis() as u64;
            let base = 100u64.saturating_mul(1 << attempt.min(7)).min(10_000);
            assert!(
                d >= base * 3 / 4 && d <= base * 5 / 4 + 1,
                "attempt {attempt}: {d} ms vs base {base}"
            );
        }
        assert!(backoff(30) <= Duration::from_millis(12_500));
    }
    fn message(n: u16) -> IncomingMessage {
        IncomingMessage {
            topic: format!("t/{n}"),
            payload: vec![0; 1000],
            retain: false,
            response_topic: None,
            correlation_data: None,
            ack: None,
        }
    }

    #[test]
    fn at_most_receive_maximum_messages_wait_for_the_pipeline() {
        let mut intake = Intake::new();
        for n in 0..RECEIVE_MAXIMUM {
            assert!(intake.has_room(), "stopped reading at {n}");
            intake.waiting.push_back(message(n));
        }
        // Full: the event loop is not polled for more until the pipeline
        // takes some, which needs no polling.
        assert!(!intake.has_room());
        let (pipeline, mut taken) = mpsc::channel(10);
        assert!(intake.forward_messages(&pipeline).is_ok());
        assert_eq!(intake.waiting.len(), RECEIVE_MAXIMUM as usize - 10);
        assert!(intake.has_room());
        assert_eq!(taken.try_recv().unwrap().topic, "t/0");
        drop(taken);
        assert!(intake.forward_messages(&pipeline).is_err());
    }

    #[test]
    fn acks_never_wait_and_reach_rumqttc_in_order_as_it_has_room() {
        let mut intake = Intake::new();
        let ackers: Vec<Acker> = (1..=10u16)
            .map(|pkid| {
                let mut publish = rumqttc::v5::mqttbytes::v5::Publish::new(
                    "t",
                    QoS::AtLeastOnce,
                    vec![0u8; 30_000],
                    None,
                );
                publish.pkid = pkid;
                intake.acker(&publish).expect("QoS 1 is acked")
            })
            .collect();
        let qos0 = rumqttc::v5::mqttbytes::v5::Publish::new("t", QoS::AtMostOnce, "x", None);
        assert!(intake.acker(&qos0).is_none());
        // What an ack keeps is the packet id, not the message.
        assert!(std::mem::size_of::<Acker>() < 64);
        for acker in ackers {
            acker.ack();
        }
        // rumqttc's request channel has room for 4: the fifth is held, the
        // rest stay queued, in order.
        let opts = MqttOptions::new("t", "localhost", 1883);
        let (small, _eventloop) = AsyncClient::new(opts.clone(), 4);
        intake.forward_acks(&small);
        assert_eq!(intake.held.map(|a| a.pkid), Some(5));
        assert_eq!(intake.acks.len(), 5);
        intake.forward_acks(&small);
        assert_eq!(intake.held.map(|a| a.pkid), Some(5));
        // Room again: the held one first, then the queue.
        let (roomy, _eventloop) = AsyncClient::new(opts, 100);
        intake.forward_acks(&roomy);
        assert_eq!(intake.held, None);
        assert!(intake.acks.is_empty());
        // After the connection task has gone, acking is a no-op.
        let mut publish =
            rumqttc::v5::mqttbytes::v5::Publish::new("t", QoS::AtLeastOnce, "x", None);
        publish.pkid = 11;
        let late = intake.acker(&publish).unwrap();
        drop(intake);
        late.ack();
    }

    #[test]
    fn a_suback_names_the_refused_kinds_and_retained_requests_are_ignored() {
        let c = load("[mqtt]\nurl = \"mqtt://h\"\n", &[]).unwrap();
        let subs = crate::topics::all_subscriptions(&c.topics);
        let mut codes = vec![SubscribeReasonCode::Success(QoS::AtLeastOnce); subs.len()];
        assert_eq!(refused_kinds(&subs, &codes), Some(vec![]));
        codes[1] = SubscribeReasonCode::NotAuthorized;
        codes[4] = SubscribeReasonCode::Unspecified;
        assert_eq!(
            refused_kinds(&subs, &codes),
            Some(vec![("consent", 0x87), ("purchase", 0x80)])
        );
        // Not an answer to our list: ignored rather than misread.
        assert_eq!(refused_kinds(&subs, &codes[..2]), None);

        let sent = filters(&subs);
        assert_eq!(
            sent[0].retain_forward_rule,
            RetainForwardRule::OnNewSubscribe
        );
        assert!(
            sent[1..]
                .iter()
                .all(|f| f.retain_forward_rule == RetainForwardRule::Never)
        );
        let person = subscription_of(&subs, "retail/crm/people/p-1");
        let consent = subscription_of(&subs, "retail/s1/consent/r-1");
        assert!(!ignore_retained(person, true));
        assert!(ignore_retained(consent, true));
        assert!(!ignore_retained(consent, false));
        assert!(ignore_retained(None, true));
    }

    fn load(site: &str, env: &[(&str, &str)]) -> Result<Config, crate::config::ConfigError> {
        let text = format!("[store]\nid = \"s1\"\n{site}");
        crate::config::from_layers(
            "site.toml",
            Some(&text),
            env.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn problems(result: Result<Config, crate::config::ConfigError>) -> String {
        match result {
            Err(e) => e.to_string(),
            Ok(_) => panic!("expected a config error"),
        }
    }

    #[test]
    fn mqtts_urls_enable_tls_with_default_port_and_system_roots() {
        let c = load("[mqtt]\nurl = \"mqtts://broker.example\"\n", &[]).unwrap();
        assert_eq!(
            (c.mqtt.host.as_str(), c.mqtt.port),
            ("broker.example", 8883)
        );
        assert_eq!(c.mqtt.tls, Some(TlsSettings::default()));
        // A machine without system CA certificates reports that instead
        // (`check-config` and `run` ask `check_tls`).
        match check_tls(&c) {
            Ok(()) => assert!(options(&c).is_ok()),
            Err(e) => assert_eq!(e.path, "mqtt.ca_file", "{e}"),
        }
        let c = load("[mqtt]\nurl = \"mqtt://broker.example\"\n", &[]).unwrap();
        assert_eq!(c.mqtt.port, 1883);
        assert_eq!(c.mqtt.tls, None);
        let e = problems(load("[mqtt]\nurl = \"http://x\"\n", &[]));
        assert!(e.contains("mqtt.url"), "{e}");
    }

    #[test]
    fn tls_files_are_checked_when_the_config_is_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.crt");
        let e = problems(load(
            &format!(
                "[mqtt]\nurl = \"mqtts://h:8883\"\nca_file = \"{}\"\n",
                missing.display()
            ),
            &[],
        ));
        assert!(e.contains("mqtt.ca_file") && e.contains("nope.crt"), "{e}");
        let junk = dir.path().join("junk.crt");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = problems(load(
            &format!(
                "[mqtt]\nurl = \"mqtts://h:8883\"\nca_file = \"{}\"\n",
                junk.display()
            ),
            &[],
        ));
        assert!(e.contains("no usable CA certificate"), "{e}");
        // TLS files with a plain URL are a mistake, not silently ignored.
        let e = problems(load(
            &format!(
                "[mqtt]\nurl = \"mqtt://h:1883\"\nca_file = \"{}\"\n",
                junk.display()
            ),
            &[],
        ));
        assert!(e.contains("mqtt.ca_file: needs TLS"), "{e}");
        let e = problems(load(
            &format!(
                "[mqtt]\nurl = \"mqtts://h:8883\"\nclient_cert_file = \"{}\"\n",
                junk.display()
            ),
            &[],
        ));
        assert!(e.contains("go together"), "{e}");
    }

    #[test]
    fn check_tls_loads_what_the_config_only_saw_as_pem() {
        // PEM sections around DER rustls cannot use: the config's check of
        // the file passes, loading it into rustls does not.
        let dir = tempfile::tempdir().unwrap();
        let bogus = dir.path().join("bogus.crt");
        std::fs::write(
            &bogus,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let c = load(
            &format!(
                "[mqtt]\nurl = \"mqtts://h:8883\"\nca_file = \"{}\"\n",
                bogus.display()
            ),
            &[],
        )
        .unwrap();
        let e = check_tls(&c).unwrap_err();
        assert_eq!(e.path, "mqtt.ca_file");
        assert!(e.reason.contains("no usable CA certificate"), "{e}");
        assert!(options(&c).is_err());
        let plain = load("[mqtt]\nurl = \"mqtt://h\"\n", &[]).unwrap();
        assert_eq!(check_tls(&plain), Ok(()));
    }

    #[test]
    fn password_comes_from_a_file_or_the_environment_and_is_masked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret-from-file\n").unwrap();
        let c = load(
            &format!(
                "[mqtt]\nurl = \"mqtt://h\"\nusername = \"gateway\"\npassword_file = \"{}\"\n",
                file.display()
            ),
            &[],
        )
        .unwrap();
        assert_eq!(c.mqtt.username.as_deref(), Some("gateway"));
        assert_eq!(
            c.mqtt.password.as_ref().map(|p| p.expose()),
            Some("s3cret-from-file")
        );
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("***"));

        let c = load(
            "[mqtt]\nurl = \"mqtt://h\"\nusername = \"gateway\"\n",
            &[("GATEWAY__MQTT__PASSWORD", "env-s3cret")],
        )
        .unwrap();
        assert_eq!(c.mqtt.password.as_ref().unwrap().expose(), "env-s3cret");
        assert!(!format!("{c:?}").contains("env-s3cret"));
        // The published config hash does not depend on the password.
        let other = load(
            "[mqtt]\nurl = \"mqtt://h\"\nusername = \"gateway\"\n",
            &[("GATEWAY__MQTT__PASSWORD", "another")],
        )
        .unwrap();
        assert_eq!(c.hash, other.hash);

        let e = problems(load(
            &format!(
                "[mqtt]\nurl = \"mqtt://h\"\nusername = \"g\"\npassword_file = \"{}\"\n",
                file.display()
            ),
            &[("GATEWAY__MQTT__PASSWORD", "x")],
        ));
        assert!(e.contains("not both"), "{e}");
        let e = problems(load(
            "[mqtt]\nurl = \"mqtt://h\"\n",
            &[("GATEWAY__MQTT__PASSWORD", "x")],
        ));
        assert!(
            e.contains("mqtt.username: a password needs a username"),
            "{e}"
        );
        let e = problems(load(
            "[mqtt]\nurl = \"mqtt://h\"\nusername = \"g\"\npassword_file = \"/nonexistent/pw\"\n",
            &[],
        ));
        assert!(e.contains("mqtt.password_file"), "{e}");
        // Credentials in the URL: refused, and never echoed (with or
        // without a port after them).
        for url in [
            "mqtt://gateway:s3cret-in-url@h",
            "mqtt://gateway:s3cret-in-url@h:1883",
            "mqtts://s3cret-in-url@h",
            "mqtt://gateway:s3cret:in-url@h:x",
        ] {
            let e = problems(load(&format!("[mqtt]\nurl = \"{url}\"\n"), &[]));
            assert!(e.contains("mqtt.url: must not hold credentials"), "{e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
        let e = problems(load("[mqtt]\nurl = \"mqtt://h:s3cret\"\n", &[]));
        assert!(e.contains("mqtt.url") && !e.contains("s3cret"), "{e}");
        // A systemd credential outside systemd: a clear error naming the field.
        let e = problems(load(
            "[mqtt]\nurl = \"mqtt://h\"\nusername = \"g\"\npassword_credential = \"../pw\"\n",
            &[],
        ));
        assert!(e.contains("mqtt.password_credential"), "{e}");
        // A numeric password is converted by the env loader: refused, not echoed.
        let e = problems(load(
            "[mqtt]\nurl = \"mqtt://h\"\nusername = \"g\"\n",
            &[("GATEWAY__MQTT__PASSWORD", "8675309")],
        ));
        assert!(!e.contains("8675309"), "{e}");
    }
}
