//! The gateway's MQTT session under attack and refusal (issue #18, finding
//! 1): somebody who knows the gateway's client id takes its session over
//! and unsubscribes its filters; a broker refuses one of its subscriptions.
//! The gateway must subscribe again on every connect, and a refused
//! subscription must show on `/readyz` and in the metrics.

use std::time::Duration;

use e2e::{Mosquitto, MosquittoOptions, Phone, PhoneOptions, QoS, Site, site};
use rumqttc::v5::mqttbytes::v5::{Packet, UnsubAckReason};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

const PERSON: &str =
    r#"{"person": "p-1", "recipient": "r-1", "consent": {"proximity": true, "offers": true}}"#;

fn metric(site: &Site, series: &str) -> u64 {
    site.metric(series).unwrap_or(0)
}

async fn wait_metric(site: &Site, series: &str, at_least: u64, gateway: &e2e::ChildGuard) {
    e2e::wait_until(Duration::from_secs(30), || metric(site, series) >= at_least)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{series} < {at_least} ({}): {e}\n{}",
                metric(site, series),
                gateway.logs()
            )
        });
}

/// Connects with `client_id`, resuming its session (clean start off, a
/// session that outlives the connection), unsubscribes `filters`, and drops
/// the connection. True once the broker acknowledged removing them: the
/// session the gateway will resume has lost its subscriptions.
async fn take_over_and_unsubscribe(port: u16, client_id: &str, filters: &[String]) -> bool {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(3600));
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    // Queued before the CONNECT goes out: they follow the CONNACK at once,
    // before the kicked gateway's backoff lets it back in.
    for filter in filters {
        let _ = client.try_unsubscribe(filter.clone());
    }
    let mut removed = 0;
    let outcome = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::UnsubAck(ack))) => {
                    if ack.reasons.iter().all(|r| *r == UnsubAckReason::Success) {
                        removed += 1;
                    }
                    if removed == filters.len() {
                        return true;
                    }
                }
                Ok(_) => {}
                // Kicked by the gateway coming back first: try again.
                Err(_) => return false,
            }
        }
    })
    .await;
    outcome.unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_session_takeover_the_gateway_subscribes_again_and_hears_a_withdrawal()
-> anyhow::Result<()> {
    // The harness broker does not tie client ids to user names: this is a
    // broker configured without the shipped `use_username_as_clientid`.
    let broker = Mosquitto::start(MosquittoOptions::default())?;
    let mut site = Site::new(broker.port(), &site::laptop_site())?;
    site.import_people(PERSON)?;
    let gateway = site.start()?;
    wait_metric(&site, "gateway_mqtt_connected", 1, &gateway).await;
    let app = Phone::connect(PhoneOptions::new(
        broker.port(),
        "app-r-1",
        site.topic("receipts/r-1"),
    ))
    .await?;

    let filters = vec![
        format!("{}/crm/people/+", site::PREFIX),
        site.topic("consent/+"),
        site.topic("checkin/+"),
        site.topic("feedback/+"),
        site.topic("purchases"),
    ];
    let client_id = format!("gateway-{}", site::STORE_ID);
    let mut attacked = false;
    for _ in 0..5 {
        let ups = metric(&site, "gateway_mqtt_connection_changes_total{state=\"up\"}");
        if take_over_and_unsubscribe(broker.port(), &client_id, &filters).await {
            attacked = true;
            // The gateway comes back into the emptied session.
            wait_metric(
                &site,
                "gateway_mqtt_connection_changes_total{state=\"up\"}",
                ups + 1,
                &gateway,
            )
            .await;
            break;
        }
    }
    assert!(attacked, "the takeover never got its unsubscribe in");
    assert!(
        broker.log().contains(&format!("as {client_id}")),
        "the gateway reconnected"
    );
    wait_metric(&site, "gateway_mqtt_connected", 1, &gateway).await;

    // The customer withdraws a purpose afterwards: the gateway must hear
    // it. The app sends again (same id) until it has a receipt, as a real
    // one does: a message sent before the gateway's new SUBSCRIBE reached
    // the broker is lost to it (why the shipped broker ties client ids to
    // user names, so this takeover cannot happen there).
    for _ in 0..15 {
        app.publish(
            &site.topic("consent/r-1"),
            br#"{"id": "c-after-takeover", "consent": {"offers": false}}"#.to_vec(),
            QoS::AtLeastOnce,
            false,
        )
        .await?;
        if app.wait_for(1, Duration::from_secs(1)).await.is_ok() {
            break;
        }
    }
    let receipts = app.wait_for(1, Duration::from_secs(1)).await.map_err(|e| {
        e.context(format!(
            "{}\n--- broker ---\n{}",
            gateway.logs(),
            broker.log()
        ))
    })?;
    assert_eq!(
        receipts[0].json()?,
        serde_json::json!({"id": "c-after-takeover", "status": "saved"})
    );
    assert_eq!(metric(&site, "gateway_mqtt_subscriptions_refused"), 0);
    assert!(metric(&site, "gateway_mqtt_subacks_total") >= 2);
    let ready = site.admin_get("/readyz")?;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    Ok(())
}

/// Mosquitto's dynamic-security plugin, which (unlike `acl_file` in
/// Mosquitto 2.0) answers a denied subscription with SUBACK 0x87.
fn dynsec_plugin() -> anyhow::Result<&'static str> {
    [
        "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
        "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
        "/usr/lib/mosquitto_dynamic_security.so",
        "/usr/local/lib/mosquitto_dynamic_security.so",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).is_file())
    .ok_or_else(|| anyhow::anyhow!("mosquitto_dynamic_security.so not found: run scripts/setup"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_subscription_makes_the_gateway_not_ready() -> anyhow::Result<()> {
    // Everything allowed, except subscribing to the store's consent topics.
    let dynsec = serde_json::json!({
        "defaultACLAccess": {
            "publishClientSend": true, "publishClientReceive": true,
            "subscribe": true, "unsubscribe": true
        },
        "clients": [],
        "groups": [{"groupname": "anonymous", "roles": [{"rolename": "no-consent"}]}],
        "roles": [{"rolename": "no-consent", "acls": [{
            "acltype": "subscribePattern",
            "topic": format!("{}/{}/consent/#", site::PREFIX, site::STORE_ID),
            "allow": false
        }]}],
        "anonymousGroup": "anonymous"
    });
    let broker = Mosquitto::start(
        MosquittoOptions::default()
            .file("dynsec.json", dynsec.to_string())
            .extra(format!("plugin {}", dynsec_plugin()?))
            .extra("plugin_opt_config_file {dir}/dynsec.json"),
    )?;
    let mut site = Site::new(broker.port(), &site::laptop_site())?;
    let gateway = site.start()?;
    wait_metric(&site, "gateway_mqtt_connected", 1, &gateway).await;
    wait_metric(
        &site,
        "gateway_mqtt_subscriptions_refused_total{kind=\"consent\"}",
        1,
        &gateway,
    )
    .await;
    assert_eq!(metric(&site, "gateway_mqtt_subscriptions_refused"), 1);
    let ready = site.admin_get("/readyz")?;
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(ready.contains("subscriptions_refused=consent"), "{ready}");
    // The label and the log name the kind, never the topic.
    let metrics = site.admin_get("/metrics")?;
    assert!(!metrics.contains("consent/+"), "{metrics}");
    assert!(
        gateway.stderr().contains("subscription refused"),
        "{}",
        gateway.logs()
    );
    Ok(())
}
