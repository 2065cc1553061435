//! Counters and gauges, rendered as Prometheus text on `/metrics`, and the
//! notable events that both log and count (like vector's internal events):
//! each event is one function here, so its log line and its counter can not
//! drift apart.
//!
//! Every label value is a `&'static str`: a series exists only for a value
//! written in the code, so nothing that arrives (a topic, a JSON key, a
//! scanner's name) can add a series, and `/metrics` stays the size the code
//! gives it. Input that must be counted by name goes through a fixed table
//! first ([`field_label`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Label names and values, all written in the code (see the module doc).
type Labels = Vec<(&'static str, &'static str)>;

#[derive(Default)]
pub struct Telemetry {
    counters: Mutex<BTreeMap<(&'static str, Labels), u64>>,
    gauges: Mutex<BTreeMap<&'static str, i64>>,
    /// Latency samples per summary name: the most recent ones only.
    summaries: Mutex<BTreeMap<&'static str, Summary>>,
    /// Warnings about bad input.
    warnings: LogBudget,
    /// Messages dropped for their recipient's rate: a budget of their own,
    /// so a flood of bad input cannot hide a flood over the rate.
    rate_limited_log: LogBudget,
}

/// A per-second allowance of log lines.
#[derive(Default)]
struct LogBudget {
    /// Start of the current one-second window.
    window_s: AtomicI64,
    count: AtomicU64,
}

impl LogBudget {
    fn may(&self, per_second: u64) -> bool {
        let now_s = crate::clock::wall_ms() / 1000;
        if self.window_s.swap(now_s, Ordering::Relaxed) != now_s {
            self.count.store(0, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed) < per_second
    }
}

/// Log lines a second about messages over their recipient's rate.
const RATE_LIMITED_LOGS_PER_SECOND: u64 = 5;

/// Warnings about bad input are capped per second so that a flood of
/// garbage cannot flood the log; every occurrence is still counted.
const WARNINGS_PER_SECOND: u64 = 20;

/// A bounded reservoir of the latest samples, reported as quantiles.
#[derive(Default)]
struct Summary {
    recent: std::collections::VecDeque<f64>,
    count: u64,
    sum: f64,
}

/// Samples kept per summary: enough for a stable p999 over recent traffic.
const SUMMARY_SAMPLES: usize = 8192;

impl Summary {
    fn quantile(sorted: &[f64], q: f64) -> f64 {
        if sorted.is_empty() {
            return f64::NAN;
        }
        sorted[((sorted.len() - 1) as f64 * q).round() as usize]
    }
}

impl Telemetry {
    pub fn new() -> Self {
        Self::default()
    }

    /// One latency sample, in seconds.
    pub fn observe(&self, name: &'static str, seconds: f64) {
        let mut summaries = self.summaries.lock().unwrap_or_else(|e| e.into_inner());
        let s = summaries.entry(name).or_default();
        if s.recent.len() == SUMMARY_SAMPLES {
            s.recent.pop_front();
        }
        s.recent.push_back(seconds);
        s.count += 1;
        s.sum += seconds;
    }

    /// p50, p99 and p999 of the recent samples of a summary.
    pub fn quantiles(&self, name: &str) -> Option<[f64; 3]> {
        let summaries = self.summaries.lock().unwrap_or_else(|e| e.into_inner());
        let s = summaries.get(name)?;
        let mut sorted: Vec<f64> = s.recent.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        Some([0.5, 0.99, 0.999].map(|q| Summary::quantile(&sorted, q)))
    }

    pub fn count(&self, name: &'static str, labels: &[(&'static str, &'static str)], by: u64) {
        let key = (name, labels.to_vec());
        *self
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_insert(0) += by;
    }

    pub fn set_gauge(&self, name: &'static str, value: i64) {
        self.gauges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, value);
    }

    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|((n, l), _)| {
                *n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, v)| *v)
            .sum()
    }

    pub fn gauge(&self, name: &str) -> i64 {
        self.gauges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    /// Whether a rate-limited warning may be logged now.
    pub fn may_warn(&self) -> bool {
        self.warnings.may(WARNINGS_PER_SECOND)
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let mut last = "";
        for ((name, labels), value) in counters.iter() {
            if *name != last {
                let _ = writeln!(out, "# TYPE gateway_{name} counter");
                last = name;
            }
            let _ = writeln!(out, "gateway_{name}{} {value}", render_labels(labels));
        }
        for (name, s) in self
            .summaries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let mut sorted: Vec<f64> = s.recent.iter().copied().collect();
            sorted.sort_by(f64::total_cmp);
            let _ = writeln!(out, "# TYPE gateway_{name} summary");
            for q in [0.5, 0.99, 0.999] {
                let _ = writeln!(
                    out,
                    "gateway_{name}{{quantile=\"{q}\"}} {}",
                    Summary::quantile(&sorted, q)
                );
            }
            let _ = writeln!(
                out,
                "gateway_{name}_sum {}\ngateway_{name}_count {}",
                s.sum, s.count
            );
        }
        for (name, value) in self.gauges.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "# TYPE gateway_{name} gauge\ngateway_{name} {value}");
        }
        out
    }
}

