//! `gateway demo` as a new user runs it: no broker, no config, no radio.

use std::process::Command;
use std::time::Duration;

use e2e::{gateway_bin, spawn_guarded, wait_until_blocking};

#[test]
fn demo_prints_nudges_and_a_summary_and_stops_by_itself() {
    let out = Command::new(gateway_bin().unwrap())
        .args(["demo", "--for", "25s", "--speed", "25"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("📱 retail/demo-store/nudges/r-1001"),
        "{text}"
    );
    assert!(
        text.contains("Comparing laptops?") && text.contains("why: "),
        "{text}"
    );
    assert!(
        !text.contains("nudges/r-1002"),
        "no product_info consent, no nudge: {text}"
    );
    let summary = text
        .lines()
        .find(|l| l.starts_with("demo time is up"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(summary.contains("3 people recognised"), "{summary}");
    assert!(summary.contains("1 held back by caps"), "{summary}");
}

#[test]
fn demo_stops_cleanly_on_ctrl_c() {
    let mut cmd = Command::new(gateway_bin().unwrap());
    cmd.args(["demo", "--speed", "25"]);
    let mut demo = spawn_guarded(cmd).unwrap();
    wait_until_blocking(Duration::from_secs(40), || demo.stdout().contains("📱"))
        .unwrap_or_else(|e| panic!("{e}\n{}", demo.logs()));
    demo.signal(libc::SIGINT).unwrap();
    let status = demo.wait_exit(Duration::from_secs(15)).unwrap();
    assert!(status.success(), "{status:?}\n{}", demo.logs());
    assert!(demo.stdout().contains("demo stopped:"), "{}", demo.stdout());
}
