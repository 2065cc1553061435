//! The chain's broker side (deploy/chain, issue #21) on real brokers: a
//! central Mosquitto from `central.conf` + `central-acl` (TLS, one account
//! per store) and two store brokers from `deploy/mosquitto` with
//! `store-bridge.conf` appended, all three from the shipped text with only
//! ports, paths, store ids, the central address and the bridge passwords
//! rewritten (`e2e::chain`). What the gateways would publish is published
//! here by a client logged in with the gateway's account.

use std::time::Duration;

use e2e::chain::{CentralBroker, Pki, StoreBase, StoreBroker, puback_code};
use e2e::{Phone, PhoneOptions, Received};

const T: Duration = Duration::from_secs(15);
/// After the last expected message: time for an unexpected one to show up.
const SETTLE: Duration = Duration::from_millis(700);
const A: &str = "store-a";
const B: &str = "store-b";
const GW: (&str, &str) = ("gateway", "gw-secret");
const HA: (&str, &str) = ("homeassistant", "ha-secret");

fn bridge_password(store: &str) -> String {
    format!("bridge-{store}-secret")
}

fn topic(kind: &str, store: &str) -> String {
    format!("retail/chain/{kind}/{store}")
}

/// A CHAIN-SPEC decision entry.
fn decision(n: u32) -> String {
    format!(
        r#"{{"v":1,"person":"{n:032x}","kind":"info","rule":"laptop-dwell","at_ms":{},"nudge_id":"0193a5c2-0000-7000-8000-{n:012x}"}}"#,
        1_795_334_400_000u64 + u64::from(n)
    )
}

struct Chain {
    central: CentralBroker,
    stores: Vec<StoreBroker>,
}

