//! The Grafana dashboard under `deploy/` charts what a running gateway's
//! `/metrics` really exposes: every metric name of every panel query is a
//! series of the scrape (OpenMetrics text from prometheus-client), and
//! the scrape is well-formed OpenMetrics (its content type, each family
//! described once, `# EOF` last).

use std::collections::BTreeSet;
use std::time::Duration;

use e2e::{Mosquitto, MosquittoOptions, Phone, Site, flood, site};

/// Every `gateway_…` name in the panel queries of the shipped dashboard
/// (rows and their nested panels included).
fn dashboard_metric_names() -> BTreeSet<String> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/gateway.json"
    ))
    .expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut exprs = Vec::new();
    let mut panels: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(panel) = panels.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            panels.extend(nested);
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                exprs.push(expr.to_string());
            }
        }
    }
    exprs
        .iter()
        .flat_map(|expr| {
            expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("gateway_"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_name_the_dashboard_queries_is_on_a_live_scrape() -> anyhow::Result<()> {
    let names = dashboard_metric_names();
    assert!(names.len() >= 15, "{names:?}");
    assert!(
        names.contains("gateway_sighting_to_puback_seconds_bucket"),
        "latency is charted from the histogram: {names:?}"
    );

    let broker = Mosquitto::start(MosquittoOptions::default())?;
    let mut site = Site::new(
        broker.port(),
        &[site::THREE_ZONES, flood::SCANNER_SOURCES].concat(),
    )?;
    site.import_people(&flood::people(1))?;
    let gateway = site.start()?;

    // Families with an open label set show once something happened: a
    // datagram that is no record (received, then refused) and a consent
    // change with a key nobody sends.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let sender = Phone::connect_to(broker.port(), "dashboard-test", "").await?;
    flood::wait_subscribed(&site, &sender)
        .await
        .map_err(|e| e.context(gateway.logs()))?;
    sender
        .publish(
            &site.topic("consent/r-1"),
            r#"{"junk": 1}"#,
            e2e::QoS::AtLeastOnce,
            false,
        )
        .await?;
    e2e::wait_until(Duration::from_secs(20), || {
        let _ = udp.send_to(b"not a record", site.udp);
        site.metric("gateway_sightings_rejected_total{source=\"udp\",field=\"record\"}")
            .unwrap_or(0)
            >= 1
            && site
                .metric("gateway_incoming_rejected_total{kind=\"consent\",field=\"unknown_field\"}")
                .unwrap_or(0)
                >= 1
    })
    .await
    .map_err(|e| e.context(gateway.logs()))?;

    let response = site.admin_get("/metrics")?;
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.lines().any(|l| l
            .to_ascii_lowercase()
            .starts_with("content-type: application/openmetrics-text; version=1.0.0")),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    let mut described: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let families = described.len();
    described.sort_unstable();
    described.dedup();
    assert_eq!(
        described.len(),
        families,
        "a family described twice:\n{body}"
    );

    let exposed: BTreeSet<&str> = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !exposed.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which /metrics does not expose:\n{body}"
    );
    Ok(())
}