fn render_labels(labels: &[(&'static str, &'static str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}=\"{}\"",
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            )
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// The fields an incoming message can be refused for, as metric labels:
/// the top-level names the parsers of `identity/` and the pipeline
/// report. A path inside a known field counts under that field
/// (`beacons[2].rssi` is `beacons`); anything else, an unknown key above
/// all, is `unknown_field`, so a sender choosing keys cannot choose series.
pub const INCOMING_FIELDS: &[&str] = &[
    "answer",
    "at",
    "at_ms",
    "beacons",
    "comment",
    "consent",
    "forget",
    "id",
    "identities",
    "identity",
    "interests",
    "items",
    "message",
    "nudge_id",
    "owns",
    "payload",
    "person",
    "recipient",
    "record",
    "rotating_id",
    "storage",
    "timezone",
    "topic",
    "topic recipient",
];

/// See [`INCOMING_FIELDS`].
pub fn field_label(field: &str) -> &'static str {
    let top = field.split(['.', '[']).next().unwrap_or(field);
    INCOMING_FIELDS
        .iter()
        .find(|known| **known == top)
        .copied()
        .unwrap_or("unknown_field")
}

/// What of a sender's text (a field name, a reason quoting a value) may go
/// back out in an error report or a log line: enough to recognise it, never
/// the 16 KiB it may be.
pub const MAX_ECHO_CHARS: usize = 64;

/// A topic's last level is the sender's too; a real one is far shorter.
pub const MAX_TOPIC_ECHO_CHARS: usize = 200;

/// A reason may quote a value (`unknown IANA time zone "…"`): cut too.
pub const MAX_REASON_CHARS: usize = 200;

/// `text` cut to `max` characters (marked with `…` when cut).
pub fn truncated(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => std::borrow::Cow::Borrowed(text),
        Some((at, _)) => std::borrow::Cow::Owned(format!("{}…", &text[..at])),
    }
}

/// The events. Personal data never reaches these: callers pass hashed ids.
pub mod events {
    use super::Telemetry;

    /// Home Assistant discovery published (`entities` configs) and
    /// entities removed (empty retained configs).
    pub fn homeassistant_discovery(t: &Telemetry, entities: usize, removed: usize) {
        t.count("homeassistant_discovery_published_total", &[], 1);
        t.set_gauge("homeassistant_entities", entities as i64);
        tracing::info!(entities, removed, "home assistant discovery published");
    }

    /// A scanner-node message that carries nothing the gateway can use
    /// (a device ESPresense names by alias, a decoded sensor reading):
    /// counted by feed and field, never logged with its content.
    pub fn scanner_message_ignored(t: &Telemetry, source: &'static str, field: &'static str) {
        t.count(
            "scanner_messages_ignored_total",
            &[("source", source), ("field", field)],
            1,
        );
    }

    pub fn sighting_received(t: &Telemetry, source: &'static str) {
        t.count("sightings_total", &[("source", source)], 1);
    }

    /// A record that could not be parsed: named by field, never by content.
    pub fn sighting_rejected(
        t: &Telemetry,
        source: &'static str,
        origin: &str,
        field: &'static str,
        reason: &str,
    ) {
        t.count(
            "sightings_rejected_total",
            &[("source", source), ("field", field)],
            1,
        );
        if t.may_warn() {
            tracing::warn!(source, origin, field, reason, "sighting rejected");
        }
    }

    pub fn advert_undecodable(t: &Telemetry, source: &'static str) {
        t.count("adverts_undecodable_total", &[("source", source)], 1);
    }

    /// An app token that resolves to nobody: a stranger, forgotten here.
    pub fn stranger_dropped(t: &Telemetry) {
        t.count("strangers_dropped_total", &[], 1);
    }

    /// A CRM record not dated after the person's erasure (their retained
    /// record, republished or handed over on a fresh session).
    pub fn person_record_refused_after_erasure(t: &Telemetry, person_hash: &str) {
        t.count("people_refused_erased_total", &[], 1);
        tracing::info!(
            person = person_hash,
            "person record refused: not later than the person's erasure"
        );
    }

