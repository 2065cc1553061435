//! The command line: raw arguments (clap) → validated settings → one
//! function per subcommand. Only `main` turns errors into exit codes.

pub mod people;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::decode::{DecodeOptions, decode_hex_to_json, decode_line_to_json};

#[derive(Debug, Parser)]
#[command(
    name = "gateway",
    version,
    about = "Store proximity gateway: BLE presence in, consented and capped nudges out over MQTT"
)]
pub struct Cli {
    /// Site config file (TOML), layered over the built-in defaults.
    #[arg(long, short, global = true, env = "GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway daemon.
    Run {
        /// Also write what the sources hear to this JSON Lines capture,
        /// with strangers removed (only the store's beacons and opted-in people).
        #[arg(long)]
        record: Option<PathBuf>,
    },
    /// Everything embedded: a simulated store, an embedded broker, nudges printed.
    Demo {
        /// Stop by itself after this long (e.g. 90s, 5m); otherwise Ctrl-C.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        run_for: Option<Duration>,
        /// How many times faster than real time the simulated store runs.
        #[arg(long, default_value_t = 10.0)]
        speed: f64,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Decode advertising data (hex AD structures) to JSON; `-` reads one per line from stdin.
    Decode {
        hex: String,
        /// Company id of the app token (default 0xFFFF).
        #[arg(long, value_parser = parse_company_id)]
        company_id: Option<u16>,
    },
    /// Validate a config file (and environment overrides) without starting.
    CheckConfig { file: PathBuf },
    /// The configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage the people the gateway knows.
    #[command(subcommand)]
    People(PeopleCommand),
    /// Why a nudge was sent or held back: by person id or nudge id.
    Explain { id: String },
    /// Dry run: what the rules would send on a recorded day (per rule, kind,
    /// hour; caps hit), with in-memory caps. Nothing is stored or sent.
    Simulate {
        /// Sighting records, JSON Lines (docs/design.md §7).
        #[arg(long)]
        capture: PathBuf,
        /// Person records, JSON Lines (docs/design.md §5).
        #[arg(long)]
        people: PathBuf,
        /// Other stores' decisions, one `<p>/chain/decisions/<s>` payload
        /// a line: counted against `[caps.chain]` from their own time on.
        #[arg(long)]
        chain_decisions: Option<PathBuf>,
        /// Print the report as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also write an SVG plot of nudges per hour beside the caps.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Replay a capture through decode and presence and score zones against
    /// ground truth, beside the naive "strongest scanner wins" baseline.
    EvalPresence {
        /// Sighting records, JSON Lines (docs/design.md §7).
        #[arg(long)]
        capture: PathBuf,
        /// Ground truth, JSON Lines: {"addr", "from_ms", "to_ms", "zone"}.
        #[arg(long)]
        truth: PathBuf,
        /// Print one JSON object with keys `engine`, `baseline` and `lag_bound`.
        #[arg(long)]
        json: bool,
        /// Score only the devices people carry: addresses that advertise
        /// one of the store's own beacons (`[[beacons]]`) are left out.
        #[arg(long)]
        people_only: bool,
        /// Score the engine with this radio map (`gateway calibrate`)
        /// instead of the site's `[presence] radio_map` (if any).
        #[arg(long)]
        radio_map: Option<PathBuf>,
        /// Score the engine without a radio map, even if the site has one.
        #[arg(long, conflicts_with = "radio_map")]
        no_radio_map: bool,
    },
    /// Learn the store's radio from a calibration walk (a tag carried
    /// through every zone and the hall) and write a radio map for
    /// `[presence] radio_map`.
    Calibrate {
        /// Sighting records of the walk, JSON Lines (docs/design.md §7).
        /// Repeat for several walks, each with its own --truth, in order.
        #[arg(long, required = true)]
        capture: Vec<PathBuf>,
        /// Where the tag was: {"addr", "from_ms", "to_ms", "zone"} lines.
        #[arg(long, required = true)]
        truth: Vec<PathBuf>,
        /// Where to write the radio map (JSON).
        #[arg(long)]
        out: PathBuf,
        /// Also choose the filter's knobs (evidence weight, switch
        /// probability, hall and zone stays, device bias rate) on the walk
        /// itself, each session (tag address) held out of the map it is
        /// scored with, and write them into the map. Needs two sessions.
        #[arg(long)]
        tune: bool,
        /// With --tune: seconds of right place one wrong move (a change to a
        /// place the truth is not in within 3 s) costs.
        #[arg(long, default_value_t = crate::presence::tune::DEFAULT_FLIP_PENALTY_S)]
        flip_penalty_s: f64,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// The effective merged configuration (defaults, site file, environment), secrets masked.
    Show,
}

#[derive(Debug, Subcommand)]
pub enum PeopleCommand {
    /// Import person records (JSON Lines, docs/design.md §5). All or nothing unless --partial.
    Import {
        file: PathBuf,
        /// Apply the valid lines even if some are bad.
        #[arg(long)]
        partial: bool,
    },
    /// What the gateway holds about a person.
    Show { person: String },
    /// Everything about a person as JSON, for an access request.
    Export { person: String },
    /// Erase a person: keys, preferences, counters, decision log, outbox.
    Forget { person: String },
}

fn parse_company_id(text: &str) -> Result<u16, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => text.parse::<u16>(),
    };
    parsed.map_err(|_| format!("not a 16-bit company id: {text:?}"))
}

/// A command's failure: the message to print and the exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    pub message: String,
    pub code: i32,
}

