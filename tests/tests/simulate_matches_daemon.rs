//! `gateway simulate` predicts the daemon: one capture from the store's
//! twin, replayed through the dry run (the CLI) and through the real
//! `gateway run` (its replay source) against a real Mosquitto, must give
//! exactly the same nudges: person, rule, kind and zone (ids and delivery
//! times aside). Both decide through `decide::prepare` / `decide::choose`.
//!
//! The site makes the decision path matter: a per-kind daily cap holds the
//! higher-priority rule so that the lower one falls through, and a
//! per-visit cap ends a later decision outright. A shopper without
//! product-info consent and a stranger get nothing.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use e2e::{Mosquitto, MosquittoOptions, Phone, PhoneOptions, Site, Workdir, site};
use firmware_sim::{
    Consent, Scenario, Shopper, Simulation, Stop, StoreSpec, Stranger, StrangerDevice,
};

const SEED: u64 = 19;
/// Shared by the daemon and the dry run, so that both name a person by
/// the same salted hash.
const LOG_SALT: &str = "simulate-matches-daemon";
/// The replay's pace: the capture's time runs this much faster than the
/// wall clock (the site lets sightings that far ahead in, `SIM_CLOCK`).
const REPLAY_SPEED: f64 = 10.0;

/// Two rules a zone, the higher one a compare, the lower one an info: at
/// most one compare a day, two nudges a visit.
const RULES_AND_CAPS: &str = r#"
[[rules]]
id = "laptop-compare"
zone = "laptops"
dwell_s = 15
interest = "laptops"
kind = "compare"
priority = 10
title = "Comparing laptops?"
body = "Side-by-side specs, reviews and prices for the models on this table."

[[rules]]
id = "laptop-info"
zone = "laptops"
dwell_s = 15
interest = "laptops"
kind = "info"
priority = 5
title = "Laptop care"
body = "How to keep a laptop battery healthy for years."

[[rules]]
id = "headphones-compare"
zone = "headphones"
dwell_s = 15
interest = "laptops"
kind = "compare"
priority = 10
title = "Comparing headphones?"
body = "Battery life, noise cancelling and comfort scores side by side."

[[rules]]
id = "headphones-info"
zone = "headphones"
dwell_s = 15
interest = "laptops"
kind = "info"
priority = 1
title = "Headphones that work with your laptop"
body = "Which models pair with the laptops on the next table."

[caps]
per_visit = 2
per_day = 5
per_week = 10
min_gap_s = 0
rule_cooldown_s = 0
per_kind_per_day = 1
"#;

/// (person, rule, kind, zone) → how many times.
type Nudges = BTreeMap<(String, String, String, String), usize>;

fn path() -> Vec<Stop> {
    vec![
        Stop::new("entrance", 5),
        Stop::new("laptops", 40),
        Stop::new("headphones", 40),
        Stop::new("laptops", 40),
        Stop::new("entrance", 5),
    ]
}

fn scenario() -> Scenario {
    Scenario::new(SEED)
        .with_shopper(
            Shopper::new(1, SEED)
                .with_interests(&["laptops"])
                .with_path(path()),
        )
        .with_shopper(
            Shopper::new(2, SEED)
                .with_interests(&["laptops"])
                .with_consent(Consent {
                    product_info: false,
                    ..Consent::helpful()
                })
                .arriving_at(10)
                .with_path(path()),
        )
        .with_shopper(
            Shopper::new(3, SEED)
                .with_interests(&["laptops"])
                .arriving_at(30)
                .with_path(path()),
        )
        .with_stranger(Stranger::new(StrangerDevice::UnenrolledApp, 0, path()))
}

