//! Dry run: replay a capture (sighting records, docs/design.md §7) through the real
//! decode → rotating-id resolution → presence → decide path, with caps kept
//! in memory instead of sled, and report what the rules WOULD have sent:
//! per rule, per kind, per hour of store-local time, and the caps that held
//! nudges back. Nothing is written, nothing is published.
//!
//! Marketing uses it before a rule goes live ("how many nudges would this
//! send on a busy Saturday, and which cap bites first?").
//!
//! In a chain (`[caps.chain]`) the chain's caps count this store's own
//! sends, and, when given, the other stores' decisions recorded from
//! `<p>/chain/decisions/+` ([`SimulateOptions::chain_decisions`]): each
//! counts from its own time on, as if the link had carried it at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use chrono::{TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::chain_message::ChainDecision;
use crate::config::Config;
use crate::decide::{
    self, Catalog, ChainDay, ChainEntry, ChainLedger, ChainView, ContentSources, Happening, Ledger,
    Limits, NudgeKind, Offer, Prepared, SkipReason, StoreRateLedger, Trigger, TriggeredRule,
    Verdict,
};
use crate::decode::{Frame, decode_into};
use crate::identity::{PersonId, PersonRecord, RotatingIdTable};
use crate::presence::{PresenceEngine, PresenceEvent};
use crate::privacy::hashed;
use crate::sighting::Sighting;

/// The pipeline ticks presence this often (capture time).
const TICK_MS: i64 = 500;
const HOUR_MS: i64 = 3_600_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SimulateError {
    /// A capture line that is not a sighting record; nothing is reported.
    #[error("capture line {line}: {reason}")]
    Capture { line: usize, reason: String },
    /// Other stores' decisions given for a site without `[caps.chain]`.
    #[error(
        "chain decisions were given but the site file has no [caps.chain]: nothing would count them"
    )]
    ChainWithoutCaps,
}

/// What to simulate beyond the config's own (dwell) rules.
#[derive(Clone, Debug, Default)]
pub struct SimulateOptions {
    /// Rules with other triggers (exit, nth visit...), added to
    /// `config.rules`.
    pub extra_rules: Vec<TriggeredRule>,
    pub catalog: Option<Catalog>,
    pub offers: Vec<Offer>,
    /// Other stores' decisions (`<p>/chain/decisions/+` payloads, parsed
    /// by [`crate::chain_message::parse_decision`]); only with `[caps.chain]`.
    pub chain_decisions: Vec<ChainDecision>,
}

/// One nudge the rules would have sent. `person` is the same salted tag the
/// logs use, never the CRM id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SimulatedNudge {
    pub at_ms: i64,
    pub person: String,
    pub rule: String,
    pub kind: NudgeKind,
    pub zone: String,
}

/// One nudge held back, with the reason's label (`min_gap`, `no_consent`...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SimulatedHold {
    pub at_ms: i64,
    pub person: String,
    pub rule: String,
    pub kind: NudgeKind,
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RuleCounts {
    pub sent: u64,
    /// Held back, by reason label.
    pub held: BTreeMap<String, u64>,
}

/// One hour of store-local time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HourCount {
    /// Local start of the hour with its UTC offset, e.g. `2026-11-23 09:00 +01:00`.
    pub hour: String,
    pub start_ms: i64,
    pub sent: u64,
    pub held: u64,
}

/// The configured limits, as the report shows them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CapsShown {
    pub per_visit: u32,
    pub per_day: u32,
    pub per_week: u32,
    pub min_gap_s: u32,
    pub per_kind_per_day: Option<u32>,
    pub rule_cooldown_s: u32,
    pub store_per_minute: Option<u32>,
    /// `[caps.chain]`, when the site has it.
    pub chain: Option<ChainCapsShown>,
}

/// The chain-wide caps, as the report shows them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChainCapsShown {
    pub per_day: u32,
    pub per_week: u32,
    pub min_gap_s: u32,
    /// `home` (the customer's time zone) or `chain`.
    pub day: &'static str,
    pub timezone: String,
}