impl CliError {
    pub fn new(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            code: 1,
        }
    }
}

impl From<config::ConfigError> for CliError {
    fn from(e: config::ConfigError) -> Self {
        CliError::new(e.to_string())
    }
}

/// The site config, required by commands that touch the store.
pub fn require_config(path: Option<&Path>) -> Result<Config, CliError> {
    let path = path.ok_or_else(|| CliError {
        message: "this command needs --config <site.toml> (or GATEWAY_CONFIG)".into(),
        code: 2,
    })?;
    Ok(config::load(Some(path))?)
}

/// The site config for `run`: validated, and its TLS settings loaded into
/// rustls the way delivery will load them, so that a certificate rustls
/// refuses (or a key that does not fit) stops the start, not every
/// connection attempt.
pub fn require_run_config(path: Option<&Path>) -> Result<Config, CliError> {
    let config = require_config(path)?;
    match path {
        Some(file) => tls_checked(file, config),
        None => Ok(config),
    }
}

fn tls_checked(file: &Path, config: Config) -> Result<Config, CliError> {
    crate::io::mqtt::check_tls(&config).map_err(|problem| config::ConfigError::Invalid {
        file: file.display().to_string(),
        problems: vec![problem],
    })?;
    Ok(config)
}

/// `gateway decode`: one hex string, or `-` for one per line of stdin.
pub fn decode(
    hex: &str,
    company_id: Option<u16>,
    input: impl BufRead,
    mut out: impl std::io::Write,
) -> Result<(), CliError> {
    let opts = DecodeOptions {
        app_company_id: company_id.unwrap_or(crate::decode::DEFAULT_APP_COMPANY_ID),
    };
    if hex != "-" {
        let value =
            decode_hex_to_json(hex, &opts).map_err(|e| CliError::new(format!("decode: {e}")))?;
        let _ = writeln!(out, "{value}");
        return Ok(());
    }
    for line in input.lines() {
        let line = line.map_err(|e| CliError::new(format!("decode: reading stdin: {e}")))?;
        let _ = writeln!(out, "{}", decode_line_to_json(&line, &opts));
    }
    Ok(())
}

/// `gateway check-config`: prints a short summary, or every problem.
pub fn check_config(file: &Path) -> Result<String, CliError> {
    let config = tls_checked(file, config::load(Some(file))?)?;
    let mut text = format!(
        "{}: ok (store {}, {} zone(s), {} rule(s), {} source(s), config hash {})",
        file.display(),
        config.store_id,
        config.zones.len(),
        config.rules.len(),
        config.sources.len(),
        config.hash
    );
    let presence = &config.presence;
    let map_tuning = presence
        .radio_map
        .as_ref()
        .and_then(|m| m.map().tuning.as_ref());
    if presence.radio_map.is_some() || !presence.map_tuning.is_empty() {
        // Which knob comes from where: the site file over the map over the code.
        let knobs = crate::presence::MapTuning::describe(
            &crate::presence::MapTuning::default(),
            map_tuning,
            &presence.map_tuning,
        );
        let note = if presence.radio_map.is_none() {
            " (unused: no radio map)"
        } else {
            ""
        };
        text.push_str(&format!("\npresence.map{note}: {knobs}"));
    }
    Ok(text)
}

