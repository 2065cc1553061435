//! The shipped broker configuration (deploy/mosquitto) against hostile
//! phones and nodes (issue #18, findings 6 and 9), on a real Mosquitto
//! started from a temp copy of the shipped files: only the ports, the file
//! paths and nothing else are rewritten. Refusals are read off the MQTT v5
//! reason codes `mosquitto_pub -d` prints (rumqttc 0.25 cannot parse PUBACK
//! 0x95 "packet too large").

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use e2e::{ChildGuard, Phone, PhoneOptions, QoS, Workdir, spawn_guarded_in, wait_until};

const CONF: &str = include_str!("../../deploy/mosquitto/mosquitto.conf");
const ACL: &str = include_str!("../../deploy/mosquitto/acl");
const EXAMPLE_SITE: &str = include_str!("../../config/example-site.toml");
/// The prefix and store the shipped ACL and example site name.
const STORE: &str = "retail/store-042";
const T: Duration = Duration::from_secs(10);

fn topic(rest: &str) -> String {
    format!("{STORE}/{rest}")
}

/// Mosquitto from the shipped config: the loopback listener (where the
/// gateway and these tests connect) and the TLS listener on free ports.
struct ShippedBroker {
    port: u16,
    child: ChildGuard,
    dir: Workdir,
}

impl ShippedBroker {
    fn start(users: &[(&str, &str)]) -> anyhow::Result<ShippedBroker> {
        let dir = Workdir::new("shipped-mosquitto")?;
        let (port, tls_port) = (e2e::free_tcp_port()?, e2e::free_tcp_port()?);
        let etc = format!("{}/", dir.path().display());
        assert!(CONF.contains("listener 1883 127.0.0.1\n") && CONF.contains("listener 8883\n"));
        let conf = CONF
            .replace("/etc/mosquitto/gateway/", &etc)
            .replace("/var/lib/mosquitto/", &etc)
            .replace(
                "listener 1883 127.0.0.1\n",
                &format!("listener {port} 127.0.0.1\n"),
            )
            .replace(
                "listener 8883\n",
                &format!("listener {tls_port} 127.0.0.1\n"),
            );
        // Running as root here: stay root so the temp dir stays writable.
        let conf = format!(
            "user root\nlog_dest file {etc}mosquitto.log\nlog_type all\nconnection_messages true\n{conf}"
        );
        dir.write("mosquitto.conf", &conf)?;
        dir.write("acl", ACL)?;
        let e2e::Pki { ca, cert, key, .. } = e2e::Pki::generate()?;
        dir.write("ca.crt", ca)?;
        dir.write("server.crt", cert)?;
        dir.write("server.key", key)?;
        let passwd = dir.join("passwords");
        for (i, (user, password)) in users.iter().enumerate() {
            let mut cmd = Command::new("mosquitto_passwd");
            if i == 0 {
                cmd.arg("-c");
            }
            let out = cmd.arg("-b").arg(&passwd).args([user, password]).output()?;
            anyhow::ensure!(out.status.success(), "mosquitto_passwd {user}: {out:?}");
        }
        let mut cmd = Command::new(e2e::mosquitto::mosquitto_bin()?);
        cmd.arg("-c").arg(dir.join("mosquitto.conf"));
        let child = spawn_guarded_in(cmd, dir.path(), "mosquitto")?;
        let broker = ShippedBroker { port, child, dir };
        e2e::wait_until_blocking(T, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_ok()
        })
        .map_err(|e| e.context(format!("{}\n{}", broker.log(), broker.child.logs())))?;
        // Only the two listeners: no default one on 1883 on every address.
        let log = broker.log();
        let sockets: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("listen socket"))
            .collect();
        assert_eq!(sockets.len(), 2, "{log}");
        assert!(
            sockets.iter().all(|l| l.ends_with(&format!("port {port}."))
                || l.ends_with(&format!("port {tls_port}."))),
            "{log}"
        );
        Ok(broker)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    fn phone(&self, user: &str, password: &str, client_id: &str) -> PhoneOptions {
        PhoneOptions::new(self.port, client_id, "").credentials(user, password)
    }

    /// One QoS 1 publish with `mosquitto_pub` (a real client, protocol v5);
    /// returns the PUBACK reason code, or None without a PUBACK.
    fn publish(
        &self,
        (user, password): (&str, &str),
        client_id: &str,
        topic: &str,
        payload: &[u8],
        retain: bool,
    ) -> anyhow::Result<Option<u8>> {
        let file = self.dir.write("payload", payload)?;
        let mut cmd = Command::new("mosquitto_pub");
        cmd.args(["-V", "5", "-q", "1", "-d", "-h", "127.0.0.1"])
            .args(["-p", &self.port.to_string()])
            .args(["-u", user, "-P", password, "-i", client_id, "-t", topic])
            .arg("-f")
            .arg(&file);
        if retain {
            cmd.arg("-r");
        }
        let out = cmd.output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .split("received PUBACK")
            .nth(1)
            .and_then(|rest| rest.split("RC:").nth(1))
            .and_then(|rc| rc.split(')').next())
            .and_then(|rc| rc.trim().parse().ok()))
    }
}

