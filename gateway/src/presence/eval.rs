//! Offline evaluation of the presence engine against ground truth
//! (docs/design.md §8, `gateway eval-presence`). Pure: captures and truth in,
//! scores out; no clock, no I/O.
//!
//! # What is scored
//!
//! A capture is replayed through decode and presence only, in `at_ms` order,
//! with the engine ticked every [`EvalOptions::tick_ms`] of capture time as
//! the daemon does. There is no identity resolution: every distinct
//! advertiser address is a subject, fed to the engine as a [`PersonId`] made
//! from the address string (so a phone whose address rotates is a new
//! subject after each rotation, exactly as the truth file lists it).
//!
//! A subject is scored when its address appears both in the capture and in
//! the truth. docs/design.md §8 makes every advertiser a subject and the simulator
//! writes truth for every advertiser, so by default store beacons and
//! strangers are scored too: they are what the radio hears, and a beacon
//! standing in the hall is a fair test of the hall decision. An address
//! heard but absent from the truth cannot be scored and is only counted
//! ([`Scores::unscored_addrs`]); an address in the truth that was never
//! heard is counted in [`Scores::unheard_addrs`]. [`EvalOptions::subjects`]
//! narrows the scoring to a given set of addresses (e.g. the shoppers' own).
//!
//! # The metrics
//!
//! * **Accuracy**: at every whole second inside a subject's truth spans, the
//!   place the engine believed then (from the events it had emitted by then,
//!   never back-dated) against the truth. The truth's `"hall"` (on the floor,
//!   outside every zone) matches an engine that has the subject present but
//!   in no zone; an engine that does not have the subject present at all is
//!   wrong whatever the truth says.
//! * **Flips per subject-hour beyond the true ones**: per subject, the place
//!   changes the engine made inside `[first from_ms, last to_ms]`
//!   minus the place changes in the truth (floored at 0 per subject, so
//!   flicker on one subject is not excused by a missed move on another),
//!   summed and divided by the scored subject-hours.
//! * **Entry delay**: first truth span start → first `Entered` (or
//!   `ZoneEntered`) event for the subject.
//! * **Exit delay**: the truth's last `to_ms` → the `Exited` that ends the
//!   subject's presence. Subjects still present when the truth ends (their
//!   last `to_ms` is the truth's overall end) have no exit to measure.
//!
//! * **Accuracy inside zones**: the accuracy over the seconds the truth has
//!   the subject in a zone (the hall's seconds left out): how often the zone
//!   a person is in is the zone reported. 0 when the truth has no such
//!   second.
//! * **Late truth** ([`EvalReport::lag_bound`]): the accuracy, on the same
//!   seconds, of the truth itself reported `lag` late (0.5 to 3 s),
//!   the first `lag` of each subject counted wrong. Not a bound on real
//!   trackers, whose lag varies from move to move; a reference point for
//!   what an accuracy target asks of the average lag in a scenario.
//!
//! Delays are averaged over subjects; the maxima are kept too.
//!
//! # The baseline
//!
//! "Strongest scanner's zone wins": on each reading, the subject is in the
//! zone of the scanner with the strongest latest reading (calibration offset
//! applied) among the readings of the last [`BASELINE_WINDOW_MS`]; no
//! smoothing, no hysteresis, no hall. It enters at its first reading and
//! exits after `visit_gap_ms` of silence, like the engine.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use serde_json::json;

use super::{PresenceConfig, PresenceEngine, PresenceEvent, PresenceTuning, ZoneId};
use crate::decode::{DecodeOptions, Frame, decode_into};
use crate::identity::PersonId;
use crate::sighting::{Sighting, UNIX_MS_RULE, unix_ms};

/// The truth's name for the open floor outside every zone.
pub const HALL: &str = "hall";

/// Readings older than this no longer compete in the naive baseline.
pub const BASELINE_WINDOW_MS: i64 = 1_000;

/// Where one advertiser address really was over `[from_ms, to_ms)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TruthSpan {
    pub addr: String,
    pub from_ms: i64,
    pub to_ms: i64,
    /// A zone id, or [`HALL`].
    pub zone: String,
}

/// A problem with one field of one record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: &'static str,
    pub reason: String,
}

impl FieldError {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        FieldError {
            field,
            reason: reason.into(),
        }
    }
}

const TRUTH_FIELDS: [&str; 4] = ["addr", "from_ms", "to_ms", "zone"];

/// The longest truth span accepted.
const MAX_TRUTH_SPAN_MS: i64 = 366 * 86_400_000;

impl TruthSpan {
    /// Parse one truth line, `{"addr", "from_ms", "to_ms", "zone"}`:
    /// strict, every problem names the field.
    pub fn from_json_line(line: &str) -> Result<Self, FieldError> {
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| FieldError::new("record", format!("not valid JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| FieldError::new("record", "must be a JSON object"))?;
        if let Some(unknown) = obj.keys().find(|k| !TRUTH_FIELDS.contains(&k.as_str())) {
            return Err(FieldError::new(
                "record",
                format!("unknown field {unknown:?}"),
            ));
        }
        let field = |name: &'static str| {
            obj.get(name)
                .ok_or_else(|| FieldError::new(name, "missing"))
        };
        let addr = match field("addr")? {
            serde_json::Value::String(s) => crate::sighting::BdAddr::parse(&s.to_ascii_lowercase())
                .map_err(|r| FieldError::new("addr", r))?
                .to_string(),
            _ => {
                return Err(FieldError::new(
                    "addr",
                    "must be a string like \"aa:bb:cc:dd:ee:ff\"",
                ));
            }
        };
        let int = |name: &'static str| -> Result<i64, FieldError> {
            unix_ms(field(name)?).ok_or_else(|| FieldError::new(name, UNIX_MS_RULE))
        };
        let from_ms = int("from_ms")?;
        let to_ms = int("to_ms")?;
        if to_ms < from_ms {
            return Err(FieldError::new("to_ms", "must not be before from_ms"));
        }
        // Every second of a span is scored: a span of centuries is a typo,
        // and would take as long to score.
        if to_ms - from_ms > MAX_TRUTH_SPAN_MS {
            return Err(FieldError::new(
                "to_ms",
                "must be at most 366 days after from_ms",
            ));
        }
        let zone = match field("zone")? {
            serde_json::Value::String(s) if !s.is_empty() => s.clone(),
            _ => return Err(FieldError::new("zone", "must be a non-empty string")),
        };
        Ok(TruthSpan {
            addr,
            from_ms,
            to_ms,
            zone,
        })
    }
}