/// Other stores' decisions given to the dry run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChainReplay {
    /// Counted against the chain caps of someone in the people file.
    pub counted: u64,
    /// For a chain hash that none of the people file's people has.
    pub unknown_person: u64,
    /// The same nudge id more than once (counted once, as the daemon).
    pub duplicate: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimulationReport {
    pub store_id: String,
    pub timezone: String,
    /// Time span of the capture (Unix ms), `None` for an empty capture.
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub sightings: u64,
    pub people_recognised: usize,
    pub per_rule: BTreeMap<String, RuleCounts>,
    pub per_kind: BTreeMap<String, u64>,
    pub per_hour: Vec<HourCount>,
    /// Nudges held by a cap (or quiet hours / store rate), by reason label.
    pub caps_hit: BTreeMap<String, u64>,
    /// Held for other reasons: consent, kill switch, a template with nothing
    /// to fill in (`template`), an offer rule with no offer (`no_offer`).
    pub other_holds: BTreeMap<String, u64>,
    pub caps: CapsShown,
    /// Other stores' decisions replayed (`None` outside a chain).
    pub chain: Option<ChainReplay>,
    pub sent: Vec<SimulatedNudge>,
    pub held: Vec<SimulatedHold>,
}

fn is_cap(reason: &SkipReason) -> bool {
    !matches!(
        reason,
        SkipReason::NoConsent { .. } | SkipReason::KillSwitch
    )
}

/// Replay `capture_jsonl` with the config's rules and in-memory caps.
pub fn simulate(
    config: &Config,
    capture_jsonl: &str,
    people: &[PersonRecord],
) -> Result<SimulationReport, SimulateError> {
    simulate_with(config, capture_jsonl, people, &SimulateOptions::default())
}

struct Run<'c> {
    config: &'c Config,
    options: &'c SimulateOptions,
    rules: Vec<TriggeredRule>,
    people: HashMap<PersonId, PersonRecord>,
    ledgers: HashMap<PersonId, Ledger>,
    rate: StoreRateLedger,
    visits: HashMap<PersonId, u32>,
    /// Other stores' decisions for the people file's people, in time
    /// order, not yet folded into `chain_ledgers`.
    chain_pending: std::collections::VecDeque<(PersonId, ChainEntry)>,
    chain_ledgers: HashMap<PersonId, ChainLedger>,
    chain_replay: ChainReplay,
    sent: Vec<SimulatedNudge>,
    held: Vec<SimulatedHold>,
}

