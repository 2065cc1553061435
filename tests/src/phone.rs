//! `Phone`: an MQTT v5 subscriber standing in for the shopper's app.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::task::JoinHandle;

/// One publish the phone received, with its MQTT v5 properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    pub message_expiry_interval: Option<u32>,
    pub user_properties: Vec<(String, String)>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Vec<u8>>,
    pub content_type: Option<String>,
    pub payload_format_indicator: Option<u8>,
    /// When the phone's task saw it.
    pub at: Instant,
}

impl Received {
    fn from_publish(p: &Publish) -> Received {
        let props = p.properties.clone().unwrap_or_default();
        Received {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload.to_vec(),
            qos: p.qos,
            retain: p.retain,
            dup: p.dup,
            message_expiry_interval: props.message_expiry_interval,
            user_properties: props.user_properties,
            response_topic: props.response_topic,
            correlation_data: props.correlation_data.map(|b| b.to_vec()),
            content_type: props.content_type,
            payload_format_indicator: props.payload_format_indicator,
            at: Instant::now(),
        }
    }

    /// The payload as (lossy) UTF-8.
    pub fn payload_str(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    /// The payload parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.payload).with_context(|| {
            format!(
                "payload on {} is not JSON: {}",
                self.topic,
                self.payload_str()
            )
        })
    }
}

/// How a [`Phone`] connects. Build with [`PhoneOptions::new`].
#[derive(Debug, Clone)]
pub struct PhoneOptions {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    /// Topic filters subscribed at QoS 1 (may be empty: a publish-only client).
    pub filters: Vec<String>,
    /// MQTT v5 clean start (default true).
    pub clean_start: bool,
    /// Session expiry interval in seconds (default none: session ends with the connection).
    pub session_expiry: Option<u32>,
    /// Keep-alive (rumqttc panics below 5 s; default 5 s).
    pub keep_alive: Duration,
    pub credentials: Option<(String, String)>,
    /// Re-subscribe after a reconnect whose CONNACK says `session_present=false` (default true).
    pub resubscribe: bool,
    /// Bound for [`Phone::connect`] (CONNACK and every SUBACK), default 10 s.
    pub connect_timeout: Duration,
    /// Largest packet accepted (and advertised in CONNECT); `None`: rumqttc's
    /// 10 KiB, past which the connection fails.
    pub max_packet_size: Option<u32>,
}

impl PhoneOptions {
    /// Clean-start client on `127.0.0.1:port` subscribing to `filter` at QoS 1
    /// (pass `""` for none).
    pub fn new(port: u16, client_id: impl Into<String>, filter: impl Into<String>) -> PhoneOptions {
        let filter = filter.into();
        PhoneOptions {
            host: "127.0.0.1".to_string(),
            port,
            client_id: client_id.into(),
            filters: if filter.is_empty() {
                Vec::new()
            } else {
                vec![filter]
            },
            clean_start: true,
            session_expiry: None,
            keep_alive: Duration::from_secs(5),
            credentials: None,
            resubscribe: true,
            connect_timeout: Duration::from_secs(10),
            max_packet_size: None,
        }
    }

    /// `clean_start=false` and a session expiry interval, so the broker keeps
    /// subscriptions and queues QoS 1 messages while the phone is away.
    pub fn persistent(mut self, session_expiry_secs: u32) -> Self {
        self.clean_start = false;
        self.session_expiry = Some(session_expiry_secs);
        self
    }

    pub fn filter(mut self, filter: impl Into<String>) -> Self {
        self.filters.push(filter.into());
        self
    }

    pub fn max_packet_size(mut self, bytes: u32) -> Self {
        self.max_packet_size = Some(bytes);
        self
    }

    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((user.into(), password.into()));
        self
    }
}

#[derive(Debug, Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    /// `session_present` of every CONNACK, in order.
    connacks: Mutex<Vec<bool>>,
    subacks: Mutex<Vec<Vec<SubscribeReasonCode>>>,
    errors: Mutex<Vec<String>>,
    pubacks: AtomicUsize,
    connected: AtomicBool,
    stopping: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An MQTT v5 client whose event loop runs in its own tokio task and collects
