//! Dry run over a capture from the store's digital twin: what the demo's
//! rules would send, with in-memory caps.

use std::time::Duration;

use firmware_sim::{Scenario, Simulation, StoreSpec};
use gateway::decide::{NudgeKind, Rule, Trigger, TriggeredRule};
use gateway::identity::PersonRecord;
use gateway::simulate::{SimulateOptions, simulate, simulate_with};

fn capture_and_people() -> (String, Vec<PersonRecord>) {
    let scenario = Scenario::small_demo(7);
    let people = scenario
        .people_jsonl()
        .lines()
        .map(|l| PersonRecord::from_json(l).unwrap())
        .collect();
    let mut sim = Simulation::new(
        StoreSpec::small_store(),
        scenario,
        firmware_sim::DEFAULT_START_UNIX_MS,
        7,
    )
    .unwrap();
    let mut capture = String::new();
    for record in sim.run_for(Duration::from_secs(900)) {
        capture.push_str(&serde_json::to_string(&record).unwrap());
        capture.push('\n');
    }
    (capture, people)
}

fn config() -> gateway::config::Config {
    // The demo store's own site file; a dry run opens no broker or storage.
    let site = gateway::demo::site_toml(
        1883,
        std::path::Path::new("/nonexistent/not-used-by-a-dry-run"),
    );
    gateway::config::from_layers("test", Some(&site), Default::default()).unwrap()
}

#[test]
fn the_demo_capture_sends_what_the_rules_and_caps_allow() {
    let (capture, people) = capture_and_people();
    let report = simulate(&config(), &capture, &people).unwrap();
    eprintln!("{}", report.to_table());

    assert_eq!(report.sent_to("p-1001", "laptop-compare"), 1);
    // p-1001 then dwells at the headphones, inside the 20-minute gap.
    assert_eq!(report.sent_to("p-1001", "headphones-info"), 0);
    assert!(
        report
            .held_for("p-1001")
            .iter()
            .any(|h| h.rule == "headphones-info" && h.reason == "min_gap")
    );
    // No product-info consent: nothing sent, held for consent only.
    assert_eq!(
        report
            .sent
            .iter()
            .filter(|n| n.person == gateway::privacy::hashed("p-1002"))
            .count(),
        0
    );
    assert!(
        report
            .held_for("p-1002")
            .iter()
            .all(|h| h.reason == "no_consent")
    );
    assert!(report.other_holds.get("no_consent").copied().unwrap_or(0) >= 1);
    assert_eq!(report.sent_to("p-1003", "headphones-info"), 1);
    assert!(report.caps_hit.get("min_gap").copied().unwrap_or(0) >= 1);
    assert_eq!(report.per_rule["laptop-compare"].sent, 1);
    assert_eq!(
        report.per_kind.values().sum::<u64>(),
        report.total_sent(),
        "per kind adds up"
    );
    assert_eq!(
        report.per_hour.iter().map(|h| h.sent).sum::<u64>(),
        report.total_sent(),
        "per hour adds up"
    );
    // Never the CRM id in what a report prints.
    let json = report.to_json();
    assert!(!json.contains("p-1001"));
    assert!(json.contains("\"caps_hit\""));
    let table = report.to_table();
    assert!(table.contains("laptop-compare"));
    assert!(table.contains("min_gap"));
}