    /// A person erased (at their request, the back office's or an operator's).
    pub fn person_erased(t: &Telemetry, person_hash: &str) {
        t.count("people_erased_total", &[], 1);
        tracing::info!(person = person_hash, "person erased");
    }

    pub fn person_recognised(t: &Telemetry, person_hash: &str) {
        t.count("people_recognised_total", &[], 1);
        tracing::debug!(person = person_hash, "person recognised");
    }

    pub fn nudge_reserved(
        t: &Telemetry,
        person_hash: &str,
        rule: &str,
        kind: &'static str,
        nudge_id: &str,
    ) {
        t.count("nudges_reserved_total", &[("kind", kind)], 1);
        tracing::info!(person = person_hash, rule, kind, nudge_id, "nudge reserved");
    }

    pub fn nudge_held(t: &Telemetry, person_hash: &str, rule: &str, reason: &'static str) {
        t.count("nudges_held_total", &[("reason", reason)], 1);
        tracing::info!(person = person_hash, rule, reason, "nudge held back");
    }

    pub fn nudge_published(t: &Telemetry) {
        t.count("nudges_published_total", &[], 1);
    }

    pub fn nudge_acked(t: &Telemetry, nudge_id: &str) {
        t.count("nudges_acked_total", &[], 1);
        tracing::debug!(nudge_id, "nudge acknowledged by the broker");
    }

    pub fn nudge_expired(t: &Telemetry, nudge_id: &str) {
        t.count("nudges_expired_total", &[], 1);
        tracing::info!(nudge_id, "nudge expired in the outbox, not sent");
    }

    pub fn mqtt_connection(t: &Telemetry, connected: bool, detail: &str) {
        t.set_gauge("mqtt_connected", i64::from(connected));
        t.count(
            "mqtt_connection_changes_total",
            &[("state", if connected { "up" } else { "down" })],
            1,
        );
        if connected {
            tracing::info!(detail, "connected to the MQTT broker");
        } else {
            tracing::warn!(detail, "MQTT connection lost; retrying with backoff");
        }
    }

    /// An incoming app or CRM message refused: counted by topic kind and
    /// by the fixed label of its field; the log names the field itself,
    /// cut short.
    pub fn incoming_rejected(t: &Telemetry, kind: &'static str, field: &str, reason: &str) {
        // A key the parser did not expect counts as such even when it is
        // the name of another message's field (`answer` in a check-in).
        let label = if reason == "unknown field" {
            "unknown_field"
        } else {
            super::field_label(field)
        };
        t.count(
            "incoming_rejected_total",
            &[("kind", kind), ("field", label)],
            1,
        );
        if t.may_warn() {
            tracing::warn!(
                kind,
                field = %super::truncated(field, super::MAX_ECHO_CHARS),
                reason = %super::truncated(reason, super::MAX_REASON_CHARS),
                "incoming message rejected"
            );
        }
    }

    /// An app message over its recipient's rate: dropped unread (and
    /// acked, so the broker does not send it again).
    pub fn incoming_rate_limited(t: &Telemetry, kind: &'static str) {
        t.count("incoming_rate_limited_total", &[("kind", kind)], 1);
        if t.rate_limited_log.may(super::RATE_LIMITED_LOGS_PER_SECOND) {
            tracing::warn!(kind, "incoming message over its recipient's rate; dropped");
        }
    }

    /// The broker refused one of our subscriptions (`kind` is the fixed
    /// label of the filter, never the filter: it may come from config).
    pub fn subscription_refused(t: &Telemetry, kind: &'static str, code: u8) {
        t.count("mqtt_subscriptions_refused_total", &[("kind", kind)], 1);
        tracing::error!(
            kind,
            code = format_args!("{code:#04x}"),
            "subscription refused by the broker (check the gateway's ACL); not ready"
        );
    }

    /// How many of our subscriptions the broker's last SUBACK refused.
    pub fn subscriptions_refused_now(t: &Telemetry, refused: usize) {
        t.set_gauge("mqtt_subscriptions_refused", refused as i64);
    }

    /// The broker answered our SUBSCRIBE (once per connect): from here on
    /// what it granted is heard.
    pub fn subscribed(t: &Telemetry, refused: usize) {
        t.count("mqtt_subacks_total", &[], 1);
        subscriptions_refused_now(t, refused);
        tracing::debug!(refused, "subscriptions answered by the broker");
    }

    /// A retained copy on a topic that carries requests (consent, check-in,
    /// feedback, purchase, sightings): left there by a client, not acted on.
    pub fn retained_message_ignored(t: &Telemetry, kind: &'static str) {
        t.count("incoming_retained_ignored_total", &[("kind", kind)], 1);
        if t.may_warn() {
            tracing::warn!(kind, "ignored a retained message on a request topic");
        }
    }

