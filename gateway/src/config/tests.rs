use std::collections::HashMap;

use super::*;

/// The minimal site file of docs/design.md §7, verbatim.
pub const MINIMAL_SITE: &str = r#"
[store]
id = "store-042"
timezone = "Europe/Berlin"

[mqtt]
url = "mqtt://127.0.0.1:1883"
prefix = "retail"

[storage]
path = "/var/lib/gateway"

[[sources]]
kind = "udp"
bind = "127.0.0.1:7531"

[[zones]]
id = "laptops"
scanners = ["laptops"]

[[rules]]
id = "laptop-compare"
zone = "laptops"
dwell_s = 20
interest = "laptops"
kind = "compare"
title = "Comparing laptops?"
body = "Side-by-side specs, reviews and prices for the models on this table."

[caps]
per_visit = 2
per_day = 3
per_week = 7
min_gap_s = 1200

[admin]
listen = "127.0.0.1:9464"   # /metrics (OpenMetrics text), /livez, /readyz
"#;

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    from_layers("site.toml", Some(text), env)
}

#[test]
fn the_minimal_site_file_is_accepted() {
    let c = load(MINIMAL_SITE, &[]).unwrap();
    assert_eq!(c.store_id, "store-042");
    assert_eq!(c.timezone, chrono_tz::Europe::Berlin);
    assert_eq!((c.mqtt.host.as_str(), c.mqtt.port), ("127.0.0.1", 1883));
    assert_eq!(c.nudge_topic("r-1"), "retail/store-042/nudges/r-1");
    assert_eq!(
        c.sources,
        vec![SourceSettings::Udp {
            bind: "127.0.0.1:7531".parse().unwrap()
        }]
    );
    assert_eq!(c.caps.per_day, 3);
    assert_eq!(c.rules[0].dwell_s, 20);
    assert!(c.presence.dwell_thresholds_s.contains(&20));
    assert_eq!(c.admin_listen, Some("127.0.0.1:9464".parse().unwrap()));
}

#[test]
fn environment_overrides_the_site_file() {
    let c = load(
        MINIMAL_SITE,
        &[
            ("GATEWAY__MQTT__URL", "mqtt://127.0.0.1:2883"),
            ("GATEWAY__CAPS__PER_DAY", "1"),
        ],
    )
    .unwrap();
    assert_eq!(c.mqtt.port, 2883);
    assert_eq!(c.caps.per_day, 1);
}

#[test]
fn an_unknown_field_is_rejected_by_name() {
    let err = load(
        &MINIMAL_SITE.replace("per_week = 7", "per_week = 7\nper_month = 9"),
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("per_month"), "{err}");
    assert!(err.starts_with("site.toml"), "{err}");
}

#[test]
fn every_problem_is_reported_with_its_path_at_once() {
    let text = MINIMAL_SITE
        .replace("dwell_s = 20", "dwell_s = 0")
        .replace("Europe/Berlin", "Europe/Atlantis")
        .replace("kind = \"compare\"", "kind = \"spam\"")
        .replace("zone = \"laptops\"", "zone = \"garden\"");
    let ConfigError::Invalid { problems, .. } = load(&text, &[]).unwrap_err() else {
        panic!("expected validation problems")
    };
    let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
    for expected in [
        "store.timezone",
        "rules[0].zone",
        "rules[0].dwell_s",
        "rules[0].kind",
    ] {
        assert!(
            paths.contains(&expected),
            "{expected} missing from {paths:?}"
        );
    }
}

#[test]
fn presence_distances_are_checked_and_zero_means_no_hall() {
    let with = |extra: &str| load(&format!("{MINIMAL_SITE}\n[presence]\n{extra}\n"), &[]);
    let c = with("hall_distance_m = 0").unwrap();
    assert_eq!(c.presence.hall_distance_m, None);
    let c = with("hall_distance_m = 8.5\npath_loss_exponent = 3.0").unwrap();
    assert_eq!(c.presence.hall_distance_m, Some(8.5));
    assert_eq!(c.presence.path_loss_exponent, 3.0);
    let defaults = load(MINIMAL_SITE, &[]).unwrap();
    assert_eq!(defaults.presence.hall_distance_m, Some(5.3));
    assert_eq!(defaults.presence.path_loss_exponent, 2.2);
    for (extra, path) in [
        ("hall_distance_m = 0.2", "presence.hall_distance_m"),
        ("hall_distance_m = -3", "presence.hall_distance_m"),
        ("path_loss_exponent = 0.5", "presence.path_loss_exponent"),
        ("path_loss_exponent = nan", "presence.path_loss_exponent"),
    ] {
        let ConfigError::Invalid { problems, .. } = with(extra).unwrap_err() else {
            panic!("{extra}: expected a validation problem")
        };
        assert!(
            problems.iter().any(|p| p.path == path),
            "{extra}: {problems:?}"
        );
    }
}