/// `gateway simulate`.
pub fn simulate(
    config: &Config,
    capture: &Path,
    people: &Path,
    chain_decisions: Option<&Path>,
    json: bool,
    svg: Option<&Path>,
) -> Result<String, CliError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| CliError::new(format!("{}: {e}", path.display())))
    };
    // The report names people by the logs' salted hash: with the salt a
    // gateway logs with (GATEWAY_LOG_SALT, as for `gateway run`), its tags
    // match that gateway's logs.
    if let Ok(salt) = std::env::var("GATEWAY_LOG_SALT") {
        crate::privacy::install_salt(salt.as_bytes());
    }
    let capture_text = read(capture)?;
    let (records, errors) = people::parse_import(people, &read(people)?);
    if !errors.is_empty() {
        return Err(CliError::new(errors.join("\n")));
    }
    // Other stores' decisions: one `<p>/chain/decisions/<s>` payload a line,
    // as `mosquitto_sub -t '<p>/chain/decisions/+'` prints them.
    let chain_decisions = match chain_decisions {
        None => Vec::new(),
        Some(path) => crate::jsonl::parse_all(&read(path)?, |line| {
            crate::chain_message::parse_decision(line.as_bytes())
        })
        .map_err(|(line, e)| CliError::new(format!("{}: line {line}: {e}", path.display())))?,
    };
    let options = crate::simulate::SimulateOptions {
        extra_rules: config
            .triggered
            .iter()
            .filter(|r| !matches!(r.trigger, crate::decide::Trigger::Dwell { .. }))
            .cloned()
            .collect(),
        catalog: config.catalog.as_deref().cloned(),
        offers: config.offers.clone(),
        chain_decisions,
    };
    let report = crate::simulate::simulate_with(config, &capture_text, &records, &options)
        .map_err(|e| CliError::new(format!("{}: {e}", capture.display())))?;
    if let Some(svg) = svg {
        std::fs::write(svg, report.plot_svg())
            .map_err(|e| CliError::new(format!("{}: {e}", svg.display())))?;
    }
    Ok(if json {
        report.to_json()
    } else {
        report.to_table()
    })
}

/// Which radio map `eval-presence` scores the engine with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapChoice<'a> {
    /// The site's `[presence] radio_map`, if it has one.
    Site,
    /// This file instead.
    File(&'a Path),
    /// None, whatever the site says.
    Without,
}

/// `gateway eval-presence`.
pub fn eval_presence(
    config: &Config,
    capture: &Path,
    truth: &Path,
    json: bool,
    people_only: bool,
    map: MapChoice<'_>,
) -> Result<String, CliError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| CliError::new(format!("{}: {e}", path.display())))
    };
    let mut presence = config.presence.clone();
    match map {
        MapChoice::Site => {}
        MapChoice::Without => presence.radio_map = None,
        MapChoice::File(path) => {
            let model = crate::presence::radiomap::load_for_site(path, &presence.scanner_zone)
                .map_err(|e| CliError::new(format!("{}: {e}", path.display())))?;
            presence.radio_map = Some(model);
        }
    }
    let (capture_text, truth_text) = (read(capture)?, read(truth)?);
    let fleet = crate::io::fleet::Fleet::new(config.beacons.clone());
    let is_store_beacon = |frames: &[crate::decode::Frame]| fleet.knows(frames);
    let options = crate::presence::eval::EvalOptions {
        decode: config.decode,
        not_people: people_only.then_some(&is_store_beacon as _),
        ..Default::default()
    };
    let report =
        crate::presence::eval::evaluate_capture(&presence, &capture_text, &truth_text, &options)
            .map_err(|e| {
                let file = match e {
                    crate::presence::eval::EvalError::Capture { .. } => capture,
                    crate::presence::eval::EvalError::Truth { .. } => truth,
                };
                CliError::new(format!("{}: {e}", file.display()))
            })?;
    Ok(if json {
        report.to_json().to_string()
    } else {
        report.to_table()
    })
}

/// What `gateway calibrate` is asked for.
#[derive(Clone, Debug)]
pub struct CalibrateArgs<'a> {
    /// The walk's captures and truths, pairwise.
    pub captures: &'a [PathBuf],
    pub truths: &'a [PathBuf],
    pub out: &'a Path,
    /// Choose the filter's knobs on the walk (`presence::tune`).
    pub tune: bool,
    pub flip_penalty_s: f64,
}

