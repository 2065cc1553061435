//! `gateway calibrate` and `eval-presence --radio-map` as a user runs them
//! (issue #20): the twin writes a calibration walk and the site file, the
//! gateway learns a radio map from the walk, the site file names it, and a
//! capture of another seed is scored with it. Bad walks and maps for other
//! scanners are refused, naming what is wrong, and nothing is written.

use std::path::Path;
use std::process::{Command, Output};

use e2e::{Workdir, gateway_bin};

fn run(bin: std::path::PathBuf, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env("GATEWAY_LOG", "warn")
        .output()
        .unwrap()
}

fn gateway(args: &[&str]) -> Output {
    run(gateway_bin().unwrap(), args)
}

fn firmware_sim(args: &[&str]) -> Output {
    run(e2e::firmware_sim_bin().unwrap(), args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The twin's site file with `[presence] radio_map` set.
fn site_with_map(site_text: &str, map: &Path) -> String {
    site_text.replacen(
        "[presence]\n",
        &format!("[presence]\nradio_map = {:?}\n", s(map)),
        1,
    )
}

#[test]
fn a_walk_makes_a_radio_map_the_site_and_eval_presence_use() {
    let dir = Workdir::new("calibrate").unwrap();
    let (walk, walk_truth) = (dir.join("walk.jsonl"), dir.join("walk-truth.jsonl"));
    let site = dir.join("site.toml");
    ok(&firmware_sim(&["site", "--out", s(&site)]));
    let site_text = std::fs::read_to_string(&site).unwrap();
    assert!(site_text.contains("[presence]\n"), "{site_text}");
    let out = firmware_sim(&[
        "walk",
        "--seed",
        "100",
        "--out",
        s(&walk),
        "--truth",
        s(&walk_truth),
    ]);
    assert!(text(&out.stderr).contains("ground truth records of tag"));
    ok(&out);

    let map = dir.join("radio-map.json");
    let summary = ok(&gateway(&[
        "--config",
        s(&site),
        "calibrate",
        "--capture",
        s(&walk),
        "--truth",
        s(&walk_truth),
        "--out",
        s(&map),
    ]));
    for place in ["entrance", "laptops", "headphones", "hall"] {
        assert!(summary.contains(place), "{summary}");
    }
    assert!(!summary.contains("warning"), "{summary}");
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&map).unwrap()).unwrap();
    assert_eq!(file["version"], 1);
    assert_eq!(file["places"].as_array().unwrap().len(), 4);
    assert_eq!(file["coverage"].as_array().unwrap().len(), 4);

    // The site file names the map: check-config loads it.
    let mapped_site = dir
        .write("site-map.toml", site_with_map(&site_text, &map))
        .unwrap();
    ok(&gateway(&["check-config", s(&mapped_site)]));

    // A crowd of another seed, scored with and without the map.
    let (capture, truth) = (dir.join("capture.jsonl"), dir.join("truth.jsonl"));
    ok(&firmware_sim(&[
        "capture",
        "--seed",
        "3",
        "--shoppers",
        "6",
        "--duration",
        "6m",
        "--out",
        s(&capture),
        "--truth",
        s(&truth),
    ]));
    let eval = |site: &Path, extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "--config",
            s(site),
            "eval-presence",
            "--capture",
            s(&capture),
            "--truth",
            s(&truth),
            "--people-only",
            "--json",
        ];
        args.extend_from_slice(extra);
        serde_json::from_str(&ok(&gateway(&args))).unwrap()
    };
    let with_flag = eval(&site, &["--radio-map", s(&map)]);
    let from_site = eval(&mapped_site, &[]);
    let without = eval(&mapped_site, &["--no-radio-map"]);
    let plain = eval(&site, &[]);
    assert_eq!(with_flag, from_site, "the flag and the site file agree");
    assert_eq!(without, plain, "--no-radio-map is the engine without a map");
    assert_ne!(with_flag["engine"], without["engine"], "the map is used");
    assert_eq!(with_flag["baseline"], without["baseline"]);
    assert!(with_flag["engine"]["accuracy"].as_f64().unwrap() > 0.5);
}

#[test]
fn a_walk_missing_a_place_or_a_map_of_other_scanners_is_refused() {
    let dir = Workdir::new("calibrate-bad").unwrap();
    let (walk, walk_truth) = (dir.join("walk.jsonl"), dir.join("walk-truth.jsonl"));
    let site = dir.join("site.toml");
    ok(&firmware_sim(&["site", "--out", s(&site)]));
    ok(&firmware_sim(&[
        "walk",
        "--out",
        s(&walk),
        "--truth",
        s(&walk_truth),
    ]));
    let calibrate = |truth: &Path, out: &Path| {
        gateway(&[
            "--config",
            s(&site),
            "calibrate",
            "--capture",
            s(&walk),
            "--truth",
            s(truth),
            "--out",
            s(out),
        ])
    };

    // The truth without the hall: refused, naming it, nothing written.
    let no_hall: String = std::fs::read_to_string(&walk_truth)
        .unwrap()
        .lines()
        .filter(|l| !l.contains("\"hall\""))
        .map(|l| format!("{l}\n"))
        .collect();
    let no_hall = dir.write("no-hall.jsonl", no_hall).unwrap();
    let refused = dir.join("refused.json");
    let out = calibrate(&no_hall, &refused);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("misses [\"hall\"]"),
        "{}",
        text(&out.stderr)
    );
    assert!(!refused.exists());

    // A map of this site, named by a site with another scanner: refused
    // at load (and so at reload, which keeps the last good config).
    let map = dir.join("map.json");
    ok(&calibrate(&walk_truth, &map));
    let site_text = std::fs::read_to_string(&site).unwrap();
    let other = site_with_map(&site_text, &map)
        .replace("scanners = [\"laptops\"]", "scanners = [\"laptops-2\"]")
        // The site file says where each scanner hangs: the renamed one too.
        .replace("[zones.positions.laptops]", "[zones.positions.laptops-2]");
    assert_ne!(other, site_with_map(&site_text, &map), "{site_text}");
    let other = dir.write("other.toml", other).unwrap();
    let out = gateway(&["check-config", s(&other)]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("presence.radio_map") && err.contains("other scanners"),
        "{err}"
    );
    assert!(err.contains("laptops-2"), "{err}");
}
