//! The validators with plain data: no file is read, no environment looked
//! at. Files the configuration names come from an [`Inputs`] built here.

use std::collections::HashMap;

use proptest::prelude::*;

use super::raw::{RawCaps, RawConfig, RawRule};
use super::read::{Inputs, files_named};
use super::tests::MINIMAL_SITE;
use super::*;

/// The minimal site parsed (defaults, site text, no environment), nothing read.
fn raw(extra: &str) -> RawConfig {
    parse(
        "site.toml",
        Some(&format!("{MINIMAL_SITE}{extra}")),
        HashMap::new(),
    )
    .unwrap()
}

fn paths(problems: &[Problem]) -> Vec<&str> {
    problems.iter().map(|p| p.path.as_str()).collect()
}

/// A PEM certificate and key as far as the validators look (the PEM
/// sections; rustls parses the DER inside when `io::mqtt` loads them).
fn certificate() -> (String, String) {
    (
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n".into(),
        "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49\n-----END PRIVATE KEY-----\n".into(),
    )
}

#[test]
fn the_minimal_site_validates_without_reading_anything() {
    let config = validate(raw(""), &Inputs::default()).unwrap();
    assert_eq!(config.store_id, "store-042");
    assert_eq!(config.topics.store(), "retail/store-042");
    assert!(files_named(&raw(""), None).is_empty());
}

#[test]
fn every_file_the_site_names_is_read_and_found_by_its_path() {
    let (cert, key) = certificate();
    let site = raw("\n[catalog]\npath = \"/etc/gw/catalog.toml\"\n");
    let mut site = site;
    site.mqtt.url = "mqtts://broker.test".into();
    site.mqtt.ca_file = Some("/etc/gw/ca.pem".into());
    site.mqtt.client_cert_file = Some("/etc/gw/client.pem".into());
    site.mqtt.client_key_file = Some("/etc/gw/client.key".into());
    site.mqtt.username = Some("gateway".into());
    site.mqtt.password_credential = Some("mqtt-password".into());
    assert_eq!(
        files_named(&site, Some(std::ffi::OsStr::new("/run/creds"))),
        [
            "/etc/gw/ca.pem",
            "/etc/gw/client.pem",
            "/etc/gw/client.key",
            "/run/creds/mqtt-password",
            "/etc/gw/catalog.toml",
        ]
        .map(std::path::PathBuf::from)
    );
    let inputs = Inputs::default()
        .with_credentials_directory("/run/creds")
        .with_file("/etc/gw/ca.pem", cert.clone())
        .with_file("/etc/gw/client.pem", cert)
        .with_file("/etc/gw/client.key", key)
        .with_file("/run/creds/mqtt-password", "pw-from-credential\n")
        .with_file(
            "/etc/gw/catalog.toml",
            "currency = \"EUR\"\n[[products]]\nid = \"sku-1\"\nname = \"Aero 14\"\ncategory = \"laptops\"\nprice = \"999.00\"\nrating = 4.4\nreviews = 10\n",
        );
    assert!(!format!("{inputs:?}").contains("pw-from"), "{inputs:?}");
    let config = validate(site, &inputs).unwrap();
    assert_eq!(
        config.mqtt.password.as_ref().map(|p| p.expose()),
        Some("pw-from-credential")
    );
    assert_eq!(
        config.catalog.map(|c| c.in_category("laptops").len()),
        Some(1)
    );
    assert!(config.mqtt.tls.is_some());
}

#[test]
fn unreadable_files_are_reported_with_the_config_path_that_named_them() {
    let mut site = raw("\n[catalog]\npath = \"/gone/catalog.toml\"\n");
    site.mqtt.url = "mqtts://broker.test".into();
    site.mqtt.ca_file = Some("/gone/ca.pem".into());
    site.mqtt.username = Some("g".into());
    site.mqtt.password_file = Some("/gone/pw".into());
    let inputs = Inputs::default()
        .with_unreadable("/gone/catalog.toml", "No such file or directory")
        .with_unreadable("/gone/ca.pem", "Permission denied")
        .with_unreadable("/gone/pw", "No such file or directory");
    let problems = validate(site, &inputs).unwrap_err();
    let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
    for expected in [
        "mqtt.ca_file: /gone/ca.pem: Permission denied",
        "mqtt.password_file: /gone/pw: No such file or directory",
        "catalog.path: /gone/catalog.toml: No such file or directory",
    ] {
        assert!(
            shown.iter().any(|s| s == expected),
            "{expected}: {shown:#?}"
        );
    }
}

