//! The `gateway` command line as a user runs it: exit codes, one-line
//! errors that name the file, line and field, and nothing half-applied.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use e2e::{Site, Workdir, gateway_bin};

fn gateway(args: &[&str]) -> Output {
    Command::new(gateway_bin().unwrap())
        .args(args)
        .env("GATEWAY_LOG", "warn")
        .output()
        .unwrap()
}

fn firmware_sim(args: &[&str]) -> Output {
    Command::new(e2e::firmware_sim_bin().unwrap())
        .args(args)
        .output()
        .unwrap()
}

/// A five-minute capture of the twin's small store (seed 3) and its
/// truth, written into `dir`.
fn twin_capture(dir: &Workdir, extra: &[&str]) -> (PathBuf, PathBuf) {
    let (capture, truth) = (dir.join("capture.jsonl"), dir.join("truth.jsonl"));
    let mut args = vec![
        "capture",
        "--seed",
        "3",
        "--duration",
        "5m",
        "--out",
        capture.to_str().unwrap(),
        "--truth",
        truth.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = firmware_sim(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    (capture, truth)
}

/// `gateway --config site eval-presence` of a capture against its truth.
fn eval_presence(site: &Path, capture: &Path, truth: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "--config",
        site.to_str().unwrap(),
        "eval-presence",
        "--capture",
        capture.to_str().unwrap(),
        "--truth",
        truth.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    gateway(&args)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const PEOPLE: &str = r#"{"person": "p-1001", "recipient": "r-5f2c9a", "timezone": null, "identities": [{"kind": "app", "key": "75c734c6dd1a782de7a965da5eb93125"}, {"kind": "email", "value": "ana@example.com"}], "consent": {"proximity": true, "product_info": true, "offers": false, "thanks": true, "feedback": true}, "interests": ["laptops", "headphones"], "owns": ["phone:pixel-8"]}
{"person": "p-1002", "recipient": "r-2", "identities": [{"kind": "app", "key": "75c7"}]}
{"person": "p-1003", "recipient": "r-3", "consent": {"proximity": true}}
"#;

#[test]
fn check_config_accepts_the_example_and_names_every_bad_field() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/example-site.toml");
    let ok = gateway(&["check-config", example]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(
        stdout(&ok).contains("ok (store store-042"),
        "{}",
        stdout(&ok)
    );

    let dir = Workdir::new("cli").unwrap();
    let text = std::fs::read_to_string(example)
        .unwrap()
        .replace("dwell_s = 20", "dwell_s = 0")
        .replace("Europe/Berlin", "Europe/Nowhere");
    let bad = dir.write("bad.toml", text).unwrap();
    let out = gateway(&["check-config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("bad.toml")
            && err.contains("rules[0].dwell_s: must be >= 1")
            && err.contains("store.timezone"),
        "{err}"
    );

    let unknown = dir
        .write("unknown.toml", "[store]\nid = \"s\"\ncolour = \"red\"\n")
        .unwrap();
    let out = gateway(&["check-config", unknown.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("unknown field `colour`"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        stderr(&out).lines().count(),
        1,
        "one line: {}",
        stderr(&out)
    );
}

#[test]
fn import_is_all_or_nothing_unless_partial_and_people_commands_work() {
    let site = Site::new(1, "").unwrap(); // no broker needed for these commands
    let file = site.dir.write("people.jsonl", PEOPLE).unwrap();
    let file = file.to_str().unwrap();

    let out = site.cli(&["people", "import", file]).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("people.jsonl:2: identities[0].key: must be 16 bytes"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("nothing imported"));
    let show = site.cli(&["people", "show", "p-1001"]).unwrap();
    assert!(!show.status.success(), "a refused import changes nothing");

    let out = site.cli(&["people", "import", "--partial", file]).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("imported 2 person record(s)"),
        "{}",
        stdout(&out)
    );

    let show = site.cli(&["people", "show", "p-1001"]).unwrap();
    assert!(show.status.success());
    assert!(stdout(&show).contains("ana@example.com"));
    let export = site.cli(&["people", "export", "p-1001"]).unwrap();
    let export: serde_json::Value = serde_json::from_slice(&export.stdout).unwrap();
    assert_eq!(export["person"]["recipient"], "r-5f2c9a");

    let forget = site.cli(&["people", "forget", "p-1001"]).unwrap();
    assert!(forget.status.success(), "{}", stderr(&forget));
    assert!(
        !site
            .cli(&["people", "show", "p-1001"])
            .unwrap()
            .status
            .success()
    );
    assert!(
        site.cli(&["people", "show", "p-1003"])
            .unwrap()
            .status
            .success(),
        "others are kept"
    );
}

#[test]
fn decode_follows_design_section_8() {
    let out = gateway(&[
        "decode",
        "0201061aff4c000215426c7565436861726d426561636f6e730efe1355c5",
    ]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["frames"][0]["major"], 3838);

    for bad in ["zz01", "05ff"] {
        let out = gateway(&["decode", bad]);
        assert!(!out.status.success(), "{bad}");
        assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    }

    let mut child = Command::new(gateway_bin().unwrap())
        .args(["decode", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"zz\n02011a1bff1801beac2f234454cf6d4a0fadf2f4911ba9ffa600010002c50900\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines[0]["error"].is_string());
    assert_eq!(lines[1]["frames"][0]["kind"], "altbeacon");
}

#[test]
fn run_refuses_to_start_with_a_bad_config_or_a_taken_port() {
    let out = gateway(&["run"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--config"));

    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let site = Site::new(1, "").unwrap();
    let text = std::fs::read_to_string(&site.config_path)
        .unwrap()
        .replace(&site.udp.to_string(), &format!("127.0.0.1:{port}"));
    std::fs::write(&site.config_path, text).unwrap();
    let out = site.cli(&["run"]).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("sources[0]: cannot bind"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn eval_presence_scores_a_simulator_capture_against_its_truth() {
    let dir = Workdir::new("eval").unwrap();
    let (capture, truth) = twin_capture(&dir, &[]);
    let zones: String = ["entrance", "laptops", "headphones"]
        .iter()
        .map(|z| format!("[[zones]]\nid = \"{z}\"\nscanners = [\"{z}\"]\n"))
        .collect();
    let site = dir.write("site.toml", format!("[store]\nid = \"s\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1\"\nprefix = \"retail\"\n{zones}")).unwrap();
    let out = eval_presence(&site, &capture, &truth, &["--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for side in ["engine", "baseline"] {
        for key in [
            "accuracy",
            "flips_per_hour",
            "entry_delay_s",
            "exit_delay_s",
        ] {
            assert!(report[side][key].is_number(), "{side}.{key} in {report}");
        }
    }
    assert!(
        report["engine"]["flips_per_hour"].as_f64() < report["baseline"]["flips_per_hour"].as_f64()
    );

    // Person-seconds: the store's three iBeacons, listed in the site file,
    // are left out of the score.
    let beacons: String = (1..=3)
        .map(|minor| {
            format!(
                "[[beacons]]\nid = \"b{minor}\"\nkind = \"ibeacon\"\nuuid = \"426c7565-4368-6172-6d42-6561636f6e73\"\nmajor = 1\nminor = {minor}\n"
            )
        })
        .collect();
    let site_with_beacons = dir
        .write(
            "site-beacons.toml",
            format!("[store]\nid = \"s\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1\"\nprefix = \"retail\"\n{zones}{beacons}"),
        )
        .unwrap();
    let table = |extra: &[&str]| {
        let out = eval_presence(&site_with_beacons, &capture, &truth, extra);
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let everyone = table(&[]);
    let people = table(&["--people-only"]);
    assert!(everyone.contains("store beacons left out: 0"), "{everyone}");
    assert!(people.contains("store beacons left out: 3"), "{people}");
    let subjects = |t: &str| -> usize {
        let at = t.find("subjects: ").unwrap() + "subjects: ".len();
        t[at..].split(',').next().unwrap().parse().unwrap()
    };
    assert_eq!(
        subjects(&everyone),
        subjects(&people) + 3,
        "{everyone}\n{people}"
    );

    std::fs::write(
        &truth,
        "{\"addr\": \"02:00:00:00:00:01\", \"from_ms\": 0}\n",
    )
    .unwrap();
    let out = eval_presence(&site, &capture, &truth, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("truth.jsonl") && stderr(&out).contains("line 1"),
        "{}",
        stderr(&out)
    );
}

/// `firmware-sim site` writes the gateway's site file for the store it
/// simulates: the gateway accepts it as it is, and with it
/// `eval-presence --people-only` leaves exactly the store's beacons out.
#[test]
fn the_twin_writes_the_site_file_its_captures_are_scored_with() {
    let dir = Workdir::new("sim-site").unwrap();
    let site = dir.join("site.toml");
    let out = firmware_sim(&["site", "--out", site.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let check = gateway(&["check-config", site.to_str().unwrap()]);
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(
        stdout(&check).contains("store store-042, 3 zone(s)"),
        "{}",
        stdout(&check)
    );

    let (capture, truth) = twin_capture(&dir, &["--shoppers", "4"]);
    let out = eval_presence(&site, &capture, &truth, &["--people-only"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The small store has five beacons: three iBeacons, an Eddystone-UID
    // and an AltBeacon. Every other address in the truth is scored.
    let table = stdout(&out);
    assert!(table.contains("store beacons left out: 5"), "{table}");
    let addrs: std::collections::BTreeSet<String> = std::fs::read_to_string(&truth)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["addr"].to_string())
        .collect();
    assert!(addrs.len() > 5 + 3, "{addrs:?}");
    assert!(
        table.contains(&format!("subjects: {},", addrs.len() - 5)),
        "{table}"
    );

    // The bigger shipped store: ten zones, twelve beacons, its own radio.
    let store = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/sim/electronics-store.toml"
    );
    let out = firmware_sim(&["site", "--store", store]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("path_loss_exponent = 2.4"), "{text}");
    assert!(text.contains("hall_distance_m = 9.3"), "{text}");
    let big = dir.write("electronics.toml", text).unwrap();
    let check = gateway(&["check-config", big.to_str().unwrap()]);
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(
        stdout(&check).contains("store store-107, 10 zone(s)"),
        "{}",
        stdout(&check)
    );

    let out = firmware_sim(&["site", "--store", "/nonexistent/store.toml"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/store.toml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn people_import_reads_csv_with_the_documented_header() {
    let site = Site::new(1, "").unwrap();
    let csv = format!(
        "{}\np-7,r-7,,75c734c6dd1a782de7a965da5eb93125,ana@example.com,,true,true,false,true,true,laptops;headphones,phone:pixel-8\n",
        gateway::identity::CSV_HEADER
    );
    let file = site.dir.write("people.csv", csv).unwrap();
    let out = site
        .cli(&["people", "import", file.to_str().unwrap()])
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let export = site.cli(&["people", "export", "p-7"]).unwrap();
    let export: serde_json::Value = serde_json::from_slice(&export.stdout).unwrap();
    assert_eq!(
        export["person"]["interests"],
        serde_json::json!(["laptops", "headphones"])
    );
    assert_eq!(export["person"]["consent"]["offers"], false);

    let bad = site
        .dir
        .write(
            "bad.csv",
            format!(
                "{}\np-8,r-8,,75c7,,,true,true,false,true,true,,\n",
                gateway::identity::CSV_HEADER
            ),
        )
        .unwrap();
    let out = site
        .cli(&["people", "import", bad.to_str().unwrap()])
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("bad.csv:line 2") && stderr(&out).contains("app_keys"),
        "{}",
        stderr(&out)
    );
}
