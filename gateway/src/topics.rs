//! The MQTT topics of docs/design.md §6: what the gateway subscribes to and how an
//! incoming topic is classified, and the topic filter grammar. Pure, and a
//! leaf: it depends on nothing else in the crate (`tests/layering.rs`);
//! the configuration builds its [`TopicNames`] once.

/// The topic names of one store: the prefix, `<prefix>/<store>` and the
/// configured scanner feeds. Built by `config` (`Config::topics`) from the
/// `[mqtt] prefix`, `[store] id` and the `mqtt_scanners` sources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicNames {
    prefix: String,
    store: String,
    scanners: ScannerFilters,
    /// The store's id, for the chain's topics (`<p>/chain/<kind>/<s>`).
    store_id: String,
    /// `[caps.chain]` is set: subscribe to `<p>/chain/+/+`.
    chain: bool,
}

impl TopicNames {
    pub fn new(prefix: &str, store_id: &str) -> TopicNames {
        TopicNames {
            prefix: prefix.to_string(),
            store: format!("{prefix}/{store_id}"),
            scanners: Vec::new(),
            store_id: store_id.to_string(),
            chain: false,
        }
    }

    /// Whether the store is in a chain (`[caps.chain]`).
    pub fn with_chain(mut self, chain: bool) -> TopicNames {
        self.chain = chain;
        self
    }

    pub fn chain(&self) -> bool {
        self.chain
    }

    /// `<p>/chain/<kind>/<own store>`: where this store publishes.
    pub fn chain_topic(&self, kind: ChainKind) -> String {
        format!("{}/chain/{}/{}", self.prefix, kind.level(), self.store_id)
    }

    /// Adds one `mqtt_scanners` source: our own nodes on
    /// `<p>/<s>/scanners/+` (if `own`), then its OpenMQTTGateway and
    /// ESPresense filters.
    pub fn with_scanner_source(
        mut self,
        own: bool,
        openmqttgateway: &[String],
        espresense: &[String],
    ) -> TopicNames {
        if own {
            let filter = format!("{}/scanners/+", self.store);
            self.scanners.push((ScannerFeed::Own, filter));
        }
        self.scanners.extend(
            openmqttgateway
                .iter()
                .map(|f| (ScannerFeed::OpenMqttGateway, f.clone())),
        );
        self.scanners.extend(
            espresense
                .iter()
                .map(|f| (ScannerFeed::Espresense, f.clone())),
        );
        self
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>/<store>`.
    pub fn store(&self) -> &str {
        &self.store
    }

    pub fn nudge(&self, recipient: &str) -> String {
        format!("{}/nudges/{recipient}", self.store)
    }

    pub fn status(&self) -> String {
        format!("{}/gateway/status", self.store)
    }
}

/// Incoming topics, with the id the topic names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// `<p>/crm/people/<person>` (retained; empty payload erases).
    Person(&'a str),
    /// `<p>/<s>/consent/<recipient>`
    Consent(&'a str),
    /// `<p>/<s>/checkin/<recipient>`
    CheckIn(&'a str),
    /// `<p>/<s>/feedback/<recipient>`
    Feedback(&'a str),
    /// `<p>/<s>/purchases`
    Purchase,
    /// `<p>/chain/<kind>/<store>` (only in a chain): another store's entry,
    /// or our own coming back (`own`).
    Chain {
        kind: ChainKind,
        store: &'a str,
        own: bool,
    },
    Unknown,
}

/// The chain's topics (`<p>/chain/<kind>/<store>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainKind {
    /// A nudge reserved in that store.
    Decision,
    /// A person forgotten in that store.
    Erasure,
    /// A consent change the app sent to that store.
    Consent,
}

impl ChainKind {
    pub const ALL: [ChainKind; 3] = [ChainKind::Decision, ChainKind::Erasure, ChainKind::Consent];

    /// The topic level.
    pub fn level(self) -> &'static str {
        match self {
            ChainKind::Decision => "decisions",
            ChainKind::Erasure => "erasures",
            ChainKind::Consent => "consent",
        }
    }

    fn of(level: &str) -> Option<ChainKind> {
        ChainKind::ALL.into_iter().find(|k| k.level() == level)
    }
}

impl Incoming<'_> {
    /// Short label for metrics and logs (never the id: it is personal).
    pub fn kind(&self) -> &'static str {
        match self {
            Incoming::Person(_) => "crm_person",
            Incoming::Consent(_) => "consent",
            Incoming::CheckIn(_) => "checkin",
            Incoming::Feedback(_) => "feedback",
            Incoming::Purchase => "purchase",
            Incoming::Chain { .. } => "chain",
            Incoming::Unknown => "unknown",
        }
    }
}

