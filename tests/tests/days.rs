//! Several store days with the real broker, across the night Berlin moves
//! to summer time (2027-03-28): what the phone receives, counted from its
//! subscription, respects the per-day cap in the store's calendar and the
//! store's quiet hours (issue "Relevant nudges under hard, per-person limits").

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{TimeZone, Timelike};
use chrono_tz::Europe::Berlin;
use e2e::{Mosquitto, MosquittoOptions, Phone, PhoneOptions, Site};
use firmware_sim::{Scenario, Shopper, Simulation, Stop, StoreSpec};

const SITE_REST: &str = r#"
[store]
timezone = "Europe/Berlin"



[caps]
per_visit = 1
per_day = 1
per_week = 5
min_gap_s = 0
rule_cooldown_s = 0

[quiet_hours]
start = "19:00"
end = "10:00"

[presence]
# The simulated days lie months ahead of the wall clock.
max_future_skew_ms = 34560000000
"#;

fn site() -> String {
    [e2e::site::THREE_ZONES, e2e::site::LAPTOP_COMPARE, SITE_REST].concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_day_caps_and_quiet_hours_follow_the_store_calendar_across_daylight_saving()
-> anyhow::Result<()> {
    let broker = Mosquitto::start(MosquittoOptions::default())?;
    // Site::new writes its own [store] table; drop ours into it.
    let mut site = Site::new(
        broker.port(),
        &site().replace("[store]\ntimezone = \"Europe/Berlin\"\n", ""),
    )?;
    // Saturday 27 March 2027, 09:00 in Berlin (UTC+1). Sunday is UTC+2.
    let start = Berlin
        .with_ymd_and_hms(2027, 3, 27, 9, 0, 0)
        .unwrap()
        .timestamp_millis();
    let at = |day: u32, h: u32, m: u32| -> u32 {
        let t = Berlin
            .with_ymd_and_hms(2027, 3, day, h, m, 0)
            .unwrap()
            .timestamp_millis();
        ((t - start) / 1000) as u32
    };
    let visit = || {
        vec![
            Stop::new("entrance", 5),
            Stop::new("laptops", 40),
            Stop::new("entrance", 5),
        ]
    };
    let shopper = Shopper::new(1, 9)
        .with_interests(&["laptops"])
        .with_path(visit())
        .arriving_at(at(27, 9, 30)) // Saturday 09:30: quiet hours
        .returning_at(at(27, 10, 30), visit()) // Saturday 10:30: sent
        .returning_at(at(27, 15, 0), visit()) // Saturday 15:00: per_day holds
        .returning_at(at(28, 10, 30), visit()) // Sunday 10:30 CEST: sent (08:30 UTC)
        .returning_at(at(28, 12, 0), visit()); // Sunday 12:00: per_day holds
    let scenario = Scenario::new(9).with_shopper(shopper);
    site.import_people(&scenario.people_jsonl())?;
    let gateway = site.start()?;
    let phone = Phone::connect(PhoneOptions::new(
        broker.port(),
        "phone",
        site.topic("nudges/r-1"),
    ))
    .await?;

    // The store's beacons are not what this test is about: without them the
    // twin produces only the shopper's adverts, and nights are skipped.
    let mut spec = StoreSpec::small_store();
    spec.beacons.clear();
    let mut sim = Simulation::new(spec, scenario, start, 9)?;
    let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let speed = 40.0;
    let end = Berlin
        .with_ymd_and_hms(2027, 3, 28, 13, 0, 0)
        .unwrap()
        .timestamp_millis();
    let mut t = start;
    let mut last_at: Option<i64> = None;
    while t < end {
        t += 3_600_000;
        for record in sim.next_batch(t) {
            // Pace within a visit; jump over the hours nobody is in the store.
            if let Some(prev) = last_at {
                let gap = record.at_ms - prev;
                if (0..120_000).contains(&gap) {
                    tokio::time::sleep(Duration::from_secs_f64(gap as f64 / 1000.0 / speed)).await;
                }
            }
            last_at = Some(record.at_ms);
            udp.send_to(&serde_json::to_vec(&record)?, site.udp)?;
        }
    }
    let metric = |series: &str| site.metric(series).unwrap_or(0);
    e2e::wait_until(Duration::from_secs(30), || {
        metric("gateway_nudges_held_total{reason=\"quiet_hours\"}") >= 1
            && metric("gateway_nudges_held_total{reason=\"per_day\"}") >= 2
    })
    .await
    .map_err(|e| {
        e.context(format!(
            "{}\n{}",
            site.admin_get("/metrics").unwrap_or_default(),
            gateway.logs()
        ))
    })?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut per_day: BTreeMap<String, u32> = BTreeMap::new();
    for received in phone.received() {
        let nudge = received.json()?;
        let created = chrono::DateTime::parse_from_rfc3339(nudge["created_at"].as_str().unwrap())?
            .with_timezone(&Berlin);
        let hour = created.hour();
        assert!(
            (10..19).contains(&hour),
            "a nudge in quiet hours: {created}"
        );
        *per_day.entry(created.date_naive().to_string()).or_default() += 1;
    }
    assert_eq!(
        per_day,
        BTreeMap::from([("2027-03-27".to_string(), 1), ("2027-03-28".to_string(), 1)]),
        "one nudge on each local day, including the Sunday the clocks went forward"
    );
    Ok(())
}