#[test]
fn a_syntax_error_is_one_line_naming_the_file() {
    let err = load("[store\nid = 1", &[]).unwrap_err().to_string();
    assert!(err.starts_with("site.toml:"), "{err}");
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn the_shipped_example_site_file_is_valid() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/example-site.toml"
    ))
    .unwrap();
    load(&text, &[]).unwrap();
}

#[test]
fn scanner_sources_and_beacons_are_validated_with_paths() {
    let text = format!(
        "{MINIMAL_SITE}\n[[sources]]\nkind = \"mqtt_scanners\"\nopenmqttgateway = [\"home/#/x\"]\n\n[[sources]]\nkind = \"bluez\"\nscanner = \"\"\n\n\
         [[beacons]]\nid = \"door\"\nkind = \"ibeacon\"\nuuid = \"426c\"\nmajor = 1\n\n[[beacons]]\nid = \"x\"\nkind = \"lamp\"\n"
    );
    let ConfigError::Invalid { problems, .. } = load(&text, &[]).unwrap_err() else {
        panic!("expected problems")
    };
    let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
    for expected in [
        "sources[1].openmqttgateway[0]",
        "sources[2].scanner",
        "beacons[0].uuid",
        "beacons[0].minor",
        "beacons[1].kind",
    ] {
        assert!(
            paths.contains(&expected),
            "{expected} missing from {paths:?}"
        );
    }
}

#[test]
fn beacon_and_scanner_positions_give_a_gain_setup_or_errors_with_paths() {
    let beacon = "[[beacons]]\nid = \"door\"\nkind = \"ibeacon\"\nuuid = \"426c7565436861726d426561636f6e73\"\nmajor = 1\nminor = 1\n";
    let good = format!(
        "{MINIMAL_SITE}\n[[zones]]\nid = \"hall-desk\"\nscanners = [\"s1\"]\npositions = {{ s1 = {{ x = 2.0, y = 3.0 }} }}\n\n\
         {beacon}x = 4.0\ny = 3.0\ntx_power_1m = -61\n"
    );
    let c = load(&good, &[]).unwrap();
    let setup = c.scanner_gain.expect("positions given");
    assert!(setup.scanners.contains(&"s1".to_string()));
    let s1 = setup.scanners.iter().position(|s| s == "s1").unwrap();
    // 2 m across, 1.3 m up: -61 - 22 log10(2.39) = -69.3 dBm.
    let expected = setup.expected[0][s1].unwrap();
    assert!((expected + 69.3).abs() < 0.1, "{expected}");
    // Without positions: nothing is learned, as before.
    assert!(load(MINIMAL_SITE, &[]).unwrap().scanner_gain.is_none());

    let bad = format!(
        "{MINIMAL_SITE}\n[presence]\nantenna_height_m = -1\n\n[[zones]]\nid = \"z\"\nscanners = [\"s1\"]\npositions = {{ s9 = {{ x = 1.0, y = 1.0 }} }}\n\n\
         [[zones]]\nid = \"w\"\nscanners = [\"s2\"]\npositions = {{ s2 = {{ x = nan, y = 1.0 }} }}\n\n\
         {beacon}x = 1.0\ntx_power_1m = 99\n"
    );
    let ConfigError::Invalid { problems, .. } = load(&bad, &[]).unwrap_err() else {
        panic!("expected problems")
    };
    let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
    for expected in [
        "presence.antenna_height_m",
        "zones[1].positions.s9",
        "zones[2].positions.s2",
        "beacons[0].y",
        "beacons[0].tx_power_1m",
    ] {
        assert!(
            paths.contains(&expected),
            "{expected} missing from {paths:?}"
        );
    }
}

