//! Counters, gauges and latency histograms, exposed as OpenMetrics text on
//! `/metrics` by the Prometheus project's own Rust client
//! (`prometheus-client`), and the notable events that both log and count
//! (like vector's internal events): each event is one function in
//! [`events`], so its log line and its counter can not drift apart.
//!
//! Every metric is registered once, in [`Telemetry::new`]. Every label set
//! is a struct of enums ([`Source`], [`TopicKind`], [`Field`], …), each
//! variant written in the code: a series exists only for a value the code
//! names, so nothing that arrives (a topic, a JSON key, a scanner's name)
//! can add a series, and `/metrics` stays the size the code gives it.
//! Input that must be counted by name goes through a fixed table first
//! ([`Field::of`], [`Field::of_sighting`]).
//!
//! Exposed names are those of the hand-written registry this replaced
//! (`gateway_sightings_total`, `gateway_outbox_depth`, …): the client adds
//! `_total` to a counter's name itself, so counters are registered without
//! it. Latencies are histograms (`…_seconds_bucket{le}`), so a chain's
//! Prometheus can aggregate them across stores with `histogram_quantile`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::decide::{NudgeKind, SkipReason};
use crate::identity::Purpose;
use crate::topics::ScannerFeed;

/// The `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The prefix of every exposed name.
const PREFIX: &str = "gateway";

/// Latency buckets, seconds: 0.1 ms to 10 s. The measured range is
/// sighting → PUBACK p50 ≈ 1 ms, p99 1.7–3.1 ms (42 ms without
/// `set_tcp_nodelay`), decision → durable p99 2.5–3.8 ms (BENCHMARKS.md),
/// so the buckets are dense from 0.5 ms to 10 ms and coarse above, up to
/// a broker outage's seconds. Fixed, so the same buckets aggregate across
/// stores.
pub const LATENCY_BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The retention sweep's buckets, seconds: from a fresh log's few
/// milliseconds to a minute (BENCHMARKS.md §2a, "A month-old store").
/// Few, so the family stays small (11 series).
pub const SWEEP_BUCKETS: [f64; 8] = [0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0];