    /// A message larger than the broker accepts (`what`: nudge or other); dropped.
    pub fn publish_too_large(t: &Telemetry, what: &'static str, bytes: usize, limit: usize) {
        t.count("publishes_too_large_total", &[("what", what)], 1);
        tracing::error!(
            what,
            bytes,
            limit,
            "message too large for the broker; dropped"
        );
    }

    /// A file holding a secret that others than the gateway's user may read.
    pub fn secret_file_exposed(t: &Telemetry, field: &'static str, mode: u32) {
        t.count("secret_files_exposed_total", &[("field", field)], 1);
        tracing::warn!(
            field,
            mode = format_args!("{mode:o}"),
            "a secret file is readable by group or others; chmod 600 it or use LoadCredential="
        );
    }

    pub fn storage_error(t: &Telemetry, during: &'static str, error: &dyn std::fmt::Display) {
        t.count("storage_errors_total", &[("during", during)], 1);
        tracing::error!(during, %error, "storage error");
    }

    pub fn source_failed(t: &Telemetry, source: &'static str, error: &dyn std::fmt::Display) {
        t.count("source_failures_total", &[("source", source)], 1);
        tracing::error!(source, %error, "source failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_summary_keeps_recent_samples_and_reports_quantiles() {
        let t = Telemetry::new();
        for i in 1..=1000 {
            t.observe("x_seconds", i as f64 / 1000.0);
        }
        let [p50, p99, p999] = t.quantiles("x_seconds").unwrap();
        assert!(
            (p50 - 0.5).abs() < 0.01 && (p99 - 0.99).abs() < 0.01 && (p999 - 0.999).abs() < 0.01
        );
        let text = t.render();
        assert!(text.contains("# TYPE gateway_x_seconds summary"), "{text}");
        assert!(
            text.contains("gateway_x_seconds{quantile=\"0.99\"} 0.99"),
            "{text}"
        );
        assert!(text.contains("gateway_x_seconds_count 1000"), "{text}");
        for _ in 0..SUMMARY_SAMPLES {
            t.observe("x_seconds", 2.0);
        }
        assert_eq!(
            t.quantiles("x_seconds").unwrap()[0],
            2.0,
            "old samples age out"
        );
    }

    #[test]
    fn renders_prometheus_text_with_escaped_labels() {
        let t = Telemetry::new();
        events::sighting_received(&t, "udp");
        events::sighting_received(&t, "udp");
        t.count("nudges_held_total", &[("reason", "per_day")], 1);
        t.count("odd_total", &[("x", "a\"b")], 1);
        t.set_gauge("outbox_depth", 4);
        let text = t.render();
        assert!(
            text.contains("gateway_sightings_total{source=\"udp\"} 2"),
            "{text}"
        );
        assert!(text.contains("gateway_nudges_held_total{reason=\"per_day\"} 1"));
        assert!(text.contains("gateway_odd_total{x=\"a\\\"b\"} 1"));
        assert!(text.contains("# TYPE gateway_outbox_depth gauge\ngateway_outbox_depth 4"));
        assert_eq!(t.counter("sightings_total", &[("source", "udp")]), 2);
    }

    #[test]
    fn rejected_fields_count_under_a_fixed_set_of_labels() {
        assert_eq!(field_label("nudge_id"), "nudge_id");
        assert_eq!(field_label("beacons[2].rssi"), "beacons");
        assert_eq!(field_label("consent.spam"), "consent");
        assert_eq!(field_label("topic recipient"), "topic recipient");
        assert_eq!(field_label("junk-123"), "unknown_field");
        assert_eq!(field_label(""), "unknown_field");
        assert_eq!(field_label(&"x".repeat(16 * 1024)), "unknown_field");
        let t = Telemetry::new();
        for i in 0..1000 {
            events::incoming_rejected(&t, "consent", &format!("junk-{i}"), "unknown field");
        }
        events::incoming_rejected(&t, "consent", "answer", "unknown field");
        events::incoming_rejected(&t, "consent", "consent.spam", "unknown purpose");
        let text = t.render();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(
            text.contains("gateway_incoming_rejected_total{kind=\"consent\",field=\"consent\"} 1")
        );
        assert!(text.contains(
            "gateway_incoming_rejected_total{kind=\"consent\",field=\"unknown_field\"} 1001"
        ));
    }

    #[test]
    fn echoed_text_is_cut_on_a_character_boundary() {
        assert_eq!(truncated("short", 64), "short");
        let long = "é".repeat(100);
        let cut = truncated(&long, 64);
        assert_eq!(cut.chars().count(), 65);
        assert!(cut.ends_with('…'));
    }
}