/// every publish it receives. Reconnects by itself (with backoff) after
/// errors. The task is aborted when the phone is dropped.
#[derive(Debug)]
pub struct Phone {
    opts: PhoneOptions,
    client: AsyncClient,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl Phone {
    /// Connects and subscribes; returns once the CONNACK and a SUBACK for every
    /// filter have arrived, so nothing published afterwards is missed.
    /// Fails on a refused connection or a refused subscription.
    pub async fn connect(opts: PhoneOptions) -> Result<Phone> {
        let mut mqtt = MqttOptions::new(opts.client_id.clone(), opts.host.clone(), opts.port);
        mqtt.set_keep_alive(opts.keep_alive.max(Duration::from_secs(5)));
        mqtt.set_clean_start(opts.clean_start);
        mqtt.set_session_expiry_interval(opts.session_expiry);
        if opts.max_packet_size.is_some() {
            mqtt.set_max_packet_size(opts.max_packet_size);
        }
        if let Some((user, password)) = &opts.credentials {
            mqtt.set_credentials(user.clone(), password.clone());
        }
        let (client, eventloop) = AsyncClient::new(mqtt, 64);
        for filter in &opts.filters {
            client
                .subscribe(filter.clone(), QoS::AtLeastOnce)
                .await
                .with_context(|| format!("queue subscribe {filter}"))?;
        }
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(run(eventloop, client.clone(), shared.clone(), opts.clone()));
        let mut phone = Phone {
            opts,
            client,
            shared,
            task: Some(task),
        };
        if let Err(e) = phone.wait_ready().await {
            phone.abort();
            return Err(e);
        }
        Ok(phone)
    }

    /// Shorthand: clean-start phone on `port` subscribed to `filter`.
    pub async fn connect_to(port: u16, client_id: &str, filter: &str) -> Result<Phone> {
        Phone::connect(PhoneOptions::new(port, client_id, filter)).await
    }

    async fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + self.opts.connect_timeout;
        let wanted = self.opts.filters.len();
        loop {
            let connacks = lock(&self.shared.connacks).len();
            if connacks == 0
                && let Some(err) = lock(&self.shared.errors).first()
            {
                bail!(
                    "phone {} could not connect to 127.0.0.1:{}: {err}",
                    self.opts.client_id,
                    self.opts.port
                );
            }
            {
                let subacks = lock(&self.shared.subacks);
                for codes in subacks.iter() {
                    if let Some(bad) = codes
                        .iter()
                        .find(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                    {
                        bail!(
                            "phone {}: subscription to {:?} refused: {bad:?}",
                            self.opts.client_id,
                            self.opts.filters
                        );
                    }
                }
                if connacks > 0 && subacks.len() >= wanted {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "phone {}: no CONNACK/SUBACK from 127.0.0.1:{} within {:?} (errors: {:?})",
                    self.opts.client_id,
                    self.opts.port,
                    self.opts.connect_timeout,
                    lock(&self.shared.errors)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn client_id(&self) -> &str {
        &self.opts.client_id
    }

    /// The underlying client, for anything the helpers do not cover.
    pub fn client(&self) -> &AsyncClient {
        &self.client
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.shared.received).clone()
    }

    /// Everything received so far, and forget it.
    pub fn take_received(&self) -> Vec<Received> {
        std::mem::take(&mut *lock(&self.shared.received))
    }

    /// Waits until at least `n` publishes have been received (in total, since
    /// connect or the last `take_received`), then returns all of them.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Result<Vec<Received>> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let got = lock(&self.shared.received);
                if got.len() >= n {
                    return Ok(got.clone());
                }
                if Instant::now() >= deadline {
                    bail!(
                        "phone {}: expected {n} messages within {timeout:?}, got {}: {:?}",
                        self.opts.client_id,
                        got.len(),
                        got.iter()
                            .map(|r| format!("{} {}", r.topic, r.payload_str()))
                            .collect::<Vec<_>>()
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits the whole `settle` time and checks that exactly `n` publishes
    /// have arrived by then (e.g. "the cap allows one nudge, not two").
    pub async fn expect_exactly(&self, n: usize, settle: Duration) -> Result<Vec<Received>> {
        tokio::time::sleep(settle).await;
        let got = self.received();
        if got.len() != n {
            bail!(
                "phone {}: expected exactly {n} messages after {settle:?}, got {}: {:?}",
                self.opts.client_id,
                got.len(),
                got.iter()
                    .map(|r| format!("{} {}", r.topic, r.payload_str()))
                    .collect::<Vec<_>>()
            );
        }
        Ok(got)
    }

    /// `session_present` of every CONNACK so far (one per (re)connection).
    pub fn session_present_history(&self) -> Vec<bool> {
        lock(&self.shared.connacks).clone()
    }

    /// Number of CONNACKs so far.
    pub fn connack_count(&self) -> usize {
        lock(&self.shared.connacks).len()
    }

    /// Waits until the phone has had at least `n` CONNACKs (e.g. after a
    /// broker restart: `wait_connacks(before + 1, ..)`).
    pub async fn wait_connacks(&self, n: usize, timeout: Duration) -> Result<()> {
        crate::util::wait_until(timeout, || self.connack_count() >= n)
            .await
            .with_context(|| {
                format!(
                    "phone {}: fewer than {n} CONNACKs (errors: {:?})",
                    self.opts.client_id,
                    lock(&self.shared.errors)
                )
            })
    }

    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::SeqCst)
    }

    /// Connection errors seen by the event loop so far.
    pub fn errors(&self) -> Vec<String> {
        lock(&self.shared.errors).clone()
    }

    /// Number of PUBACKs received for this phone's own QoS 1 publishes.
    pub fn puback_count(&self) -> usize {
        self.shared.pubacks.load(Ordering::SeqCst)
    }

    /// Queues a publish (returns when it is handed to the event loop).
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
        qos: QoS,
        retain: bool,
    ) -> Result<()> {
        self.client
            .publish(topic, qos, retain, payload.into())
            .await
            .with_context(|| format!("publish to {topic}"))
    }

    /// Queues a publish with MQTT v5 properties (message expiry, user properties, ...).
    pub async fn publish_with_properties(
        &self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
        qos: QoS,
        retain: bool,
        properties: PublishProperties,
    ) -> Result<()> {
        self.client
            .publish_with_properties(topic, qos, retain, payload.into(), properties)
            .await
            .with_context(|| format!("publish to {topic}"))
    }

    /// QoS 1 publish that returns once the broker's PUBACK has arrived (10 s
    /// bound). Assumes no other publish of this phone is in flight meanwhile.
    pub async fn publish_acked(
        &self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
        retain: bool,
        properties: PublishProperties,
    ) -> Result<()> {
        let before = self.puback_count();
        self.publish_with_properties(topic, payload, QoS::AtLeastOnce, retain, properties)
            .await?;
        crate::util::wait_until(Duration::from_secs(10), || self.puback_count() > before)
            .await
            .with_context(|| format!("no PUBACK for publish to {topic}"))
    }

    /// Sends DISCONNECT (normal: a persistent session stays on the broker),
    /// waits up to 2 s for the event loop to finish, then aborts it.
    pub async fn stop(mut self) -> Result<()> {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = self.client.try_disconnect();
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        Ok(())
    }

    fn abort(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        self.abort();
    }
}

async fn run(
    mut eventloop: EventLoop,
    client: AsyncClient,
    shared: Arc<Shared>,
    opts: PhoneOptions,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(50);
                shared.connected.store(true, Ordering::SeqCst);
                let first = {
                    let mut connacks = lock(&shared.connacks);
                    connacks.push(ack.session_present);
                    connacks.len() == 1
                };
                // The first subscriptions were queued before connecting.
                if !first && !ack.session_present && opts.resubscribe {
                    for filter in &opts.filters {
                        // Never await the request channel in the polling task.
                        let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                lock(&shared.received).push(Received::from_publish(&p));
            }
            Ok(Event::Incoming(Packet::SubAck(s))) => {
                lock(&shared.subacks).push(s.return_codes);
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                shared.pubacks.fetch_add(1, Ordering::SeqCst);
            }
            Ok(_) => {}
            Err(e) => {
                shared.connected.store(false, Ordering::SeqCst);
                if shared.stopping.load(Ordering::SeqCst) {
                    break;
                }
                {
                    let mut errors = lock(&shared.errors);
                    if errors.len() < 1000 {
                        errors.push(e.to_string());
                    }
                }
                // rumqttc reconnects on the next poll with no backoff of its own.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