#[test]
fn effective_config_masks_secrets() {
    let mut value: toml::Value = toml::from_str(
        "[mqtt]\nurl = \"mqtt://x:1\"\npassword = \"hunter2\"\n[[sources]]\nsecret_token = \"s\"\n",
    )
    .unwrap();
    mask(&mut value);
    let text = toml::to_string(&value).unwrap();
    assert!(
        !text.contains("hunter2") && !text.contains("\"s\""),
        "{text}"
    );
    assert!(text.contains("mqtt://x:1"));
}

#[test]
fn triggers_templates_and_wording_are_checked_per_rule() {
    let extra = r#"
[[rules]]
id = "bye"
on = "exit"
kind = "feedback"
title = "How was your visit?"
body = "One tap: did you find what you came for?"

[[rules]]
id = "thanks-3"
on_visit = 3
kind = "thanks"
title = "Thank you for coming back"
body = "Nice to see you again, {person.first_interest} fan."

[[rules]]
id = "pushy"
zone = "laptops"
dwell_s = 30
kind = "info"
title = "Hurry, last chance!"
body = "See {nonsense.field}"

[[rules]]
id = "thanks-on-dwell"
zone = "laptops"
dwell_s = 30
kind = "thanks"
title = "Thanks"
body = "Thanks"
"#;
    let good = load(
        &format!(
            "{MINIMAL_SITE}{}",
            &extra[..extra.find("[[rules]]\nid = \"pushy\"").unwrap()]
        ),
        &[],
    )
    .unwrap();
    assert_eq!(
        good.rules.len(),
        1,
        "only dwell rules drive presence thresholds"
    );
    assert_eq!(good.triggered.len(), 3);
    let ConfigError::Invalid { problems, .. } =
        load(&format!("{MINIMAL_SITE}{extra}"), &[]).unwrap_err()
    else {
        panic!("expected problems")
    };
    let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
    assert!(
        paths.contains(&"rules[3].title"),
        "pressure wording: {paths:?}"
    );
    assert!(
        paths.contains(&"rules[3].body"),
        "unknown template field: {paths:?}"
    );
    assert!(
        paths.contains(&"rules[4].on"),
        "thanks never on dwell: {paths:?}"
    );
}

#[test]
fn the_per_recipient_rate_has_defaults_and_is_checked_with_its_path() {
    let c = load(MINIMAL_SITE, &[]).unwrap();
    assert_eq!(c.incoming_rate, crate::ratelimit::RateLimit::default());
    let c = load(
        &format!("{MINIMAL_SITE}\n[incoming]\nper_recipient_per_minute = 6\n"),
        &[],
    )
    .unwrap();
    assert_eq!(c.incoming_rate.per_minute, 6);
    assert_eq!(c.incoming_rate.burst, 20);
    let text = format!(
        "{MINIMAL_SITE}\n[incoming]\nper_recipient_per_minute = 0\nper_recipient_burst = -1\nmax_recipients = 0\n"
    );
    let ConfigError::Invalid { problems, .. } = load(&text, &[]).unwrap_err() else {
        panic!("expected validation problems")
    };
    let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
    for expected in [
        "incoming.per_recipient_per_minute",
        "incoming.per_recipient_burst",
        "incoming.max_recipients",
    ] {
        assert!(
            paths.contains(&expected),
            "{expected} missing from {paths:?}"
        );
    }
    let err = load(
        &format!("{MINIMAL_SITE}\n[incoming]\nper_second = 1\n"),
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("per_second"), "{err}");
}

#[test]
fn credentials_come_from_the_systemd_credentials_directory_and_urls_are_masked() {
    use std::ffi::OsString;
    assert_eq!(
        super::credential_path(
            "mqtt-password",
            Some(OsString::from("/run/credentials/gateway.service"))
        ),
        Ok(std::path::PathBuf::from(
            "/run/credentials/gateway.service/mqtt-password"
        ))
    );
    for bad in ["", ".", "..", "a/b", "../pw"] {
        let e = super::credential_path(bad, Some(OsString::from("/run/c"))).unwrap_err();
        assert!(e.contains("credential name"), "{bad}: {e}");
    }
    let e = super::credential_path("mqtt-password", None).unwrap_err();
    assert!(
        e.contains("CREDENTIALS_DIRECTORY") && e.contains("LoadCredential=mqtt-password"),
        "{e}"
    );
    assert_eq!(
        super::mask_userinfo("mqtt://u:pw@h:1883"),
        "mqtt://***@h:1883"
    );
    assert_eq!(super::mask_userinfo("u:pw@h"), "***@h");
    assert_eq!(super::mask_userinfo("mqtts://h:8883"), "mqtts://h:8883");
}