/// [`simulate`] with extra rules, a catalog and offers.
pub fn simulate_with(
    config: &Config,
    capture_jsonl: &str,
    people: &[PersonRecord],
    options: &SimulateOptions,
) -> Result<SimulationReport, SimulateError> {
    let mut sightings =
        crate::jsonl::parse_all(capture_jsonl, Sighting::from_json).map_err(|(line, e)| {
            SimulateError::Capture {
                line,
                reason: e.to_string(),
            }
        })?;
    // Sources deliver roughly in order; replay in capture-time order.
    sightings.sort_by_key(|s| s.at_ms);
    let (chain_pending, chain_replay) = chain_decisions_by_person(config, people, options)?;

    let mut rules = decide::dwell_rules(&config.rules);
    rules.extend(options.extra_rules.iter().cloned());
    let mut presence_config = config.presence.clone();
    for r in &rules {
        if let Trigger::Dwell { dwell_s, .. } = r.trigger {
            presence_config.dwell_thresholds_s.insert(dwell_s);
        }
    }
    let mut table = RotatingIdTable::new();
    // Owners are positions in `people`.
    for (owner, p) in people.iter().enumerate() {
        for key in p.app_keys() {
            table.insert_key(owner as u32, *key);
        }
    }
    let mut run = Run {
        config,
        options,
        rules,
        people: people
            .iter()
            .map(|p| (p.person.clone(), p.clone()))
            .collect(),
        ledgers: HashMap::new(),
        rate: StoreRateLedger::default(),
        visits: HashMap::new(),
        chain_pending,
        chain_ledgers: HashMap::new(),
        chain_replay,
        sent: Vec::new(),
        held: Vec::new(),
    };
    let mut presence = PresenceEngine::new(presence_config.clone());
    let mut recognised: BTreeSet<PersonId> = BTreeSet::new();
    let mut frames = Vec::new();
    let mut events = Vec::new();
    let mut last_tick = sightings.first().map_or(0, |s| s.at_ms);
    for s in &sightings {
        while s.at_ms - last_tick >= TICK_MS {
            last_tick += TICK_MS;
            events.clear();
            presence.tick(last_tick, &mut events);
            run.handle(&events);
        }
        table.roll_to(s.at_ms / 1000);
        decode_into(&s.adv, &config.decode, &mut frames);
        events.clear();
        for (rotating_id, tx_power) in frames.iter().filter_map(Frame::app_token) {
            let Some(owner) = table.lookup(rotating_id) else {
                continue;
            };
            let person = &people[owner as usize].person;
            // As the daemon: without proximity consent a person is a stranger.
            if !run
                .people
                .get(person)
                .is_some_and(|r| r.consent.opted_in_to_proximity())
            {
                continue;
            }
            recognised.insert(person.clone());
            // As the daemon: the power the advert announces corrects its level.
            presence.observe_with_power(
                person,
                &s.scanner,
                s.rssi,
                Some(tx_power),
                s.at_ms,
                &mut events,
            );
        }
        run.handle(&events);
    }
    // Let everyone leave: zone timeouts and visit ends after the last record.
    if let Some(last) = sightings.last() {
        let end = last.at_ms
            + presence_config
                .visit_gap_ms
                .max(presence_config.zone_timeout_ms)
            + 2 * TICK_MS;
        while last_tick < end {
            last_tick += TICK_MS;
            events.clear();
            presence.tick(last_tick, &mut events);
            run.handle(&events);
        }
    }
    Ok(run.report(
        sightings.first().map(|s| s.at_ms),
        sightings.last().map(|s| s.at_ms),
        sightings.len() as u64,
        recognised.len(),
    ))
}

/// The other stores' decisions for the people file's people, in time
/// order, and what became of the rest.
fn chain_decisions_by_person(
    config: &Config,
    people: &[PersonRecord],
    options: &SimulateOptions,
) -> Result<
    (
        std::collections::VecDeque<(PersonId, ChainEntry)>,
        ChainReplay,
    ),
    SimulateError,
> {
    let mut replay = ChainReplay::default();
    let Some(chain) = &config.chain else {
        if options.chain_decisions.is_empty() {
            return Ok((Default::default(), replay));
        }
        return Err(SimulateError::ChainWithoutCaps);
    };
    let by_hash: HashMap<_, &PersonId> = people
        .iter()
        .map(|p| (chain.person(p.person.as_str()), &p.person))
        .collect();
    let mut seen = BTreeSet::new();
    let mut pending = Vec::with_capacity(options.chain_decisions.len());
    for decision in &options.chain_decisions {
        if !seen.insert(decision.entry.nudge_id.as_str()) {
            replay.duplicate += 1;
        } else if let Some(person) = by_hash.get(&decision.person) {
            replay.counted += 1;
            pending.push(((*person).clone(), decision.entry.clone()));
        } else {
            replay.unknown_person += 1;
        }
    }
    pending.sort_by_key(|(_, entry)| entry.at_ms);
    Ok((pending.into(), replay))
}