#[test]
fn tls_contents_are_checked_as_pem_without_touching_a_file() {
    let (cert, key) = certificate();
    let mut site = raw("");
    site.mqtt.url = "mqtts://broker.test".into();
    site.mqtt.ca_file = Some("ca.pem".into());
    site.mqtt.client_cert_file = Some("client.pem".into());
    site.mqtt.client_key_file = Some("client.key".into());
    let inputs = Inputs::default()
        .with_file("ca.pem", "not a certificate")
        .with_file("client.pem", key.clone())
        .with_file("client.key", cert.clone());
    let problems = sections::mqtt(&site.mqtt, "s", &inputs).unwrap_err();
    let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "mqtt.ca_file: ca.pem: no usable CA certificate",
            "mqtt.client_cert_file: client.pem: no certificate",
            "mqtt.client_key_file: client.key: no private key",
        ]
    );
    let good = Inputs::default()
        .with_file("ca.pem", cert.clone())
        .with_file("client.pem", cert)
        .with_file("client.key", key);
    let mqtt = sections::mqtt(&site.mqtt, "s", &good).unwrap();
    assert_eq!(
        mqtt.tls.and_then(|t| t.ca_file),
        Some(std::path::PathBuf::from("ca.pem"))
    );
}

#[test]
fn a_credential_needs_its_directory_and_a_plain_name() {
    let mut site = raw("");
    site.mqtt.username = Some("g".into());
    site.mqtt.password_credential = Some("mqtt-password".into());
    let problems = sections::mqtt(&site.mqtt, "s", &Inputs::default()).unwrap_err();
    assert_eq!(paths(&problems), ["mqtt.password_credential"]);
    assert!(problems[0].reason.contains("CREDENTIALS_DIRECTORY"));
    site.mqtt.password_credential = Some("../pw".into());
    let inputs = Inputs::default().with_credentials_directory("/run/c");
    let problems = sections::mqtt(&site.mqtt, "s", &inputs).unwrap_err();
    assert_eq!(paths(&problems), ["mqtt.password_credential"]);
}

#[test]
fn the_topic_names_carry_the_configured_scanner_feeds() {
    let site = raw(
        "\n[[sources]]\nkind = \"mqtt_scanners\"\nopenmqttgateway = [\"home/+/BTtoMQTT/+\"]\nespresense = [\"espresense/devices/+/+\"]\n",
    );
    let config = validate(site, &Inputs::default()).unwrap();
    assert_eq!(
        crate::topics::scanner_subscriptions(&config.topics),
        [
            "retail/store-042/scanners/+",
            "home/+/BTtoMQTT/+",
            "espresense/devices/+/+"
        ]
    );
    assert_eq!(config.status_topic(), "retail/store-042/gateway/status");
}

#[test]
fn problems_in_many_sections_are_all_reported_in_file_order() {
    let mut site = raw("");
    site.store.timezone = "Mars/Olympus".into();
    site.mqtt.prefix = "#".into();
    site.storage.cache_mb = 0;
    site.caps.per_day = -1;
    site.presence.window_ms = 0;
    site.admin.listen = Some("nowhere".into());
    let problems = validate(site, &Inputs::default()).unwrap_err();
    assert_eq!(
        paths(&problems),
        [
            "store.timezone",
            "mqtt.prefix",
            "storage.cache_mb",
            "caps.per_day",
            "presence.window_ms",
            "admin.listen"
        ]
    );
}

fn rule(id: &str, dwell_s: i64) -> RawRule {
    RawRule {
        id: id.into(),
        zone: Some("laptops".into()),
        dwell_s: Some(dwell_s),
        on: None,
        on_visit: None,
        interest: None,
        kind: "info".into(),
        title: "Specs".into(),
        body: "Side-by-side specs.".into(),
        priority: 0,
    }
}

fn caps(values: [i64; 5]) -> RawCaps {
    RawCaps {
        per_visit: values[0],
        per_day: values[1],
        per_week: values[2],
        min_gap_s: values[3],
        rule_cooldown_s: values[4],
        per_kind_per_day: None,
        store_per_minute: None,
        chain: None,
    }
}