impl From<&firmware_sim::GroundTruth> for TruthSpan {
    fn from(t: &firmware_sim::GroundTruth) -> Self {
        TruthSpan {
            addr: t.addr.to_ascii_lowercase(),
            from_ms: t.from_ms,
            to_ms: t.to_ms,
            zone: t.zone.clone(),
        }
    }
}

/// Why a capture or truth file could not be evaluated. Names the file,
/// the line (1-based) and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("capture line {line}: {field}: {reason}")]
    Capture {
        line: usize,
        field: &'static str,
        reason: String,
    },
    #[error("truth line {line}: {field}: {reason}")]
    Truth {
        line: usize,
        field: &'static str,
        reason: String,
    },
}

/// Tells, from an advert's frames, a device that is not a person.
pub type NotPeople<'a> = &'a dyn Fn(&[Frame]) -> bool;

/// How to replay.
#[derive(Clone)]
pub struct EvalOptions<'a> {
    pub decode: DecodeOptions,
    /// Engine tick period in capture time (the daemon ticks every 500 ms).
    pub tick_ms: i64,
    /// Score only these addresses (lowercase); `None`: every address that
    /// is in both the capture and the truth.
    pub subjects: Option<BTreeSet<String>>,
    /// Filter and hall knobs for the engine.
    pub tuning: PresenceTuning,
    /// Tells the devices that are not people (the store's own beacons) by
    /// their decoded frames: an address that ever advertises such a frame
    /// is not scored (person-seconds, as the issue states its targets).
    pub not_people: Option<NotPeople<'a>>,
}

impl std::fmt::Debug for EvalOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvalOptions")
            .field("decode", &self.decode)
            .field("tick_ms", &self.tick_ms)
            .field("subjects", &self.subjects)
            .field("tuning", &self.tuning)
            .field("not_people", &self.not_people.is_some())
            .finish()
    }
}

impl Default for EvalOptions<'_> {
    fn default() -> Self {
        EvalOptions {
            decode: DecodeOptions::default(),
            tick_ms: 500,
            subjects: None,
            tuning: PresenceTuning::default(),
            not_people: None,
        }
    }
}

/// The scores of one contender (docs/design.md §8).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scores {
    /// Fraction (0..=1) of scored subject-seconds in the right place.
    pub accuracy: f64,
    /// The same over the seconds the truth has the subject inside a zone
    /// (the hall's seconds left out): how often the zone a person is in is
    /// the zone reported. Not the issue's figure, which counts the hall.
    /// 0 when the truth has no second inside a zone.
    pub in_zone_accuracy: f64,
    /// Place changes per subject-hour beyond the true ones.
    pub flips_per_hour: f64,
    /// Mean seconds from true arrival to the first entry event.
    pub entry_delay_s: f64,
    /// Mean seconds from true departure to the exit event.
    pub exit_delay_s: f64,
    pub entry_delay_max_s: f64,
    pub exit_delay_max_s: f64,
    /// Subjects scored, and their seconds.
    pub subjects: usize,
    pub subject_seconds: u64,
    /// Place changes made by the contender and in the truth (scored subjects).
    pub flips: u64,
    pub true_flips: u64,
    /// The contender's place changes to a place the truth does not have
    /// the subject in at any moment within [`WRONG_MOVE_TOLERANCE_MS`]:
    /// unlike `flips - true_flips`, a missed true change does not hide one.
    pub wrong_moves: u64,
    /// Subjects never entered / not exited within the replay.
    pub missed_entries: usize,
    pub missed_exits: usize,
    /// Addresses heard but not in the truth; in the truth but never heard.
    pub unscored_addrs: usize,
    pub unheard_addrs: usize,
    /// Addresses left out as not people ([`EvalOptions::not_people`]).
    pub not_people_addrs: usize,
    /// Scored seconds by (true place, believed place), `"absent"` when the
    /// contender did not have the subject present: where the errors are.
    pub confusion: BTreeMap<(String, String), u64>,
}

/// Engine and baseline side by side.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalReport {
    pub engine: Scores,
    pub baseline: Scores,
    /// Capture records skipped because their adverts held no AD structure.
    pub undecodable: usize,
    /// Per scored subject, for digging into a bad score.
    pub per_subject: Vec<SubjectScore>,
    /// `(lag_ms, accuracy)`: what a tracker that always knew the true place
    /// but reported every change exactly `lag_ms` late would score on the
    /// same seconds (the "late truth" of the module docs). A reference
    /// point for what an accuracy target asks of a real tracker's average
    /// lag, not a bound: real lags vary from move to move.
    pub lag_bound: Vec<(i64, f64)>,
}

/// How far from a reported change the truth may have the subject in the
/// new place for the change not to count in [`Scores::wrong_moves`].
pub const WRONG_MOVE_TOLERANCE_MS: i64 = 3_000;

