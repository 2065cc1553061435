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
