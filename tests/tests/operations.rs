//! Operating the gateway (issue "Ready for store IT"): reload without a
//! restart, metrics that move with the traffic, the shipped systemd unit.

use std::time::Duration;

use e2e::{Mosquitto, MosquittoOptions, Phone, PhoneOptions, Site, site};
use firmware_sim::{Scenario, Shopper, Simulation, Stop, StoreSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_valid_changes_live_and_refuses_bad_ones() -> anyhow::Result<()> {
    let broker = Mosquitto::start(MosquittoOptions::default())?;
    let mut site = Site::new(broker.port(), &site::laptop_site())?;
    let path = vec![
        Stop::new("entrance", 5),
        Stop::new("laptops", 40),
        Stop::new("headphones", 40),
        Stop::new("laptops", 40),
    ];
    let scenario = Scenario::new(3).with_shopper(
        Shopper::new(1, 3)
            .with_interests(&["laptops"])
            .with_path(path),
    );
    site.import_people(&scenario.people_jsonl())?;
    let mut gateway = site.start()?;
    let phone = Phone::connect(PhoneOptions::new(
        broker.port(),
        "phone",
        site.topic("nudges/r-1"),
    ))
    .await?;
    let status = Phone::connect(PhoneOptions::new(
        broker.port(),
        "ops",
        site.topic("gateway/status"),
    ))
    .await?;
    let first_hash =
        status.wait_for(1, Duration::from_secs(10)).await?[0].json()?["config_hash"].clone();
    let metric = |series: &str| site.metric(series).unwrap_or(0);

    let start = e2e::site::now_ms();
    let mut sim = Simulation::new(StoreSpec::small_store(), scenario, start, 3)?;
    site::send(sim.next_batch(start + 70_000), site.udp, 20.0).await?;
    let first = phone
        .wait_for(1, Duration::from_secs(20))
        .await
        .map_err(|e| e.context(gateway.logs()))?;
    assert_eq!(first[0].json()?["title"], "Comparing laptops?");

    // A half-written file is refused and the daemon carries on.
    let original = std::fs::read_to_string(&site.config_path)?;
    std::fs::write(&site.config_path, &original[..original.len() / 2])?;
    e2e::wait_until(Duration::from_secs(10), || {
        metric("gateway_config_reloads_total{result=\"refused\"}") >= 1
    })
    .await
    .map_err(|e| e.context(gateway.logs()))?;
    assert!(gateway.is_running());

    // The finished file, with a new title, applies without a restart.
    std::fs::write(
        &site.config_path,
        original.replace("Comparing laptops?", "Laptops side by side"),
    )?;
    e2e::wait_until(Duration::from_secs(10), || {
        metric("gateway_config_reloads_total{result=\"applied\"}") >= 1
    })
    .await
    .map_err(|e| e.context(gateway.logs()))?;
    site::send(sim.next_batch(start + 200_000), site.udp, 20.0).await?;
    let both = phone
        .wait_for(2, Duration::from_secs(20))
        .await
        .map_err(|e| e.context(gateway.logs()))?;
    assert_eq!(
        both[1].json()?["title"],
        "Laptops side by side",
        "the reload took effect; presence and outbox kept"
    );
    // The retained status names the configuration now in force.
    e2e::wait_until(Duration::from_secs(10), || {
        status.received().last().is_some_and(|m| {
            m.json()
                .map(|j| j["config_hash"] != first_hash && j["status"] == "online")
                .unwrap_or(false)
        })
    })
    .await?;

    // SIGHUP with an invalid value: refused by name, last good kept.
    std::fs::write(
        &site.config_path,
        original.replace("per_day = 5", "per_day = -5"),
    )?;
    gateway.signal(libc::SIGHUP)?;
    e2e::wait_until(Duration::from_secs(10), || {
        metric("gateway_config_reloads_total{result=\"refused\"}") >= 2
    })
    .await?;
    assert!(
        gateway.logs().contains("caps.per_day"),
        "the refusal names the field"
    );
    assert!(gateway.is_running());

    // `people import` left the snapshot the daemon started from: no scan.
    assert_eq!(metric("gateway_people_loads_total{source=\"snapshot\"}"), 1);
    assert_eq!(metric("gateway_people_loads_total{source=\"scan\"}"), 0);
    // Counters moved with the traffic.
    assert!(metric("gateway_sightings_total{source=\"udp\"}") > 100);
    assert!(metric("gateway_nudges_reserved_total{kind=\"compare\"}") >= 2);
    assert!(metric("gateway_nudges_acked_total") >= 2);
    assert_eq!(metric("gateway_mqtt_connected"), 1);
    assert_eq!(metric("gateway_outbox_depth"), 0);
    let ready = site.admin_get("/readyz")?;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    Ok(())
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let analyze = std::path::Path::new("/usr/bin/systemd-analyze");
    if !analyze.exists() {
        eprintln!("systemd-analyze is not installed here; the unit is not verified");
        return;
    }
    let dir = e2e::Workdir::new("unit").unwrap();
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/systemd/gateway.service"
    ))
    .unwrap();
    // Verify against the binary this build made, where the unit expects /usr/local/bin.
    let bin = e2e::gateway_bin().unwrap();
    let unit = unit.replace("/usr/local/bin/gateway", bin.to_str().unwrap());
    let path = dir.write("gateway.service", unit).unwrap();
    let out = std::process::Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Lines about the host's own units or a missing system bus are not ours.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("gateway.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