/// The lags [`EvalReport::lag_bound`] is computed for.
pub const LAG_BOUND_MS: [i64; 5] = [500, 1_000, 1_500, 2_000, 3_000];

/// One subject's share of the scores.
#[derive(Clone, Debug, PartialEq)]
pub struct SubjectScore {
    pub addr: String,
    /// Truth seconds, and how many the engine / baseline got right.
    pub seconds: u64,
    pub engine_correct: u64,
    pub baseline_correct: u64,
    pub engine_flips: u64,
    pub baseline_flips: u64,
    pub true_flips: u64,
    /// The zones the truth lists, in order, without repeats.
    pub truth_path: Vec<String>,
}

impl EvalReport {
    /// A side-by-side table for people.
    pub fn to_table(&self) -> String {
        let (e, b) = (&self.engine, &self.baseline);
        let mut out = String::new();
        let mut row = |name: &str, ev: String, bv: String| {
            let _ = writeln!(out, "{name:<32} {ev:>12} {bv:>12}");
        };
        row("", "engine".into(), "baseline".into());
        row(
            "zone accuracy",
            format!("{:.1} %", e.accuracy * 100.0),
            format!("{:.1} %", b.accuracy * 100.0),
        );
        row(
            "  of seconds inside a zone",
            format!("{:.1} %", e.in_zone_accuracy * 100.0),
            format!("{:.1} %", b.in_zone_accuracy * 100.0),
        );
        row(
            "flips / subject-hour beyond true",
            format!("{:.2}", e.flips_per_hour),
            format!("{:.2}", b.flips_per_hour),
        );
        row(
            "flips (true flips)",
            format!("{} ({})", e.flips, e.true_flips),
            format!("{} ({})", b.flips, b.true_flips),
        );
        row(
            "entry delay mean / max",
            format!("{:.1} / {:.1} s", e.entry_delay_s, e.entry_delay_max_s),
            format!("{:.1} / {:.1} s", b.entry_delay_s, b.entry_delay_max_s),
        );
        row(
            "exit delay mean / max",
            format!("{:.1} / {:.1} s", e.exit_delay_s, e.exit_delay_max_s),
            format!("{:.1} / {:.1} s", b.exit_delay_s, b.exit_delay_max_s),
        );
        row(
            "missed entries / exits",
            format!("{} / {}", e.missed_entries, e.missed_exits),
            format!("{} / {}", b.missed_entries, b.missed_exits),
        );
        let wrong: Vec<String> = e
            .confusion
            .iter()
            .filter(|((truth, believed), _)| truth != believed)
            .map(|((truth, believed), n)| format!("{truth}→{believed} {n}"))
            .collect();
        if !wrong.is_empty() {
            let _ = writeln!(
                out,
                "engine's wrong seconds (true→believed): {}",
                wrong.join(", ")
            );
        }
        if !self.lag_bound.is_empty() {
            let bound: Vec<String> = self
                .lag_bound
                .iter()
                .map(|(lag, acc)| format!("{:.1} s {:.1} %", *lag as f64 / 1000.0, acc * 100.0))
                .collect();
            let _ = writeln!(
                out,
                "a tracker knowing the true place, each change reported late by: {}",
                bound.join(", ")
            );
        }
        let _ = writeln!(
            out,
            "subjects: {}, subject-hours: {:.2}, unscored addresses: {}, unheard: {}, store beacons left out: {}, undecodable records: {}",
            e.subjects,
            e.subject_seconds as f64 / 3600.0,
            e.unscored_addrs,
            e.unheard_addrs,
            e.not_people_addrs,
            self.undecodable
        );
        out
    }

    /// One line per scored subject: seconds, accuracy and flips of both
    /// contenders, and the true path.
    pub fn per_subject_table(&self) -> String {
        let mut out = String::new();
        let pct = |c: u64, n: u64| {
            if n == 0 {
                0.0
            } else {
                c as f64 * 100.0 / n as f64
            }
        };
        for s in &self.per_subject {
            let _ = writeln!(
                out,
                "{} {:>5} s  engine {:5.1} % {:>3} flips  baseline {:5.1} % {:>4} flips  true {:>2}  {}",
                s.addr,
                s.seconds,
                pct(s.engine_correct, s.seconds),
                s.engine_flips,
                pct(s.baseline_correct, s.seconds),
                s.baseline_flips,
                s.true_flips,
                s.truth_path.join(">")
            );
        }
        out
    }

    /// `{"engine": {...}, "baseline": {...}}`, each with `accuracy`
    /// (fraction 0..=1), `flips_per_hour`, `entry_delay_s`, `exit_delay_s`
    /// (means, seconds).
    pub fn to_json(&self) -> serde_json::Value {
        let one = |s: &Scores| {
            json!({
                "accuracy": s.accuracy,
                "in_zone_accuracy": s.in_zone_accuracy,
                "flips_per_hour": s.flips_per_hour,
                "entry_delay_s": s.entry_delay_s,
                "exit_delay_s": s.exit_delay_s,
            })
        };
        let lag_bound: Vec<serde_json::Value> = self
            .lag_bound
            .iter()
            .map(|(lag_ms, accuracy)| json!({"lag_ms": lag_ms, "accuracy": accuracy}))
            .collect();
        json!({
            "engine": one(&self.engine),
            "baseline": one(&self.baseline),
            "lag_bound": lag_bound,
        })
    }
}

/// The presence config of a simulated store: each zone's scanner maps to
/// the zone (the entrance is a zone too); everything else default.
pub fn presence_config_for(spec: &firmware_sim::StoreSpec) -> PresenceConfig {
    presence_config_from_zones(
        spec.zones
            .iter()
            .map(|z| (z.scanner.as_str(), z.id.as_str())),
    )
}

