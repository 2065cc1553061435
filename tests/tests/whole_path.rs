//! The whole path, end to end (issue "The whole path"): a real Mosquitto on
//! a free port, the real `gateway run` process, sighting records from the
//! store's twin over UDP, and a phone subscribed as the app would be.

use std::collections::BTreeSet;
use std::time::Duration;

use e2e::{Mosquitto, MosquittoOptions, Phone, PhoneOptions, Received, Site, site};
use firmware_sim::{
    Consent, Scenario, Shopper, Simulation, Stop, StoreSpec, Stranger, StrangerDevice,
};

const SEED: u64 = 42;

const LAPTOP_RULE_REST: &str = r#"

"#;

fn laptop_rule() -> String {
    [
        e2e::site::THREE_ZONES,
        e2e::site::LAPTOP_COMPARE,
        LAPTOP_RULE_REST,
    ]
    .concat()
}

fn no_product_info() -> Consent {
    Consent {
        product_info: false,
        ..Consent::helpful()
    }
}

fn distinct_ids(received: &[Received]) -> BTreeSet<String> {
    received
        .iter()
        .map(|r| r.json().unwrap()["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opted_in_dweller_gets_exactly_the_expected_nudge_and_no_one_else_does()
-> anyhow::Result<()> {
    let broker = Mosquitto::start(MosquittoOptions::default())?;
    let caps = "[caps]\nper_visit = 2\nper_day = 3\nper_week = 7\nmin_gap_s = 1200\n";
    let mut site = Site::new(
        broker.port(),
        &format!("{}{caps}{}", laptop_rule(), e2e::site::SIM_CLOCK),
    )?;
    let path = || {
        vec![
            Stop::new("entrance", 5),
            Stop::new("laptops", 60),
            Stop::new("entrance", 5),
        ]
    };
    let scenario = Scenario::new(SEED)
        .with_shopper(
            Shopper::new(1, SEED)
                .with_interests(&["laptops"])
                .with_path(path()),
        )
        .with_shopper(
            Shopper::new(2, SEED)
                .with_interests(&["laptops"])
                .with_consent(no_product_info())
                .with_path(path()),
        )
        .with_stranger(Stranger::new(StrangerDevice::UnenrolledApp, 0, path()))
        .with_stranger(Stranger::new(StrangerDevice::AppleNearby, 0, path()));
    site.import_people(&scenario.people_jsonl())?;
    let mut gateway = site.start()?;

    let phones = Phone::connect(PhoneOptions::new(
        broker.port(),
        "test-phones",
        site.topic("nudges/+"),
    ))
    .await?;
    let status = Phone::connect(PhoneOptions::new(
        broker.port(),
        "test-ops",
        site.topic("gateway/status"),
    ))
    .await?;

    // Bad input first: the daemon must name it, count it and keep going.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
    for junk in [
        "not json",
        r#"{"scanner": "laptops", "addr": "zz", "rssi": -60, "adv": "", "at_ms": 1}"#,
        "{}",
    ] {
        udp.send_to(junk.as_bytes(), site.udp)?;
    }

    let mut sim = Simulation::new(
        StoreSpec::small_store(),
        scenario,
        e2e::site::now_ms(),
        SEED,
    )?;
    let records = sim.run_for(Duration::from_secs(150));
    site::send(records, site.udp, 25.0).await?;

    let got = phones
        .wait_for(1, Duration::from_secs(30))
        .await
        .map_err(|e| e.context(gateway.logs()))?;
    // Give any wrong extra nudge time to show up.
    let got = {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let all = phones.received();
        assert!(all.len() >= got.len());
        all
    };
    assert_eq!(
        got.len(),
        1,
        "exactly one nudge, for the opted-in shopper only: {:?}",
        got.iter().map(|r| &r.topic).collect::<Vec<_>>()
    );
    let nudge = &got[0];
    assert_eq!(nudge.topic, site.topic("nudges/r-1"));
    assert_eq!(nudge.qos, e2e::QoS::AtLeastOnce);
    let expiry = nudge
        .message_expiry_interval
        .expect("message expiry is set");
    assert!(expiry > 0 && expiry <= 900, "expiry {expiry}");
    let n = nudge.json()?;
    assert_eq!(n["kind"], "compare");
    assert_eq!(n["title"], "Comparing laptops?");
    assert_eq!(
        n["body"],
        "Side-by-side specs, reviews and prices for the models on this table."
    );
    assert_eq!(n["zone"], "laptops");
    assert_eq!(n["why"]["rule"], "laptop-compare");
    assert_eq!(n["why"]["preference"], "laptops");
    assert!(n["why"]["text"].as_str().unwrap().contains("laptops"));
    assert_eq!(n["stop"]["purpose"], "product_info");
    assert_eq!(n["id"].as_str().unwrap().len(), 36, "a UUID");
    let (created, expires) = (
        n["created_at"].as_str().unwrap(),
        n["expires_at"].as_str().unwrap(),
    );
    assert!(
        created.ends_with('Z') && expires.ends_with('Z') && created < expires,
        "{created} .. {expires}"
    );

    // The retained status says online, with version and config hash.
    let statuses = status.wait_for(1, Duration::from_secs(5)).await?;
    let online = statuses.last().unwrap().json()?;
    assert_eq!(online["status"], "online");
    assert_eq!(online["version"], env!("CARGO_PKG_VERSION"));
    assert!(statuses.last().unwrap().retain);

    // The junk was counted by field and the daemon is still up.
    assert!(gateway.is_running(), "{}", gateway.logs());
    assert_eq!(
        site.metric("gateway_sightings_rejected_total{source=\"udp\",field=\"record\"}")?,
        1
    );
    assert_eq!(
        site.metric("gateway_sightings_rejected_total{source=\"udp\",field=\"scanner\"}")?,
        1
    );
    assert_eq!(
        site.metric("gateway_sightings_rejected_total{source=\"udp\",field=\"addr\"}")?,
        1
    );
    assert!(site.metric("gateway_strangers_dropped_total")? > 0);
    // Sighting → PUBACK latency is measured for the nudge that went out.
    assert!(site.metric("gateway_sighting_to_puback_seconds_count")? >= 1);
    let metrics = site.admin_get("/metrics")?;
    let p99 = e2e::site::histogram_quantile(&metrics, "gateway_sighting_to_puback_seconds", 0.99)
        .expect("the latency histogram");
    assert!(p99 > 0.0 && p99 < 5.0, "p99 {p99} s");
    assert_eq!(
        site.metric("gateway_nudges_held_total{reason=\"no_consent\"}")?,
        1
    );

    // The stranger's addresses never reach the log.
    let logs = gateway.logs();
    for record in sim.run_for(Duration::from_secs(1)) {
        assert!(!logs.contains(&record.addr), "an address reached the log");
    }

    // SIGTERM: clean shutdown, status offline.
    gateway.sigterm()?;
    let exit = gateway.exited(Duration::from_secs(10)).await?;
    assert!(exit.success(), "{exit:?}\n{}", gateway.logs());
    let statuses = status.wait_for(2, Duration::from_secs(5)).await?;
    assert_eq!(statuses.last().unwrap().json()?["status"], "offline");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_hold_over_an_hour_and_survive_sigkill() -> anyhow::Result<()> {
    let broker = Mosquitto::start(MosquittoOptions::default())?;
    // No rule cooldown: the per-visit cap and the minimum gap must do the work.
    let extra = format!(
        "{}\n[caps]\nper_visit = 2\nper_day = 3\nper_week = 7\nmin_gap_s = 1200\nrule_cooldown_s = 0\n\n\
         [presence]\n# The simulator runs far ahead of the wall clock.\nmax_future_skew_ms = 86400000\n",
        laptop_rule()
    );
    let mut site = Site::new(broker.port(), &extra)?;
    // An hour of going back and forth between laptops and headphones.
    let mut path = vec![Stop::new("entrance", 5)];
    for _ in 0..6 {
        path.push(Stop::new("laptops", 300));
        path.push(Stop::new("headphones", 300));
    }
    let scenario = Scenario::new(SEED).with_shopper(
        Shopper::new(7, SEED)
            .with_interests(&["laptops"])
            .with_path(path),
    );
    site.import_people(&scenario.people_jsonl())?;
    let mut gateway = site.start()?;
    let phones = Phone::connect(PhoneOptions::new(
        broker.port(),
        "test-phones",
        site.topic("nudges/+"),
    ))
    .await?;
    let status = Phone::connect(PhoneOptions::new(
        broker.port(),
        "test-ops",
        site.topic("gateway/status"),
    ))
    .await?;

    let start = e2e::site::now_ms();
    let mut sim = Simulation::new(StoreSpec::small_store(), scenario, start, SEED)?;
    // First 40 minutes of the visit, at 150× real time.
    site::send(sim.next_batch(start + 40 * 60_000), site.udp, 150.0).await?;
    phones
        .wait_for(2, Duration::from_secs(30))
        .await
        .map_err(|e| e.context(gateway.logs()))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let first = phones.received();
    assert_eq!(
        distinct_ids(&first).len(),
        2,
        "per_visit = 2 in forty minutes: {first:?}"
    );
    let times: Vec<String> = first
        .iter()
        .map(|r| {
            r.json().unwrap()["created_at"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(times[0] < times[1]);
    let held_before_kill = site.metric("gateway_nudges_held_total{reason=\"min_gap\"}")?
        + site.metric("gateway_nudges_held_total{reason=\"per_visit\"}")?;
    assert!(
        held_before_kill >= 1,
        "the cap must have held back at least one nudge:\n{}",
        site.admin_get("/metrics")?
    );

    // Crash: no goodbye. The broker publishes the last will.
    gateway.sigkill()?;
    let _ = gateway.exited(Duration::from_secs(5)).await?;
    e2e::wait_until(Duration::from_secs(15), || {
        status
            .received()
            .last()
            .is_some_and(|s| s.json().map(|j| j["status"] == "offline").unwrap_or(false))
    })
    .await?;

    // Restart on the same files: the visit and its caps carry on.
    let gateway = site.start()?;
    site::send(sim.next_batch(start + 62 * 60_000), site.udp, 150.0).await?;
    let held_after = || -> anyhow::Result<u64> {
        Ok(
            site.metric("gateway_nudges_held_total{reason=\"per_visit\"}")?
                + site.metric("gateway_nudges_held_total{reason=\"min_gap\"}")?,
        )
    };
    e2e::wait_until(Duration::from_secs(20), || held_after().unwrap_or(0) >= 1)
        .await
        .map_err(|e| e.context(gateway.logs()))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = phones.received();
    assert_eq!(
        distinct_ids(&all).len(),
        2,
        "a restart must not reset the caps: {:?}",
        all.iter().map(|r| r.payload_str()).collect::<Vec<_>>()
    );
    drop(gateway);

    // The decision log explains both sends and the holds.
    let explain = site.cli(&["explain", "p-7"])?;
    let text = String::from_utf8_lossy(&explain.stdout);
    assert!(
        explain.status.success(),
        "{}",
        String::from_utf8_lossy(&explain.stderr)
    );
    assert_eq!(text.matches("sent compare nudge").count(), 2, "{text}");
    assert!(text.contains("held back"), "{text}");
    Ok(())
}
