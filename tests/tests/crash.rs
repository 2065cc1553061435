//! SIGKILL the gateway at several moments while many shoppers generate
//! decisions, restart it on the same files each time, across the store's
//! midnight, and check from the phones' subscription: no cap was exceeded
//! on either local day, and every nudge the decision
//! log says was sent arrived (issue "Relevant nudges under hard limits").

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use e2e::{Mosquitto, MosquittoOptions, Phone, PhoneOptions, Site};
use firmware_sim::{Scenario, Shopper, Simulation, Stop, StoreSpec};

const SHOPPERS: u32 = 12;

/// The test site's timezone (`e2e::Site`'s `[store] timezone`).
const STORE_TIMEZONE: chrono_tz::Tz = chrono_tz::Europe::Berlin;

/// Where the twin's clock starts: the runs cross the store's midnight on
/// every run of the test, not only on a run late in the evening (which is
/// how a per-whole-test count once failed CI at 23:56 Berlin).
fn a_minute_before_the_stores_next_midnight_ms() -> i64 {
    let today = chrono::Utc::now()
        .with_timezone(&STORE_TIMEZONE)
        .date_naive();
    let next_midnight = (today + chrono::Days::new(1)).and_time(chrono::NaiveTime::MIN);
    let next_midnight = next_midnight
        .and_local_timezone(STORE_TIMEZONE)
        .earliest()
        .expect("midnight exists in Europe/Berlin (its clocks change at 02:00 and 03:00)");
    next_midnight.timestamp_millis() - 60_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_sigterm_under_load_exceed_no_cap_and_lose_no_reserved_nudge()
-> anyhow::Result<()> {
    let broker = Mosquitto::start(MosquittoOptions::default())?;
    let mut site = Site::new(broker.port(), &e2e::site::laptop_and_headphone_site(60))?;
    let mut scenario = Scenario::new(17);
    for n in 1..=SHOPPERS {
        let mut path = vec![Stop::new("entrance", 5)];
        for _ in 0..4 {
            path.push(Stop::new("laptops", 40));
            path.push(Stop::new("headphones", 40));
        }
        scenario = scenario.with_shopper(
            Shopper::new(n, 17)
                .with_interests(&["laptops"])
                .with_path(path)
                .arriving_at(n * 7),
        );
    }
    site.import_people(&scenario.people_jsonl())?;
    let phones = Phone::connect(PhoneOptions::new(
        broker.port(),
        "phones",
        site.topic("nudges/+"),
    ))
    .await?;
    let start = a_minute_before_the_stores_next_midnight_ms();
    let mut sim = Simulation::new(StoreSpec::small_store(), scenario, start, 17)?;

    // Four runs of the gateway; the first three end under load (SIGKILL,
    // SIGTERM, SIGKILL) at moments spread over it, the last one stops
    // cleanly once everything is delivered.
    let kill_after = [
        (Duration::from_millis(2_300), libc::SIGKILL),
        (Duration::from_millis(4_100), libc::SIGTERM),
        (Duration::from_millis(3_700), libc::SIGKILL),
    ];
    let mut sim_ms = start;
    for (run, kill) in kill_after.iter().map(Some).chain([None]).enumerate() {
        let mut gateway = site.start()?;
        let until = sim_ms + 180_000;
        let records = sim.next_batch(until);
        sim_ms = until;
        let target = site.udp;
        let sender = tokio::spawn(firmware_sim::output::send_udp(
            records,
            target,
            30.0,
            tokio_util::sync::CancellationToken::new(),
        ));
        match kill {
            Some((after, signal)) => {
                tokio::time::sleep(*after).await;
                gateway.signal(*signal)?;
                let status = gateway.exited(Duration::from_secs(10)).await?;
                if *signal == libc::SIGTERM {
                    assert!(
                        status.success(),
                        "graceful shutdown under load: {status:?}\n{}",
                        gateway.logs()
                    );
                }
                sender.abort();
            }
            None => {
                sender.await??;
                // Let the last decisions and deliveries finish.
                e2e::wait_until(Duration::from_secs(30), || {
                    site.metric("gateway_outbox_depth").unwrap_or(1) == 0
                })
                .await?;
                tokio::time::sleep(Duration::from_secs(3)).await;
                gateway.sigterm()?;
                gateway.exited(Duration::from_secs(10)).await?;
            }
        }
        eprintln!(
            "run {run} done; phones have {} messages",
            phones.received().len()
        );
    }

    // What each phone received, by recipient, without QoS 1 duplicates.
    // The run crosses the store's midnight, where per_day rightly starts
    // again: count per local day.
    let mut received: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut created: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut per_local_day: BTreeMap<(String, chrono::NaiveDate), u32> = BTreeMap::new();
    for r in phones.received() {
        let nudge = r.json()?;
        let recipient = r.topic.rsplit('/').next().unwrap().to_string();
        if received
            .entry(recipient.clone())
            .or_default()
            .insert(nudge["id"].as_str().unwrap().to_string())
        {
            let at = nudge["created_at"].as_str().unwrap().to_string();
            let local_day = chrono::DateTime::parse_from_rfc3339(&at)?
                .with_timezone(&STORE_TIMEZONE)
                .date_naive();
            *per_local_day
                .entry((recipient.clone(), local_day))
                .or_default() += 1;
            created.entry(recipient).or_default().push(at);
        }
    }
    assert!(
        received.values().map(BTreeSet::len).sum::<usize>() >= SHOPPERS as usize,
        "load produced nudges: {received:?}"
    );
    let days: BTreeSet<_> = per_local_day.keys().map(|(_, day)| *day).collect();
    assert_eq!(
        days.len(),
        2,
        "the runs cross the store's midnight: {per_local_day:?}"
    );
    for ((recipient, day), count) in &per_local_day {
        assert!(
            *count <= 3,
            "{recipient} got {count} nudges on {day} (per_day = 3)"
        );
    }
    for recipient in received.keys() {
        let mut times = created[recipient].clone();
        times.sort();
        for pair in times.windows(2) {
            let a = chrono::DateTime::parse_from_rfc3339(&pair[0])?;
            let b = chrono::DateTime::parse_from_rfc3339(&pair[1])?;
            assert!(
                (b - a).num_seconds() >= 60,
                "{recipient}: min_gap broken between {} and {}",
                pair[0],
                pair[1]
            );
        }
    }
    // Every nudge the decision log says was sent reached its phone.
    for n in 1..=SHOPPERS {
        let out = site.cli(&["explain", &format!("p-{n}")])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let sent: BTreeSet<String> = text
            .lines()
            .filter_map(|l| l.split("sent ").nth(1))
            .filter_map(|rest| rest.split_whitespace().nth(2).map(str::to_string))
            .collect();
        let got = received.get(&format!("r-{n}")).cloned().unwrap_or_default();
        assert!(
            sent.is_subset(&got),
            "p-{n}: reserved but never delivered: {:?}",
            sent.difference(&got).collect::<Vec<_>>()
        );
        assert_eq!(
            sent.len(),
            got.len(),
            "p-{n}: the phone got nudges the log does not know: {text}"
        );
    }
    Ok(())
}
