//! Delivery that loses nothing, to the right phone only (docs/design.md §4
//! invariant 4, §6): broker outages with expiry and per-recipient order, a
//! gateway SIGKILLed with a full outbox, TLS with the right and a wrong CA,
//! the shipped Mosquitto ACL with real passwords, and junk on every incoming
//! topic. Real Mosquitto, the real `gateway` binary.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use e2e::{
    ChildGuard, Mosquitto, MosquittoOptions, Phone, PhoneOptions, PublishProperties, QoS, Received,
    Site, site,
};
use firmware_sim::{Scenario, Shopper, Simulation, Stop, StoreSpec};

const SEED: u64 = 11;

/// Two product_info rules in two zones, caps out of the way: every dwell
/// of a shopper going back and forth is a nudge.
fn rules(expiry_s: u32) -> String {
    format!(
        r#"
{zones}{laptop}
[[rules]]
id = "headphones-info"
zone = "headphones"
dwell_s = 20
kind = "info"
title = "Try before you buy"
body = "Every pair on this wall can be tried on."

[caps]
per_visit = 1000
per_day = 1000
per_week = 1000
min_gap_s = 0
rule_cooldown_s = 0

[nudges]
expiry_s = {expiry_s}
enabled = true

[presence]
max_future_skew_ms = 86400000
"#,
        zones = e2e::site::THREE_ZONES,
        laptop = e2e::site::LAPTOP_COMPARE,
    )
}

/// A shopper who goes back and forth between laptops and headphones for
/// `minutes`: about two nudges a minute.
fn bouncer(number: u32, minutes: u32) -> Shopper {
    let mut path = vec![Stop::new("entrance", 5)];
    for _ in 0..minutes {
        path.push(Stop::new("laptops", 30));
        path.push(Stop::new("headphones", 30));
    }
    Shopper::new(number, SEED)
        .with_interests(&["laptops"])
        .with_path(path)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn id_of(r: &Received) -> String {
    r.json().unwrap()["id"].as_str().unwrap().to_string()
}

/// UUIDs (8-4-4-4-12 hex) on the log lines that contain `marker`.
fn logged_ids(logs: &str, marker: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for line in logs.lines().filter(|l| l.contains(marker)) {
        let bytes = line.as_bytes();
        for start in 0..bytes.len().saturating_sub(35) {
            let window = &line[start..start + 36];
            let is_uuid = window.char_indices().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => c == '-',
                _ => c.is_ascii_hexdigit(),
            });
            if is_uuid {
                ids.insert(window.to_string());
            }
        }
    }
    ids
}

/// Per recipient, in arrival order, the first copy of each nudge: its
/// `created_at` must never go backwards.
fn assert_ordered_per_recipient(received: &[Received]) {
    let mut seen = BTreeSet::new();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for r in received {
        let n = r.json().unwrap();
        if !seen.insert(n["id"].as_str().unwrap().to_string()) {
            continue;
        }
        let created = n["created_at"].as_str().unwrap().to_string();
        if let Some(previous) = last.get(&r.topic) {
            assert!(
                previous <= &created,
                "{}: {created} arrived after {previous}",
                r.topic
            );
        }
        last.insert(r.topic.clone(), created);
    }
}

fn metric(site: &Site, series: &str) -> u64 {
    site.metric(series).unwrap_or(0)
}