/// A fixed set of label values: an enum whose variants are the only texts
/// a label can carry. The text is written beside each variant (some are
/// not Rust identifiers: `topic recipient`, `mqtt.password_file`), so
/// `EncodeLabelValue` is implemented from [`as_str`](Source::as_str) rather
/// than derived from the variant names.
macro_rules! label_values {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The label value (also what logs show).
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The value with this text, if any.
            pub fn from_label(text: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == text)
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

label_values! {
    /// Where sightings come from (and which source failed).
    Source {
        Udp = "udp",
        Replay = "replay",
        Bluez = "bluez",
        MqttOwn = "mqtt_own",
        MqttOpenMqttGateway = "mqtt_openmqttgateway",
        MqttEspresense = "mqtt_espresense",
        /// The `--record` capture writer (its failures only).
        Record = "record",
    }
}

impl From<ScannerFeed> for Source {
    fn from(feed: ScannerFeed) -> Self {
        match feed {
            ScannerFeed::Own => Source::MqttOwn,
            ScannerFeed::OpenMqttGateway => Source::MqttOpenMqttGateway,
            ScannerFeed::Espresense => Source::MqttEspresense,
        }
    }
}

label_values! {
    /// What a scanner's gain status changed to (`presence::gain`).
    GainAlert {
        Drifted = "drifted",
        Deaf = "deaf",
        /// Back within the threshold, or heard again.
        Ok = "ok",
    }
}

label_values! {
    /// The kind of an MQTT topic the gateway reads: the labels of
    /// `topics::Incoming::kind` and of `topics::ScannerFeed::label`.
    TopicKind {
        CrmPerson = "crm_person",
        Consent = "consent",
        Checkin = "checkin",
        Feedback = "feedback",
        Purchase = "purchase",
        Unknown = "unknown",
        MqttOwn = "mqtt_own",
        MqttOpenMqttGateway = "mqtt_openmqttgateway",
        MqttEspresense = "mqtt_espresense",
        /// The gateway's own Home Assistant discovery configs, read back
        /// to find those an earlier run left (`io/homeassistant.rs`).
        HomeassistantDiscovery = "homeassistant_discovery",
        /// `<p>/chain/+/+` (`[caps.chain]`).
        Chain = "chain",
    }
}

impl TopicKind {
    /// The kind of a label the topic code wrote (`Incoming::kind`,
    /// `ScannerFeed::label`, `Subscription::kind`); one it does not know
    /// (none today: see the tests) counts as `unknown`.
    pub fn of(label: &str) -> Self {
        Self::from_label(label).unwrap_or(TopicKind::Unknown)
    }
}

label_values! {
    /// The fields a sighting or an incoming message can be refused for:
    /// the top-level names the parsers of `sighting`, `io::scanners`,
    /// `identity/` and the pipeline report. A path inside a known field
    /// counts under that field (`beacons[2].rssi` is `beacons`); anything
    /// else, an unknown key above all, is `unknown_field`, so a sender
    /// choosing keys cannot choose series.
    Field {
        Answer = "answer",
        At = "at",
        AtMs = "at_ms",
        Beacons = "beacons",
        Comment = "comment",
        Consent = "consent",
        Forget = "forget",
        Id = "id",
        Identities = "identities",
        Identity = "identity",
        Interests = "interests",
        Items = "items",
        Message = "message",
        NudgeId = "nudge_id",
        Owns = "owns",
        Payload = "payload",
        Person = "person",
        Recipient = "recipient",
        Record = "record",
        RotatingId = "rotating_id",
        Storage = "storage",
        Timezone = "timezone",
        Topic = "topic",
        TopicRecipient = "topic recipient",
        // The chain's messages (`daemon/incoming/chain.rs`).
        V = "v",
        Kind = "kind",
        Rule = "rule",
        ErasedAtMs = "erased_at_ms",
        // Sighting records (`sighting.rs`) and scanner feeds (`io::scanners`).
        Scanner = "scanner",
        Addr = "addr",
        Rssi = "rssi",
        Adv = "adv",
        Mac = "mac",
        Node = "node",
        Room = "room",
        Name = "name",
        ManufacturerData = "manufacturerdata",
        ServiceData = "servicedata",
        ServiceDataUuid = "servicedatauuid",
        // Decoded beacons as OpenMQTTGateway / Theengs ship them, and
        // ESPresense's per-node settings (`io::scanners`).
        ModelId = "model_id",
        Mfid = "mfid",
        Uuid = "uuid",
        Major = "major",
        Minor = "minor",
        TxPower = "txpower",
        Volt = "volt",
        RssiAt1m = "rssi@1m",
        RxAdj = "rxAdj",
        UnknownField = "unknown_field",
    }
}

impl Field {
    /// The label of a field an incoming app or CRM message was refused
    /// for: its top level if that is one of [`INCOMING_FIELDS`],
    /// `unknown_field` otherwise.
    pub fn of(field: &str) -> Self {
        let top = field.split(['.', '[']).next().unwrap_or(field);
        if INCOMING_FIELDS.contains(&top) {
            Self::from_label(top).unwrap_or(Field::UnknownField)
        } else {
            Field::UnknownField
        }
    }

    /// The label of a field a sighting record or a scanner message was
    /// refused for: the parser's own name for it (`sighting.rs`,
    /// `io::scanners`), `unknown_field` for one the table lacks.
    pub fn of_sighting(field: &str) -> Self {
        Self::from_label(field).unwrap_or(Field::UnknownField)
    }
}

label_values! {
    /// Which way a chain entry went (`gateway_chain_entries_total`).
    ChainDirection {
        Out = "out",
        In = "in",
    }
}

label_values! {
    /// What became of a chain entry. Out: `queued` (in the chain outbox,
    /// with its reservation or the erasure or consent change), `acked`
    /// (the broker's PUBACK removed it), `refused` (the broker refused
    /// it). In: `folded` (a decision counted from now on, or an erasure or
    /// consent change applied), `duplicate` (a nudge id folded before),
    /// `own` (this store's own, back from the broker), `refused` (not a
    /// valid chain message; reported on `gateway/errors`).
    ChainOutcome {
        Queued = "queued",
        Acked = "acked",
        Folded = "folded",
        Duplicate = "duplicate",
        Own = "own",
        Refused = "refused",
        /// In: a decision dated before the person's erasure: dropped.
        Erased = "erased",
    }
}

label_values! {
    /// A nudge's kind (`decide::NudgeKind`).
    Kind {
        Info = "info",
        Compare = "compare",
        Thanks = "thanks",
        Feedback = "feedback",
        Offer = "offer",
    }
}

impl From<NudgeKind> for Kind {
    fn from(kind: NudgeKind) -> Self {
        match kind {
            NudgeKind::Info => Kind::Info,
            NudgeKind::Compare => Kind::Compare,
            NudgeKind::Thanks => Kind::Thanks,
            NudgeKind::Feedback => Kind::Feedback,
            NudgeKind::Offer => Kind::Offer,
        }
    }
}

label_values! {
    /// Why a nudge was held back (`decide::SkipReason`).
    HeldReason {
        KillSwitch = "kill_switch",
        NoConsent = "no_consent",
        QuietHours = "quiet_hours",
        PerVisit = "per_visit",
        PerDay = "per_day",
        PerWeek = "per_week",
        MinGap = "min_gap",
        PerKindPerDay = "per_kind_per_day",
        RuleCooldown = "rule_cooldown",
        StoreRate = "store_rate",
        ChainPerDay = "chain_per_day",
        ChainPerWeek = "chain_per_week",
        ChainMinGap = "chain_min_gap",
    }
}

impl From<&SkipReason> for HeldReason {
    fn from(reason: &SkipReason) -> Self {
        match reason {
            SkipReason::KillSwitch => HeldReason::KillSwitch,
            SkipReason::NoConsent { .. } => HeldReason::NoConsent,
            SkipReason::QuietHours => HeldReason::QuietHours,
            SkipReason::PerVisit { .. } => HeldReason::PerVisit,
            SkipReason::PerDay { .. } => HeldReason::PerDay,
            SkipReason::PerWeek { .. } => HeldReason::PerWeek,
            SkipReason::MinGap { .. } => HeldReason::MinGap,
            SkipReason::PerKindPerDay { .. } => HeldReason::PerKindPerDay,
            SkipReason::RuleCooldown { .. } => HeldReason::RuleCooldown,
            SkipReason::StoreRate { .. } => HeldReason::StoreRate,
            SkipReason::ChainPerDay { .. } => HeldReason::ChainPerDay,
            SkipReason::ChainPerWeek { .. } => HeldReason::ChainPerWeek,
            SkipReason::ChainMinGap { .. } => HeldReason::ChainMinGap,
        }
    }
}

label_values! {
    /// A consent purpose (`identity::Purpose`).
    ConsentPurpose {
        Proximity = "proximity",
        ProductInfo = "product_info",
        Offers = "offers",
        Thanks = "thanks",
        Feedback = "feedback",
    }
}

impl From<Purpose> for ConsentPurpose {
    fn from(purpose: Purpose) -> Self {
        match purpose {
            Purpose::Proximity => ConsentPurpose::Proximity,
            Purpose::ProductInfo => ConsentPurpose::ProductInfo,
            Purpose::Offers => ConsentPurpose::Offers,
            Purpose::Thanks => ConsentPurpose::Thanks,
            Purpose::Feedback => ConsentPurpose::Feedback,
        }
    }
}

label_values! {
    /// What a storage error interrupted.
    During {
        Reserve = "reserve",
        ShutdownFlush = "shutdown_flush",
        Retention = "retention",
        Visit = "visit",
        CountVisit = "count_visit",
        Tombstone = "tombstone",
        UpsertPerson = "upsert_person",
        ReloadPeople = "reload_people",
        /// A person's record read for a decision, a check-in, a purchase
        /// or a CRM change (only the hot part is held in memory).
        PersonRecord = "person_record",
        Erase = "erase",
        PurgeOutbox = "purge_outbox",
        Feedback = "feedback",
        OutboxRead = "outbox_read",
        OutboxRemove = "outbox_remove",
        OutboxExpire = "outbox_expire",
        /// Chain-wide caps (`daemon/incoming/chain.rs`, `store/chain.rs`).
        ChainFold = "chain_fold",
        ChainForget = "chain_forget",
        ChainIndex = "chain_index",
        ChainOutboxRemove = "chain_outbox_remove",
        ChainQueue = "chain_queue",
        /// Writing the people snapshot at shutdown (`store/snapshot.rs`).
        PeopleSnapshot = "people_snapshot",
        /// A `during` the table above lacks: a slip in the code (the
        /// tests list every one written today), never input.
        Other = "other",
    }
}

label_values! {
    /// The MQTT connection went up or down.
    LinkState {
        Up = "up",
        Down = "down",
    }
}

label_values! {
    /// Why a connection attempt to the broker failed (`io::mqtt`).
    ConnectError {
        Tls = "tls",
        Refused = "refused",
        Io = "io",
        Timeout = "timeout",
        Protocol = "protocol",
        Other = "other",
    }
}

label_values! {
    /// What was too large for the broker.
    Publish {
        Nudge = "nudge",
        Other = "other",
    }
}

label_values! {
    /// The config field naming a secret file.
    SecretField {
        MqttPasswordFile = "mqtt.password_file",
    }
}

label_values! {
    /// A part of the gateway's memory that grows with the people enrolled
    /// (BENCHMARKS.md §2a): what is held per person, nothing more.
    MemoryPart {
        /// People's hot part: ids, consent, recipient and e-mail/card
        /// fingerprints (`people::People`).
        People = "people",
        /// The rotating-identifier table (keys and three ids each).
        RotatingIds = "rotating_ids",
        /// The key vault's index of its file (`store::vault`).
        VaultIndex = "vault_index",
    }
}

label_values! {
    /// Where the people in memory were read from (`store::PeopleSource`).
    PeopleLoad {
        /// The people snapshot file: the normal start.
        Snapshot = "snapshot",
        /// Every record in sled: no current snapshot (after a kill, an
        /// offline erasure) or a damaged one; slower, and sled keeps what
        /// it paged in.
        Scan = "scan",
    }
}

label_values! {
    /// A cache bounded by configuration.
    Cache {
        /// sled's page cache (`[storage] cache_mb`).
        Sled = "sled",
    }
}

label_values! {
    /// What a configuration reload did.
    ReloadResult {
        Applied = "applied",
        Unchanged = "unchanged",
        Refused = "refused",
    }
}

label_values! {
    /// Whether a purchase's buyer is someone opted in.
    Buyer {
        Unknown = "unknown",
        OptedIn = "opted_in",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BySource {
    source: Source,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BySourceField {
    source: Source,
    field: Field,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByTopicKind {
    kind: TopicKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByTopicKindField {
    kind: TopicKind,
    field: Field,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByKind {
    kind: Kind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByHeldReason {
    reason: HeldReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByChainEntry {
    direction: ChainDirection,
    outcome: ChainOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByPurpose {
    purpose: ConsentPurpose,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByMemoryPart {
    part: MemoryPart,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByPeopleLoad {
    source: PeopleLoad,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByCache {
    cache: Cache,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByDuring {
    during: During,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByState {
    state: LinkState,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByConnectError {
    reason: ConnectError,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByPublish {
    what: Publish,
}

/// A scanner of the site file: the one label whose values come from the
/// configuration rather than the code. The pipeline sets these series
/// only for the scanners [`crate::presence::gain::GainSetup`] lists (the
/// configured ones with a position) and removes them when a reload drops
/// a scanner, so nothing that arrives can add a series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByScanner {
    scanner: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByGainStatus {
    status: GainAlert,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BySecretField {
    field: SecretField,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByReloadResult {
    result: ReloadResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByBuyer {
    buyer: Buyer,
}

/// When each reserved nudge's triggering sighting arrived, by nudge id:
/// written by the reservation stage, taken by delivery at publish, so the
/// PUBACK can be timed into the sighting → PUBACK histogram. Bounded
/// ([`MAX_LATENCY_STAMPS`]); a nudge without a stamp (after a restart,
/// say) is not timed.
pub type LatencyStamps =
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>>;

/// At most this many reservations wait for their PUBACK to be timed.
pub const MAX_LATENCY_STAMPS: usize = 4096;

/// Every metric, registered once in [`Telemetry::new`].
struct Metrics {
    sightings: Family<BySource, Counter>,
    sightings_rejected: Family<BySourceField, Counter>,
    scanner_messages_ignored: Family<BySourceField, Counter>,
    adverts_undecodable: Family<BySource, Counter>,
    source_failures: Family<BySource, Counter>,
    strangers_dropped: Counter,
    people_recognised: Counter,
    people_erased: Counter,
    people_refused_erased: Counter,
    people_present: Gauge,
    people_loads: Family<ByPeopleLoad, Counter>,
    memory_bytes: Family<ByMemoryPart, Gauge>,
    cache_limit_bytes: Family<ByCache, Gauge>,
    incoming: Family<ByTopicKind, Counter>,
    incoming_rejected: Family<ByTopicKindField, Counter>,
    incoming_rate_limited: Family<ByTopicKind, Counter>,
    incoming_retained_ignored: Family<ByTopicKind, Counter>,
    error_reports_suppressed: Counter,
    replies_dropped: Counter,
    response_topics_refused: Counter,
    consent_withdrawn: Family<ByPurpose, Counter>,
    purchases: Family<ByBuyer, Counter>,
    feedback_answers: Counter,
    checkins: Counter,
    checkins_rejected: Counter,
    nudges_reserved: Family<ByKind, Counter>,
    nudges_held: Family<ByHeldReason, Counter>,
    nudges_not_composed: Counter,
    nudges_published: Counter,
    nudges_acked: Counter,
    nudges_refused_by_broker: Counter,
    nudges_expired: Counter,
    reservation_batches: Counter,
    retention_swept: Counter,
    outbox_depth: Gauge,
    chain_entries: Family<ByChainEntry, Counter>,
    chain_outbox_length: Gauge,
    homeassistant_discovery_published: Counter,
    homeassistant_leftovers_cleared: Counter,
    retained_copies_dropped: Family<ByTopicKind, Counter>,
    homeassistant_entities: Gauge,
    mqtt_connected: Gauge,
    mqtt_connection_changes: Family<ByState, Counter>,
    mqtt_connect_errors: Family<ByConnectError, Counter>,
    mqtt_subacks: Counter,
    /// A count, but typed gauge: as a counter its family would be named
    /// `gateway_mqtt_subscriptions_refused`, the gauge below's name, and
    /// an OpenMetrics exposition may not hold one family twice. Kept so
    /// the exposed names stay what they were; it only ever goes up.
    mqtt_subscriptions_refused_total: Family<ByTopicKind, Gauge>,
    mqtt_subscriptions_refused: Gauge,
    publishes_too_large: Family<ByPublish, Counter>,
    secret_files_exposed: Family<BySecretField, Counter>,
    storage_errors: Family<ByDuring, Counter>,
    config_reloads: Family<ByReloadResult, Counter>,
    bluez_scanning: Gauge,
    scanner_gain_db: Family<ByScanner, Gauge<f64, AtomicU64>>,
    scanner_deaf: Family<ByScanner, Gauge>,
    scanner_gain_alerts: Family<ByGainStatus, Counter>,
    sighting_to_puback: Histogram,
    decision_durable: Histogram,
    rotating_roll: Histogram,
    rotating_roll_longest_step: Histogram,
    retention_sweep: Histogram,
}

impl Metrics {
    fn new() -> Self {
        Self {
            sightings: Default::default(),
            sightings_rejected: Default::default(),
            scanner_messages_ignored: Default::default(),
            adverts_undecodable: Default::default(),
            source_failures: Default::default(),
            strangers_dropped: Default::default(),
            people_recognised: Default::default(),
            people_erased: Default::default(),
            people_refused_erased: Default::default(),
            people_present: Default::default(),
            people_loads: Default::default(),
            memory_bytes: Default::default(),
            cache_limit_bytes: Default::default(),
            incoming: Default::default(),
            incoming_rejected: Default::default(),
            incoming_rate_limited: Default::default(),
            incoming_retained_ignored: Default::default(),
            error_reports_suppressed: Default::default(),
            replies_dropped: Default::default(),
            response_topics_refused: Default::default(),
            consent_withdrawn: Default::default(),
            purchases: Default::default(),
            feedback_answers: Default::default(),
            checkins: Default::default(),
            checkins_rejected: Default::default(),
            nudges_reserved: Default::default(),
            nudges_held: Default::default(),
            nudges_not_composed: Default::default(),
            nudges_published: Default::default(),
            nudges_acked: Default::default(),
            nudges_refused_by_broker: Default::default(),
            nudges_expired: Default::default(),
            reservation_batches: Default::default(),
            retention_swept: Default::default(),
            outbox_depth: Default::default(),
            chain_entries: Default::default(),
            chain_outbox_length: Default::default(),
            homeassistant_discovery_published: Default::default(),
            homeassistant_leftovers_cleared: Default::default(),
            retained_copies_dropped: Default::default(),
            homeassistant_entities: Default::default(),
            mqtt_connected: Default::default(),
            mqtt_connection_changes: Default::default(),
            mqtt_connect_errors: Default::default(),
            mqtt_subacks: Default::default(),
            mqtt_subscriptions_refused_total: Default::default(),
            mqtt_subscriptions_refused: Default::default(),
            publishes_too_large: Default::default(),
            secret_files_exposed: Default::default(),
            storage_errors: Default::default(),
            config_reloads: Default::default(),
            bluez_scanning: Default::default(),
            scanner_gain_db: Default::default(),
            scanner_deaf: Default::default(),
            scanner_gain_alerts: Default::default(),
            sighting_to_puback: Histogram::new(LATENCY_BUCKETS),
            decision_durable: Histogram::new(LATENCY_BUCKETS),
            rotating_roll: Histogram::new(LATENCY_BUCKETS),
            rotating_roll_longest_step: Histogram::new(LATENCY_BUCKETS),
            retention_sweep: Histogram::new(SWEEP_BUCKETS),
        }
    }

    /// A labelled series shows only once touched. The dashboard's families
    /// whose label values are a short closed set, most of them rare
    /// (storage errors, refused reloads, withdrawals), start at 0 instead,
    /// so their panels and an `increase()` alert see a series from the
    /// first scrape rather than "no data" until the first occurrence.
    fn zero_the_closed_sets(&self) {
        for &during in During::ALL.iter().filter(|d| **d != During::Other) {
            drop(self.storage_errors.get_or_create(&ByDuring { during }));
        }
        for &result in ReloadResult::ALL {
            drop(
                self.config_reloads
                    .get_or_create(&ByReloadResult { result }),
            );
        }
        for &purpose in ConsentPurpose::ALL {
            drop(self.consent_withdrawn.get_or_create(&ByPurpose { purpose }));
        }
        for &kind in Kind::ALL {
            drop(self.nudges_reserved.get_or_create(&ByKind { kind }));
        }
        for &reason in HeldReason::ALL {
            drop(self.nudges_held.get_or_create(&ByHeldReason { reason }));
        }
        for &status in GainAlert::ALL {
            drop(
                self.scanner_gain_alerts
                    .get_or_create(&ByGainStatus { status }),
            );
        }
    }

    /// Registers each metric under its exposed name (the client adds
    /// `gateway_` and, to counters, `_total`).
    fn register(&self, r: &mut Registry) {
        macro_rules! reg {
            ($name:literal, $help:literal, $metric:ident) => {
                r.register($name, $help, self.$metric.clone())
            };
        }
        reg!(
            "sightings",
            "Sighting records received, by source",
            sightings
        );
        reg!(
            "sightings_rejected",
            "Sighting records refused, by source and field",
            sightings_rejected
        );
        reg!(
            "scanner_messages_ignored",
            "Scanner messages ignored (not a beacon the gateway reads), by source and field",
            scanner_messages_ignored
        );
        reg!(
            "adverts_undecodable",
            "Adverts that decoded to no frame, by source",
            adverts_undecodable
        );
        reg!(
            "source_failures",
            "Sighting sources that failed, by source",
            source_failures
        );
        reg!(
            "strangers_dropped",
            "App tokens that resolved to nobody, dropped",
            strangers_dropped
        );
        reg!(
            "people_recognised",
            "Sightings of opted-in people",
            people_recognised
        );
        reg!("people_erased", "People erased", people_erased);
        reg!(
            "people_refused_erased",
            "CRM records refused: not later than the person's erasure",
            people_refused_erased
        );
        reg!(
            "people_present",
            "People present in the store now",
            people_present
        );
        reg!(
            "people_loads",
            "Times the people in memory were loaded, by where from",
            people_loads
        );
        reg!(
            "memory_bytes",
            "Heap held for the people enrolled, by part (from capacities)",
            memory_bytes
        );
        reg!(
            "cache_limit_bytes",
            "The configured bound of each cache, by cache",
            cache_limit_bytes
        );
        reg!(
            "incoming",
            "App and CRM messages taken, by topic kind",
            incoming
        );
        reg!(
            "incoming_rejected",
            "Incoming messages refused, by topic kind and field",
            incoming_rejected
        );
        reg!(
            "incoming_rate_limited",
            "Incoming messages over their recipient's rate, dropped, by topic kind",
            incoming_rate_limited
        );
        reg!(
            "incoming_retained_ignored",
            "Retained copies on request topics, ignored, by topic kind",
            incoming_retained_ignored
        );
        reg!(
            "error_reports_suppressed",
            "Error reports not sent: over the per-second cap",
            error_reports_suppressed
        );
        reg!(
            "replies_dropped",
            "Receipts and error reports that could not be queued",
            replies_dropped
        );
        reg!(
            "response_topics_refused",
            "MQTT v5 response topics outside the sender's receipts topic",
            response_topics_refused
        );
        reg!(
            "consent_withdrawn",
            "Consent withdrawals, by purpose",
            consent_withdrawn
        );
        reg!("purchases", "Purchases from the till, by buyer", purchases);
        reg!(
            "feedback_answers",
            "Feedback answers saved",
            feedback_answers
        );
        reg!("checkins", "Check-ins accepted", checkins);
        reg!(
            "checkins_rejected",
            "Check-ins refused: the identifier is not the recipient's",
            checkins_rejected
        );
        reg!(
            "nudges_reserved",
            "Nudges reserved (durable), by kind",
            nudges_reserved
        );
        reg!("nudges_held", "Nudges held back, by reason", nudges_held);
        reg!(
            "nudges_not_composed",
            "Nudges whose template could not be composed",
            nudges_not_composed
        );
        reg!(
            "nudges_published",
            "Nudges handed to the MQTT client",
            nudges_published
        );
        reg!(
            "nudges_acked",
            "Nudges acknowledged by the broker",
            nudges_acked
        );
        reg!(
            "nudges_refused_by_broker",
            "Nudges the broker refused (PUBACK with an error code)",
            nudges_refused_by_broker
        );
        reg!(
            "nudges_expired",
            "Nudges expired in the outbox, not sent",
            nudges_expired
        );
        reg!(
            "reservation_batches",
            "Batches of decisions reserved in one transaction",
            reservation_batches
        );
        reg!(
            "retention_swept",
            "Capture records dropped by the retention sweep",
            retention_swept
        );
        reg!("outbox_depth", "Nudges waiting in the outbox", outbox_depth);
        reg!(
            "chain_entries",
            "Chain entries (decisions, erasures, consent) out and in, by outcome",
            chain_entries
        );
        reg!(
            "chain_outbox_length",
            "Chain entries waiting for the broker's PUBACK",
            chain_outbox_length
        );
        reg!(
            "homeassistant_discovery_published",
            "Home Assistant discovery publications (start and reloads)",
            homeassistant_discovery_published
        );
        reg!(
            "homeassistant_leftovers_cleared",
            "Discovery configs an earlier run left retained, found and cleared",
            homeassistant_leftovers_cleared
        );
        reg!(
            "retained_copies_dropped",
            "Retained copies read back from the broker and dropped (their queue was full)",
            retained_copies_dropped
        );
        reg!(
            "homeassistant_entities",
            "Entities announced to Home Assistant",
            homeassistant_entities
        );
        reg!(
            "mqtt_connected",
            "1 when connected to the MQTT broker",
            mqtt_connected
        );
        reg!(
            "mqtt_connection_changes",
            "MQTT connection changes, by state",
            mqtt_connection_changes
        );
        reg!(
            "mqtt_connect_errors",
            "Failed MQTT connection attempts, by reason",
            mqtt_connect_errors
        );
        reg!("mqtt_subacks", "SUBACKs received", mqtt_subacks);
        reg!(
            "mqtt_subscriptions_refused_total",
            "Subscriptions the broker refused, by topic kind",
            mqtt_subscriptions_refused_total
        );
        reg!(
            "mqtt_subscriptions_refused",
            "Subscriptions the broker's last SUBACK refused",
            mqtt_subscriptions_refused
        );
        reg!(
            "publishes_too_large",
            "Messages larger than the broker accepts, dropped, by what",
            publishes_too_large
        );
        reg!(
            "secret_files_exposed",
            "Secret files readable by group or others, by config field",
            secret_files_exposed
        );
        reg!(
            "storage_errors",
            "Storage errors, by what they interrupted",
            storage_errors
        );
        reg!(
            "config_reloads",
            "Configuration reloads, by result",
            config_reloads
        );
        reg!(
            "bluez_scanning",
            "1 while BlueZ is scanning",
            bluez_scanning
        );
        reg!(
            "scanner_gain_db",
            "A scanner's gain learned from the store's beacons, dB against the model (configured scanners only)",
            scanner_gain_db
        );
        reg!(
            "scanner_deaf",
            "1 while a scanner hears none of the store's beacons it should",
            scanner_deaf
        );
        reg!(
            "scanner_gain_alerts",
            "Scanners whose gain status changed, by the new status",
            scanner_gain_alerts
        );
        r.register_with_unit(
            "sighting_to_puback",
            "From the triggering sighting's arrival to the broker's PUBACK of the nudge",
            Unit::Seconds,
            self.sighting_to_puback.clone(),
        );
        r.register_with_unit(
            "decision_durable",
            "From a decision leaving the pipeline to its reservation being on disk",
            Unit::Seconds,
            self.decision_durable.clone(),
        );
        r.register_with_unit(
            "rotating_roll",
            "Rolls of the rotating-identifier table by one interval: from the first step to the last",
            Unit::Seconds,
            self.rotating_roll.clone(),
        );
        r.register_with_unit(
            "rotating_roll_longest_step",
            "The longest step of each roll of the rotating-identifier table (a sighting waits for at most one)",
            Unit::Seconds,
            self.rotating_roll_longest_step.clone(),
        );
        r.register_with_unit(
            "retention_sweep",
            "Retention sweeps of the store (decision log, feedback, tombstones; the chain's trees in a chain): how long each took",
            Unit::Seconds,
            self.retention_sweep.clone(),
        );
    }
}

pub struct Telemetry {
    registry: Registry,
    m: Metrics,
    /// Warnings about bad input.
    warnings: LogBudget,
    /// Messages dropped for their recipient's rate: a budget of their own,
    /// so a flood of bad input cannot hide a flood over the rate.
    rate_limited_log: LogBudget,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
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

impl Telemetry {
    /// Every metric, registered.
    pub fn new() -> Self {
        let m = Metrics::new();
        m.zero_the_closed_sets();
        let mut registry = Registry::with_prefix(PREFIX);
        m.register(&mut registry);
        Self {
            registry,
            m,
            warnings: LogBudget::default(),
            rate_limited_log: LogBudget::default(),
        }
    }

    /// Whether a rate-limited warning may be logged now.
    pub fn may_warn(&self) -> bool {
        self.warnings.may(WARNINGS_PER_SECOND)
    }

    /// The OpenMetrics text exposition ([`CONTENT_TYPE`]), `# EOF` last.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String does not fail; an encoder error would be a
        // bug in the client, and a scrape is no place to panic.
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
            let _ = writeln!(out, "# EOF");
        }
        out
    }

    /// The sum of a counter's series (or a gauge's value) whose labels
    /// include `labels`, read back from the exposition: `name` as exposed,
    /// without `gateway_` (`"nudges_held_total"`). For tests and the run
    /// summary; 0 for a series that does not exist.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let text = self.render();
        let wanted = format!("{PREFIX}_{name}");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(parse_sample)
            .filter(|(n, l, _)| {
                *n == wanted
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, value)| value.max(0.0) as u64)
            .sum()
    }

    /// A gauge's value (`name` without `gateway_`), 0 if absent.
    pub fn gauge(&self, name: &str) -> i64 {
        let wanted = format!("{PREFIX}_{name}");
        self.render()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(parse_sample)
            .find(|(n, _, _)| *n == wanted)
            .map_or(0, |(_, _, v)| v as i64)
    }
}

/// A sample of the exposition: name, labels, value.
type Sample<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);

/// One sample line of the exposition. Label values here are the code's
/// own (see the module doc), none with a `"` or `,`.
fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse::<f64>().ok()?;
    let (name, labels) = match series.split_once('{') {
        None => (series, Vec::new()),
        Some((name, rest)) => {
            let inner = rest.strip_suffix('}')?;
            let labels = inner
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .filter_map(|pair| {
                    let (k, v) = pair.split_once("=\"")?;
                    Some((k, v.trim_end_matches('"')))
                })
                .collect();
            (name, labels)
        }
    };
    Some((name, labels, value))
}

/// The fields an incoming message can be refused for, as metric labels
/// (see [`Field`]): the names [`field_label`] keeps.
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
    "v",
    "kind",
    "rule",
    "erased_at_ms",
];

/// The label text of a refused field (see [`Field::of`]).
pub fn field_label(field: &str) -> &'static str {
    Field::of(field).as_str()
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

/// The events: each logs (when worth a line) and counts. Personal data
/// never reaches these: callers pass hashed ids.
pub mod events {
    use super::{
        Buyer, BySecretField, BySource, BySourceField, ByTopicKind, ByTopicKindField, ConnectError,
        ConsentPurpose, Duration, During, Field, HeldReason, Kind, LinkState, Publish,
        ReloadResult, SecretField, Source, Telemetry, TopicKind,
    };
    use super::{
        ByBuyer, ByChainEntry, ByConnectError, ByDuring, ByHeldReason, ByKind, ByPublish,
        ByPurpose, ByReloadResult, ByState, ChainDirection, ChainOutcome,
    };
    use super::{
        ByCache, ByGainStatus, ByMemoryPart, ByPeopleLoad, ByScanner, Cache, GainAlert, MemoryPart,
        PeopleLoad,
    };
    use crate::decide::{NudgeKind, SkipReason};

    /// Home Assistant discovery published (`entities` configs) and
    /// entities removed (empty retained configs).
    pub fn homeassistant_discovery(t: &Telemetry, entities: usize, removed: usize) {
        t.m.homeassistant_discovery_published.inc();
        t.m.homeassistant_entities.set(entities as i64);
        tracing::info!(entities, removed, "home assistant discovery published");
    }

    /// A discovery config this gateway published in an earlier run, found
    /// retained and no longer configured: cleared.
    pub fn homeassistant_leftover_cleared(t: &Telemetry, topic: &str) {
        t.m.homeassistant_leftovers_cleared.inc();
        tracing::info!(
            topic,
            "home assistant: cleared a discovery config left by an earlier run"
        );
    }

    /// A retained copy read back from the broker that its task had no room
    /// for; the next connect sends it again.
    pub fn retained_copy_dropped(t: &Telemetry, kind: &'static str) {
        t.m.retained_copies_dropped
            .get_or_create(&ByTopicKind {
                kind: TopicKind::of(kind),
            })
            .inc();
        if t.may_warn() {
            tracing::warn!(kind, "a retained copy was dropped: its queue was full");
        }
    }

    pub fn sighting_received(t: &Telemetry, source: Source) {
        t.m.sightings.get_or_create(&BySource { source }).inc();
    }

    /// A record that could not be parsed: named by field, never by content.
    pub fn sighting_rejected(
        t: &Telemetry,
        source: Source,
        origin: &str,
        field: &'static str,
        reason: &str,
    ) {
        let labels = BySourceField {
            source,
            field: Field::of_sighting(field),
        };
        t.m.sightings_rejected.get_or_create(&labels).inc();
        if t.may_warn() {
            tracing::warn!(%source, origin, field, reason, "sighting rejected");
        }
    }

    /// A scanner message that is not a beacon the gateway reads (a phone,
    /// a message without advert data): counted, not logged (they are most
    /// of a busy scanner's traffic).
    pub fn scanner_message_ignored(t: &Telemetry, source: Source, field: &'static str) {
        let labels = BySourceField {
            source,
            field: Field::of_sighting(field),
        };
        t.m.scanner_messages_ignored.get_or_create(&labels).inc();
        tracing::trace!(%source, field, "scanner message ignored");
    }

    pub fn advert_undecodable(t: &Telemetry, source: Source) {
        t.m.adverts_undecodable
            .get_or_create(&BySource { source })
            .inc();
    }

    pub fn source_failed(t: &Telemetry, source: Source, error: &dyn std::fmt::Display) {
        t.m.source_failures
            .get_or_create(&BySource { source })
            .inc();
        tracing::error!(%source, %error, "source failed");
    }

    /// BlueZ started or stopped scanning.
    pub fn bluez_scanning(t: &Telemetry, scanning: bool) {
        t.m.bluez_scanning.set(i64::from(scanning));
        tracing::debug!(scanning, "BlueZ scanning");
    }

    /// An app token that resolves to nobody: a stranger, forgotten here.
    pub fn stranger_dropped(t: &Telemetry) {
        t.m.strangers_dropped.inc();
    }

    /// A CRM record not dated after the person's erasure (their retained
    /// record, republished or handed over on a fresh session).
    pub fn person_record_refused_after_erasure(t: &Telemetry, person_hash: &str) {
        t.m.people_refused_erased.inc();
        tracing::info!(
            person = person_hash,
            "person record refused: not later than the person's erasure"
        );
    }

    /// A person erased (at their request, the back office's or an operator's).
    pub fn person_erased(t: &Telemetry, person_hash: &str) {
        t.m.people_erased.inc();
        tracing::info!(person = person_hash, "person erased");
    }

    pub fn person_recognised(t: &Telemetry, person_hash: &str) {
        t.m.people_recognised.inc();
        tracing::debug!(person = person_hash, "person recognised");
    }

    /// The heap held for the people enrolled, by part.
    pub fn memory(t: &Telemetry, part: MemoryPart, bytes: usize) {
        t.m.memory_bytes
            .get_or_create(&ByMemoryPart { part })
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// The people were loaded into memory (at start, or again after a
    /// storage failure) from `source`, in `ms`.
    pub fn people_loaded(t: &Telemetry, source: PeopleLoad, people: usize, ms: u64) {
        t.m.people_loads
            .get_or_create(&ByPeopleLoad { source })
            .inc();
        tracing::info!(people, from = source.as_str(), ms, "people loaded");
    }

    /// A cache's configured bound.
    pub fn cache_limit(t: &Telemetry, cache: Cache, bytes: u64) {
        t.m.cache_limit_bytes
            .get_or_create(&ByCache { cache })
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// How many people are present now (every tick).
    pub fn people_present(t: &Telemetry, present: usize) {
        t.m.people_present.set(present as i64);
    }

    /// An app or CRM message taken off a subscription (`kind`: the topic
    /// code's label, `Incoming::kind`).
    pub fn incoming(t: &Telemetry, kind: &'static str) {
        let kind = TopicKind::of(kind);
        t.m.incoming.get_or_create(&ByTopicKind { kind }).inc();
        tracing::trace!(%kind, "incoming message");
    }

    /// An incoming app or CRM message refused: counted by topic kind and
    /// by the fixed label of its field; the log names the field itself,
    /// cut short.
    pub fn incoming_rejected(t: &Telemetry, kind: &'static str, field: &str, reason: &str) {
        // A key the parser did not expect counts as such even when it is
        // the name of another message's field (`answer` in a check-in).
        let label = if reason == "unknown field" {
            Field::UnknownField
        } else {
            Field::of(field)
        };
        let labels = ByTopicKindField {
            kind: TopicKind::of(kind),
            field: label,
        };
        t.m.incoming_rejected.get_or_create(&labels).inc();
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
        let kind = TopicKind::of(kind);
        t.m.incoming_rate_limited
            .get_or_create(&ByTopicKind { kind })
            .inc();
        if t.rate_limited_log.may(super::RATE_LIMITED_LOGS_PER_SECOND) {
            tracing::warn!(%kind, "incoming message over its recipient's rate; dropped");
        }
    }

    /// A retained copy on a topic that carries requests (consent, check-in,
    /// feedback, purchase, sightings): left there by a client, not acted on.
    pub fn retained_message_ignored(t: &Telemetry, kind: &'static str) {
        let kind = TopicKind::of(kind);
        t.m.incoming_retained_ignored
            .get_or_create(&ByTopicKind { kind })
            .inc();
        if t.may_warn() {
            tracing::warn!(%kind, "ignored a retained message on a request topic");
        }
    }

    /// An error report not sent on `gateway/errors`: over its per-second
    /// cap (the refusal itself is counted and logged by
    /// [`incoming_rejected`]).
    pub fn error_report_suppressed(t: &Telemetry) {
        t.m.error_reports_suppressed.inc();
        tracing::trace!("error report suppressed: over the per-second cap");
    }

    /// A receipt or error report that could not be queued for the broker.
    pub fn reply_dropped(t: &Telemetry, error: &dyn std::fmt::Display) {
        t.m.replies_dropped.inc();
        if t.may_warn() {
            tracing::warn!(%error, "a receipt or error report could not be queued; dropped");
        }
    }

    /// An MQTT v5 response topic outside the sender's own receipts topic:
    /// no receipt is sent there.
    pub fn response_topic_refused(t: &Telemetry) {
        t.m.response_topics_refused.inc();
        if t.may_warn() {
            tracing::warn!("response topic outside the sender's receipts topic; no receipt sent");
        }
    }

    /// A consent purpose withdrawn (a consent change, or a CRM record).
    pub fn consent_withdrawn(t: &Telemetry, purpose: impl Into<ConsentPurpose>) {
        let purpose = purpose.into();
        t.m.consent_withdrawn
            .get_or_create(&ByPurpose { purpose })
            .inc();
        tracing::info!(%purpose, "consent withdrawn");
    }

    /// A purchase from the till, by an opted-in buyer or not.
    pub fn purchase(t: &Telemetry, opted_in: bool) {
        let buyer = if opted_in {
            Buyer::OptedIn
        } else {
            Buyer::Unknown
        };
        t.m.purchases.get_or_create(&ByBuyer { buyer }).inc();
        tracing::debug!(%buyer, "purchase");
    }

    pub fn feedback_answered(t: &Telemetry) {
        t.m.feedback_answers.inc();
        tracing::debug!("feedback answer saved");
    }

    pub fn checkin_accepted(t: &Telemetry) {
        t.m.checkins.inc();
        tracing::debug!("check-in accepted");
    }

    /// A check-in whose identifier is not the recipient's (the refusal is
    /// reported by [`incoming_rejected`] too).
    pub fn checkin_rejected(t: &Telemetry) {
        t.m.checkins_rejected.inc();
        tracing::debug!("check-in refused: identifier not the recipient's");
    }

    pub fn nudge_reserved(
        t: &Telemetry,
        person_hash: &str,
        rule: &str,
        kind: NudgeKind,
        nudge_id: &str,
    ) {
        let kind = Kind::from(kind);
        t.m.nudges_reserved.get_or_create(&ByKind { kind }).inc();
        tracing::info!(person = person_hash, rule, %kind, nudge_id, "nudge reserved");
    }

    pub fn nudge_held(t: &Telemetry, person_hash: &str, rule: &str, reason: &SkipReason) {
        let reason = HeldReason::from(reason);
        t.m.nudges_held
            .get_or_create(&ByHeldReason { reason })
            .inc();
        tracing::info!(person = person_hash, rule, %reason, "nudge held back");
    }

    /// A rule's template could not be composed for a person: skipped. The
    /// rule is named in the log, not as a label.
    pub fn nudge_not_composed(t: &Telemetry, rule: &str, error: &dyn std::fmt::Display) {
        t.m.nudges_not_composed.inc();
        tracing::warn!(rule, %error, "nudge not composed; skipped");
    }

    /// A batch of decisions reserved in one transaction and flush.
    pub fn reservation_batch(t: &Telemetry, decisions: usize) {
        t.m.reservation_batches.inc();
        tracing::trace!(decisions, "reservation batch flushed");
    }

    /// A decision's wait from the pipeline until its reservation (or its
    /// refusal) is on disk.
    pub fn decision_durable(t: &Telemetry, waited: Duration) {
        t.m.decision_durable.observe(waited.as_secs_f64());
    }

    /// A roll of the rotating-identifier table by one interval is done:
    /// `took` from its first step to its last, in `steps` steps, the
    /// longest of them `longest_step`.
    pub fn rotating_roll(t: &Telemetry, took: Duration, steps: u32, longest_step: Duration) {
        t.m.rotating_roll.observe(took.as_secs_f64());
        t.m.rotating_roll_longest_step
            .observe(longest_step.as_secs_f64());
        tracing::info!(
            took_ms = took.as_secs_f64() * 1000.0,
            steps,
            longest_step_us = longest_step.as_micros() as u64,
            "rotating identifiers rolled"
        );
    }

    pub fn nudge_published(t: &Telemetry) {
        t.m.nudges_published.inc();
    }

    pub fn nudge_acked(t: &Telemetry, nudge_id: &str) {
        t.m.nudges_acked.inc();
        tracing::debug!(nudge_id, "nudge acknowledged by the broker");
    }

    /// The time from a nudge's triggering sighting to the broker's PUBACK.
    pub fn sighting_to_puback(t: &Telemetry, elapsed: Duration) {
        t.m.sighting_to_puback.observe(elapsed.as_secs_f64());
    }

    /// The broker answered a nudge's PUBLISH with an error code: dropped.
    pub fn nudge_refused_by_broker(t: &Telemetry, seq: u64) {
        t.m.nudges_refused_by_broker.inc();
        tracing::error!(
            seq,
            "broker refused a nudge (check the gateway's ACL); dropped"
        );
    }

    pub fn nudge_expired(t: &Telemetry, nudge_id: &str) {
        t.m.nudges_expired.inc();
        tracing::info!(nudge_id, "nudge expired in the outbox, not sent");
    }

    /// How many nudges wait in the outbox (refreshed once a second).
    pub fn outbox_depth(t: &Telemetry, depth: usize) {
        t.m.outbox_depth.set(depth as i64);
    }

    /// A chain entry in or out, and what became of it. Neither the person
    /// (a hash every store shares) nor the content is logged.
    pub fn chain_entry(
        t: &Telemetry,
        direction: ChainDirection,
        outcome: ChainOutcome,
        kind: crate::topics::ChainKind,
    ) {
        t.m.chain_entries
            .get_or_create(&ByChainEntry { direction, outcome })
            .inc();
        tracing::debug!(%direction, %outcome, kind = kind.level(), "chain entry");
    }

    /// Chain entries of a batch of reservations, queued with them.
    pub fn chain_entries_queued(t: &Telemetry, count: usize) {
        if count > 0 {
            t.m.chain_entries
                .get_or_create(&ByChainEntry {
                    direction: ChainDirection::Out,
                    outcome: ChainOutcome::Queued,
                })
                .inc_by(count as u64);
        }
    }

    /// The broker acknowledged a chain entry: it left the chain outbox.
    pub fn chain_entry_acked(t: &Telemetry) {
        t.m.chain_entries
            .get_or_create(&ByChainEntry {
                direction: ChainDirection::Out,
                outcome: ChainOutcome::Acked,
            })
            .inc();
    }

    /// A chain entry the broker refused (not acknowledged with success):
    /// removed like a nudge the broker refused.
    pub fn chain_entry_refused_by_broker(t: &Telemetry, seq: u64) {
        t.m.chain_entries
            .get_or_create(&ByChainEntry {
                direction: ChainDirection::Out,
                outcome: ChainOutcome::Refused,
            })
            .inc();
        tracing::warn!(seq, "the broker refused a chain entry; dropped");
    }

    pub fn chain_outbox_length(t: &Telemetry, length: usize) {
        t.m.chain_outbox_length.set(length as i64);
    }

    /// A retention sweep of the store is done: `removed` entries went in
    /// `took` (the sweep runs on a blocking thread, beside the pipeline).
    /// Logged by the pipeline ("retention sweep", target `gateway::daemon`,
    /// which `bench/roll.sh` and `bench/sweep.sh` read without the
    /// per-nudge lines of this module).
    pub fn retention_sweep(t: &Telemetry, took: Duration, removed: usize) {
        t.m.retention_swept.inc_by(removed as u64);
        t.m.retention_sweep.observe(took.as_secs_f64());
    }

    /// Capture records dropped by the retention sweep.
    pub fn retention_swept(t: &Telemetry, dropped: usize) {
        t.m.retention_swept.inc_by(dropped as u64);
        if dropped > 0 {
            tracing::debug!(dropped, "capture records past retention dropped");
        }
    }

    pub fn mqtt_connection(t: &Telemetry, connected: bool, detail: &str) {
        t.m.mqtt_connected.set(i64::from(connected));
        let state = if connected {
            LinkState::Up
        } else {
            LinkState::Down
        };
        t.m.mqtt_connection_changes
            .get_or_create(&ByState { state })
            .inc();
        if connected {
            tracing::info!(detail, "connected to the MQTT broker");
        } else {
            tracing::warn!(detail, "MQTT connection lost; retrying with backoff");
        }
    }

    /// Not connected to the broker (at start, or settings unusable).
    pub fn mqtt_not_connected(t: &Telemetry) {
        t.m.mqtt_connected.set(0);
    }

    /// A connection attempt that failed (`reason`: `io::mqtt`'s label of
    /// the error). Logged by the caller, which knows whether it is news.
    pub fn mqtt_connect_failed(t: &Telemetry, reason: &'static str) {
        let reason = ConnectError::from_label(reason).unwrap_or(ConnectError::Other);
        t.m.mqtt_connect_errors
            .get_or_create(&ByConnectError { reason })
            .inc();
    }

    /// The broker refused one of our subscriptions (`kind` is the fixed
    /// label of the filter, never the filter: it may come from config).
    pub fn subscription_refused(t: &Telemetry, kind: &'static str, code: u8) {
        t.m.mqtt_subscriptions_refused_total
            .get_or_create(&ByTopicKind {
                kind: TopicKind::of(kind),
            })
            .inc();
        if TopicKind::of(kind) == TopicKind::HomeassistantDiscovery {
            tracing::warn!(
                kind,
                code = format_args!("{code:#04x}"),
                "subscription refused by the broker (check the gateway's ACL): Home Assistant configs left by an earlier run will not be found"
            );
            return;
        }
        tracing::error!(
            kind,
            code = format_args!("{code:#04x}"),
            "subscription refused by the broker (check the gateway's ACL); not ready"
        );
    }

    /// How many of our subscriptions the broker's last SUBACK refused.
    pub fn subscriptions_refused_now(t: &Telemetry, refused: usize) {
        t.m.mqtt_subscriptions_refused.set(refused as i64);
    }

    /// The broker answered our SUBSCRIBE (once per connect): from here on
    /// what it granted is heard.
    pub fn subscribed(t: &Telemetry, refused: usize) {
        t.m.mqtt_subacks.inc();
        subscriptions_refused_now(t, refused);
        tracing::debug!(refused, "subscriptions answered by the broker");
    }

    /// A message larger than the broker accepts; dropped.
    pub fn publish_too_large(t: &Telemetry, what: Publish, bytes: usize, limit: usize) {
        t.m.publishes_too_large
            .get_or_create(&ByPublish { what })
            .inc();
        tracing::error!(
            %what,
            bytes,
            limit,
            "message too large for the broker; dropped"
        );
    }

    /// A file holding a secret that others than the gateway's user may read.
    pub fn secret_file_exposed(t: &Telemetry, field: SecretField, mode: u32) {
        t.m.secret_files_exposed
            .get_or_create(&BySecretField { field })
            .inc();
        tracing::warn!(
            %field,
            mode = format_args!("{mode:o}"),
            "a secret file is readable by group or others; chmod 600 it or use LoadCredential="
        );
    }

    /// A storage error (`during`: what it interrupted, a name written in
    /// the code; see [`During`]).
    pub fn storage_error(t: &Telemetry, during: &'static str, error: &dyn std::fmt::Display) {
        let label = During::from_label(during).unwrap_or(During::Other);
        t.m.storage_errors
            .get_or_create(&ByDuring { during: label })
            .inc();
        tracing::error!(during, %error, "storage error");
    }

    /// A configured scanner's gain learned from the store's beacons
    /// (`None`: not known yet) and whether it is deaf.
    pub fn scanner_gain(t: &Telemetry, scanner: &str, gain_db: Option<f32>, deaf: bool) {
        let labels = ByScanner {
            scanner: scanner.to_string(),
        };
        if let Some(g) = gain_db {
            t.m.scanner_gain_db.get_or_create(&labels).set(f64::from(g));
        }
        t.m.scanner_deaf.get_or_create(&labels).set(i64::from(deaf));
    }

    /// A scanner no longer configured (a reload): its series go.
    pub fn scanner_gain_forget(t: &Telemetry, scanner: &str) {
        let labels = ByScanner {
            scanner: scanner.to_string(),
        };
        t.m.scanner_gain_db.remove(&labels);
        t.m.scanner_deaf.remove(&labels);
    }

    /// A scanner's gain status changed: drifted past the threshold, deaf
    /// to the store's beacons, or back to normal.
    pub fn scanner_gain_alert(
        t: &Telemetry,
        scanner: &str,
        status: GainAlert,
        gain_db: Option<f32>,
    ) {
        t.m.scanner_gain_alerts
            .get_or_create(&ByGainStatus { status })
            .inc();
        match status {
            GainAlert::Ok => tracing::info!(scanner, ?gain_db, "scanner gain back to normal"),
            GainAlert::Drifted => tracing::warn!(
                scanner,
                ?gain_db,
                "scanner gain drifted (learned from the store's beacons): check its antenna and placement"
            ),
            GainAlert::Deaf => tracing::warn!(
                scanner,
                "scanner hears none of the store's beacons it should: check it"
            ),
        }
    }

    /// A configuration reload: applied, unchanged or refused (the caller
    /// logs what changed or why it was refused).
    pub fn config_reload(t: &Telemetry, result: ReloadResult) {
        t.m.config_reloads
            .get_or_create(&ByReloadResult { result })
            .inc();
        tracing::debug!(%result, "configuration reload");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The sample lines of an exposition (no `#` lines).
    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn renders_openmetrics_text_under_the_names_it_always_had() {
        let t = Telemetry::new();
        events::sighting_received(&t, Source::Udp);
        events::sighting_received(&t, Source::Udp);
        events::nudge_held(&t, "h", "r", &SkipReason::PerDay { limit: 1 });
        events::outbox_depth(&t, 4);
        events::consent_withdrawn(&t, Purpose::ProductInfo);
        let text = t.render();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains("\ngateway_sightings_total{source=\"udp\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE gateway_sightings counter\n"),
            "{text}"
        );
        assert!(text.contains("\ngateway_nudges_held_total{reason=\"per_day\"} 1\n"));
        assert!(text.contains("# TYPE gateway_outbox_depth gauge\ngateway_outbox_depth 4\n"));
        assert!(text.contains("gateway_consent_withdrawn_total{purpose=\"product_info\"} 1"));
        // Unlabelled counters exist from the start, at 0, and so do the
        // closed sets the dashboard charts.
        assert!(
            text.contains("\ngateway_strangers_dropped_total 0\n"),
            "{text}"
        );
        assert!(text.contains("\ngateway_storage_errors_total{during=\"reserve\"} 0\n"));
        assert!(!text.contains("during=\"other\""));
        assert!(text.contains("\ngateway_config_reloads_total{result=\"refused\"} 0\n"));
        assert_eq!(t.counter("sightings_total", &[("source", "udp")]), 2);
        assert_eq!(t.counter("sightings_total", &[]), 2);
        assert_eq!(
            t.counter("nudges_held_total", &[("reason", "per_visit")]),
            0
        );
        assert_eq!(t.gauge("outbox_depth"), 4);
        assert_eq!(t.gauge("no_such_gauge"), 0);
    }

    #[test]
    fn each_metric_family_is_described_once() {
        let t = Telemetry::new();
        events::subscription_refused(&t, "consent", 0x87);
        let text = t.render();
        let mut families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap_or(l))
            .collect();
        let all = families.len();
        families.sort_unstable();
        families.dedup();
        assert_eq!(families.len(), all, "a family twice in {text}");
        assert!(
            text.contains("\ngateway_mqtt_subscriptions_refused_total{kind=\"consent\"} 1\n")
                && text.contains("\ngateway_mqtt_subscriptions_refused 0\n"),
            "{text}"
        );
    }

    #[test]
    fn latency_is_a_histogram_with_fixed_buckets() {
        let t = Telemetry::new();
        for ms in [0.3, 0.9, 1.2, 2.5, 40.0, 3000.0] {
            events::sighting_to_puback(&t, Duration::from_secs_f64(ms / 1000.0));
        }
        events::decision_durable(&t, Duration::from_micros(800));
        let text = t.render();
        assert!(
            text.contains("# TYPE gateway_sighting_to_puback_seconds histogram"),
            "{text}"
        );
        assert!(text.contains("# UNIT gateway_sighting_to_puback_seconds seconds"));
        let bucket = |le: &str| {
            let series = format!("gateway_sighting_to_puback_seconds_bucket{{le=\"{le}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(series.as_str()))
                .and_then(|v| v.parse::<u64>().ok())
        };
        assert_eq!(bucket("0.0005"), Some(1), "{text}");
        assert_eq!(bucket("0.001"), Some(2));
        assert_eq!(bucket("0.003"), Some(4));
        assert_eq!(bucket("0.05"), Some(5));
        assert_eq!(bucket("10.0"), Some(6));
        assert_eq!(bucket("+Inf"), Some(6));
        assert!(text.contains("\ngateway_sighting_to_puback_seconds_count 6\n"));
        assert!(text.contains("\ngateway_decision_durable_seconds_count 1\n"));
        assert!(LATENCY_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn rejected_fields_count_under_a_fixed_set_of_labels() {
        assert_eq!(field_label("nudge_id"), "nudge_id");
        assert_eq!(field_label("beacons[2].rssi"), "beacons");
        assert_eq!(field_label("consent.spam"), "consent");
        assert_eq!(field_label("topic recipient"), "topic recipient");
        assert_eq!(field_label("junk-123"), "unknown_field");
        assert_eq!(field_label("unknown_field"), "unknown_field");
        // A sighting's field is no incoming message's.
        assert_eq!(field_label("scanner"), "unknown_field");
        assert_eq!(Field::of_sighting("scanner"), Field::Scanner);
        assert_eq!(Field::of_sighting("junk"), Field::UnknownField);
        assert_eq!(field_label(""), "unknown_field");
        assert_eq!(field_label(&"x".repeat(16 * 1024)), "unknown_field");
        for name in INCOMING_FIELDS {
            assert_eq!(field_label(name), *name);
        }
        let t = Telemetry::new();
        for i in 0..1000 {
            events::incoming_rejected(&t, "consent", &format!("junk-{i}"), "unknown field");
        }
        events::incoming_rejected(&t, "consent", "answer", "unknown field");
        events::incoming_rejected(&t, "consent", "consent.spam", "unknown purpose");
        let text = t.render();
        let rejected: Vec<_> = samples(&text)
            .into_iter()
            .filter(|l| l.starts_with("gateway_incoming_rejected"))
            .collect();
        assert_eq!(rejected.len(), 2, "{text}");
        assert!(
            text.contains("gateway_incoming_rejected_total{kind=\"consent\",field=\"consent\"} 1")
        );
        assert!(text.contains(
            "gateway_incoming_rejected_total{kind=\"consent\",field=\"unknown_field\"} 1001"
        ));
        assert!(!text.contains("junk"));
    }

    #[test]
    fn the_label_tables_hold_every_value_the_code_writes() {
        use crate::topics::Incoming;
        for incoming in [
            Incoming::Person(""),
            Incoming::Consent(""),
            Incoming::CheckIn(""),
            Incoming::Feedback(""),
            Incoming::Purchase,
            Incoming::Unknown,
        ] {
            assert_eq!(TopicKind::of(incoming.kind()).as_str(), incoming.kind());
        }
        for feed in [
            ScannerFeed::Own,
            ScannerFeed::OpenMqttGateway,
            ScannerFeed::Espresense,
        ] {
            assert_eq!(TopicKind::of(feed.label()).as_str(), feed.label());
            assert_eq!(Source::from(feed).as_str(), feed.label());
        }
        for kind in NudgeKind::ALL {
            assert_eq!(Kind::from(kind).as_str(), kind.as_str());
        }
        for purpose in Purpose::ALL {
            assert_eq!(ConsentPurpose::from(purpose).as_str(), purpose.as_str());
        }
        let reasons = [
            SkipReason::KillSwitch,
            SkipReason::NoConsent {
                purpose: Purpose::Offers,
            },
            SkipReason::QuietHours,
            SkipReason::PerVisit { limit: 1 },
            SkipReason::PerDay { limit: 1 },
            SkipReason::PerWeek { limit: 1 },
            SkipReason::MinGap { gap_s: 1 },
            SkipReason::PerKindPerDay { limit: 1 },
            SkipReason::RuleCooldown { cooldown_s: 1 },
            SkipReason::StoreRate { per_minute: 1 },
        ];
        for reason in &reasons {
            assert_eq!(HeldReason::from(reason).as_str(), reason.label());
        }
        // The `during` of every storage_error call written today.
        for during in [
            "count_visit",
            "erase",
            "feedback",
            "outbox_expire",
            "outbox_read",
            "outbox_remove",
            "person_record",
            "purge_outbox",
            "reload_people",
            "reserve",
            "retention",
            "shutdown_flush",
            "tombstone",
            "upsert_person",
            "visit",
            "chain_fold",
            "chain_forget",
            "chain_index",
            "chain_outbox_remove",
            "chain_queue",
            "people_snapshot",
        ] {
            assert_ne!(
                During::from_label(during).unwrap_or(During::Other),
                During::Other,
                "{during}"
            );
        }
        for reason in ["tls", "refused", "io", "timeout", "protocol", "other"] {
            assert!(ConnectError::from_label(reason).is_some(), "{reason}");
        }
        // The sighting and scanner parsers' field names keep their own label.
        for field in [
            "scanner",
            "addr",
            "rssi",
            "adv",
            "at_ms",
            "record",
            "payload",
            "topic",
            "id",
            "mac",
            "node",
            "room",
            "name",
            "manufacturerdata",
            "servicedata",
            "servicedatauuid",
            "model_id",
            "mfid",
            "uuid",
            "major",
            "minor",
            "txpower",
            "volt",
            "rssi@1m",
            "rxAdj",
        ] {
            assert_eq!(Field::of_sighting(field).as_str(), field);
        }
    }

    proptest! {
        /// Whatever a sender names, only the code's label values reach
        /// `/metrics`.
        #[test]
        fn no_input_becomes_a_label_value(field in "\\PC{0,40}", reason in "\\PC{0,20}") {
            let t = Telemetry::new();
            events::incoming_rejected(&t, "checkin", &field, &reason);
            events::incoming(&t, "checkin");
            let text = t.render();
            for line in samples(&text).into_iter().filter(|l| l.starts_with("gateway_incoming")) {
                let (_, labels, _) = parse_sample(line).expect("a sample line");
                for (_, value) in labels {
                    prop_assert!(
                        TopicKind::from_label(value).is_some() || Field::from_label(value).is_some(),
                        "{value:?} in {line}"
                    );
                }
            }
        }
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