/// A default presence config with the given scanner → zone map.
pub fn presence_config_from_zones<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> PresenceConfig {
    PresenceConfig {
        scanner_zone: pairs
            .into_iter()
            .map(|(scanner, zone)| (scanner.to_owned(), ZoneId::from(zone)))
            .collect(),
        ..PresenceConfig::default()
    }
}

/// Parse a capture (sighting records, JSON Lines) and a truth file and
/// evaluate. Blank lines are skipped; the first bad line is an error.
pub fn evaluate_capture(
    config: &PresenceConfig,
    capture_jsonl: &str,
    truth_jsonl: &str,
    opts: &EvalOptions<'_>,
) -> Result<EvalReport, EvalError> {
    let (sightings, truth) = parse_capture_and_truth(capture_jsonl, truth_jsonl)?;
    Ok(evaluate(config, &sightings, &truth, opts))
}

/// Parse a capture (sighting records, JSON Lines) and a truth file.
/// Blank lines are skipped; the first bad line is an error.
pub fn parse_capture_and_truth(
    capture_jsonl: &str,
    truth_jsonl: &str,
) -> Result<(Vec<Sighting>, Vec<TruthSpan>), EvalError> {
    let sightings =
        crate::jsonl::parse_all(capture_jsonl, Sighting::from_json).map_err(|(line, e)| {
            EvalError::Capture {
                line,
                field: e.field,
                reason: e.reason,
            }
        })?;
    let truth =
        crate::jsonl::parse_all(truth_jsonl, TruthSpan::from_json_line).map_err(|(line, e)| {
            EvalError::Truth {
                line,
                field: e.field,
                reason: e.reason,
            }
        })?;
    Ok((sightings, truth))
}

/// Where a contender has a subject at some moment.
#[derive(Clone, Debug, PartialEq)]
enum Place {
    Absent,
    Hall,
    Zone(ZoneId),
}

impl Place {
    fn name(&self) -> &str {
        match self {
            Place::Absent => "absent",
            Place::Hall => HALL,
            Place::Zone(z) => z,
        }
    }

    fn matches(&self, truth_zone: &str) -> bool {
        match self {
            Place::Absent => false,
            Place::Hall => truth_zone == HALL,
            Place::Zone(z) => &**z == truth_zone,
        }
    }
}

/// Per subject, the places a contender reported, in time order.
type Timelines = HashMap<String, Vec<(i64, Place)>>;

fn record(timelines: &mut Timelines, events: &[PresenceEvent]) {
    for event in events {
        let place = match event {
            PresenceEvent::Entered { .. } | PresenceEvent::ZoneLeft { .. } => Place::Hall,
            PresenceEvent::ZoneEntered { zone, .. } => Place::Zone(zone.clone()),
            PresenceEvent::Exited { .. } => Place::Absent,
            PresenceEvent::Dwell { .. } => continue,
        };
        timelines
            .entry(event.person().as_str().to_owned())
            .or_default()
            .push((event.at_ms(), place));
    }
}