impl Drop for ShippedBroker {
    fn drop(&mut self) {
        let _ = self.child.stop(Duration::from_millis(500));
        if std::thread::panicking() {
            eprintln!("--- shipped mosquitto log ---\n{}", self.log());
        }
    }
}

const OK: Option<u8> = Some(0x00);
const NO_SUBSCRIBERS: Option<u8> = Some(0x10);
const NOT_AUTHORIZED: Option<u8> = Some(0x87);
const TOO_LARGE: Option<u8> = Some(0x95);

const GW: (&str, &str) = ("gateway", "gw-secret");
const A: (&str, &str) = ("r-1", "phone-a-secret");
const B: (&str, &str) = ("r-2", "phone-b-secret");
const CRM: (&str, &str) = ("crm", "crm-secret");
const TILL: (&str, &str) = ("till", "till-secret");
const SCANNER: (&str, &str) = ("laptops", "scanner-secret");

fn topics_of(phone: &Phone) -> BTreeSet<String> {
    phone.received().iter().map(|r| r.topic.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_broker_refuses_what_phones_and_nodes_must_not_do() -> anyhow::Result<()> {
    let broker = ShippedBroker::start(&[GW, A, B, CRM, TILL, SCANNER])?;
    // Stands in for the gateway: its account, its subscriptions.
    let gw = Phone::connect(
        broker
            .phone(GW.0, GW.1, "gateway")
            .filter(topic("consent/+"))
            .filter(topic("scanners/+"))
            .filter(topic("purchases"))
            .filter("retail/crm/people/+")
            .max_packet_size(64 * 1024),
    )
    .await?;
    let phone_b = Phone::connect(broker.phone(B.0, B.1, "r-2").filter(topic("nudges/r-2"))).await?;
    // A asks for B's nudges and receipts too: Mosquitto's acl_file grants
    // the subscription and then delivers nothing on it.
    let phone_a = Phone::connect(
        broker
            .phone(A.0, A.1, "r-1")
            .filter(topic("nudges/r-1"))
            .filter(topic("nudges/r-2"))
            .filter(topic("receipts/r-2")),
    )
    .await?;

    // Nudges: each phone reads its own only.
    gw.publish_acked(
        &topic("nudges/r-2"),
        b"for B".to_vec(),
        false,
        Default::default(),
    )
    .await?;
    gw.publish_acked(
        &topic("nudges/r-1"),
        b"for A".to_vec(),
        false,
        Default::default(),
    )
    .await?;
    phone_b.wait_for(1, T).await?;
    phone_a.wait_for(1, T).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(topics_of(&phone_a), BTreeSet::from([topic("nudges/r-1")]));
    assert_eq!(topics_of(&phone_b), BTreeSet::from([topic("nudges/r-2")]));

    // Consent: A writes its own, not B's.
    let consent = br#"{"id": "c-1", "forget": true}"#;
    assert_eq!(
        broker.publish(A, "r-1", &topic("consent/r-2"), consent, false)?,
        NOT_AUTHORIZED
    );
    assert_eq!(
        broker.publish(A, "r-1", &topic("consent/r-1"), consent, false)?,
        OK
    );
    // Size: one byte over 16 KiB is refused; the CRM's largest record fits.
    let big = vec![b' '; 16 * 1024 + 1];
    assert_eq!(
        broker.publish(A, "r-1", &topic("checkin/r-1"), &big, false)?,
        TOO_LARGE
    );
    assert_eq!(
        broker.publish(A, "r-1", &topic("consent/r-1"), &big, false)?,
        TOO_LARGE
    );
    assert_eq!(
        broker.publish(CRM, "crm", "retail/crm/people/p-big", &big[1..], true)?,
        OK
    );
    // Scanner nodes: each posts as itself only.
    let record = b"{}";
    assert_eq!(
        broker.publish(
            SCANNER,
            "laptops",
            &topic("scanners/entrance"),
            record,
            false
        )?,
        NOT_AUTHORIZED
    );
    assert_eq!(
        broker.publish(
            SCANNER,
            "laptops",
            &topic("scanners/laptops"),
            record,
            false
        )?,
        OK
    );
    // Nobody but the till writes purchases.
    assert_eq!(
        broker.publish(A, "r-1", &topic("purchases"), b"{}", false)?,
        NOT_AUTHORIZED
    );
    assert_eq!(
        broker.publish(TILL, "till", &topic("purchases"), b"{}", false)?,
        OK
    );
    // A phone may set the retain flag (Mosquitto has no per-user switch);
    // the gateway's side of that is the next test.
    assert_eq!(
        broker.publish(A, "r-1", &topic("feedback/r-1"), b"{}", true)?,
        NO_SUBSCRIBERS
    );

    wait_until(T, || gw.received().len() >= 4).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let heard = gw.received();
    assert_eq!(
        heard.iter().map(|r| r.topic.clone()).collect::<Vec<_>>(),
        [
            topic("consent/r-1"),
            "retail/crm/people/p-big".to_string(),
            topic("scanners/laptops"),
            topic("purchases"),
        ],
        "only what each account may write reaches the gateway"
    );
    assert_eq!(heard[1].payload.len(), 16 * 1024);

    // Client ids: A logs in under the gateway's id and under B's; the broker
    // gives A its own user name as id, so neither is kicked.
    let (gw_connacks, b_connacks) = (gw.connack_count(), phone_b.connack_count());
    for id in ["gateway", "r-2"] {
        assert_eq!(
            broker.publish(A, id, &topic("checkin/r-1"), b"{}", false)?,
            NO_SUBSCRIBERS
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(gw.is_connected() && phone_b.is_connected());
    assert_eq!(
        (gw.connack_count(), phone_b.connack_count()),
        (gw_connacks, b_connacks),
        "nobody was kicked: {:?} {:?}",
        gw.errors(),
        phone_b.errors()
    );
    let log = broker.log();
    assert!(!log.contains("as gateway (p5, c1, k60, u'r-1')"), "{log}");
    assert!(log.contains("u'r-1'"), "{log}");
    Ok(())
}

/// A gateway site made from the shipped example, pointed at `broker`, with
/// the password where the shipped systemd unit puts it: a credential.
struct ExampleSite {
    dir: Workdir,
    config: std::path::PathBuf,
    admin: std::net::SocketAddr,
}

impl ExampleSite {
    fn new(broker_port: u16, password_mode: u32) -> anyhow::Result<ExampleSite> {
        use std::os::unix::fs::PermissionsExt;
        let dir = Workdir::new("example-site")?;
        let admin: std::net::SocketAddr = format!("127.0.0.1:{}", e2e::free_tcp_port()?).parse()?;
        let udp = e2e::free_udp_port()?;
        for default in ["127.0.0.1:1883", "127.0.0.1:7531", "127.0.0.1:9464"] {
            assert!(EXAMPLE_SITE.contains(default), "{default}");
        }
        let text = EXAMPLE_SITE
            .replace("127.0.0.1:1883", &format!("127.0.0.1:{broker_port}"))
            .replace("127.0.0.1:7531", &format!("127.0.0.1:{udp}"))
            .replace("127.0.0.1:9464", &admin.to_string());
        let config = dir.write("site.toml", text)?;
        let password = dir.write("credentials/mqtt-password", format!("{}\n", GW.1))?;
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(password_mode))?;
        Ok(ExampleSite { dir, config, admin })
    }

    /// The environment the shipped unit gives the gateway.
    fn command(&self, args: &[&str]) -> anyhow::Result<Command> {
        let mut cmd = Command::new(e2e::gateway_bin()?);
        cmd.arg("--config")
            .arg(&self.config)
            .args(args)
            .env("GATEWAY_LOG", "info,rumqttc=warn")
            .env("GATEWAY__STORAGE__PATH", self.dir.join("db"))
            .env("GATEWAY__MQTT__USERNAME", "gateway")
            .env("GATEWAY__MQTT__PASSWORD_CREDENTIAL", "mqtt-password")
            .env("CREDENTIALS_DIRECTORY", self.dir.join("credentials"));
        Ok(cmd)
    }

    fn start(&self) -> anyhow::Result<ChildGuard> {
        let guard = spawn_guarded_in(self.command(&["run"])?, self.dir.path(), "gateway")?;
        e2e::wait_until_blocking(Duration::from_secs(20), || {
            guard.stderr().contains("gateway running")
        })
        .map_err(|e| e.context(guard.logs()))?;
        anyhow::ensure!(
            !guard.stderr().contains('\x1b'),
            "terminal escape codes in a log written to a file:\n{}",
            guard.logs()
        );
        Ok(guard)
    }

    fn admin_get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect_timeout(&self.admin, T) else {
            return String::new();
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        text
    }

    fn metric(&self, series: &str) -> u64 {
        self.admin_get("/metrics")
            .lines()
            .filter_map(|l| {
                l.strip_prefix(series)
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .sum()
    }
}

fn no_secret_in(text: &str) {
    for (_, secret) in [GW, A] {
        assert!(!text.contains(secret), "a password in the output:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_site_runs_against_the_shipped_broker_and_ignores_a_retained_request()
-> anyhow::Result<()> {
    let broker = ShippedBroker::start(&[GW, A])?;
    let site = ExampleSite::new(broker.port, 0o600)?;
    let people = site.dir.write(
        "people.jsonl",
        r#"{"person": "p-1", "recipient": "r-1", "consent": {"proximity": true, "offers": true}}"#,
    )?;
    let import = site
        .command(&["people", "import", people.to_str().unwrap()])?
        .output()?;
    assert!(import.status.success(), "{import:?}");
    let app = Phone::connect(broker.phone(A.0, A.1, "r-1").filter(topic("receipts/r-1"))).await?;

    // Before the gateway ever subscribed, the phone leaves a consent change
    // retained. Old gateways subscribed with retained copies and acted on it
    // (and on every fresh session after).
    assert_eq!(
        broker.publish(
            A,
            "r-1",
            &topic("consent/r-1"),
            br#"{"id": "c-retained", "consent": {"offers": false}}"#,
            true,
        )?,
        NO_SUBSCRIBERS
    );
    let gateway = site.start()?;
    wait_until(Duration::from_secs(20), || {
        site.metric("gateway_mqtt_subacks_total") >= 1
            && site.admin_get("/readyz").starts_with("HTTP/1.1 200")
    })
    .await
    .map_err(|e| e.context(gateway.logs()))?;
    let log = broker.log();
    assert!(
        log.contains("as gateway (") && log.contains("u'gateway'"),
        "{log}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(app.received().is_empty(), "{:?}", app.received());
    assert_eq!(site.metric("gateway_incoming_total{kind=\"consent\"}"), 0);

    // A change sent now is heard, and receipted.
    app.publish(
        &topic("consent/r-1"),
        br#"{"id": "c-live", "consent": {"offers": false}}"#.to_vec(),
        QoS::AtLeastOnce,
        false,
    )
    .await?;
    let receipts = app
        .wait_for(1, T)
        .await
        .map_err(|e| e.context(gateway.logs()))?;
    assert_eq!(
        receipts[0].json()?,
        serde_json::json!({"id": "c-live", "status": "saved"})
    );
    assert_eq!(site.metric("gateway_mqtt_subscriptions_refused"), 0);
    assert_eq!(site.metric("gateway_secret_files_exposed_total"), 0);
    no_secret_in(&gateway.logs());
    let shown = site.command(&["config", "show"])?.output()?;
    assert!(shown.status.success(), "{shown:?}");
    no_secret_in(&String::from_utf8_lossy(&shown.stdout));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_file_others_can_read_is_warned_about() -> anyhow::Result<()> {
    let broker = ShippedBroker::start(&[GW])?;
    let site = ExampleSite::new(broker.port, 0o644)?;
    let gateway = site.start()?;
    wait_until(Duration::from_secs(20), || {
        site.metric("gateway_secret_files_exposed_total{field=\"mqtt.password_file\"}") == 1
    })
    .await
    .map_err(|e| e.context(gateway.logs()))?;
    assert!(
        gateway.stderr().contains("readable by group or others"),
        "{}",
        gateway.logs()
    );
    // Still connects: a warning, not a refusal.
    wait_until(T, || site.metric("gateway_mqtt_connected") == 1).await?;
    no_secret_in(&gateway.logs());
    Ok(())
}

/// A password in the URL (`mqtt://user:pass@host`, no port) is refused
/// without echoing it, by `check-config` and by `run`.
#[test]
fn a_password_in_the_url_never_reaches_the_output() -> anyhow::Result<()> {
    let dir = Workdir::new("url-secret")?;
    let text = EXAMPLE_SITE.replace(
        "url = \"mqtt://127.0.0.1:1883\"",
        "url = \"mqtt://gateway:hunter2-in-url@127.0.0.1\"",
    );
    assert_ne!(text, EXAMPLE_SITE);
    let site = dir.write("site.toml", text)?;
    for (i, args) in [
        vec!["check-config", site.to_str().unwrap()],
        vec!["--config", site.to_str().unwrap(), "config", "show"],
        vec!["--config", site.to_str().unwrap(), "run"],
    ]
    .into_iter()
    .enumerate()
    {
        let mut cmd = Command::new(e2e::gateway_bin()?);
        cmd.args(&args)
            .env("GATEWAY__STORAGE__PATH", dir.join("db"));
        // Guarded and bounded: a `run` that wrongly starts is stopped.
        let mut child = spawn_guarded_in(cmd, dir.path(), &format!("gateway-{i}"))?;
        let status = child.wait_exit(T);
        let all = child.logs();
        assert!(status.is_ok_and(|s| !s.success()), "{args:?}: {all}");
        assert!(all.contains("mqtt.url"), "{args:?}: {all}");
        assert!(!all.contains("hunter2"), "{args:?}: {all}");
    }
    Ok(())
}