fn count(nudges: &mut Nudges, person: &str, rule: &str, kind: &str, zone: &str) {
    *nudges
        .entry((
            person.to_string(),
            rule.to_string(),
            kind.to_string(),
            zone.to_string(),
        ))
        .or_default() += 1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dry_run_predicts_exactly_the_nudges_the_daemon_delivers() -> anyhow::Result<()> {
    let broker = Mosquitto::start(MosquittoOptions::default())?;

    // The capture: four minutes of the twin's small store, starting now
    // (the daemon's clock follows the sightings' times).
    let scenario = scenario();
    let files = Workdir::new("simulate-matches-daemon")?;
    let mut sim = Simulation::new(
        StoreSpec::small_store(),
        scenario.clone(),
        site::now_ms(),
        SEED,
    )?;
    let capture = files.join("capture.jsonl");
    firmware_sim::output::write_jsonl_file(&capture, sim.run_for(Duration::from_secs(240)))?;
    let people = files.write("people.jsonl", scenario.people_jsonl())?;

    let replay = format!(
        "\n[[sources]]\nkind = \"replay\"\npath = \"{}\"\nspeed = {REPLAY_SPEED:.1}\n",
        capture.display()
    );
    let mut site = Site::new(
        broker.port(),
        &[
            site::THREE_ZONES,
            RULES_AND_CAPS,
            site::SIM_CLOCK,
            replay.as_str(),
        ]
        .concat(),
    )?;

    // The prediction: `gateway simulate` on the capture.
    let out = std::process::Command::new(e2e::gateway_bin()?)
        .arg("--config")
        .arg(&site.config_path)
        .args(["simulate", "--json", "--capture"])
        .arg(&capture)
        .arg("--people")
        .arg(&people)
        .env("GATEWAY_LOG", "warn")
        .env("GATEWAY_LOG_SALT", LOG_SALT)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "simulate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut predicted = Nudges::new();
    for n in report["sent"].as_array().expect("sent") {
        count(
            &mut predicted,
            n["person"].as_str().expect("person"),
            n["rule"].as_str().expect("rule"),
            n["kind"].as_str().expect("kind"),
            n["zone"].as_str().expect("zone"),
        );
    }
    // The site does what it is for, or the comparison proves little: a
    // lower-priority rule went out, and caps held nudges back.
    let sent_rules: Vec<&str> = report["sent"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["rule"].as_str())
        .collect();
    assert!(
        sent_rules.contains(&"headphones-info"),
        "a lower-priority rule falls through: {report:#}"
    );
    for cap in ["per_kind_per_day", "per_visit"] {
        assert!(
            report["caps_hit"][cap].as_u64().unwrap_or(0) >= 1,
            "{cap} bites: {report:#}"
        );
    }
    assert!(
        report["other_holds"]["no_consent"].as_u64().unwrap_or(0) >= 1,
        "{report:#}"
    );
    let expected: usize = predicted.values().sum();

    // The daemon: the same capture through its replay source, the nudges
    // as a phone receives them. The phone subscribes first, so that
    // nothing is published before anyone listens.
    let phones = Phone::connect(PhoneOptions::new(
        broker.port(),
        "test-phones",
        site.topic("nudges/+"),
    ))
    .await?;
    site.import_people(&scenario.people_jsonl())?;
    let mut gateway = site.start_with_env(&[], [("GATEWAY_LOG_SALT", LOG_SALT)])?;
    let delivered = phones
        .wait_for(expected, Duration::from_secs(120))
        .await
        .map_err(|e| e.context(gateway.logs()))?;
    // Let a wrong extra nudge show up: the whole capture replayed, then a
    // moment for its last decisions to be reserved and published.
    e2e::wait_until(Duration::from_secs(90), || {
        gateway.stderr().contains("replay finished")
    })
    .await
    .map_err(|e| e.context(gateway.logs()))?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let delivered = {
        let all = phones.received();
        assert!(all.len() >= delivered.len());
        all
    };
    gateway.sigterm()?;
    let exit = gateway.exited(Duration::from_secs(15)).await?;
    assert!(exit.success(), "{exit:?}\n{}", gateway.logs());

    assert!(gateway::privacy::install_salt(LOG_SALT.as_bytes()));
    let person_of: HashMap<String, String> = scenario
        .people()
        .into_iter()
        .map(|p| {
            (
                site.topic(&format!("nudges/{}", p.recipient)),
                gateway::privacy::hashed(&p.person),
            )
        })
        .collect();
    let mut got = Nudges::new();
    let mut ids = std::collections::HashSet::new();
    for r in &delivered {
        let n = r.json()?;
        // At least once: a redelivered nudge counts once.
        if !ids.insert(n["id"].as_str().unwrap_or_default().to_string()) {
            continue;
        }
        count(
            &mut got,
            person_of.get(&r.topic).expect("a known recipient"),
            n["why"]["rule"].as_str().expect("why.rule"),
            n["kind"].as_str().expect("kind"),
            n["zone"].as_str().expect("zone"),
        );
    }
    assert_eq!(
        got,
        predicted,
        "delivered (left) vs predicted (right)\n{}",
        gateway.logs()
    );
    Ok(())
}