pub fn subscriptions(names: &TopicNames) -> Vec<String> {
    let (p, store) = (&names.prefix, &names.store);
    vec![
        format!("{p}/crm/people/+"),
        format!("{store}/consent/+"),
        format!("{store}/checkin/+"),
        format!("{store}/feedback/+"),
        format!("{store}/purchases"),
    ]
}

pub fn classify<'a>(names: &TopicNames, topic: &'a str) -> Incoming<'a> {
    let single = |rest: &'a str| (!rest.is_empty() && !rest.contains('/')).then_some(rest);
    if let Some(rest) = topic.strip_prefix(&format!("{}/crm/people/", names.prefix)) {
        return single(rest).map_or(Incoming::Unknown, Incoming::Person);
    }
    if names.chain {
        if let Some(rest) = topic.strip_prefix(&format!("{}/chain/", names.prefix)) {
            return match rest.split_once('/') {
                Some((level, store)) => match (ChainKind::of(level), single(store)) {
                    (Some(kind), Some(store)) => Incoming::Chain {
                        kind,
                        store,
                        own: store == names.store_id,
                    },
                    _ => Incoming::Unknown,
                },
                None => Incoming::Unknown,
            };
        }
    }
    let Some(rest) = topic.strip_prefix(&format!("{}/", names.store)) else {
        return Incoming::Unknown;
    };
    if rest == "purchases" {
        return Incoming::Purchase;
    }
    let Some((kind, id)) = rest.split_once('/') else {
        return Incoming::Unknown;
    };
    match (kind, single(id)) {
        ("consent", Some(id)) => Incoming::Consent(id),
        ("checkin", Some(id)) => Incoming::CheckIn(id),
        ("feedback", Some(id)) => Incoming::Feedback(id),
        _ => Incoming::Unknown,
    }
}

/// Where scanner nodes publish, by format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScannerFeed {
    /// Our own scanner-only gateways: sighting records.
    Own,
    OpenMqttGateway,
    Espresense,
}

impl ScannerFeed {
    pub fn label(self) -> &'static str {
        match self {
            ScannerFeed::Own => "mqtt_own",
            ScannerFeed::OpenMqttGateway => "mqtt_openmqttgateway",
            ScannerFeed::Espresense => "mqtt_espresense",
        }
    }
}

/// The scanner topic filters of a configuration, by feed: built once per
/// configuration, looked up for every incoming message.
pub type ScannerFilters = Vec<(ScannerFeed, String)>;

pub fn scanner_filters(names: &TopicNames) -> ScannerFilters {
    names.scanners.clone()
}

pub fn scanner_subscriptions(names: &TopicNames) -> Vec<String> {
    scanner_filters(names).into_iter().map(|(_, f)| f).collect()
}

/// Which scanner feed, if any, a topic belongs to.
pub fn scanner_feed(filters: &ScannerFilters, topic: &str) -> Option<ScannerFeed> {
    filters
        .iter()
        .find(|(_, f)| matches(f, topic))
        .map(|(feed, _)| *feed)
}

/// One filter the gateway subscribes to, with a label from a fixed set
/// (for metrics and logs: never the filter itself, which may come from
/// config) and whether the broker's retained copies are wanted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    pub filter: String,
    pub kind: &'static str,
    /// Only the CRM's person records are meant to be retained. Anything
    /// else a broker holds retained was left by a client (a phone may set
    /// the retain flag: Mosquitto cannot forbid it per user) and would come
    /// back as if new after every subscribe.
    pub retained_wanted: bool,
}

/// Everything the gateway subscribes to: the incoming topics of docs/design.md §6
/// and the configured scanner feeds.
pub fn all_subscriptions(names: &TopicNames) -> Vec<Subscription> {
    let (p, store) = (&names.prefix, &names.store);
    let mut all = vec![
        Subscription {
            filter: format!("{p}/crm/people/+"),
            kind: Incoming::Person("").kind(),
            retained_wanted: true,
        },
        Subscription {
            filter: format!("{store}/consent/+"),
            kind: Incoming::Consent("").kind(),
            retained_wanted: false,
        },
        Subscription {
            filter: format!("{store}/checkin/+"),
            kind: Incoming::CheckIn("").kind(),
            retained_wanted: false,
        },
        Subscription {
            filter: format!("{store}/feedback/+"),
            kind: Incoming::Feedback("").kind(),
            retained_wanted: false,
        },
        Subscription {
            filter: format!("{store}/purchases"),
            kind: Incoming::Purchase.kind(),
            retained_wanted: false,
        },
    ];
    if names.chain {
        all.push(Subscription {
            filter: format!("{p}/chain/+/+"),
            kind: "chain",
            retained_wanted: false,
        });
    }
    all.extend(
        scanner_filters(names)
            .into_iter()
            .map(|(feed, filter)| Subscription {
                filter,
                kind: feed.label(),
                retained_wanted: false,
            }),
    );
    all
}