async fn wait_metric(site: &Site, series: &str, at_least: u64, gateway: &ChildGuard) {
    e2e::wait_until(Duration::from_secs(30), || metric(site, series) >= at_least)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{series} < {at_least} ({}): {e}\n{}",
                metric(site, series),
                gateway.logs()
            )
        });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_delivers_what_is_valid_in_order_and_drops_what_expired() -> anyhow::Result<()>
{
    const EXPIRY_S: u32 = 30;
    let mut broker = Mosquitto::start(MosquittoOptions::default())?;
    let mut site = Site::new(broker.port(), &rules(EXPIRY_S))?;
    let scenario = Scenario::new(SEED)
        .with_shopper(bouncer(1, 10))
        .with_shopper(bouncer(2, 10))
        .with_shopper(bouncer(3, 10));
    site.import_people(&scenario.people_jsonl())?;
    let gateway = site.start()?;
    let phones = Phone::connect(
        PhoneOptions::new(broker.port(), "phones", site.topic("nudges/+")).persistent(3600),
    )
    .await?;
    let reserved = || {
        metric(&site, "gateway_nudges_reserved_total{kind=\"compare\"}")
            + metric(&site, "gateway_nudges_reserved_total{kind=\"info\"}")
    };

    // Ten minutes of shopping in simulated time; the broker is down for
    // most of it.
    let start = now_ms();
    let mut sim = Simulation::new(StoreSpec::small_store(), scenario, start, SEED)?;
    site::send(sim.next_batch(start + 60_000), site.udp, 30.0).await?;
    phones
        .wait_for(1, Duration::from_secs(20))
        .await
        .map_err(|e| e.context(gateway.logs()))?;

    broker.kill()?;
    let outage = Instant::now();
    let log_at_kill = gateway.stderr().len();
    // Phase 1: reserved while the broker is down, held past their expiry.
    site::send(sim.next_batch(start + 240_000), site.udp, 30.0).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let phase1_ids = logged_ids(&gateway.stderr()[log_at_kill..], "nudge reserved");
    assert!(!phase1_ids.is_empty(), "{}", gateway.logs());
    tokio::time::sleep(Duration::from_secs(EXPIRY_S as u64 + 2)).await;
    // Phase 2: reserved shortly before the broker comes back: still valid.
    let log_at_phase2 = gateway.stderr().len();
    site::send(sim.next_batch(start + 600_000), site.udp, 60.0).await?;
    // The depth gauge is refreshed once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let phase2_ids = logged_ids(&gateway.stderr()[log_at_phase2..], "nudge reserved");
    assert!(!phase2_ids.is_empty(), "{}", gateway.logs());
    assert!(
        metric(&site, "gateway_outbox_depth") >= (phase1_ids.len() + phase2_ids.len()) as u64,
        "everything waits in the outbox"
    );
    broker.restart()?;
    let outage = outage.elapsed();

    e2e::wait_until(Duration::from_secs(40), || {
        metric(&site, "gateway_outbox_depth") == 0 && metric(&site, "gateway_mqtt_connected") == 1
    })
    .await
    .map_err(|e| e.context(gateway.logs()))?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let logs = gateway.stderr();
    let all_reserved = logged_ids(&logs, "nudge reserved");
    let expired = logged_ids(&logs, "nudge expired");
    let received = phones.received();
    let delivered: BTreeSet<String> = received.iter().map(id_of).collect();
    assert_eq!(all_reserved.len() as u64, reserved());
    assert_eq!(
        expired.len() as u64,
        metric(&site, "gateway_nudges_expired_total")
    );
    // Everything reserved went out or expired, never both, nothing else arrived.
    assert!(expired.is_disjoint(&delivered), "an expired nudge was sent");
    assert_eq!(
        delivered,
        all_reserved.difference(&expired).cloned().collect(),
        "delivered = reserved - expired"
    );
    assert!(phase1_ids.is_subset(&expired), "held past expiry: expired");
    assert!(phase2_ids.is_subset(&delivered), "still valid: delivered");
    // Duplicates only as QoS 1 allows: each copy is one of the ids above.
    assert!(received.len() >= delivered.len());
    assert_ordered_per_recipient(&received);
    for r in &received {
        assert!(r.message_expiry_interval.is_some_and(|s| s <= EXPIRY_S));
    }
    eprintln!(
        "outage {outage:?}: reserved {}, expired {}, delivered {} ({} copies)",
        all_reserved.len(),
        expired.len(),
        delivered.len(),
        received.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_killed_with_a_full_outbox_delivers_everything_after_restart() -> anyhow::Result<()>
{
    let mut broker = Mosquitto::start(MosquittoOptions::default())?;
    let mut site = Site::new(broker.port(), &rules(900))?;
    let scenario = Scenario::new(SEED)
        .with_shopper(bouncer(1, 4))
        .with_shopper(bouncer(2, 4));
    site.import_people(&scenario.people_jsonl())?;
    let mut gateway = site.start()?;
    let phones = Phone::connect(
        PhoneOptions::new(broker.port(), "phones", site.topic("nudges/+")).persistent(3600),
    )
    .await?;
    // Let the gateway's session exist on the broker first.
    wait_metric(&site, "gateway_mqtt_connected", 1, &gateway).await;
    broker.kill()?;

    let start = now_ms();
    let mut sim = Simulation::new(StoreSpec::small_store(), scenario, start, SEED)?;
    site::send(sim.next_batch(start + 270_000), site.udp, 60.0).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reserved = logged_ids(&gateway.stderr(), "nudge reserved");
    assert!(reserved.len() >= 4, "{}", gateway.logs());
    e2e::wait_until(Duration::from_secs(5), || {
        metric(&site, "gateway_outbox_depth") == reserved.len() as u64
    })
    .await
    .map_err(|e| e.context(gateway.logs()))?;

    gateway.sigkill()?;
    let _ = gateway.exited(Duration::from_secs(5)).await?;
    broker.restart()?;
    let gateway = site.start()?;
    let got = phones
        .wait_for(reserved.len(), Duration::from_secs(30))
        .await
        .map_err(|e| e.context(gateway.logs()))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received = phones.received();
    let delivered: BTreeSet<String> = received.iter().map(id_of).collect();
    assert!(got.len() <= received.len());
    assert_eq!(delivered, reserved, "every reserved nudge, nothing else");
    assert_ordered_per_recipient(&received);
    e2e::wait_until(Duration::from_secs(10), || {
        metric(&site, "gateway_outbox_depth") == 0
    })
    .await?;
    Ok(())
}

// ---- TLS ------------------------------------------------------------------

struct Pki {
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
    other_ca_pem: String,
}

/// A CA and the broker's certificate signed by it, and another CA that
/// signed nothing here.
fn make_pki() -> anyhow::Result<Pki> {
    let pki = e2e::Pki::named("gateway test CA")?;
    Ok(Pki {
        ca_pem: pki.ca,
        server_cert_pem: pki.cert,
        server_key_pem: pki.key,
        other_ca_pem: e2e::Pki::named("some other CA")?.ca,
    })
}

/// Rewrite a test site's `[mqtt]` URL and add keys after it. `original` is
/// the site file as `Site::new` wrote it.
fn set_mqtt(site: &Site, original: &str, url: &str, extra: &str) -> anyhow::Result<()> {
    let start = original.find("url = \"mqtt://").expect("site has a url");
    let end = start + original[start..].find('\n').unwrap();
    let text = format!(
        "{}url = \"{url}\"\n{extra}{}",
        &original[..start],
        &original[end..]
    );
    std::fs::write(&site.config_path, text)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_right_ca_delivers_and_a_wrong_ca_is_refused() -> anyhow::Result<()> {
    let pki = make_pki()?;
    let tls_port = e2e::free_tcp_port()?;
    // The harness's plain listener is for the test's phones; the gateway
    // uses the TLS listener.
    let broker = Mosquitto::start(
        MosquittoOptions::default()
            .file("ca.crt", pki.ca_pem.clone())
            .file("server.crt", pki.server_cert_pem.clone())
            .file("server.key", pki.server_key_pem.clone())
            .extra(format!("listener {tls_port} 127.0.0.1"))
            .extra("cafile {dir}/ca.crt")
            .extra("certfile {dir}/server.crt")
            .extra("keyfile {dir}/server.key"),
    )?;
    let tls_url = format!("mqtts://127.0.0.1:{tls_port}");

    // A wrong CA: the gateway runs, keeps reserving into the outbox, never
    // connects, and says why.
    let mut site = Site::new(broker.port(), &rules(900))?;
    let original = std::fs::read_to_string(&site.config_path)?;
    let wrong_ca = site.dir.write("wrong-ca.crt", &pki.other_ca_pem)?;
    set_mqtt(
        &site,
        &original,
        &tls_url,
        &format!("ca_file = \"{}\"\n", wrong_ca.display()),
    )?;
    let scenario = Scenario::new(SEED).with_shopper(bouncer(1, 2));
    site.import_people(&scenario.people_jsonl())?;
    let phone = Phone::connect(PhoneOptions::new(
        broker.port(),
        "phone-r-1",
        site.topic("nudges/r-1"),
    ))
    .await?;
    let mut gateway = site.start()?;
    wait_metric(
        &site,
        "gateway_mqtt_connect_errors_total{reason=\"tls\"}",
        2,
        &gateway,
    )
    .await;
    assert_eq!(metric(&site, "gateway_mqtt_connected"), 0);
    assert!(site.admin_get("/readyz")?.contains("mqtt_connected=false"));
    let logs = gateway.stderr();
    assert!(
        logs.contains("cannot connect to the MQTT broker") && logs.contains("UnknownIssuer"),
        "the verification error is logged:\n{logs}"
    );
    let start = now_ms();
    let mut sim = Simulation::new(StoreSpec::small_store(), scenario, start, SEED)?;
    site::send(sim.next_batch(start + 60_000), site.udp, 30.0).await?;
    wait_metric(&site, "gateway_outbox_depth", 1, &gateway).await;
    assert!(phone.received().is_empty());
    gateway.sigterm()?;
    gateway.exited(Duration::from_secs(10)).await?;

    // The right CA, same outbox: what was held is delivered over TLS.
    let ca = site.dir.write("ca.crt", &pki.ca_pem)?;
    set_mqtt(
        &site,
        &original,
        &tls_url,
        &format!("ca_file = \"{}\"\n", ca.display()),
    )?;
    let gateway = site.start()?;
    phone
        .wait_for(1, Duration::from_secs(20))
        .await
        .map_err(|e| e.context(gateway.logs()))?;
    wait_metric(&site, "gateway_mqtt_connected", 1, &gateway).await;
    e2e::wait_until(Duration::from_secs(10), || {
        metric(&site, "gateway_outbox_depth") == 0
    })
    .await?;
    assert_eq!(
        metric(&site, "gateway_mqtt_connect_errors_total{reason=\"tls\"}"),
        0
    );
    Ok(())
}

// ---- The shipped ACL --------------------------------------------------------

const DEPLOY_ACL: &str = include_str!("../../deploy/mosquitto/acl");
/// The prefix and store the shipped ACL names.
const STORE: &str = "store-042";

fn topic(rest: &str) -> String {
    format!("retail/{STORE}/{rest}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_acl_keeps_each_phone_to_its_own_topics() -> anyhow::Result<()> {
    // Exactly the deploy ACL, real passwords, a plain listener (TLS is
    // covered by the test above; the ACL does not depend on the transport).
    let broker = Mosquitto::start(
        MosquittoOptions::default()
            .allow_anonymous(false)
            .acl(DEPLOY_ACL)
            .user("gateway", "gw-secret")
            .user("r-1", "phone-a-secret")
            .user("r-2", "phone-b-secret")
            .user("crm", "crm-secret")
            .user("till", "till-secret"),
    )?;
    let mut site = Site::new(broker.port(), &rules(900))?;
    let password_file = site.dir.write("mqtt-password", "gw-secret\n")?;
    let original = std::fs::read_to_string(&site.config_path)?
        .replace("id = \"store-e2e\"", &format!("id = \"{STORE}\""));
    set_mqtt(
        &site,
        &original,
        &format!("mqtt://127.0.0.1:{}", broker.port()),
        &format!(
            "username = \"gateway\"\npassword_file = \"{}\"\n",
            password_file.display()
        ),
    )?;
    let scenario = Scenario::new(SEED)
        .with_shopper(bouncer(1, 2))
        .with_shopper(bouncer(2, 2));
    site.import_people(&scenario.people_jsonl())?;
    let gateway = site.start()?;
    wait_metric(&site, "gateway_mqtt_connected", 1, &gateway).await;
    assert!(
        !gateway.stderr().contains("gw-secret"),
        "the password never reaches the log"
    );

    let creds = |id: &str, user: &str, pw: &str, filter: String| {
        PhoneOptions::new(broker.port(), id, filter).credentials(user, pw)
    };
    // Phone A tries to read B's nudges and receipts as well as its own.
    let phone_a = Phone::connect(
        creds("app-a", "r-1", "phone-a-secret", topic("nudges/r-1"))
            .filter(topic("nudges/r-2"))
            .filter(topic("receipts/r-1"))
            .filter(topic("receipts/r-2"))
            .filter(topic("gateway/#")),
    )
    .await?;
    let phone_b = Phone::connect(
        creds("app-b", "r-2", "phone-b-secret", topic("nudges/r-2")).filter(topic("receipts/r-2")),
    )
    .await?;

    let start = now_ms();
    let mut sim = Simulation::new(StoreSpec::small_store(), scenario, start, SEED)?;
    site::send(sim.next_batch(start + 100_000), site.udp, 30.0).await?;
    phone_b
        .wait_for(1, Duration::from_secs(20))
        .await
        .map_err(|e| e.context(gateway.logs()))?;
    phone_a.wait_for(1, Duration::from_secs(20)).await?;
    e2e::wait_until(Duration::from_secs(10), || {
        metric(&site, "gateway_outbox_depth") == 0
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let a_topics: BTreeSet<String> = phone_a.received().iter().map(|r| r.topic.clone()).collect();
    assert_eq!(
        a_topics,
        BTreeSet::from([topic("nudges/r-1")]),
        "A reads only its own nudges (not B's, not the gateway's status)"
    );
    assert!(
        phone_b
            .received()
            .iter()
            .all(|r| r.topic == topic("nudges/r-2"))
    );

    // A writes B's consent: the broker drops it, the gateway never sees it.
    let consents = || metric(&site, "gateway_incoming_total{kind=\"consent\"}");
    let before = consents();
    phone_a
        .publish(
            &topic("consent/r-2"),
            br#"{"id": "c-evil", "forget": true}"#.to_vec(),
            QoS::AtLeastOnce,
            false,
        )
        .await?;
    // A's own consent change goes through and gets its receipt; it was sent
    // after the forbidden one, so once it is counted the other had its chance.
    phone_a
        .publish(
            &topic("consent/r-1"),
            br#"{"id": "c-own", "consent": {"offers": false}}"#.to_vec(),
            QoS::AtLeastOnce,
            false,
        )
        .await?;
    let receipts = e2e::wait_until(Duration::from_secs(10), || {
        phone_a
            .received()
            .iter()
            .any(|r| r.topic == topic("receipts/r-1"))
    })
    .await;
    receipts.map_err(|e| e.context(gateway.logs()))?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        consents(),
        before + 1,
        "only A's own consent reached the gateway"
    );
    assert!(
        phone_b
            .received()
            .iter()
            .all(|r| r.topic != topic("receipts/r-2")),
        "no receipt for B: B was not forgotten"
    );
    assert_eq!(metric(&site, "gateway_people_erased_total"), 0);

    // A cannot impersonate the CRM; the CRM and the till can write theirs.
    let crm_in = || metric(&site, "gateway_incoming_total{kind=\"crm_person\"}");
    let purchases = || metric(&site, "gateway_incoming_total{kind=\"purchase\"}");
    let (crm_before, purchases_before) = (crm_in(), purchases());
    let record = r#"{"person": "p-9", "recipient": "r-9", "consent": {"proximity": true}}"#;
    phone_a
        .publish(
            "retail/crm/people/p-9",
            record.as_bytes().to_vec(),
            QoS::AtLeastOnce,
            true,
        )
        .await?;
    phone_a
        .publish(
            &topic("purchases"),
            br#"{"person": "p-1", "items": ["x"], "at": "2026-11-23T10:20:00Z"}"#.to_vec(),
            QoS::AtLeastOnce,
            false,
        )
        .await?;
    let crm = Phone::connect(creds("crm-1", "crm", "crm-secret", String::new())).await?;
    let till = Phone::connect(creds("till-1", "till", "till-secret", String::new())).await?;
    crm.publish_acked(
        "retail/crm/people/p-9",
        record.as_bytes().to_vec(),
        true,
        PublishProperties::default(),
    )
    .await?;
    till.publish_acked(
        &topic("purchases"),
        br#"{"person": "p-1", "items": ["sku-1"], "at": "2026-11-23T10:20:00Z"}"#.to_vec(),
        false,
        PublishProperties::default(),
    )
    .await?;
    e2e::wait_until(Duration::from_secs(10), || {
        crm_in() > crm_before && purchases() > purchases_before
    })
    .await
    .map_err(|e| e.context(gateway.logs()))?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(crm_in(), crm_before + 1, "A's CRM record was dropped");
    assert_eq!(
        purchases(),
        purchases_before + 1,
        "A's purchase was dropped"
    );
    assert!(
        broker.log().contains("Denied PUBLISH"),
        "the broker logged the denials"
    );
    Ok(())
}

// ---- Junk on every incoming topic -----------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_on_every_incoming_topic_is_reported_and_delivery_goes_on() -> anyhow::Result<()> {
    let broker = Mosquitto::start(MosquittoOptions::default())?;
    let mut site = Site::new(broker.port(), &rules(900))?;
    let scenario = Scenario::new(SEED).with_shopper(bouncer(1, 2));
    site.import_people(&scenario.people_jsonl())?;
    let mut gateway = site.start()?;
    let ops = Phone::connect(PhoneOptions::new(
        broker.port(),
        "ops",
        site.topic("gateway/errors"),
    ))
    .await?;
    let app = Phone::connect(
        PhoneOptions::new(broker.port(), "app-r-1", site.topic("nudges/r-1"))
            .filter(site.topic("receipts/r-1")),
    )
    .await?;
    wait_metric(&site, "gateway_mqtt_connected", 1, &gateway).await;

    let oversized = {
        let mut v = br#"{"id": "c-1", "pad": ""#.to_vec();
        v.resize(20 * 1024, b'a');
        v.extend_from_slice(br#""}"#);
        v
    };
    let junk: [(&str, Vec<u8>); 4] = [
        ("payload", oversized),
        ("payload", vec![0xff, 0xfe, 0x00, 0x80, b'{']),
        ("malformed", b"{\"id\": \"c-1\", ".to_vec()),
        ("schema", br#"{"unexpected": "s3cret-value"}"#.to_vec()),
    ];
    // Every incoming topic parses strictly: each kind of junk is reported.
    let topics = [
        ("retail/crm/people/p-77".to_string(), 4),
        (site.topic("consent/r-1"), 4),
        (site.topic("checkin/r-1"), 4),
        (site.topic("feedback/r-1"), 4),
        (site.topic("purchases"), 4),
    ];
    for (t, _) in &topics {
        for (_, payload) in &junk {
            app.publish(t, payload.clone(), QoS::AtLeastOnce, false)
                .await?;
        }
    }
    // Larger than the packet size the gateway announces: the broker drops it
    // for the gateway instead of breaking its connection.
    app.publish(
        &site.topic("consent/r-1"),
        vec![b'x'; 100 * 1024],
        QoS::AtLeastOnce,
        false,
    )
    .await?;
    let expected: usize = topics.iter().map(|(_, n)| n).sum();
    let reports = ops
        .wait_for(expected, Duration::from_secs(20))
        .await
        .map_err(|e| e.context(gateway.logs()))?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reports = {
        let all = ops.received();
        assert!(all.len() >= reports.len());
        all
    };
    let mut per_topic: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &reports {
        let j = r.json()?;
        per_topic
            .entry(j["topic"].as_str().unwrap().to_string())
            .or_default()
            .push(format!("{}: {}", j["field"], j["reason"]));
        assert!(!r.payload_str().contains("s3cret"), "never the content");
    }
    for (t, n) in &topics {
        let got = per_topic.get(t).cloned().unwrap_or_default();
        assert_eq!(got.len(), *n, "{t}: {got:#?}");
        assert!(
            got.iter().any(|g| g.contains("larger than 16384 bytes")),
            "{t}: {got:#?}"
        );
    }
    assert_eq!(reports.len(), expected, "{per_topic:#?}");

    // Still running, still reading, still delivering.
    assert!(gateway.is_running(), "{}", gateway.logs());
    assert_eq!(metric(&site, "gateway_mqtt_connected"), 1);
    app.publish(
        &site.topic("consent/r-1"),
        br#"{"id": "c-after", "consent": {"offers": false}}"#.to_vec(),
        QoS::AtLeastOnce,
        false,
    )
    .await?;
    let start = now_ms();
    let mut sim = Simulation::new(StoreSpec::small_store(), scenario, start, SEED)?;
    site::send(sim.next_batch(start + 60_000), site.udp, 30.0).await?;
    e2e::wait_until(Duration::from_secs(20), || {
        let got = app.received();
        got.iter().any(|r| r.topic == site.topic("receipts/r-1"))
            && got.iter().any(|r| r.topic == site.topic("nudges/r-1"))
    })
    .await
    .map_err(|e| e.context(gateway.logs()))?;
    assert_eq!(
        metric(
            &site,
            "gateway_mqtt_connection_changes_total{state=\"down\"}"
        ),
        0,
        "junk never broke the connection"
    );
    Ok(())
}

/// The shipped `mosquitto.conf` as a store runs it (paths moved into a temp
/// dir, the port made free): it starts, and the gateway gets in over TLS
/// (TLS 1.2 only, as configured) with its password and the shipped ACL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_mosquitto_conf_starts_and_admits_the_gateway_over_tls() -> anyhow::Result<()> {
    let pki = make_pki()?;
    let dir = e2e::Workdir::new("deploy-mosquitto")?;
    let port = e2e::free_tcp_port()?;
    let etc = format!("{}/", dir.path().display());
    let conf = include_str!("../../deploy/mosquitto/mosquitto.conf")
        .replace("/etc/mosquitto/gateway/", &etc)
        .replace("/var/lib/mosquitto/", &etc)
        .replace("listener 8883", &format!("listener {port} 127.0.0.1"))
        .replace(
            "listener 1883 127.0.0.1",
            &format!("listener {} 127.0.0.1", e2e::free_tcp_port()?),
        );
    // Running as root here: stay root so the temp dir stays writable.
    let conf = format!("user root\nlog_dest file {etc}mosquitto.log\nlog_type all\n{conf}");
    dir.write("mosquitto.conf", &conf)?;
    dir.write("acl", DEPLOY_ACL)?;
    dir.write("ca.crt", &pki.ca_pem)?;
    dir.write("server.crt", &pki.server_cert_pem)?;
    dir.write("server.key", &pki.server_key_pem)?;
    let passwd = dir.join("passwords");
    let out = std::process::Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&passwd)
        .args(["gateway", "gw-secret"])
        .output()?;
    assert!(out.status.success(), "{out:?}");
    let mut cmd = std::process::Command::new(e2e::mosquitto::mosquitto_bin()?);
    cmd.arg("-c").arg(dir.join("mosquitto.conf"));
    let mut broker = e2e::spawn_guarded_in(cmd, dir.path(), "mosquitto")?;
    e2e::wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await
    .map_err(|e| e.context(broker.logs()))?;
    assert!(broker.is_running());

    let mut site = Site::new(port, &rules(900))?;
    let original = std::fs::read_to_string(&site.config_path)?
        .replace("id = \"store-e2e\"", &format!("id = \"{STORE}\""));
    let password_file = site.dir.write("mqtt-password", "gw-secret\n")?;
    set_mqtt(
        &site,
        &original,
        &format!("mqtts://127.0.0.1:{port}"),
        &format!(
            "ca_file = \"{}\"\nusername = \"gateway\"\npassword_file = \"{}\"\n",
            dir.join("ca.crt").display(),
            password_file.display()
        ),
    )?;
    let gateway = site.start()?;
    wait_metric(&site, "gateway_mqtt_connected", 1, &gateway).await;
    let log = std::fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default();
    assert!(
        // The client id defaults to the user name.
        log.contains("as gateway (") && log.contains("u'gateway'"),
        "{log}"
    );
    // The retained status went out under the ACL (a refusal would be logged).
    assert!(!log.contains("Denied PUBLISH from gateway"), "{log}");
    Ok(())
}