/// The central broker and the two stores, both bridges subscribed.
fn chain() -> anyhow::Result<Chain> {
    let pki = Pki::generate()?;
    let accounts: Vec<(String, String)> = [A, B]
        .iter()
        .map(|s| (s.to_string(), bridge_password(s)))
        .collect();
    let central = CentralBroker::start(&pki, &accounts)?;
    let users = [GW, HA].map(|(u, p)| (u.to_string(), p.to_string()));
    let stores = [A, B]
        .iter()
        .map(|s| {
            StoreBroker::start(
                s,
                StoreBase::Shipped,
                central.port(),
                &bridge_password(s),
                &pki,
                &users,
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    central.wait_subscribed(&[A, B], 1, T)?;
    Ok(Chain { central, stores })
}

/// The gateway's account on a store broker: hears `retail/chain/#` and
/// publishes the store's own entries, as the gateway does.
async fn gateway(store: &StoreBroker) -> anyhow::Result<Phone> {
    Phone::connect(PhoneOptions::new(store.port(), GW.0, "retail/chain/#").credentials(GW.0, GW.1))
        .await
}

/// The store dashboard's account, reading the bridge's state.
async fn dashboard(store: &StoreBroker) -> anyhow::Result<Phone> {
    Phone::connect(
        PhoneOptions::new(store.port(), HA.0, store.notification_topic()).credentials(HA.0, HA.1),
    )
    .await
}

fn bridge_states(dashboard: &Phone) -> Vec<String> {
    dashboard
        .received()
        .iter()
        .map(Received::payload_str)
        .collect()
}

/// One QoS 1 publish on a store broker's loopback listener with
/// `mosquitto_pub` (MQTT v5): the PUBACK reason code.
fn publish_on_store(
    store: &StoreBroker,
    (user, password): (&str, &str),
    topic: &str,
    payload: &str,
) -> anyhow::Result<Option<u8>> {
    let out = std::process::Command::new("mosquitto_pub")
        .args(["-V", "5", "-q", "1", "-d", "-h", "127.0.0.1"])
        .args(["-p", &store.port().to_string()])
        .args([
            "-u", user, "-P", password, "-i", user, "-t", topic, "-m", payload,
        ])
        .output()?;
    Ok(puback_code(&String::from_utf8_lossy(&out.stdout)))
}

const OK: Option<u8> = Some(0x00);
const NOT_AUTHORIZED: Option<u8> = Some(0x87);

fn payloads(received: &[Received]) -> Vec<(String, String)> {
    received
        .iter()
        .map(|r| (r.topic.clone(), r.payload_str()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_posted_in_one_store_reaches_the_other_once_and_never_loops() -> anyhow::Result<()>
{
    let chain = chain()?;
    let (a, b) = (&chain.stores[0], &chain.stores[1]);
    // The store's own ACL: its gateway posts as its own store only (before
    // the gateway clients connect: mosquitto_pub logs in with the same
    // account, hence the same client id, and would take their session over).
    assert_eq!(
        publish_on_store(a, GW, &topic("decisions", B), &decision(99))?,
        NOT_AUTHORIZED
    );
    assert_eq!(
        publish_on_store(a, GW, &format!("retail/{B}/nudges/r-1"), "{}")?,
        NOT_AUTHORIZED
    );

    let gw_a = gateway(a).await?;
    let gw_b = gateway(b).await?;
    let dash_a = dashboard(a).await?;
    e2e::wait_until(T, || {
        bridge_states(&dash_a).last().map(String::as_str) == Some("1")
    })
    .await?;

    // Each kind of entry, each way.
    let entries = [
        (A, topic("decisions", A), decision(1)),
        (
            A,
            topic("erasures", A),
            format!(
                r#"{{"v":1,"person":"{:032x}","erased_at_ms":1795334400123}}"#,
                2
            ),
        ),
        (
            B,
            topic("consent", B),
            format!(
                r#"{{"v":1,"person":"{:032x}","consent":{{"offers":false}},"at_ms":1795334400123}}"#,
                3
            ),
        ),
    ];
    for (from, topic, payload) in &entries {
        let gw = if *from == A { &gw_a } else { &gw_b };
        gw.publish_acked(
            topic,
            payload.as_bytes().to_vec(),
            false,
            Default::default(),
        )
        .await?;
    }
    gw_a.wait_for(3, T).await?;
    gw_b.wait_for(3, T).await?;
    tokio::time::sleep(SETTLE).await;
    let expected: Vec<(String, String)> = entries
        .iter()
        .map(|(_, t, p)| (t.clone(), p.clone()))
        .collect();
    // Every store hears every entry exactly once: its own locally, the
    // other's over the central broker; nothing comes back over the bridge
    // it left by, and no forged entry got through.
    let mut heard_a = payloads(&gw_a.received());
    let mut heard_b = payloads(&gw_b.received());
    heard_a.sort();
    heard_b.sort();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(heard_a, expected_sorted, "store A");
    assert_eq!(heard_b, expected_sorted, "store B");
    // Nothing of the stores' own topics crossed: the central broker saw
    // only the three entries.
    let central_log = chain.central.log();
    let relayed = central_log
        .lines()
        .filter(|l| l.contains("Received PUBLISH from store-"))
        .count();
    assert_eq!(relayed, 3, "{central_log}");
    assert!(!central_log.contains("Denied"), "{central_log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_central_acl_refuses_a_store_posting_as_another() -> anyhow::Result<()> {
    let chain = chain()?;
    let b = &chain.stores[1];
    let gw_b = gateway(b).await?;
    let a_password = bridge_password(A);
    let as_a = (A, a_password.as_str());
    // Store A's bridge account, straight at the central broker: it may not
    // post as B, nor anywhere outside the chain's topics ...
    assert_eq!(
        chain
            .central
            .publish(as_a, &topic("decisions", B), decision(1).as_bytes())?,
        NOT_AUTHORIZED
    );
    assert_eq!(
        chain
            .central
            .publish(as_a, "retail/chain/decisions", decision(2).as_bytes())?,
        NOT_AUTHORIZED
    );
    assert_eq!(
        chain
            .central
            .publish(as_a, &format!("retail/{B}/nudges/r-1"), b"{}")?,
        NOT_AUTHORIZED
    );
    // ... a wrong password is refused outright ...
    assert_eq!(
        chain
            .central
            .publish((A, "guess"), &topic("decisions", A), decision(3).as_bytes())?,
        None
    );
    // ... and its own topic is fine, and reaches B: sent after the refused
    // ones on the same path, so they would have arrived first.
    assert_eq!(
        chain
            .central
            .publish(as_a, &topic("decisions", A), decision(4).as_bytes())?,
        OK
    );
    gw_b.wait_for(1, T).await?;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        payloads(&gw_b.received()),
        vec![(topic("decisions", A), decision(4))]
    );
    let log = chain.central.log();
    assert_eq!(
        log.matches("Denied PUBLISH from store-a").count(),
        3,
        "{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_posted_while_the_central_broker_is_down_arrive_after_it_is_back()
-> anyhow::Result<()> {
    let mut chain = chain()?;
    let gw_a = gateway(&chain.stores[0]).await?;
    let gw_b = gateway(&chain.stores[1]).await?;
    let dash_a = dashboard(&chain.stores[0]).await?;
    e2e::wait_until(T, || {
        bridge_states(&dash_a).last().map(String::as_str) == Some("1")
    })
    .await?;

    chain.central.stop()?;
    // The store's dashboard sees the uplink down.
    e2e::wait_until(T, || {
        bridge_states(&dash_a).last().map(String::as_str) == Some("0")
    })
    .await
    .map_err(|e| e.context(format!("bridge states {:?}", bridge_states(&dash_a))))?;
    // Each store keeps deciding and posting: its broker acknowledges and
    // queues the entries for the bridge.
    gw_a.publish_acked(
        &topic("decisions", A),
        decision(1),
        false,
        Default::default(),
    )
    .await?;
    gw_b.publish_acked(
        &topic("decisions", B),
        decision(2),
        false,
        Default::default(),
    )
    .await?;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        payloads(&gw_a.received()),
        vec![(topic("decisions", A), decision(1))]
    );
    assert_eq!(
        payloads(&gw_b.received()),
        vec![(topic("decisions", B), decision(2))]
    );

    chain.central.start_again()?;
    // Both bridges come back by themselves (restart_timeout), resume their
    // sessions and deliver what was queued on each side.
    gw_a.wait_for(2, Duration::from_secs(60)).await?;
    gw_b.wait_for(2, Duration::from_secs(60)).await?;
    e2e::wait_until(T, || {
        bridge_states(&dash_a).last().map(String::as_str) == Some("1")
    })
    .await?;
    tokio::time::sleep(SETTLE).await;
    let heard_a = payloads(&gw_a.received());
    let heard_b = payloads(&gw_b.received());
    // At least once (QoS 1): a copy may come twice after a reconnect, never
    // a different one; the gateway folds an entry once by its nudge_id.
    assert!(
        heard_a.contains(&(topic("decisions", B), decision(2))),
        "{heard_a:?}"
    );
    assert!(
        heard_b.contains(&(topic("decisions", A), decision(1))),
        "{heard_b:?}"
    );
    for heard in [&heard_a, &heard_b] {
        assert!(
            heard.iter().all(|h| [
                (topic("decisions", A), decision(1)),
                (topic("decisions", B), decision(2))
            ]
            .contains(h)),
            "{heard:?}"
        );
    }
    eprintln!(
        "after the cut: store A heard {} entries, store B {}",
        heard_a.len(),
        heard_b.len()
    );
    Ok(())
}
