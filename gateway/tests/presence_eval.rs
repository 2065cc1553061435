//! The presence engine against the simulated store (issue "Presence that
//! does not flicker"): the standard small store with its noise model, three
//! seeds, 15 simulated minutes each, scored by `presence::eval` exactly as
//! `gateway eval-presence` scores a capture file.

use std::time::Duration;

use firmware_sim::{DEFAULT_START_UNIX_MS, Scenario, Simulation, StoreSpec};
use gateway::presence::eval::{
    EvalOptions, EvalReport, TruthSpan, evaluate, evaluate_capture, presence_config_for,
};
use gateway::sighting::Sighting;

const MINUTES: u64 = 15;
const SEEDS: [u64; 3] = [1, 7, 42];

struct Run {
    seed: u64,
    report: EvalReport,
}

/// Generate the capture and truth in process, both as the files would hold
/// them, and evaluate.
fn run(seed: u64) -> Run {
    let spec = StoreSpec::small_store();
    let config = presence_config_for(&spec);
    let mut sim = Simulation::new(
        spec,
        Scenario::small_demo(seed),
        DEFAULT_START_UNIX_MS,
        seed,
    )
    .expect("the small store and demo scenario are valid");
    let records = sim.run_for(Duration::from_secs(MINUTES * 60));
    let end_ms = DEFAULT_START_UNIX_MS + (MINUTES * 60_000) as i64;
    let sightings: Vec<Sighting> = records
        .iter()
        .map(|r| Sighting::from_json(&serde_json::to_string(r).unwrap()).unwrap())
        .collect();
    let truth: Vec<TruthSpan> = sim
        .ground_truth(end_ms)
        .iter()
        .map(TruthSpan::from)
        .collect();
    let report = evaluate(&config, &sightings, &truth, &EvalOptions::default());
    Run { seed, report }
}

#[test]
fn engine_meets_the_issue_thresholds_and_beats_the_baseline() {
    let runs: Vec<Run> = SEEDS.iter().map(|&s| run(s)).collect();
    for r in &runs {
        println!("seed {}\n{}", r.seed, r.report.to_table());
        println!("{}", r.report.to_json());
    }
    for Run { seed, report } in &runs {
        let (e, b) = (&report.engine, &report.baseline);
        assert!(
            e.subjects >= 10,
            "seed {seed}: only {} subjects",
            e.subjects
        );
        assert!(
            e.accuracy >= 0.95,
            "seed {seed}: accuracy {:.3}",
            e.accuracy
        );
        assert!(
            e.flips_per_hour <= 1.0,
            "seed {seed}: {:.2} extra flips per subject-hour",
            e.flips_per_hour
        );
        assert_eq!(e.missed_entries, 0, "seed {seed}");
        assert_eq!(e.missed_exits, 0, "seed {seed}");
        assert!(
            e.entry_delay_max_s <= 10.0,
            "seed {seed}: entry delay up to {:.1} s",
            e.entry_delay_max_s
        );
        assert!(
            e.exit_delay_max_s <= 60.0,
            "seed {seed}: exit delay up to {:.1} s",
            e.exit_delay_max_s
        );
        assert!(
            e.flips_per_hour < b.flips_per_hour,
            "seed {seed}: engine {:.2} vs baseline {:.2} flips per hour",
            e.flips_per_hour,
            b.flips_per_hour
        );
    }
}