/// The subscription a received topic arrived on (the first that matches).
pub fn subscription_of<'a>(all: &'a [Subscription], topic: &str) -> Option<&'a Subscription> {
    all.iter().find(|s| matches(&s.filter, topic))
}

pub fn receipts(names: &TopicNames, recipient: &str) -> String {
    format!("{}/receipts/{recipient}", names.store)
}

pub fn beacons(names: &TopicNames) -> String {
    format!("{}/ops/beacons", names.store)
}

pub fn errors(names: &TopicNames) -> String {
    format!("{}/gateway/errors", names.store)
}

/// Erasures done at a customer's request, for the back office to clear
/// its retained record of the person.
pub fn erasures(names: &TopicNames) -> String {
    format!("{}/erasures", names.store)
}

/// A v5 response topic is honoured only inside the sender's own receipts
/// topic: otherwise any app could make the gateway publish anywhere.
pub fn response_topic_allowed(names: &TopicNames, recipient: &str, response_topic: &str) -> bool {
    let own = receipts(names, recipient);
    response_topic == own
        || response_topic
            .strip_prefix(&own)
            .is_some_and(|rest| rest.starts_with('/') && !rest.contains(['+', '#']))
}

/// Check an MQTT topic filter: `+` and `#` only as whole levels, `#` last.
pub fn validate_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() || filter.len() > 256 {
        return Err("must be 1 to 256 characters".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains(['+', '#']) && level.len() > 1 {
            return Err(format!(
                "'+' and '#' must stand alone in a level, not {level:?}"
            ));
        }
        if *level == "#" && i != levels.len() - 1 {
            return Err("'#' must be the last level".into());
        }
    }
    Ok(())
}