/// Replay `sightings` through decode and presence (and the naive baseline)
/// and score both against `truth`. See the module docs for the rules.
pub fn evaluate(
    config: &PresenceConfig,
    sightings: &[Sighting],
    truth: &[TruthSpan],
    opts: &EvalOptions<'_>,
) -> EvalReport {
    let mut by_addr: BTreeMap<&str, Vec<&TruthSpan>> = BTreeMap::new();
    for span in truth {
        by_addr.entry(span.addr.as_str()).or_default().push(span);
    }
    for spans in by_addr.values_mut() {
        spans.sort_by_key(|s| (s.from_ms, s.to_ms));
    }
    let truth_end = truth.iter().map(|s| s.to_ms).max().unwrap_or(i64::MIN);

    let mut order: Vec<&Sighting> = sightings.iter().collect();
    order.sort_by_key(|s| s.at_ms);

    let mut engine = PresenceEngine::with_tuning(config.clone(), opts.tuning.clone());
    let mut baseline = Baseline::new(config);
    let mut engine_tl = Timelines::new();
    let mut baseline_tl = Timelines::new();
    let mut heard: BTreeSet<String> = BTreeSet::new();
    let mut not_people: BTreeSet<String> = BTreeSet::new();
    let mut ids: HashMap<String, PersonId> = HashMap::new();
    let mut frames: Vec<Frame> = Vec::new();
    let mut events = Vec::new();
    let mut undecodable = 0;
    let tick_ms = opts.tick_ms.max(1);
    let mut next_tick = order
        .first()
        .map_or(0, |s| s.at_ms.div_euclid(tick_ms) * tick_ms + tick_ms);

    let mut tick_to = |until: i64,
                       next_tick: &mut i64,
                       engine: &mut PresenceEngine,
                       baseline: &mut Baseline,
                       engine_tl: &mut Timelines,
                       baseline_tl: &mut Timelines| {
        while *next_tick <= until {
            if engine.present_count() == 0 && baseline.people.is_empty() {
                // Nobody to tick: skip the idle stretch (a capture may span
                // nights or days between visits) to the first tick after it.
                *next_tick += ((until - *next_tick) / tick_ms + 1) * tick_ms;
                break;
            }
            events.clear();
            engine.tick(*next_tick, &mut events);
            record(engine_tl, &events);
            events.clear();
            baseline.tick(*next_tick, &mut events);
            record(baseline_tl, &events);
            *next_tick += tick_ms;
        }
    };

    let mut step_events = Vec::new();
    for sighting in &order {
        tick_to(
            sighting.at_ms,
            &mut next_tick,
            &mut engine,
            &mut baseline,
            &mut engine_tl,
            &mut baseline_tl,
        );
        let addr = sighting.addr.to_string();
        let wanted = by_addr.contains_key(addr.as_str())
            && opts.subjects.as_ref().is_none_or(|s| s.contains(&addr));
        heard.insert(addr.clone());
        if decode_into(&sighting.adv, &opts.decode, &mut frames) == 0 {
            undecodable += 1;
            continue;
        }
        if opts.not_people.is_some_and(|is_not| is_not(&frames)) {
            not_people.insert(addr);
            continue;
        }
        if !wanted {
            continue;
        }
        let tx = frames.iter().find_map(Frame::tx_power_at_1m);
        let person = ids
            .entry(addr)
            .or_insert_with_key(|a| PersonId::from(a.as_str()));
        step_events.clear();
        engine.observe_with_power(
            person,
            &sighting.scanner,
            sighting.rssi,
            tx,
            sighting.at_ms,
            &mut step_events,
        );
        record(&mut engine_tl, &step_events);
        step_events.clear();
        baseline.observe(
            person,
            &sighting.scanner,
            sighting.rssi,
            sighting.at_ms,
            &mut step_events,
        );
        record(&mut baseline_tl, &step_events);
    }
    let last = order.last().map_or(truth_end, |s| s.at_ms).max(truth_end);
    // Long enough for every visit to close.
    let end = last.saturating_add(config.visit_gap_ms.max(0) + 2 * tick_ms + 1_000);
    tick_to(
        end,
        &mut next_tick,
        &mut engine,
        &mut baseline,
        &mut engine_tl,
        &mut baseline_tl,
    );

    let scored: Vec<(&str, &Vec<&TruthSpan>)> = by_addr
        .iter()
        .filter(|(addr, _)| heard.contains(**addr) && !not_people.contains(**addr))
        .filter(|(addr, _)| opts.subjects.as_ref().is_none_or(|s| s.contains(**addr)))
        .map(|(a, s)| (*a, s))
        .collect();
    let unscored = heard
        .iter()
        .filter(|a| !by_addr.contains_key(a.as_str()))
        .count();
    let unheard = by_addr.keys().filter(|a| !heard.contains(**a)).count();

    let (mut engine_scores, engine_each) = score(&scored, &engine_tl, truth_end);
    let (mut baseline_scores, baseline_each) = score(&scored, &baseline_tl, truth_end);
    let per_subject = scored
        .iter()
        .zip(engine_each.iter().zip(&baseline_each))
        .map(|((addr, spans), (e, b))| {
            let mut truth_path: Vec<String> = Vec::new();
            for span in spans.iter() {
                if truth_path.last() != Some(&span.zone) {
                    truth_path.push(span.zone.clone());
                }
            }
            SubjectScore {
                addr: (*addr).to_owned(),
                seconds: e.0,
                engine_correct: e.1,
                baseline_correct: b.1,
                engine_flips: e.2,
                baseline_flips: b.2,
                true_flips: e.3,
                truth_path,
            }
        })
        .collect();
    for s in [&mut engine_scores, &mut baseline_scores] {
        s.unscored_addrs = unscored;
        s.unheard_addrs = unheard;
        s.not_people_addrs = not_people.len();
    }
    let lag_bound = LAG_BOUND_MS
        .iter()
        .map(|&lag| (lag, late_truth_accuracy(&scored, lag)))
        .collect();
    EvalReport {
        engine: engine_scores,
        baseline: baseline_scores,
        undecodable,
        per_subject,
        lag_bound,
    }
}

/// (seconds, correct, flips, true flips) of one subject.
type SubjectStats = (u64, u64, u64, u64);

fn score(
    subjects: &[(&str, &Vec<&TruthSpan>)],
    timelines: &Timelines,
    truth_end: i64,
) -> (Scores, Vec<SubjectStats>) {
    let mut per_subject = Vec::new();
    let empty = Vec::new();
    let mut s = Scores::default();
    let (mut correct, mut total) = (0u64, 0u64);
    let (mut in_zone_correct, mut in_zone_total) = (0u64, 0u64);
    let mut extra_flips = 0u64;
    let (mut entry_sum, mut entries) = (0.0, 0usize);
    let (mut exit_sum, mut exits) = (0.0, 0usize);
    for (addr, spans) in subjects {
        let Some(first) = spans.first() else { continue };
        let last_to = spans.iter().map(|s| s.to_ms).max().unwrap_or(first.to_ms);
        let tl = timelines.get(*addr).unwrap_or(&empty);
        s.subjects += 1;
        let (total_before, correct_before) = (total, correct);

        // Accuracy, at every whole second inside the truth.
        for span in spans.iter() {
            for t in whole_seconds(span) {
                total += 1;
                let believed = place_at(tl, t);
                let right = believed.matches(&span.zone);
                if right {
                    correct += 1;
                }
                if span.zone != HALL {
                    in_zone_total += 1;
                    in_zone_correct += u64::from(right);
                }
                *s.confusion
                    .entry((span.zone.clone(), believed.name().to_owned()))
                    .or_default() += 1;
            }
        }

        // Flips: place changes while present, inside the truth's time.
        let mut true_flips = 0u64;
        for pair in spans.windows(2) {
            if pair[0].zone != pair[1].zone {
                true_flips += 1;
            }
        }
        let mut flips = 0u64;
        let mut previous: Option<&Place> = None;
        for (i, (at, place)) in tl.iter().enumerate() {
            // Several events at one instant are one change.
            if tl.get(i + 1).is_some_and(|(next, _)| next == at) {
                continue;
            }
            if *at > last_to {
                break;
            }
            if *at >= first.from_ms {
                if let (Some(prev), Place::Hall | Place::Zone(_)) = (previous, place) {
                    if *prev != Place::Absent && prev != place {
                        flips += 1;
                        let (from, to) =
                            (at - WRONG_MOVE_TOLERANCE_MS, at + WRONG_MOVE_TOLERANCE_MS);
                        let near = spans
                            .iter()
                            .any(|s| s.from_ms <= to && from < s.to_ms && place.matches(&s.zone));
                        if !near {
                            s.wrong_moves += 1;
                        }
                    }
                }
            }
            previous = Some(place);
        }
        s.flips += flips;
        s.true_flips += true_flips;
        extra_flips += flips.saturating_sub(true_flips);
        per_subject.push((
            total - total_before,
            correct - correct_before,
            flips,
            true_flips,
        ));

        // Entry.
        match tl.iter().find(|(_, p)| *p != Place::Absent) {
            Some((at, _)) => {
                let d = (at - first.from_ms).max(0) as f64 / 1000.0;
                entry_sum += d;
                entries += 1;
                s.entry_delay_max_s = s.entry_delay_max_s.max(d);
            }
            None => s.missed_entries += 1,
        }
        // Exit, unless the subject is still there when the truth ends.
        if last_to < truth_end {
            match tl.last() {
                Some((at, Place::Absent)) => {
                    let d = (at - last_to).max(0) as f64 / 1000.0;
                    exit_sum += d;
                    exits += 1;
                    s.exit_delay_max_s = s.exit_delay_max_s.max(d);
                }
                _ => s.missed_exits += 1,
            }
        }
    }
    s.subject_seconds = total;
    s.accuracy = share(correct, total);
    s.in_zone_accuracy = share(in_zone_correct, in_zone_total);
    s.flips_per_hour = if total == 0 {
        0.0
    } else {
        extra_flips as f64 / (total as f64 / 3600.0)
    };
    s.entry_delay_s = if entries == 0 {
        0.0
    } else {
        entry_sum / entries as f64
    };
    s.exit_delay_s = if exits == 0 {
        0.0
    } else {
        exit_sum / exits as f64
    };
    (s, per_subject)
}