/// `gateway calibrate`: learn a radio map from a walk and write it. The
/// summary (coverage per place, gains, the knobs chosen with `--tune`) and
/// any warning go to the output; a walk that misses a place writes nothing.
pub fn calibrate(config: &Config, args: &CalibrateArgs<'_>) -> Result<String, CliError> {
    use crate::presence::eval::{EvalError, parse_capture_and_truth};
    use crate::presence::radiomap;
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| CliError::new(format!("{}: {e}", path.display())))
    };
    if args.captures.len() != args.truths.len() {
        return Err(CliError::new(format!(
            "calibrate: {} --capture but {} --truth: give one truth per capture, in the same order",
            args.captures.len(),
            args.truths.len()
        )));
    }
    if !(args.flip_penalty_s.is_finite() && args.flip_penalty_s >= 0.0) {
        return Err(CliError::new(
            "calibrate: --flip-penalty-s must be a number >= 0",
        ));
    }
    let mut sightings = Vec::new();
    let mut spans = Vec::new();
    // Walks are joined into one: a tag address is one session, so two
    // files may not claim the same one.
    let mut owner: std::collections::BTreeMap<String, &Path> = Default::default();
    for (capture, truth) in args.captures.iter().zip(args.truths) {
        let (capture_text, truth_text) = (read(capture)?, read(truth)?);
        let (s, t) = parse_capture_and_truth(&capture_text, &truth_text).map_err(|e| {
            let file = match e {
                EvalError::Capture { .. } => capture,
                EvalError::Truth { .. } => truth,
            };
            CliError::new(format!("{}: {e}", file.display()))
        })?;
        for addr in crate::presence::tune::sessions(&t) {
            if let Some(other) = owner.insert(addr.to_string(), truth.as_path()) {
                if other != truth.as_path() {
                    return Err(CliError::new(format!(
                        "{}: tag {addr} is also in {}: each walk needs its own tag address",
                        truth.display(),
                        other.display()
                    )));
                }
            }
        }
        sightings.extend(s);
        spans.extend(t);
    }
    sightings.sort_by_key(|s| s.at_ms);
    let site = radiomap::Site::from_presence(&config.presence);
    let mut calibration = radiomap::calibrate(&site, &sightings, &spans)
        .map_err(|e| CliError::new(format!("calibrate: {e}")))?;
    calibration.map.beacon_gain_db = walk_gains(config, &sightings);
    let mut tuning_text = String::new();
    if args.tune {
        let options = crate::presence::tune::TuneOptions {
            flip_penalty_s: args.flip_penalty_s,
            decode: config.decode,
            ..Default::default()
        };
        let tuned = crate::presence::tune::tune(&config.presence, &sightings, &spans, &options)
            .map_err(|e| CliError::new(format!("calibrate: {e}")))?;
        tuning_text = tuned.summary();
        let shadowed: Vec<&str> = config
            .presence
            .map_tuning
            .entries()
            .iter()
            .map(|e| e.0)
            .filter(|k| tuned.chosen.entries().iter().any(|c| c.0 == *k))
            .collect();
        if !shadowed.is_empty() {
            tuning_text.push_str(&format!(
                "warning: the site file's [presence.map] sets {shadowed:?}: it wins over the map's tuning\n"
            ));
        }
        calibration.map.set_tuning(Some(tuned.chosen));
    }
    // Write to a temporary file beside the target, then rename: a reader
    // (a reload) never sees half a map.
    let out = args.out;
    let tmp = out.with_extension("json.tmp");
    std::fs::write(&tmp, calibration.map.to_json())
        .and_then(|()| std::fs::rename(&tmp, out))
        .map_err(|e| CliError::new(format!("{}: {e}", out.display())))?;
    let mut text = calibration.map.summary();
    text.push_str(&tuning_text);
    for warning in &calibration.warnings {
        text.push_str(&format!("warning: {warning}\n"));
    }
    text.push_str(&format!("wrote {}", out.display()));
    Ok(text)
}

/// The scanners' gains during a walk, learned from the store's beacons the
/// walk's capture holds (`presence::gain`), as a radio map keeps them:
/// empty when the site file gives no positions or the walk heard too few.
pub fn walk_gains(
    config: &Config,
    sightings: &[crate::sighting::Sighting],
) -> std::collections::BTreeMap<String, f32> {
    let Some(setup) = config.scanner_gain.clone() else {
        return Default::default();
    };
    let fleet = crate::io::fleet::Fleet::new(config.beacons.clone());
    let mut tracker = crate::presence::gain::GainTracker::new(setup);
    let mut frames = Vec::new();
    let mut last_ms = i64::MIN;
    for s in sightings {
        frames.clear();
        crate::decode::decode_into(&s.adv, &config.decode, &mut frames);
        if let Some(beacon) = fleet.identify(&frames) {
            tracker.observe(beacon, &s.scanner, s.rssi, s.at_ms);
            last_ms = last_ms.max(s.at_ms);
        }
    }
    if last_ms == i64::MIN {
        return Default::default();
    }
    tracker.evaluate(last_ms);
    tracker
        .gains()
        .filter_map(|(s, g, _)| Some((s.to_string(), g?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_line_mode_keeps_going_after_a_bad_line() {
        let input = "0201061aff4c000215426c7565436861726d426561636f6e730efe1355c5\nzz\n";
        let mut out = Vec::new();
        decode("-", None, input.as_bytes(), &mut out).unwrap();
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["frames"][0]["kind"], "ibeacon");
        assert!(lines[1]["error"].as_str().unwrap().contains("hex"));
    }

    #[test]
    fn company_ids_parse_in_hex_or_decimal() {
        assert_eq!(parse_company_id("0xFFFF"), Ok(0xFFFF));
        assert_eq!(parse_company_id("76"), Ok(76));
        assert!(parse_company_id("0x10000").is_err());
    }
}