/// Whether `topic` matches the MQTT topic filter `filter`.
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match (level, topic_levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (want, Some(got)) if want == got => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Built from any prefix and store id, the names classify their own
        /// topics back to the id they carry, and another store's as unknown.
        #[test]
        fn topics_built_from_names_classify_back(
            prefix in "[a-z]{1,8}(/[a-z]{1,8}){0,2}",
            store in "[a-z0-9-]{1,12}",
            id in "[a-z0-9-]{1,12}",
        ) {
            let names = TopicNames::new(&prefix, &store);
            prop_assert_eq!(names.store(), format!("{prefix}/{store}"));
            let topic = format!("{}/consent/{id}", names.store());
            prop_assert_eq!(classify(&names, &topic), Incoming::Consent(&id));
            let topic = format!("{prefix}/crm/people/{id}");
            prop_assert_eq!(classify(&names, &topic), Incoming::Person(&id));
            let other = format!("{prefix}/{store}x/consent/{id}");
            prop_assert_eq!(classify(&names, &other), Incoming::Unknown);
            prop_assert!(response_topic_allowed(&names, &id, &receipts(&names, &id)));
            for filter in subscriptions(&names) {
                prop_assert!(validate_filter(&filter).is_ok(), "{}", filter);
            }
        }
    }

    fn config() -> TopicNames {
        TopicNames::new("retail", "s1")
    }

    #[test]
    fn chain_topics_classify_only_in_a_chain_and_name_the_store() {
        let plain = config();
        assert_eq!(
            classify(&plain, "retail/chain/decisions/s2"),
            Incoming::Unknown
        );
        assert!(all_subscriptions(&plain).iter().all(|s| s.kind != "chain"));
        let chained = config().with_chain(true);
        assert_eq!(
            chained.chain_topic(ChainKind::Decision),
            "retail/chain/decisions/s1"
        );
        assert_eq!(
            chained.chain_topic(ChainKind::Erasure),
            "retail/chain/erasures/s1"
        );
        assert_eq!(
            chained.chain_topic(ChainKind::Consent),
            "retail/chain/consent/s1"
        );
        for kind in ChainKind::ALL {
            let other = format!("retail/chain/{}/s2", kind.level());
            assert_eq!(
                classify(&chained, &other),
                Incoming::Chain {
                    kind,
                    store: "s2",
                    own: false
                }
            );
            assert_eq!(
                classify(&chained, &chained.chain_topic(kind)),
                Incoming::Chain {
                    kind,
                    store: "s1",
                    own: true
                }
            );
        }
        for other in [
            "retail/chain/decisions",
            "retail/chain/decisions/",
            "retail/chain/visits/s2",
            "retail/chain/decisions/s2/x",
        ] {
            assert_eq!(classify(&chained, other), Incoming::Unknown, "{other}");
        }
        let all = all_subscriptions(&chained);
        let chain = all.iter().find(|s| s.kind == "chain").expect("subscribed");
        assert_eq!(chain.filter, "retail/chain/+/+");
        assert!(!chain.retained_wanted);
        assert!(validate_filter(&chain.filter).is_ok());
        assert_eq!(
            subscription_of(&all, "retail/chain/erasures/s9").map(|s| s.kind),
            Some("chain")
        );
    }

    #[test]
    fn classifies_every_incoming_topic_and_nothing_else() {
        let c = config();
        assert_eq!(
            classify(&c, "retail/crm/people/p-1"),
            Incoming::Person("p-1")
        );
        assert_eq!(
            classify(&c, "retail/s1/consent/r-1"),
            Incoming::Consent("r-1")
        );
        assert_eq!(
            classify(&c, "retail/s1/checkin/r-1"),
            Incoming::CheckIn("r-1")
        );
        assert_eq!(
            classify(&c, "retail/s1/feedback/r-1"),
            Incoming::Feedback("r-1")
        );
        assert_eq!(classify(&c, "retail/s1/purchases"), Incoming::Purchase);
        for other in [
            "retail/s2/consent/r-1",
            "retail/s1/consent/r-1/x",
            "retail/s1/consent/",
            "retail/crm/people/",
            "elsewhere",
        ] {
            assert_eq!(classify(&c, other), Incoming::Unknown, "{other}");
        }
        assert_eq!(subscriptions(&c).len(), 5);
        let all = all_subscriptions(&c);
        assert_eq!(
            all.iter().map(|s| s.filter.clone()).collect::<Vec<_>>(),
            subscriptions(&c)
        );
        let retained: Vec<&str> = all
            .iter()
            .filter(|s| s.retained_wanted)
            .map(|s| s.kind)
            .collect();
        assert_eq!(retained, ["crm_person"]);
        let consent = subscription_of(&all, "retail/s1/consent/r-1").unwrap();
        assert_eq!(consent.kind, "consent");
        assert!(subscription_of(&all, "retail/s2/consent/r-1").is_none());
    }

    #[test]
    fn filters_validate_and_match_like_mqtt() {
        assert!(validate_filter("home/+/BTtoMQTT/+").is_ok());
        assert!(validate_filter("espresense/#").is_ok());
        assert!(validate_filter("a/#/b").is_err());
        assert!(validate_filter("a/b+").is_err());
        assert!(matches("home/+/BTtoMQTT/+", "home/node1/BTtoMQTT/AABBCC"));
        assert!(!matches("home/+/BTtoMQTT/+", "home/node1/BTtoMQTT"));
        assert!(!matches("home/+/BTtoMQTT/+", "home/node1/BTtoMQTT/a/b"));
        assert!(matches("espresense/#", "espresense/devices/x/room"));
        assert!(!matches("espresense/devices/+/+", "other/devices/x/room"));
    }

    #[test]
    fn scanner_feeds_are_found_from_filters_built_once() {
        let c = config().with_scanner_source(
            true,
            &["home/+/BTtoMQTT/+".to_string()],
            &["espresense/devices/+/+".to_string()],
        );
        let filters = scanner_filters(&c);
        assert_eq!(
            scanner_feed(&filters, "retail/s1/scanners/node-1"),
            Some(ScannerFeed::Own)
        );
        assert_eq!(
            scanner_feed(&filters, "home/n1/BTtoMQTT/AABB"),
            Some(ScannerFeed::OpenMqttGateway)
        );
        assert_eq!(
            scanner_feed(&filters, "espresense/devices/x/laptops"),
            Some(ScannerFeed::Espresense)
        );
        assert_eq!(scanner_feed(&filters, "retail/s1/consent/r-1"), None);
        assert_eq!(scanner_subscriptions(&c).len(), 3);
    }

    #[test]
    fn response_topics_stay_inside_the_senders_receipts() {
        let c = config();
        assert!(response_topic_allowed(&c, "r-1", "retail/s1/receipts/r-1"));
        assert!(response_topic_allowed(
            &c,
            "r-1",
            "retail/s1/receipts/r-1/req-7"
        ));
        assert!(!response_topic_allowed(
            &c,
            "r-1",
            "retail/s1/receipts/r-10"
        ));
        assert!(!response_topic_allowed(&c, "r-1", "retail/s1/nudges/r-2"));
    }
}