#[test]
fn the_chart_has_one_bar_per_hour_and_the_cap_lines() {
    let (capture, people) = capture_and_people();
    let report = simulate(&config(), &capture, &people).unwrap();
    let svg = report.plot_svg();
    assert!(svg.starts_with("<svg"));
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_balanced(&svg);
    assert!(!report.per_hour.is_empty());
    assert_eq!(
        svg.matches(r#"<rect class="bar""#).count(),
        report.per_hour.len()
    );
    assert!(svg.contains("per-person daily cap: 3"));
    assert!(svg.contains("Europe/Berlin"));
}

/// Every element opened is closed, in order (self-closing ones excepted).
fn assert_balanced(svg: &str) {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = svg;
    while let Some(open) = rest.find('<') {
        let close = rest[open..].find('>').expect("unterminated tag") + open;
        let tag = &rest[open + 1..close];
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(
                stack.pop().as_deref(),
                Some(name.trim()),
                "mismatched </{name}>"
            );
        } else if !tag.ends_with('/') {
            let name = tag.split_whitespace().next().unwrap().to_string();
            stack.push(name);
        }
        rest = &rest[close + 1..];
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
}

#[test]
fn an_nth_visit_thanks_and_exit_feedback_can_be_dry_run_too() {
    let (capture, people) = capture_and_people();
    let rule = |id: &str, kind, title: &str, body: &str| Rule {
        id: id.into(),
        zone: "entrance".into(),
        dwell_s: 1,
        interest: None,
        kind,
        title: title.into(),
        body: body.into(),
        priority: 0,
    };
    let options = SimulateOptions {
        extra_rules: vec![
            TriggeredRule::new(
                rule(
                    "welcome-thanks",
                    NudgeKind::Thanks,
                    "Thank you",
                    "Thank you for visiting us.",
                ),
                Trigger::NthVisit(1),
            ),
            TriggeredRule::new(
                rule(
                    "exit-feedback",
                    NudgeKind::Feedback,
                    "One question",
                    "Did you find what you came for?",
                ),
                Trigger::Exit { zone: None },
            ),
        ],
        ..SimulateOptions::default()
    };
    let report = simulate_with(&config(), &capture, &people, &options).unwrap();
    eprintln!("{}", report.to_table());
    // Every Android shopper with proximity consent starts a first visit.
    assert!(report.per_rule["welcome-thanks"].sent >= 1);
    // Thanks on arrival uses up the minimum gap: the compare nudge is then
    // held, which is what the dry run is for.
    assert!(report.caps_hit.values().sum::<u64>() >= 1);
    assert!(report.per_rule.contains_key("exit-feedback"));
}

#[test]
fn a_bad_capture_line_is_named() {
    let e = simulate(&config(), "{\"scanner\": 1}\n", &[]).unwrap_err();
    assert!(e.to_string().starts_with("capture line 1:"), "{e}");
    let empty = simulate(&config(), "", &[]).unwrap();
    assert_eq!(empty.total_sent(), 0);
    assert!(empty.per_hour.is_empty());
    assert!(empty.plot_svg().starts_with("<svg"));
}

/// The demo store in a chain: at most one nudge a day across the chain's
/// stores, the secret in a file of `dir`.
fn chain_config(dir: &std::path::Path) -> gateway::config::Config {
    let secret = dir.join("chain-secret");
    std::fs::write(&secret, "a-test-chain-secret\n").unwrap();
    let mut site = gateway::demo::site_toml(
        1883,
        std::path::Path::new("/nonexistent/not-used-by-a-dry-run"),
    );
    site.push_str(&format!(
        "\n[caps.chain]\nper_day = 1\nper_week = 5\ntimezone = \"Europe/Berlin\"\n\n\
         [chain]\nsecret_file = \"{}\"\n",
        secret.display()
    ));
    gateway::config::from_layers("test", Some(&site), Default::default()).unwrap()
}

fn other_store_decision(
    config: &gateway::config::Config,
    person: &str,
    at_ms: i64,
    nudge_id: &str,
) -> String {
    let entry = gateway::decide::ChainEntry {
        at_ms,
        nudge_id: nudge_id.into(),
        kind: NudgeKind::Info,
        rule: "other-store-rule".into(),
    };
    let person = config.chain.as_ref().unwrap().person(person);
    gateway::store::decision_payload(&person, &entry)
}

#[test]
fn other_stores_decisions_count_against_the_chain_caps_from_their_own_time_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = chain_config(dir.path());
    let (capture, people) = capture_and_people();
    let start = firmware_sim::DEFAULT_START_UNIX_MS;

    // The chain caps alone change nothing here: nobody gets two a day.
    let alone = simulate(&config, &capture, &people).unwrap();
    assert_eq!(alone.sent_to("p-1001", "laptop-compare"), 1);
    assert_eq!(alone.sent_to("p-1003", "headphones-info"), 1);
    let replay = alone
        .chain
        .clone()
        .expect("a chain site reports its replay");
    assert_eq!(replay.counted, 0);
    assert!(
        alone
            .to_table()
            .contains("chain caps: per day 1, per week 5")
    );

    let lines = [
        // p-1001 had one in another store an hour before: the chain's one
        // for the day is used up.
        other_store_decision(&config, "p-1001", start - 3_600_000, "other-1"),
        // The same message again (a redelivery): counted once.
        other_store_decision(&config, "p-1001", start - 3_600_000, "other-1"),
        // p-1003's comes after this capture's day has ended its decisions:
        // it cannot hold back what was decided before it.
        other_store_decision(&config, "p-1003", start + 2 * 3_600_000, "other-2"),
        // Someone this store does not know.
        other_store_decision(&config, "p-9999", start, "other-3"),
    ];
    let chain_decisions = lines
        .iter()
        .map(|l| gateway::chain_message::parse_decision(l.as_bytes()).unwrap())
        .collect();
    let options = SimulateOptions {
        chain_decisions,
        ..SimulateOptions::default()
    };
    let report = simulate_with(&config, &capture, &people, &options).unwrap();
    eprintln!("{}", report.to_table());
    assert_eq!(report.sent_to("p-1001", "laptop-compare"), 0);
    assert!(
        report
            .held_for("p-1001")
            .iter()
            .any(|h| h.rule == "laptop-compare" && h.reason == "chain_per_day"),
        "{:?}",
        report.held_for("p-1001")
    );
    // p-1001's headphones dwell later is held by the chain cap too (alone,
    // it was the minimum gap); nobody else's is.
    let chain_holds: Vec<_> = report
        .held
        .iter()
        .filter(|h| h.reason == "chain_per_day")
        .collect();
    assert_eq!(chain_holds.len(), 2);
    assert!(
        chain_holds
            .iter()
            .all(|h| h.person == gateway::privacy::hashed("p-1001"))
    );
    assert_eq!(report.caps_hit.get("chain_per_day").copied(), Some(2));
    assert_eq!(report.sent_to("p-1003", "headphones-info"), 1);
    let replay = report.chain.clone().unwrap();
    assert_eq!(
        (replay.counted, replay.unknown_person, replay.duplicate),
        (2, 1, 1)
    );
    assert!(report.to_table().contains(
        "other stores' decisions: 2 counted, 1 for people not in the people file, 1 duplicate"
    ));
}