proptest! {
    /// Every rule with a dwell time under 1 s is reported at its own
    /// path: all of them, not just the first; the others pass.
    #[test]
    fn every_bad_dwell_time_is_reported_at_its_rule(dwells in prop::collection::vec(-5i64..5, 0..12)) {
        let raw: Vec<RawRule> = dwells.iter().enumerate().map(|(i, d)| rule(&format!("r{i}"), *d)).collect();
        let zones = ["laptops"].into_iter().collect();
        let expected: Vec<String> = dwells
            .iter()
            .enumerate()
            .filter(|(_, d)| **d < 1)
            .map(|(i, _)| format!("rules[{i}].dwell_s: must be >= 1"))
            .collect();
        match sections::rules(&raw, &zones) {
            Ok((rules, triggered)) => {
                prop_assert!(expected.is_empty());
                prop_assert_eq!(rules.len(), dwells.len());
                prop_assert_eq!(triggered.len(), dwells.len());
            }
            Err(problems) => {
                let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
                prop_assert_eq!(shown, expected);
            }
        }
    }

    /// Caps: each negative value is one problem at its own path; a valid
    /// set is taken as it is.
    #[test]
    fn caps_report_each_negative_value(values in prop::array::uniform5(-3i64..1000)) {
        let names = ["caps.per_visit", "caps.per_day", "caps.per_week", "caps.min_gap_s", "caps.rule_cooldown_s"];
        let expected: Vec<&str> = names.iter().zip(values).filter(|(_, v)| *v < 0).map(|(n, _)| *n).collect();
        match sections::caps(&caps(values)) {
            Ok(c) => {
                prop_assert!(expected.is_empty());
                prop_assert_eq!(
                    [i64::from(c.per_visit), i64::from(c.per_day), i64::from(c.per_week), i64::from(c.min_gap_s), i64::from(c.rule_cooldown_s)],
                    values
                );
            }
            Err(problems) => prop_assert_eq!(paths(&problems), expected),
        }
    }

    /// Whatever the values, validation returns (never panics) and every
    /// problem names a path.
    #[test]
    fn validation_never_panics_and_always_names_the_path(
        dwell in any::<i64>(),
        window in any::<i64>(),
        hall in any::<f64>(),
        days in any::<i64>(),
        keep_alive in any::<u64>(),
        start in "[0-9:]{0,6}",
        url in "(mqtt|mqtts|http)://[a-z0-9.:@\\[\\]]{0,20}",
    ) {
        let mut site = raw("\n[quiet_hours]\nstart = \"21:00\"\nend = \"08:00\"\n");
        site.rules[0].dwell_s = Some(dwell);
        site.presence.window_ms = window;
        site.presence.hall_distance_m = hall;
        site.retention.days = days;
        site.mqtt.keep_alive_s = keep_alive;
        site.mqtt.url = url;
        if let Some(q) = site.quiet_hours.as_mut() {
            q.start = start;
        }
        if let Err(problems) = validate(site, &Inputs::default()) {
            prop_assert!(!problems.is_empty());
            for p in &problems {
                prop_assert!(!p.path.is_empty() && !p.reason.is_empty(), "{p:?}");
            }
        }
    }
}

#[test]
fn a_password_travels_in_the_clear_only_over_plain_tcp_to_another_host() {
    let inputs = Inputs::default().with_file("/pw", "secret\n");
    let mut site = raw("");
    site.mqtt.username = Some("g".into());
    site.mqtt.password_file = Some("/pw".into());
    for (url, clear) in [
        ("mqtt://broker.example", true),
        ("mqtt://127.0.0.1:1883", false),
        ("mqtt://localhost", false),
        ("mqtt://[::1]:1883", false),
    ] {
        site.mqtt.url = url.into();
        let mqtt = sections::mqtt(&site.mqtt, "s", &inputs).unwrap();
        assert_eq!(mqtt.password_in_clear(), clear, "{url}");
    }
    site.mqtt.url = "mqtts://broker.example".into();
    let mqtt = sections::mqtt(&site.mqtt, "s", &inputs).unwrap();
    assert!(!mqtt.password_in_clear());
    site.mqtt.password_file = None;
    site.mqtt.url = "mqtt://broker.example".into();
    let mqtt = sections::mqtt(&site.mqtt, "s", &inputs).unwrap();
    assert!(!mqtt.password_in_clear());
}

const CHAIN: &str = r#"
[caps.chain]
per_day = 2
per_week = 5
min_gap_s = 1800
day = "home"
timezone = "Europe/Berlin"

[chain]
secret_file = "/etc/gateway/chain-secret"
"#;

#[test]
fn chain_caps_take_the_secret_from_the_file_the_read_step_read() {
    let site = raw(CHAIN);
    assert_eq!(
        files_named(&site, None)
            .iter()
            .filter(|p| p.ends_with("chain-secret"))
            .count(),
        1,
        "the read step reads the chain secret"
    );
    let inputs = Inputs::default().with_file(
        "/etc/gateway/chain-secret",
        "0123456789abcdef0123456789abcdef\nsecond line ignored\n",
    );
    let config = validate(raw(CHAIN), &inputs).unwrap();
    let chain = config.chain.as_ref().expect("chain configured");
    assert_eq!(chain.caps.per_day, 2);
    assert_eq!(chain.caps.per_week, 5);
    assert_eq!(chain.caps.min_gap_s, 1800);
    assert_eq!(chain.caps.day, crate::decide::ChainDay::Home);
    assert_eq!(chain.caps.timezone, chrono_tz::Europe::Berlin);
    assert_eq!(chain.secret.expose(), b"0123456789abcdef0123456789abcdef");
    assert_eq!(format!("{:?}", chain.secret), "***");
    assert!(!format!("{config:?}").contains("0123456789abcdef"));
    // The vector of privacy.rs, through the config.
    assert_eq!(
        chain.person("p-1").to_hex(),
        "d7d8958469d7ad49398d29056543538d"
    );
    assert!(
        crate::topics::all_subscriptions(&config.topics)
            .iter()
            .any(|s| s.filter == "retail/chain/+/+")
    );
}

