//! A calibration walk (issue #20): a member of staff carries a tag (a
//! fitness band with a static address) from the door through every zone
//! of the store, a few spots in each, crossing the hall between zones and
//! stopping on it, then back out. What the scanners hear of it and where
//! it really was are what `gateway calibrate` learns the store's radio
//! from. Deterministic in the seed; a few minutes for ten zones.

use std::time::Duration;

use crate::HALL_ZONE;
use crate::scenario::{Scenario, Stop, Stranger, StrangerDevice};
use crate::sim::{GroundTruth, SightingRecord, SimError, Simulation};
use crate::spec::StoreSpec;

/// Spots visited in each zone, and how long the tag stays at each.
pub const SPOTS_PER_ZONE: usize = 2;
pub const SPOT_DWELL_S: u32 = 5;
/// Stops on the open floor, after each zone.
pub const HALL_DWELL_S: u32 = 3;

/// What a walk produced: every sighting record (the store's beacons and the
/// tag) and the truth of the tag alone.
#[derive(Debug, Clone)]
pub struct Walk {
    pub records: Vec<SightingRecord>,
    pub truth: Vec<GroundTruth>,
    /// The tag's address.
    pub addr: String,
    pub end_ms: i64,
}

/// The walk's path: rounds through every zone, `SPOTS_PER_ZONE` random
/// spots in each, a stop in the hall after each zone. A small store gets
/// more rounds (at least [`MIN_ZONE_VISITS`] zone visits in all, at most
/// [`MAX_ROUNDS`] rounds), each in another order, so that the walks
/// between zones, where most of a crowd's hall time is, are walked
/// between many pairs of zones.
pub fn walk_path(spec: &StoreSpec) -> Vec<Stop> {
    let n = spec.zones.len().max(1);
    let rounds = MIN_ZONE_VISITS.div_ceil(n).clamp(1, MAX_ROUNDS);
    let mut path = Vec::new();
    for round in 0..rounds {
        let mut order: Vec<&str> = spec.zones.iter().map(|z| z.id.as_str()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        order.rotate_left(round / 2 % n);
        for zone in order {
            for _ in 0..SPOTS_PER_ZONE {
                path.push(Stop::new(zone, SPOT_DWELL_S));
            }
            path.push(Stop::new(HALL_ZONE, HALL_DWELL_S));
        }
    }
    path
}

/// Zone visits a walk makes at least (small stores: several rounds).
pub const MIN_ZONE_VISITS: usize = 10;
/// Rounds through the store at most.
pub const MAX_ROUNDS: usize = 4;

/// Run the walk in `spec` starting at `start_ms`.
pub fn calibration_walk(spec: &StoreSpec, start_ms: i64, seed: u64) -> Result<Walk, SimError> {
    let mut tag = Stranger::new(StrangerDevice::Wearable, 0, walk_path(spec));
    tag.walk_speed_mps = 1.3;
    let scenario = Scenario::new(seed).with_stranger(tag);
    let mut sim = Simulation::new(spec.clone(), scenario, start_ms, seed)?;
    // Long enough for any store: a walk is minutes; cut at its end below.
    let horizon = start_ms + Duration::from_secs(6 * 3600).as_millis() as i64;
    let beacons: Vec<String> = spec
        .beacons
        .iter()
        .map(|b| b.addr.to_ascii_lowercase())
        .collect();
    let truth: Vec<GroundTruth> = sim
        .ground_truth(horizon)
        .into_iter()
        .filter(|t| !beacons.contains(&t.addr.to_ascii_lowercase()))
        .collect();
    let end_ms = truth.iter().map(|t| t.to_ms).max().unwrap_or(start_ms);
    let addr = truth.first().map(|t| t.addr.clone()).unwrap_or_default();
    let records = sim.next_batch(end_ms);
    Ok(Walk {
        records,
        truth,
        addr,
        end_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn the_walk_covers_every_zone_and_the_hall_in_minutes() {
        for spec in [
            StoreSpec::small_store(),
            StoreSpec::from_file(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../config/sim/electronics-store.toml"
            ))
            .unwrap(),
        ] {
            let walk = calibration_walk(&spec, crate::DEFAULT_START_UNIX_MS, 5).unwrap();
            let places: BTreeSet<&str> = walk.truth.iter().map(|t| t.zone.as_str()).collect();
            for zone in &spec.zones {
                assert!(places.contains(zone.id.as_str()), "{}", zone.id);
            }
            assert!(places.contains(HALL_ZONE));
            assert!(walk.truth.iter().all(|t| t.addr == walk.addr));
            let minutes = (walk.end_ms - crate::DEFAULT_START_UNIX_MS) as f64 / 60_000.0;
            println!("{}: {minutes:.1} min", spec.store.id);
            assert!(minutes > 1.0 && minutes < 8.0, "{minutes} min");
            assert!(walk.records.iter().any(|r| r.addr == walk.addr));
            assert!(walk.records.iter().all(|r| r.at_ms < walk.end_ms));
        }
    }
}