#[test]
fn chain_decisions_need_chain_caps_and_a_bad_line_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let chain = chain_config(dir.path());
    let good = other_store_decision(&chain, "p-1001", firmware_sim::DEFAULT_START_UNIX_MS, "n-1");
    let options = SimulateOptions {
        chain_decisions: vec![gateway::chain_message::parse_decision(good.as_bytes()).unwrap()],
        ..SimulateOptions::default()
    };
    let e = simulate_with(&config(), "", &[], &options).unwrap_err();
    assert!(e.to_string().contains("[caps.chain]"), "{e}");

    // Through the command: the file's bad line is named with its field.
    let capture = dir.path().join("capture.jsonl");
    std::fs::write(&capture, "").unwrap();
    let people = dir.path().join("people.jsonl");
    std::fs::write(&people, "").unwrap();
    let decisions = dir.path().join("chain.jsonl");
    std::fs::write(
        &decisions,
        format!("{good}\n{}\n", good.replace("\"info\"", "\"spam\"")),
    )
    .unwrap();
    let e = gateway::cli::simulate(&chain, &capture, &people, Some(&decisions), false, None)
        .unwrap_err();
    assert!(e.to_string().contains("chain.jsonl: line 2: kind:"), "{e}");
    std::fs::write(&decisions, format!("{good}\n")).unwrap();
    let table =
        gateway::cli::simulate(&chain, &capture, &people, Some(&decisions), false, None).unwrap();
    assert!(
        table.contains("other stores' decisions: 0 counted, 1 for people"),
        "{table}"
    );
}