#[test]
fn without_chain_caps_there_is_no_chain_and_no_secret_is_read() {
    let site = raw("[chain]\nsecret_file = \"/etc/gateway/chain-secret\"\n");
    assert!(
        files_named(&site, None)
            .iter()
            .all(|p| !p.ends_with("chain-secret"))
    );
    let config = validate(site, &Inputs::default()).unwrap();
    assert!(config.chain.is_none());
    assert!(
        crate::topics::all_subscriptions(&config.topics)
            .iter()
            .all(|s| !s.filter.contains("/chain/"))
    );
}

#[test]
fn chain_problems_name_their_path() {
    // No secret at all.
    let no_secret = CHAIN.replace("[chain]\nsecret_file = \"/etc/gateway/chain-secret\"\n", "");
    let problems = validate(raw(&no_secret), &Inputs::default()).unwrap_err();
    assert_eq!(paths(&problems), ["chain.secret_file"]);
    // Unreadable, too short, both file and credential.
    let problems = validate(
        raw(CHAIN),
        &Inputs::default().with_unreadable("/etc/gateway/chain-secret", "permission denied"),
    )
    .unwrap_err();
    assert_eq!(paths(&problems), ["chain.secret_file"]);
    assert!(problems[0].reason.contains("permission denied"));
    let short = Inputs::default().with_file("/etc/gateway/chain-secret", "short\n");
    let problems = validate(raw(CHAIN), &short).unwrap_err();
    assert_eq!(paths(&problems), ["chain.secret_file"]);
    assert!(!problems[0].reason.contains("short\n"));
    let both = format!("{CHAIN}secret_credential = \"chain\"\n");
    let problems = validate(
        raw(&both),
        &Inputs::default().with_credentials_directory("/run/c"),
    )
    .unwrap_err();
    assert_eq!(paths(&problems), ["chain.secret_file"]);
    // Bad values: every one at its own path.
    let bad = CHAIN
        .replace("per_day = 2", "per_day = -1")
        .replace("per_week = 5", "per_week = -2")
        .replace("min_gap_s = 1800", "min_gap_s = -3")
        .replace("day = \"home\"", "day = \"store\"")
        .replace("Europe/Berlin\"\n\n[chain]", "Mars/Olympus\"\n\n[chain]");
    let inputs = Inputs::default().with_file(
        "/etc/gateway/chain-secret",
        "0123456789abcdef0123456789abcdef\n",
    );
    let problems = validate(raw(&bad), &inputs).unwrap_err();
    assert_eq!(
        paths(&problems),
        [
            "caps.chain.day",
            "caps.chain.timezone",
            "caps.chain.per_day",
            "caps.chain.per_week",
            "caps.chain.min_gap_s"
        ]
    );
    // A store named like the chain's topics.
    let mut site = raw(CHAIN);
    site.store.id = Some("chain".into());
    let problems = validate(site, &inputs).unwrap_err();
    assert_eq!(paths(&problems), ["store.id"]);
    // An unknown key is refused when parsing, naming it.
    let unknown = format!("{CHAIN}secret = \"inline\"\n");
    let err = parse(
        "site.toml",
        Some(&format!("{MINIMAL_SITE}{unknown}")),
        HashMap::new(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("secret"), "{err}");
    // A credential is looked up in $CREDENTIALS_DIRECTORY.
    let credential = CHAIN.replace(
        "secret_file = \"/etc/gateway/chain-secret\"",
        "secret_credential = \"chain-secret\"",
    );
    let inputs = Inputs::default()
        .with_credentials_directory("/run/creds")
        .with_file(
            "/run/creds/chain-secret",
            "0123456789abcdef0123456789abcdef",
        );
    let site = raw(&credential);
    assert!(
        files_named(&site, Some(std::ffi::OsStr::new("/run/creds")))
            .contains(&std::path::PathBuf::from("/run/creds/chain-secret"))
    );
    assert!(validate(site, &inputs).unwrap().chain.is_some());
}