/// The whole seconds (Unix ms) inside a truth span: the instants scored.
fn whole_seconds(span: &TruthSpan) -> impl Iterator<Item = i64> {
    let first = span.from_ms.div_euclid(1000) * 1000;
    let first = if first < span.from_ms {
        first + 1000
    } else {
        first
    };
    (first..span.to_ms).step_by(1000)
}

/// Accuracy, over the scored seconds, of the truth itself delayed by
/// `lag_ms`: absent until the first span has lasted `lag_ms`, then always
/// the place the subject was `lag_ms` earlier.
fn late_truth_accuracy(subjects: &[(&str, &Vec<&TruthSpan>)], lag_ms: i64) -> f64 {
    let (mut correct, mut total) = (0u64, 0u64);
    for (_, spans) in subjects {
        let zone_at = |t: i64| {
            spans
                .iter()
                .find(|s| s.from_ms <= t && t < s.to_ms)
                .map(|s| s.zone.as_str())
        };
        for span in spans.iter() {
            for t in whole_seconds(span) {
                total += 1;
                correct += u64::from(zone_at(t - lag_ms) == Some(span.zone.as_str()));
            }
        }
    }
    share(correct, total)
}

/// `part / whole`, 0 when there is nothing to share.
fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn place_at(timeline: &[(i64, Place)], t: i64) -> &Place {
    let n = timeline.partition_point(|(at, _)| *at <= t);
    if n == 0 {
        &Place::Absent
    } else {
        &timeline[n - 1].1
    }
}

/// The naive contender: strongest recent reading's zone wins.
struct Baseline {
    config: PresenceConfig,
    people: HashMap<PersonId, BaselinePerson>,
}

struct BaselinePerson {
    last_seen_ms: i64,
    /// Latest reading per scanner: (at_ms, level, zone). Ordered, so that
    /// ties are broken the same way on every run.
    latest: BTreeMap<String, (i64, f32, ZoneId)>,
    zone: Option<ZoneId>,
}

impl Baseline {
    fn new(config: &PresenceConfig) -> Self {
        Baseline {
            config: config.clone(),
            people: HashMap::new(),
        }
    }

    fn observe(
        &mut self,
        person: &PersonId,
        scanner: &str,
        rssi: i16,
        at_ms: i64,
        out: &mut Vec<PresenceEvent>,
    ) {
        if rssi < self.config.min_rssi {
            return;
        }
        let offset = self
            .config
            .scanner_offset_db
            .get(scanner)
            .copied()
            .unwrap_or(0.0);
        let state = self.people.entry(person.clone()).or_insert_with(|| {
            out.push(PresenceEvent::Entered {
                person: person.clone(),
                visit: at_ms,
                at_ms,
            });
            BaselinePerson {
                last_seen_ms: at_ms,
                latest: BTreeMap::new(),
                zone: None,
            }
        });
        state.last_seen_ms = state.last_seen_ms.max(at_ms);
        let zone = self.config.zone_of(scanner);
        state
            .latest
            .insert(scanner.to_owned(), (at_ms, f32::from(rssi) + offset, zone));
        let now = state.last_seen_ms;
        let best = state
            .latest
            .values()
            .filter(|(t, _, _)| now - t <= BASELINE_WINDOW_MS)
            .max_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
            .map(|(_, _, z)| z.clone());
        if let Some(best) = best {
            if state.zone.as_ref() != Some(&best) {
                if let Some(old) = state.zone.take() {
                    out.push(PresenceEvent::ZoneLeft {
                        person: person.clone(),
                        visit: 0,
                        zone: old,
                        dwell_s: 0,
                        at_ms: now,
                    });
                }
                out.push(PresenceEvent::ZoneEntered {
                    person: person.clone(),
                    visit: 0,
                    zone: Arc::clone(&best),
                    at_ms: now,
                });
                state.zone = Some(best);
            }
        }
    }