impl Run<'_> {
    /// Fold the other stores' decisions made up to `now_ms`: a decision
    /// counts what the chain had told the store by then.
    fn fold_chain_until(&mut self, now_ms: i64) {
        while self
            .chain_pending
            .front()
            .is_some_and(|(_, entry)| entry.at_ms <= now_ms)
        {
            let Some((person, entry)) = self.chain_pending.pop_front() else {
                break;
            };
            let at_ms = entry.at_ms;
            self.chain_ledgers
                .entry(person)
                .or_default()
                .fold(entry, at_ms);
        }
    }

    fn handle(&mut self, events: &[PresenceEvent]) {
        for event in events {
            let Some(person) = self.people.get(event.person()).cloned() else {
                continue;
            };
            self.fold_chain_until(event.at_ms());
            // As the daemon (`Store::count_visit`): every visit counts.
            let visit_number = match event {
                PresenceEvent::Entered { .. } => {
                    let n = self.visits.entry(person.person.clone()).or_default();
                    *n += 1;
                    Some(*n)
                }
                _ => None,
            };
            self.decide(
                &person,
                &Happening::Presence {
                    event,
                    visit_number,
                },
            );
        }
    }

    /// The daemon's decision step (`decide::prepare` then `decide::choose`),
    /// with the ledgers in memory.
    fn decide(&mut self, person: &PersonRecord, happening: &Happening<'_>) {
        let config = self.config;
        let sources = ContentSources {
            catalog: self.options.catalog.as_ref(),
            offers: &self.options.offers,
        };
        let prepared = decide::prepare(happening, person, &self.rules, &sources);
        let limits = Limits {
            caps: &config.caps,
            quiet: config.quiet_hours.as_ref(),
            tz: &config.timezone,
            enabled: config.nudges_enabled,
        };
        // As the daemon (`pipeline.rs`): a day at "home" is the person's
        // own time zone when the record names a valid one.
        let home = person
            .timezone
            .as_deref()
            .and_then(|tz| tz.parse::<chrono_tz::Tz>().ok());
        let no_entries = ChainLedger::default();
        let view = config.chain.as_ref().map(|chain| ChainView {
            caps: &chain.caps,
            others: self
                .chain_ledgers
                .get(&person.person)
                .unwrap_or(&no_entries),
            home: home.as_ref(),
        });
        let ledger = self.ledgers.entry(person.person.clone()).or_default();
        let choice =
            decide::choose_in_chain(&prepared, ledger, view.as_ref(), &mut self.rate, &limits);
        let tag = hashed(person.person.as_str());
        for (Prepared { candidate, content }, verdict) in prepared.iter().zip(choice.verdicts) {
            let reason = match (verdict, content) {
                (Verdict::Sent, _) => {
                    self.sent.push(SimulatedNudge {
                        at_ms: candidate.at_ms,
                        person: tag.clone(),
                        rule: candidate.rule.id.clone(),
                        kind: candidate.rule.kind,
                        zone: candidate.zone.to_string(),
                    });
                    continue;
                }
                (Verdict::Held(reason), _) => reason.label(),
                (Verdict::NotReady, Err(not_ready)) => not_ready.label(),
                (Verdict::NotReady, Ok(_)) => continue,
            };
            self.held.push(SimulatedHold {
                at_ms: candidate.at_ms,
                person: tag.clone(),
                rule: candidate.rule.id.clone(),
                kind: candidate.rule.kind,
                reason: reason.to_string(),
            });
        }
    }

    fn report(
        self,
        from_ms: Option<i64>,
        to_ms: Option<i64>,
        sightings: u64,
        people_recognised: usize,
    ) -> SimulationReport {
        let tz = self.config.timezone;
        let mut per_rule: BTreeMap<String, RuleCounts> = BTreeMap::new();
        for r in &self.rules {
            per_rule.entry(r.rule.id.clone()).or_default();
        }
        let mut per_kind: BTreeMap<String, u64> = BTreeMap::new();
        for n in &self.sent {
            per_rule.entry(n.rule.clone()).or_default().sent += 1;
            *per_kind.entry(n.kind.as_str().to_string()).or_default() += 1;
        }
        let cap_labels: BTreeSet<&str> = [
            SkipReason::QuietHours,
            SkipReason::PerVisit { limit: 0 },
            SkipReason::PerDay { limit: 0 },
            SkipReason::PerWeek { limit: 0 },
            SkipReason::MinGap { gap_s: 0 },
            SkipReason::PerKindPerDay { limit: 0 },
            SkipReason::RuleCooldown { cooldown_s: 0 },
            SkipReason::StoreRate { per_minute: 0 },
            SkipReason::ChainPerDay { limit: 0 },
            SkipReason::ChainPerWeek { limit: 0 },
            SkipReason::ChainMinGap { gap_s: 0 },
        ]
        .iter()
        .filter(|r| is_cap(r))
        .map(|r| r.label())
        .collect();
        let mut caps_hit = BTreeMap::new();
        let mut other_holds = BTreeMap::new();
        for h in &self.held {
            *per_rule
                .entry(h.rule.clone())
                .or_default()
                .held
                .entry(h.reason.clone())
                .or_default() += 1;
            let bucket = if cap_labels.contains(h.reason.as_str()) {
                &mut caps_hit
            } else {
                &mut other_holds
            };
            *bucket.entry(h.reason.clone()).or_default() += 1;
        }
        let mut per_hour = Vec::new();
        if let (Some(from), Some(to)) = (from_ms, to_ms) {
            let mut start = local_hour_start(&tz, from);
            // Decisions can come a little after the last record (exits).
            let last = self
                .sent
                .iter()
                .map(|n| n.at_ms)
                .chain(self.held.iter().map(|h| h.at_ms))
                .fold(to, i64::max);
            while start <= last {
                let count = |t: i64| (start..start + HOUR_MS).contains(&t);
                per_hour.push(HourCount {
                    hour: hour_label(&tz, start),
                    start_ms: start,
                    sent: self.sent.iter().filter(|n| count(n.at_ms)).count() as u64,
                    held: self.held.iter().filter(|h| count(h.at_ms)).count() as u64,
                });
                start += HOUR_MS;
            }
        }
        let c = &self.config.caps;
        SimulationReport {
            store_id: self.config.store_id.clone(),
            timezone: tz.name().to_string(),
            from_ms,
            to_ms,
            sightings,
            people_recognised,
            per_rule,
            per_kind,
            per_hour,
            caps_hit,
            other_holds,
            caps: CapsShown {
                per_visit: c.per_visit,
                per_day: c.per_day,
                per_week: c.per_week,
                min_gap_s: c.min_gap_s,
                per_kind_per_day: c.per_kind_per_day,
                rule_cooldown_s: c.rule_cooldown_s,
                store_per_minute: c.store_per_minute,
                chain: self.config.chain.as_ref().map(|chain| ChainCapsShown {
                    per_day: chain.caps.per_day,
                    per_week: chain.caps.per_week,
                    min_gap_s: chain.caps.min_gap_s,
                    day: match chain.caps.day {
                        ChainDay::Home => "home",
                        ChainDay::Chain => "chain",
                    },
                    timezone: chain.caps.timezone.name().to_string(),
                }),
            },
            chain: self.config.chain.as_ref().map(|_| self.chain_replay),
            sent: self.sent,
            held: self.held,
        }
    }
}