#[test]
fn the_publish_limit_defaults_to_the_shipped_brokers_and_is_bounded() {
    let c = load(MINIMAL_SITE, &[]).unwrap();
    assert_eq!(c.mqtt.max_publish_bytes, 16 * 1024);
    for bad in ["100", "1000000"] {
        let e = load(MINIMAL_SITE, &[("GATEWAY__MQTT__MAX_PUBLISH_BYTES", bad)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("mqtt.max_publish_bytes"), "{bad}: {e}");
    }
}

#[test]
fn the_retention_sweep_runs_hourly_unless_set_and_is_bounded() {
    let c = load(MINIMAL_SITE, &[]).unwrap();
    assert_eq!(c.sweep_every, std::time::Duration::from_secs(3600));
    let c = load(
        MINIMAL_SITE,
        &[("GATEWAY__RETENTION__SWEEP_EVERY_S", "600")],
    )
    .unwrap();
    assert_eq!(c.sweep_every, std::time::Duration::from_secs(600));
    for bad in ["59", "86401", "-1"] {
        let e = load(MINIMAL_SITE, &[("GATEWAY__RETENTION__SWEEP_EVERY_S", bad)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("retention.sweep_every_s: must be between 60 and 86400"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn presence_map_knobs_are_optional_checked_and_unknown_keys_refused() {
    let with = |extra: &str| load(&format!("{MINIMAL_SITE}\n[presence.map]\n{extra}\n"), &[]);
    let none = load(MINIMAL_SITE, &[]).unwrap();
    assert!(none.presence.map_tuning.is_empty());
    let c = with("evidence_weight = 1.0\nswitch_p = 0.7\nhold_ms = 500\nbias_rate = 0").unwrap();
    let t = &c.presence.map_tuning;
    assert_eq!(t.evidence_weight, Some(1.0));
    assert_eq!(t.switch_p, Some(0.7));
    assert_eq!(t.hold_ms, Some(500));
    assert_eq!(t.bias_rate, Some(0.0));
    assert_eq!(
        (t.zone_stay_s, t.hall_stay_s, t.enter_p),
        (None, None, None)
    );
    // The other [presence] keys keep their defaults beside a [presence.map].
    assert_eq!(c.presence.hall_distance_m, Some(5.3));
    // Every knob out of range is reported, each naming its key, reason and range.
    let ConfigError::Invalid { problems, .. } = with(
        "zone_stay_s = 0\nhall_stay_s = -1\nevidence_weight = 3\nenter_p = 1.0\nswitch_p = nan\nhold_ms = -5\nbias_rate = 1.5\nbias_max_db = 40",
    )
    .unwrap_err() else {
        panic!("expected validation problems")
    };
    let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "presence.map.zone_stay_s: must be between 1 and 86400",
            "presence.map.hall_stay_s: must be between 0.1 and 86400",
            "presence.map.evidence_weight: must be between 0.01 and 2",
            "presence.map.enter_p: must be between 0.01 and 0.99",
            "presence.map.switch_p: must be between 0.01 and 0.99",
            "presence.map.hold_ms: must be between 0 and 60000",
            "presence.map.bias_rate: must be between 0 and 1",
            "presence.map.bias_max_db: must be between 0 and 30",
        ]
    );
    let ConfigError::Parse { reason, .. } = with("evidence_wieght = 1.0").unwrap_err() else {
        panic!("an unknown key is a parse error")
    };
    assert!(reason.contains("evidence_wieght"), "{reason}");
    // The environment reaches the section like any other key.
    let c = load(MINIMAL_SITE, &[("GATEWAY__PRESENCE__MAP__SWITCH_P", "0.9")]).unwrap();
    assert_eq!(c.presence.map_tuning.switch_p, Some(0.9));
    // A knob is part of the configuration: another value, another hash.
    assert_ne!(with("switch_p = 0.9").unwrap().hash, none.hash);
}