#[test]
fn every_metric_the_dashboard_charts_is_one_the_gateway_emits() {
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/gateway.json"
    ))
    .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut source = String::new();
    let mut dirs = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../gateway/src"
    ))];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                source.push_str(&std::fs::read_to_string(path).unwrap());
            }
        }
    }
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for panel in panels {
        let expr = panel["targets"][0]["expr"].as_str().unwrap();
        let name = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .find(|w| w.starts_with("gateway_"))
            .unwrap();
        // prometheus-client registers a counter without the `_total` it
        // exposes, a histogram in seconds without `_seconds` (and exposes
        // it as `_bucket` series).
        let short = name
            .trim_start_matches("gateway_")
            .trim_end_matches("_bucket")
            .trim_end_matches("_seconds")
            .trim_end_matches("_total");
        assert!(
            source.contains(&format!("\"{short}\"")),
            "the dashboard charts {name}, which the gateway never emits"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_and_retention_sweeps_old_decisions_on_simulated_time() -> anyhow::Result<()> {
    let broker = Mosquitto::start(MosquittoOptions::default())?;
    let extra = site::laptop_site()
        .replace("[presence]\n", "[retention]\ndays = 30\n\n[presence]\n")
        .replace(
            "max_future_skew_ms = 86400000",
            "max_future_skew_ms = 5184000000",
        );
    let mut site = Site::new(broker.port(), &extra)?;
    let visit = || {
        vec![
            Stop::new("entrance", 5),
            Stop::new("laptops", 40),
            Stop::new("entrance", 5),
        ]
    };
    let day = 86_400u32;
    let scenario = Scenario::new(4).with_shopper(
        Shopper::new(1, 4)
            .with_interests(&["laptops"])
            .with_path(visit())
            .returning_at(40 * day, visit()),
    );
    site.import_people(&scenario.people_jsonl())?;
    let gateway = site.start_with(&["--log-format", "json"])?;
    let phone = Phone::connect(PhoneOptions::new(
        broker.port(),
        "phone",
        site.topic("nudges/r-1"),
    ))
    .await?;
    let start = e2e::site::now_ms();
    // Only the shopper's adverts: forty days of store beacons are not the point.
    let mut spec = StoreSpec::small_store();
    spec.beacons.clear();
    let mut sim = Simulation::new(spec, scenario, start, 4)?;
    site::send(sim.next_batch(start + 90_000), site.udp, 20.0).await?;
    let first = phone
        .wait_for(1, Duration::from_secs(20))
        .await
        .map_err(|e| e.context(gateway.logs()))?;
    let first_id = first[0].json()?["id"].as_str().unwrap().to_string();

    // Forty days later (simulated): the next visit moves the clock, and the
    // hourly sweep removes the decision older than the 30-day window.
    let later = start + 40 * 86_400_000;
    let mut t = start + 90_000;
    while t < later + 90_000 {
        t = (t + 86_400_000).min(later + 90_000);
        site::send(sim.next_batch(t), site.udp, 20.0).await?;
    }
    phone
        .wait_for(2, Duration::from_secs(20))
        .await
        .map_err(|e| e.context(gateway.logs()))?;
    e2e::wait_until(Duration::from_secs(20), || {
        site.metric("gateway_retention_swept_total").unwrap_or(0) >= 1
    })
    .await?;
    for line in gateway.stderr().lines().filter(|l| !l.trim().is_empty()) {
        let json: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("not a JSON log line: {line}: {e}"))?;
        assert!(
            json["level"].is_string() && json["fields"].is_object(),
            "{line}"
        );
        assert!(
            !line.contains("p-1") && !line.contains("r-1"),
            "a person id in the clear: {line}"
        );
    }
    drop(gateway);
    let explain = site.cli(&["explain", &first_id])?;
    assert!(
        !explain.status.success(),
        "the 40-day-old decision was swept: {}",
        String::from_utf8_lossy(&explain.stdout)
    );
    let explain = site.cli(&["explain", "p-1"])?;
    assert_eq!(
        String::from_utf8_lossy(&explain.stdout)
            .matches("sent compare nudge")
            .count(),
        1,
        "only the recent one is left"
    );
    Ok(())
}
