//! Self-test of the e2e harness: real Mosquitto, real MQTT v5 clients, real
//! child processes.

use std::process::Command;
use std::time::Duration;

use e2e::{
    ChildGuard, Mosquitto, MosquittoOptions, Phone, PhoneOptions, PublishProperties, QoS, Workdir,
    free_tcp_port, free_udp_port, spawn_guarded, wait_until, wait_until_blocking,
};

const T: Duration = Duration::from_secs(10);

fn expiry(secs: u32) -> PublishProperties {
    PublishProperties {
        message_expiry_interval: Some(secs),
        ..Default::default()
    }
}

/// Strict: kill(pid, 0) fails with ESRCH, i.e. the process is gone *and*
/// reaped. Right for our own children, which the guards reap.
fn esrch(pid: u32) -> bool {
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// For orphans (grandchildren, children of a crashed process), which someone
/// else reaps: gone or a zombie.
fn pid_alive(pid: u32) -> bool {
    // kill(pid, 0): 0 = exists, ESRCH = gone. A zombie (exited, not yet
    // reaped by whoever inherited it) counts as gone.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

#[test]
fn free_ports_are_bindable_and_not_1883() {
    let tcp = free_tcp_port().unwrap();
    let udp = free_udp_port().unwrap();
    assert_ne!(tcp, 1883);
    assert_ne!(tcp, 0);
    assert_ne!(udp, 0);
    std::net::TcpListener::bind(("127.0.0.1", tcp)).unwrap();
    std::net::UdpSocket::bind(("127.0.0.1", udp)).unwrap();
}

#[test]
fn workdir_writes_reads_and_cleans_up() {
    let wd = Workdir::new("selftest").unwrap();
    let path = wd.write("a/b.txt", "hello").unwrap();
    assert!(path.starts_with(wd.path()));
    assert_eq!(wd.read_to_string("a/b.txt").unwrap(), "hello");
    let root = wd.path().to_path_buf();
    drop(wd);
    assert!(!root.exists() || std::env::var_os("E2E_KEEP_TMP").is_some());
}

#[test]
fn broker_uses_its_own_config_port_and_log() {
    let broker = Mosquitto::start(MosquittoOptions::default().extra("max_keepalive 120")).unwrap();
    assert_ne!(broker.port(), 1883);
    assert_eq!(broker.url(), format!("mqtt://127.0.0.1:{}", broker.port()));
    let conf = std::fs::read_to_string(broker.config_path()).unwrap();
    assert!(conf.contains(&format!("listener {} 127.0.0.1", broker.port())));
    assert!(conf.contains("persistence true"));
    assert!(conf.contains("max_keepalive 120"));
    assert!(broker.config_path().starts_with(broker.dir()));
    assert!(broker.log_path().starts_with(broker.dir()));
    wait_until_blocking(T, || broker.log().contains("running")).expect("log shows running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_receives_qos1_with_message_expiry() {
    let broker = Mosquitto::start_default().unwrap();
    let phone = Phone::connect(PhoneOptions::new(broker.port(), "phone-1", "p/s1/nudges/+"))
        .await
        .unwrap();
    let sender = Phone::connect(PhoneOptions::new(broker.port(), "sender-1", ""))
        .await
        .unwrap();
    sender
        .publish_acked(
            "p/s1/nudges/alice",
            br#"{"id":"n1"}"#.to_vec(),
            false,
            expiry(300),
        )
        .await
        .unwrap();
    // Not matching the filter: must not arrive.
    sender
        .publish("p/s1/receipts/alice", "x", QoS::AtLeastOnce, false)
        .await
        .unwrap();

    let got = phone.wait_for(1, T).await.unwrap();
    assert_eq!(got[0].topic, "p/s1/nudges/alice");
    assert_eq!(got[0].json().unwrap()["id"], "n1");
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
    assert!(!got[0].retain);
    let exp = got[0].message_expiry_interval.expect("expiry kept");
    assert!((295..=300).contains(&exp), "expiry {exp}");

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(phone.received().len(), 1, "{:?}", phone.received());
    assert_eq!(phone.take_received().len(), 1);
    assert!(phone.received().is_empty());
    phone.stop().await.unwrap();
    sender.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_reaches_late_subscriber_with_retain_flag() {
    let broker = Mosquitto::start_default().unwrap();
    let sender = Phone::connect(PhoneOptions::new(broker.port(), "sender-r", ""))
        .await
        .unwrap();
    sender
        .publish_acked(
            "p/s1/gateway/status",
            "online",
            true,
            PublishProperties::default(),
        )
        .await
        .unwrap();
    let phone = Phone::connect(PhoneOptions::new(
        broker.port(),
        "ops",
        "p/s1/gateway/status",
    ))
    .await
    .unwrap();
    let got = phone.wait_for(1, T).await.unwrap();
    assert!(got[0].retain);
    assert_eq!(got[0].payload_str(), "online");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_survives_broker_crash() {
    let mut broker = Mosquitto::start_default().unwrap();
    let port = broker.port();
    let opts = PhoneOptions::new(port, "phone-persist", "p/s1/nudges/bob").persistent(600);

    // Phone subscribes with a persistent session, then goes away cleanly.
    let phone = Phone::connect(opts.clone()).await.unwrap();
    assert_eq!(phone.session_present_history(), vec![false]);
    phone.stop().await.unwrap();

    // A nudge is published while the phone is offline: queued for its session.
    let sender = Phone::connect(PhoneOptions::new(port, "sender-p", ""))
        .await
        .unwrap();
    let saves = broker.save_count();
    sender
        .publish_acked("p/s1/nudges/bob", "while-away", false, expiry(600))
        .await
        .unwrap();
    sender.stop().await.unwrap();
    broker.wait_saved_after(saves, T).unwrap();

    // Crash the broker (no chance to save), start it again on the same port.
    let old_pid = broker.pid().unwrap();
    broker.kill().unwrap();
    assert!(!broker.is_running());
    assert!(esrch(old_pid));
    broker.restart().unwrap();
    assert_eq!(broker.port(), port);

    // The phone comes back: the session and the queued message are there.
    let phone = Phone::connect(opts).await.unwrap();
    assert_eq!(phone.session_present_history(), vec![true]);
    let got = phone.wait_for(1, T).await.unwrap();
    assert_eq!(got[0].topic, "p/s1/nudges/bob");
    assert_eq!(got[0].payload_str(), "while-away");
    assert!(got[0].message_expiry_interval.is_some());
    phone.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_phone_reconnects_after_broker_restart() {
    let mut broker = Mosquitto::start_default().unwrap();
    let phone = Phone::connect(
        PhoneOptions::new(broker.port(), "phone-re", "p/s1/nudges/carol").persistent(600),
    )
    .await
    .unwrap();
    broker.restart().unwrap();
    phone.wait_connacks(2, T).await.unwrap();
    assert_eq!(phone.session_present_history(), vec![false, true]);
    assert!(phone.is_connected());
    assert!(!phone.errors().is_empty());

    let sender = Phone::connect(PhoneOptions::new(broker.port(), "sender-re", ""))
        .await
        .unwrap();
    sender
        .publish_acked("p/s1/nudges/carol", "after-restart", false, expiry(60))
        .await
        .unwrap();
    let got = phone.wait_for(1, T).await.unwrap();
    assert_eq!(got[0].payload_str(), "after-restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_connect_fails_fast_when_refused() {
    let broker = Mosquitto::start(MosquittoOptions::default().allow_anonymous(false)).unwrap();
    let started = std::time::Instant::now();
    let err = Phone::connect(PhoneOptions::new(broker.port(), "anon", "p/#"))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "{err:#}");
    assert!(format!("{err:#}").contains("could not connect"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_file_limits_delivery_to_own_topic() {
    // Mosquitto 2.0 grants the SUBSCRIBE but filters delivery by the ACL.
    let broker = Mosquitto::start(
        MosquittoOptions::default().acl("topic write p/s1/nudges/#\npattern read p/s1/nudges/%c\n"),
    )
    .unwrap();
    let port = broker.port();
    let alice = Phone::connect(PhoneOptions::new(port, "alice", "p/s1/nudges/alice"))
        .await
        .unwrap();
    let mallory = Phone::connect(PhoneOptions::new(port, "mallory", "p/s1/nudges/alice"))
        .await
        .unwrap();
    let sender = Phone::connect(PhoneOptions::new(port, "gateway", ""))
        .await
        .unwrap();
    sender
        .publish_acked("p/s1/nudges/alice", "for-alice", false, expiry(60))
        .await
        .unwrap();
    assert_eq!(
        alice.wait_for(1, T).await.unwrap()[0].payload_str(),
        "for-alice"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(mallory.received().is_empty(), "{:?}", mallory.received());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_file_users_and_credentials() {
    let broker = Mosquitto::start(
        MosquittoOptions::default()
            .allow_anonymous(false)
            .user("gw", "gw-secret")
            .user("app-alice", "alice-secret"),
    )
    .unwrap();
    let port = broker.port();
    let alice = Phone::connect(
        PhoneOptions::new(port, "alice", "p/s1/nudges/alice")
            .credentials("app-alice", "alice-secret"),
    )
    .await
    .unwrap();
    let gw = Phone::connect(PhoneOptions::new(port, "gw", "").credentials("gw", "gw-secret"))
        .await
        .unwrap();
    let wrong = Phone::connect(PhoneOptions::new(port, "bad", "").credentials("gw", "nope")).await;
    assert!(wrong.is_err());
    gw.publish_acked("p/s1/nudges/alice", "hi", false, expiry(60))
        .await
        .unwrap();
    let got = alice
        .expect_exactly(1, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(got[0].payload_str(), "hi");
}

#[test]
fn child_guard_kills_and_reaps_on_drop() {
    let mut cmd = Command::new("sleep");
    cmd.arg("60");
    let mut guard = spawn_guarded(cmd).unwrap();
    let pid = guard.pid();
    assert!(guard.is_running());
    assert!(pid_alive(pid));
    drop(guard);
    // Drop killed and reaped the child: no zombie left behind, the pid is gone.
    wait_until_blocking(Duration::from_secs(5), || esrch(pid)).unwrap();
}

#[test]
fn child_guard_captures_output_and_exit_status() {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("echo out-line; echo err-line >&2; exit 3");
    let mut guard = spawn_guarded(cmd).unwrap();
    let status = guard.wait_exit(T).unwrap();
    assert_eq!(status.code(), Some(3));
    assert_eq!(guard.stdout().trim(), "out-line");
    assert_eq!(guard.stderr().trim(), "err-line");
    let logs = guard.logs();
    assert!(
        logs.contains("out-line") && logs.contains("err-line"),
        "{logs}"
    );
}

#[test]
fn child_guard_feeds_stdin() {
    let mut guard = e2e::spawn_guarded_with_input(Command::new("cat"), "line 1\nline 2\n").unwrap();
    assert!(guard.wait_exit(T).unwrap().success());
    assert_eq!(guard.stdout(), "line 1\nline 2\n");
}

#[test]
fn child_guard_sigterm_then_wait() {
    let mut cmd = Command::new("sleep");
    cmd.arg("60");
    let mut guard: ChildGuard = spawn_guarded(cmd).unwrap();
    assert!(guard.wait_exit(Duration::from_millis(100)).is_err());
    guard.sigterm().unwrap();
    let status = guard.wait_exit(T).unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    assert!(!guard.is_running());
    // Signalling an exited child is a no-op, not an error.
    guard.sigkill().unwrap();
}

#[test]
fn child_guard_kills_the_whole_process_group() {
    // The shell's grandchild must die with the guard too.
    let wd = Workdir::new("pgrp").unwrap();
    let pidfile = wd.join("grandchild.pid");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("sleep 60 & echo $! > {}; wait", pidfile.display()));
    let guard = spawn_guarded(cmd).unwrap();
    wait_until_blocking(T, || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| s.trim().parse::<u32>().is_ok())
    })
    .unwrap();
    let grandchild: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(pid_alive(grandchild));
    drop(guard);
    // The grandchild is reaped by init (or a subreaper), so allow a moment.
    wait_until_blocking(T, || !pid_alive(grandchild)).unwrap();
}

#[test]
fn broker_process_is_gone_after_drop() {
    let broker = Mosquitto::start_default().unwrap();
    let pid = broker.pid().unwrap();
    let port = broker.port();
    drop(broker);
    assert!(esrch(pid), "mosquitto {pid} still exists after drop");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_until_is_bounded() {
    let start = std::time::Instant::now();
    assert!(
        wait_until(Duration::from_millis(100), || false)
            .await
            .is_err()
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    let mut n = 0;
    wait_until(T, || {
        n += 1;
        n > 3
    })
    .await
    .unwrap();
}

#[test]
fn missing_binary_error_names_the_script() {
    // Workspace binaries: either present (built by scripts/test) or a clear error.
    for r in [e2e::gateway_bin(), e2e::firmware_sim_bin()] {
        match r {
            Ok(p) => assert!(p.is_file()),
            Err(e) => assert!(format!("{e:#}").contains("scripts/test"), "{e:#}"),
        }
    }
}

/// Helper for `children_die_with_a_crashed_test_binary`: only acts when
/// started by that test (env var set); then starts a broker and a `sleep`,
/// writes their pids, and aborts without running any destructor.
#[test]
#[ignore = "helper, run by children_die_with_a_crashed_test_binary"]
fn crash_helper() {
    let Some(pidfile) = std::env::var_os("E2E_CRASH_HELPER_PIDFILE") else {
        return;
    };
    let broker = Mosquitto::start_default().unwrap();
    let mut cmd = Command::new("sleep");
    cmd.arg("60");
    let sleeper = spawn_guarded(cmd).unwrap();
    std::fs::write(
        &pidfile,
        format!("{} {}", broker.pid().unwrap(), sleeper.pid()),
    )
    .unwrap();
    std::process::abort();
}

#[test]
fn children_die_with_a_crashed_test_binary() {
    let wd = Workdir::new("crash").unwrap();
    let pidfile = wd.join("pids");
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--ignored", "--exact", "crash_helper", "--test-threads=1"])
        .env("E2E_CRASH_HELPER_PIDFILE", &pidfile)
        // The aborted helper cannot clean up its temp dirs: keep them in ours.
        .env("TMPDIR", wd.path());
    let mut helper = spawn_guarded(cmd).unwrap();
    let status = helper.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(!status.success(), "helper should abort: {}", helper.logs());
    let text = std::fs::read_to_string(&pidfile).unwrap();
    let pids: Vec<u32> = text
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "{text}");
    for pid in pids {
        wait_until_blocking(T, || !pid_alive(pid))
            .unwrap_or_else(|e| panic!("pid {pid} survived the crash: {e}"));
    }
}