    fn tick(&mut self, now_ms: i64, out: &mut Vec<PresenceEvent>) {
        let gap = self.config.visit_gap_ms;
        self.people.retain(|person, state| {
            if now_ms - state.last_seen_ms > gap {
                out.push(PresenceEvent::Exited {
                    person: person.clone(),
                    visit: 0,
                    at_ms: now_ms,
                });
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truth_lines_parse_strictly() {
        let ok = TruthSpan::from_json_line(
            r#"{"addr": "02:00:00:00:00:01", "from_ms": 0, "to_ms": 5000, "zone": "hall"}"#,
        )
        .unwrap();
        assert_eq!(ok.addr, "02:00:00:00:00:01");
        assert_eq!((ok.from_ms, ok.to_ms), (0, 5000));
        let field = |line: &str| TruthSpan::from_json_line(line).unwrap_err().field;
        assert_eq!(field("nope"), "record");
        assert_eq!(field("[]"), "record");
        assert_eq!(
            field(r#"{"addr":"02:00:00:00:00:01","from_ms":0,"to_ms":1,"zone":"z","x":1}"#),
            "record"
        );
        assert_eq!(field(r#"{"from_ms":0,"to_ms":1,"zone":"z"}"#), "addr");
        assert_eq!(
            field(r#"{"addr":"02:00","from_ms":0,"to_ms":1,"zone":"z"}"#),
            "addr"
        );
        assert_eq!(
            field(r#"{"addr":"02:00:00:00:00:01","from_ms":"0","to_ms":1,"zone":"z"}"#),
            "from_ms"
        );
        assert_eq!(
            field(r#"{"addr":"02:00:00:00:00:01","from_ms":5,"to_ms":1,"zone":"z"}"#),
            "to_ms"
        );
        assert_eq!(
            field(r#"{"addr":"02:00:00:00:00:01","from_ms":0,"to_ms":1,"zone":""}"#),
            "zone"
        );
        assert_eq!(
            field(r#"{"addr":"02:00:00:00:00:01","from_ms":-5,"to_ms":1,"zone":"z"}"#),
            "from_ms"
        );
        assert_eq!(
            field(
                r#"{"addr":"02:00:00:00:00:01","from_ms":0,"to_ms":9223372036854775807,"zone":"z"}"#
            ),
            "to_ms"
        );
        assert_eq!(
            field(r#"{"addr":"02:00:00:00:00:01","from_ms":0,"to_ms":31708800001,"zone":"z"}"#),
            "to_ms"
        );
    }

    #[test]
    fn capture_errors_name_file_line_and_field() {
        let config = PresenceConfig::default();
        let truth = r#"{"addr": "02:00:00:00:00:01", "from_ms": 0, "to_ms": 5000, "zone": "hall"}"#;
        let bad_capture = "\n{\"scanner\": \"a\"}\n";
        let err =
            evaluate_capture(&config, bad_capture, truth, &EvalOptions::default()).unwrap_err();
        assert!(matches!(err, EvalError::Capture { line: 2, .. }), "{err}");
        let err = evaluate_capture(&config, "", "{}\n", &EvalOptions::default()).unwrap_err();
        assert_eq!(err.to_string(), "truth line 1: addr: missing");
    }

    /// With a way to tell the store's beacons, their addresses are left out
    /// of the score (person-seconds) and counted.
    #[test]
    fn devices_that_are_not_people_are_left_out() {
        let config = presence_config_from_zones([("laptops", "laptops")]);
        let ibeacon = "0201061aff4c000215426c7565436861726d426561636f6e730001000bc5";
        let mut capture = String::new();
        for t in 0..30 {
            for (addr, adv) in [
                ("02:00:00:00:00:01", "020106"),
                ("c0:42:00:00:01:02", ibeacon),
            ] {
                let _ = writeln!(
                    capture,
                    r#"{{"scanner":"laptops","addr":"{addr}","rssi":-60,"adv":"{adv}","at_ms":{}}}"#,
                    t * 1000
                );
            }
        }
        let truth: String = ["02:00:00:00:00:01", "c0:42:00:00:01:02"]
            .iter()
            .map(|a| {
                format!("{{\"addr\":\"{a}\",\"from_ms\":0,\"to_ms\":30000,\"zone\":\"laptops\"}}\n")
            })
            .collect();
        let is_ibeacon =
            |frames: &[Frame]| frames.iter().any(|f| matches!(f, Frame::IBeacon { .. }));
        let everyone =
            evaluate_capture(&config, &capture, &truth, &EvalOptions::default()).unwrap();
        let people = EvalOptions {
            not_people: Some(&is_ibeacon),
            ..EvalOptions::default()
        };
        let people = evaluate_capture(&config, &capture, &truth, &people).unwrap();
        assert_eq!(
            (everyone.engine.subjects, everyone.engine.not_people_addrs),
            (2, 0)
        );
        assert_eq!(
            (people.engine.subjects, people.engine.not_people_addrs),
            (1, 1)
        );
        assert_eq!(people.per_subject[0].addr, "02:00:00:00:00:01");
    }

    /// A tiny hand-made capture: one subject standing under one scanner,
    /// then leaving. Both contenders are right; delays are what they are.
    #[test]
    fn a_still_subject_is_scored_right_and_json_has_the_contract_keys() {
        let config =
            presence_config_from_zones([("laptops", "laptops"), ("headphones", "headphones")]);
        let addr = "02:00:00:00:00:01";
        let mut capture = String::new();
        for t in 0..60 {
            for (scanner, rssi) in [("laptops", -62), ("headphones", -80)] {
                let _ = writeln!(
                    capture,
                    r#"{{"scanner":"{scanner}","addr":"{addr}","rssi":{rssi},"adv":"020106","at_ms":{}}}"#,
                    t * 1000
                );
            }
        }
        let truth = format!(
            "{{\"addr\":\"{addr}\",\"from_ms\":0,\"to_ms\":60000,\"zone\":\"laptops\"}}\n\
             {{\"addr\":\"02:00:00:00:00:09\",\"from_ms\":0,\"to_ms\":90000,\"zone\":\"hall\"}}\n"
        );
        let report = evaluate_capture(&config, &capture, &truth, &EvalOptions::default()).unwrap();
        assert_eq!(report.engine.subjects, 1);
        assert_eq!(report.engine.unheard_addrs, 1);
        assert!(report.engine.accuracy > 0.99, "{}", report.to_table());
        assert_eq!(report.engine.flips, 0);
        assert!(report.engine.exit_delay_s > 40.0 && report.engine.exit_delay_s < 50.0);
        assert!(report.baseline.accuracy > 0.99);
        let json = report.to_json();
        for who in ["engine", "baseline"] {
            for key in [
                "accuracy",
                "flips_per_hour",
                "entry_delay_s",
                "exit_delay_s",
            ] {
                assert!(json[who][key].is_number(), "{who}.{key}: {json}");
            }
        }
        assert!(report.to_table().contains("zone accuracy"));
    }

    /// Two visits 200 days apart (a capture of many store days): the idle
    /// stretch between them is skipped, and the second visit is scored as
    /// exactly as the first.
    #[test]
    fn a_long_idle_stretch_between_visits_is_skipped_and_scored_alike() {
        let config = presence_config_from_zones([("laptops", "laptops")]);
        let later = 200 * 86_400_000i64;
        let mut capture = String::new();
        let mut truth = String::new();
        for (addr, start) in [("02:00:00:00:00:01", 0), ("02:00:00:00:00:02", later)] {
            for t in 0..30 {
                let _ = writeln!(
                    capture,
                    r#"{{"scanner":"laptops","addr":"{addr}","rssi":-60,"adv":"020106","at_ms":{}}}"#,
                    start + t * 1000
                );
            }
            let _ = writeln!(
                truth,
                r#"{{"addr":"{addr}","from_ms":{start},"to_ms":{},"zone":"laptops"}}"#,
                start + 30_000
            );
        }
        let report = evaluate_capture(&config, &capture, &truth, &EvalOptions::default()).unwrap();
        assert_eq!(report.per_subject.len(), 2);
        let (a, b) = (&report.per_subject[0], &report.per_subject[1]);
        assert_eq!((a.seconds, a.engine_correct), (30, 30));
        assert_eq!((b.seconds, b.engine_correct), (30, 30));
        // The first visit's exit is measured across the skip; the second
        // is still open when the truth ends, so it has no exit to miss.
        assert_eq!(report.engine.missed_exits, 0);
        let exit = report.engine.exit_delay_max_s;
        assert!((40.0..50.0).contains(&exit), "{exit}");
        assert_eq!(report.engine.missed_entries, 0);
    }

    /// A subject walks laptops (20 s) → hall (4 s) → headphones (16 s)
    /// while the capture keeps it loud under the laptops scanner: the
    /// engine is right for the 20 laptops seconds only. The in-zone figure
    /// leaves the 4 hall seconds out; the lag bound is the truth itself,
    /// late.
    #[test]
    fn in_zone_accuracy_leaves_the_hall_out_and_the_lag_bound_is_the_late_truth() {
        let config =
            presence_config_from_zones([("laptops", "laptops"), ("headphones", "headphones")]);
        let addr = "02:00:00:00:00:01";
        let mut capture = String::new();
        for t in 0..40 {
            let _ = writeln!(
                capture,
                r#"{{"scanner":"laptops","addr":"{addr}","rssi":-60,"adv":"020106","at_ms":{}}}"#,
                t * 1000
            );
        }
        let span = |from: i64, to: i64, zone: &str| {
            format!(
                "{{\"addr\":\"{addr}\",\"from_ms\":{from},\"to_ms\":{to},\"zone\":\"{zone}\"}}\n"
            )
        };
        let truth = span(0, 20_000, "laptops")
            + &span(20_000, 24_000, "hall")
            + &span(24_000, 40_000, "headphones");
        let report = evaluate_capture(&config, &capture, &truth, &EvalOptions::default()).unwrap();
        let e = &report.engine;
        assert_eq!(e.subject_seconds, 40);
        assert!((e.accuracy - 20.0 / 40.0).abs() < 1e-9, "{}", e.accuracy);
        assert!((e.in_zone_accuracy - 20.0 / 36.0).abs() < 1e-9);
        // Late by 1 s: the first second (not yet seen) and the first second
        // after each of the two moves are wrong.
        let late = |lag: i64| {
            report
                .lag_bound
                .iter()
                .find(|(l, _)| *l == lag)
                .map(|(_, a)| *a)
                .unwrap()
        };
        assert!(
            (late(1_000) - 37.0 / 40.0).abs() < 1e-9,
            "{:?}",
            report.lag_bound
        );
        assert!(
            (late(3_000) - 31.0 / 40.0).abs() < 1e-9,
            "{:?}",
            report.lag_bound
        );
        assert_eq!(
            report.lag_bound.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
            LAG_BOUND_MS
        );
        assert!(report.to_table().contains("late by: 0.5 s"));
        assert!(report.to_json()["lag_bound"][0]["accuracy"].is_number());
        assert!(report.to_json()["engine"]["in_zone_accuracy"].is_number());
    }
}