/// The instant the store-local hour containing `at_ms` started.
fn local_hour_start(tz: &Tz, at_ms: i64) -> i64 {
    match Utc.timestamp_millis_opt(at_ms).single() {
        Some(t) => {
            let local = t.with_timezone(tz);
            at_ms
                - i64::from(local.minute()) * 60_000
                - i64::from(local.second()) * 1000
                - i64::from(local.timestamp_subsec_millis())
        }
        None => at_ms - at_ms.rem_euclid(HOUR_MS),
    }
}

fn hour_label(tz: &Tz, start_ms: i64) -> String {
    Utc.timestamp_millis_opt(start_ms)
        .single()
        .map(|t| t.with_timezone(tz).format("%Y-%m-%d %H:00 %:z").to_string())
        .unwrap_or_default()
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl SimulationReport {
    pub fn total_sent(&self) -> u64 {
        self.sent.len() as u64
    }

    /// How many nudges `rule` would have sent to the person with this CRM id.
    pub fn sent_to(&self, person: &str, rule: &str) -> usize {
        let tag = hashed(person);
        self.sent
            .iter()
            .filter(|n| n.person == tag && n.rule == rule)
            .count()
    }

    /// Everything held back for the person with this CRM id.
    pub fn held_for(&self, person: &str) -> Vec<&SimulatedHold> {
        let tag = hashed(person);
        self.held.iter().filter(|h| h.person == tag).collect()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serialises")
    }

    /// A plain-text summary for a terminal.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "dry run for {} ({}): {} sighting(s), {} person(s) recognised, {} nudge(s) would be sent",
            self.store_id,
            self.timezone,
            self.sightings,
            self.people_recognised,
            self.total_sent()
        );
        let _ = writeln!(out, "\n{:<28} {:>6}  held back", "rule", "sent");
        for (rule, counts) in &self.per_rule {
            let held = if counts.held.is_empty() {
                "-".to_string()
            } else {
                counts
                    .held
                    .iter()
                    .map(|(r, n)| format!("{r} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(out, "{rule:<28} {:>6}  {held}", counts.sent);
        }
        let _ = writeln!(out, "\n{:<28} {:>6}", "kind", "sent");
        for (kind, n) in &self.per_kind {
            let _ = writeln!(out, "{kind:<28} {n:>6}");
        }
        let _ = writeln!(
            out,
            "\n{:<28} {:>6} {:>6}",
            "hour (store time)", "sent", "held"
        );
        for h in &self.per_hour {
            let _ = writeln!(out, "{:<28} {:>6} {:>6}", h.hour, h.sent, h.held);
        }
        let _ = writeln!(out, "\n{:<28} {:>6}", "held by", "count");
        for (reason, n) in self.caps_hit.iter().chain(&self.other_holds) {
            let _ = writeln!(out, "{reason:<28} {n:>6}");
        }
        let c = &self.caps;
        let _ = writeln!(
            out,
            "\ncaps: per visit {}, per day {}, per week {}, min gap {} s, rule cooldown {} s, per kind per day {}, store per minute {}",
            c.per_visit,
            c.per_day,
            c.per_week,
            c.min_gap_s,
            c.rule_cooldown_s,
            c.per_kind_per_day
                .map_or("-".to_string(), |v| v.to_string()),
            c.store_per_minute
                .map_or("-".to_string(), |v| v.to_string())
        );
        if let Some(chain) = &c.chain {
            let _ = writeln!(
                out,
                "chain caps: per day {}, per week {}, min gap {} s, days in the {} time zone ({})",
                chain.per_day,
                chain.per_week,
                chain.min_gap_s,
                if chain.day == "home" {
                    "customer's"
                } else {
                    "chain's"
                },
                chain.timezone
            );
        }
        if let Some(replay) = &self.chain {
            let _ = writeln!(
                out,
                "other stores' decisions: {} counted, {} for people not in the people file, {} duplicate",
                replay.counted, replay.unknown_person, replay.duplicate
            );
        }
        out
    }

    /// An SVG bar chart of nudges per store-local hour, with the per-person
    /// daily cap and (when set) the store-wide hourly ceiling
    /// (`store_per_minute` × 60) drawn as dashed lines. Hand-written, no
    /// dependency; one `<rect class="bar">` per hour.
    pub fn plot_svg(&self) -> String {
        const LEFT: f64 = 64.0;
        const RIGHT: f64 = 230.0;
        const TOP: f64 = 48.0;
        const PLOT_H: f64 = 240.0;
        const BAR_W: f64 = 56.0;
        let hours = self.per_hour.len().max(1);
        let width = LEFT + BAR_W * hours as f64 + RIGHT;
        let height = TOP + PLOT_H + 70.0;
        let store_hourly = self.caps.store_per_minute.map(|m| u64::from(m) * 60);
        let max_bar = self.per_hour.iter().map(|h| h.sent).max().unwrap_or(0);
        let top_value = [
            max_bar,
            u64::from(self.caps.per_day),
            store_hourly.unwrap_or(0),
            1,
        ]
        .into_iter()
        .max()
        .unwrap_or(1) as f64
            * 1.15;
        let y = |v: f64| TOP + PLOT_H - v / top_value * PLOT_H;
        let base = y(0.0);
        let plot_right = LEFT + BAR_W * hours as f64;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            s,
            r#"<title>Nudges per hour, {} ({})</title>"#,
            xml_escape(&self.store_id),
            xml_escape(&self.timezone)
        );
        let _ = writeln!(
            s,
            r##"<rect x="0" y="0" width="{width:.0}" height="{height:.0}" fill="#ffffff"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="24" font-size="15" font-weight="bold">Nudges that would be sent per hour ({} time)</text>"#,
            xml_escape(&self.timezone)
        );
        // Axes and ticks.
        let _ = writeln!(
            s,
            r#"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{base:.1}" stroke="black"/>"#
        );
        let _ = writeln!(
            s,
            r#"<line x1="{LEFT}" y1="{base:.1}" x2="{plot_right:.1}" y2="{base:.1}" stroke="black"/>"#
        );
        let step = nice_step(top_value);
        let mut tick = 0.0;
        while tick <= top_value {
            let ty = y(tick);
            let _ = writeln!(
                s,
                r##"<line x1="{:.1}" y1="{ty:.1}" x2="{LEFT}" y2="{ty:.1}" stroke="black"/><text x="{:.1}" y="{:.1}" text-anchor="end">{tick}</text>"##,
                LEFT - 4.0,
                LEFT - 6.0,
                ty + 4.0
            );
            tick += step;
        }
        let _ = writeln!(
            s,
            r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">nudges</text>"#,
            TOP + PLOT_H / 2.0,
            TOP + PLOT_H / 2.0
        );
        // One bar per hour.
        for (i, h) in self.per_hour.iter().enumerate() {
            let x = LEFT + BAR_W * i as f64 + 8.0;
            let top = y(h.sent as f64);
            let label = h.hour.get(11..16).unwrap_or(&h.hour);
            let _ = writeln!(
                s,
                r##"<rect class="bar" x="{x:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="#4477aa"><title>{}: {} sent, {} held</title></rect>"##,
                BAR_W - 16.0,
                base - top,
                xml_escape(&h.hour),
                h.sent,
                h.held
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                x + (BAR_W - 16.0) / 2.0,
                top - 4.0,
                h.sent
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                x + (BAR_W - 16.0) / 2.0,
                base + 16.0,
                xml_escape(label)
            );
        }
        let day = self.per_hour.first().and_then(|h| h.hour.get(..10));
        if let Some(day) = day {
            let _ = writeln!(
                s,
                r#"<text x="{LEFT}" y="{:.1}">hour starting, store time, from {}</text>"#,
                base + 36.0,
                xml_escape(day)
            );
        }
        // Cap lines.
        let mut lines = vec![(
            u64::from(self.caps.per_day),
            "#cc3311",
            format!("per-person daily cap: {}", self.caps.per_day),
        )];
        if let Some(hourly) = store_hourly {
            lines.push((
                hourly,
                "#ee7733",
                format!("store-wide ceiling: {hourly} per hour"),
            ));
        }
        for (value, colour, label) in lines {
            let ly = y(value as f64);
            let _ = writeln!(
                s,
                r#"<line class="cap" x1="{LEFT}" y1="{ly:.1}" x2="{plot_right:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="2" stroke-dasharray="6 4"/>"#
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" fill="{colour}">{}</text>"#,
                plot_right + 6.0,
                ly + 4.0,
                xml_escape(&label)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

/// A tick step of 1, 2 or 5 × 10^k giving at most about six ticks.
fn nice_step(max: f64) -> f64 {
    let rough = (max / 5.0).max(1.0);
    let magnitude = 10f64.powf(rough.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= rough)
        .unwrap_or(rough)
}
