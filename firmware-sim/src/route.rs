//! Where a device is over time: a walk from the door through the stops of a
//! path and back out, or a fixed spot for beacons. Also the true zone over
//! time, which is the simulator's ground truth.

use rand::Rng;

use crate::HALL_ZONE;
use crate::scenario::Stop;
use crate::spec::{Point, StoreSpec};

/// Resolution at which walks are sampled to find zone borders.
const TRUTH_STEP_MS: i64 = 100;

#[derive(Debug, Clone)]
enum Leg {
    Walk {
        from: Point,
        to: Point,
        t0: i64,
        t1: i64,
    },
    Stay {
        at: Point,
        t0: i64,
        t1: i64,
    },
}

impl Leg {
    fn end(&self) -> i64 {
        match self {
            Leg::Walk { t1, .. } | Leg::Stay { t1, .. } => *t1,
        }
    }
}

/// A device's movement in absolute Unix milliseconds, `[start_ms, end_ms)`.
#[derive(Debug, Clone)]
pub struct Route {
    legs: Vec<Leg>,
    start_ms: i64,
    end_ms: i64,
}

/// One stretch of time spent in one zone (or the hall).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneSpan {
    pub from_ms: i64,
    pub to_ms: i64,
    pub zone: String,
}

impl Route {
    /// A device that never moves and never leaves (a store beacon).
    pub fn fixed(at: Point, start_ms: i64) -> Self {
        Self {
            legs: vec![Leg::Stay {
                at,
                t0: start_ms,
                t1: i64::MAX,
            }],
            start_ms,
            end_ms: i64::MAX,
        }
    }

    /// Door → each stop (a random spot in its zone, dwelling there) → door.
    /// Zones must exist in `spec` (checked by the caller).
    pub fn walk(
        spec: &StoreSpec,
        path: &[Stop],
        arrive_ms: i64,
        speed_mps: f64,
        rng: &mut impl Rng,
    ) -> Self {
        let speed = if speed_mps.is_finite() && speed_mps > 0.1 {
            speed_mps
        } else {
            1.0
        };
        let door = spec.floor.door;
        let mut legs = Vec::with_capacity(path.len() * 2 + 1);
        let mut here = door;
        let mut now = arrive_ms;
        let walk_to = |legs: &mut Vec<Leg>, here: &mut Point, now: &mut i64, to: Point| {
            let ms = (here.distance_to(to) / speed * 1000.0).ceil() as i64;
            if ms > 0 {
                legs.push(Leg::Walk {
                    from: *here,
                    to,
                    t0: *now,
                    t1: *now + ms,
                });
            }
            *here = to;
            *now += ms;
        };
        for stop in path {
            let spot = spot_in(spec, &stop.zone, rng);
            walk_to(&mut legs, &mut here, &mut now, spot);
            let dwell = i64::from(stop.dwell_s) * 1000;
            legs.push(Leg::Stay {
                at: spot,
                t0: now,
                t1: now + dwell,
            });
            now += dwell;
        }
        walk_to(&mut legs, &mut here, &mut now, door);
        // Make the route at least 1 ms long so it has a place and a zone.
        let end_ms = now.max(arrive_ms + 1);
        Self {
            legs,
            start_ms: arrive_ms,
            end_ms,
        }
    }

    pub fn start_ms(&self) -> i64 {
        self.start_ms
    }

    pub fn end_ms(&self) -> i64 {
        self.end_ms
    }

    /// Position at `t_ms`, or `None` outside `[start_ms, end_ms)`.
    pub fn position_at(&self, t_ms: i64) -> Option<Point> {
        if t_ms < self.start_ms || t_ms >= self.end_ms {
            return None;
        }
        let leg = self
            .legs
            .iter()
            .find(|leg| t_ms < leg.end())
            .or(self.legs.last());
        Some(match leg {
            Some(Leg::Stay { at, .. }) => *at,
            Some(Leg::Walk { from, to, t0, t1 }) => {
                let f = ((t_ms - t0) as f64 / (t1 - t0).max(1) as f64).clamp(0.0, 1.0);
                Point {
                    x: from.x + (to.x - from.x) * f,
                    y: from.y + (to.y - from.y) * f,
                }
            }
            // A route with no legs: the shopper stood in the doorway.
            None => Point { x: 0.0, y: 0.0 },
        })
    }

    /// The true zone over `[from_ms, to_ms)` clipped to the route, adjacent
    /// spans of the same zone merged.
    pub fn zone_spans(&self, spec: &StoreSpec, from_ms: i64, to_ms: i64) -> Vec<ZoneSpan> {
        let from = from_ms.max(self.start_ms);
        let to = to_ms.min(self.end_ms);
        let mut spans: Vec<ZoneSpan> = Vec::new();
        let push = |spans: &mut Vec<ZoneSpan>, a: i64, b: i64, zone: &str| {
            let (a, b) = (a.max(from), b.min(to));
            if a >= b {
                return;
            }
            match spans.last_mut() {
                Some(last) if last.zone == zone && last.to_ms == a => last.to_ms = b,
                _ => spans.push(ZoneSpan {
                    from_ms: a,
                    to_ms: b,
                    zone: zone.to_owned(),
                }),
            }
        };
        if from >= to {
            return spans;
        }
        if self.legs.is_empty() {
            let zone = zone_name(spec, spec.floor.door);
            push(&mut spans, from, to, zone);
        }
        for leg in &self.legs {
            match *leg {
                Leg::Stay { at, t0, t1 } => push(&mut spans, t0, t1, zone_name(spec, at)),
                Leg::Walk { t0, t1, .. } => {
                    let (a, b) = (t0.max(from), t1.min(to));
                    let mut t = a;
                    while t < b {
                        let next = (t + TRUTH_STEP_MS).min(b);
                        // Label each step by where the walker is mid-step.
                        let mid = self.position_at(t + (next - t) / 2);
                        let zone = mid.map_or(HALL_ZONE, |p| zone_name(spec, p));
                        push(&mut spans, t, next, zone);
                        t = next;
                    }
                }
            }
        }
        spans
    }
}

fn zone_name(spec: &StoreSpec, p: Point) -> &str {
    spec.zone_at(p).map_or(HALL_ZONE, |z| z.id.as_str())
}

/// A random spot to stand in a zone: inside its middle 60 %, so that small
/// walks around the spot stay in the zone. For the hall, a spot on the
/// floor outside every zone.
fn spot_in(spec: &StoreSpec, zone: &str, rng: &mut impl Rng) -> Point {
    if let Some(z) = spec.zone(zone) {
        let a = z.area;
        let (w, h) = (a.x1 - a.x0, a.y1 - a.y0);
        return Point {
            x: a.x0 + w * rng.gen_range(0.2..0.8),
            y: a.y0 + h * rng.gen_range(0.2..0.8),
        };
    }
    let margin = 0.5_f64;
    let (w, d) = (spec.floor.width_m, spec.floor.depth_m);
    for _ in 0..200 {
        let p = Point {
            x: rng.gen_range(margin.min(w / 2.0)..(w - margin).max(w / 2.0 + 1e-9)),
            y: rng.gen_range(margin.min(d / 2.0)..(d - margin).max(d / 2.0 + 1e-9)),
        };
        if spec.zone_at(p).is_none() {
            return p;
        }
    }
    // The zones cover the whole floor: there is no hall, stand at the door.
    spec.floor.door
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn walk_visits_stops_in_order_and_leaves() {
        let spec = StoreSpec::small_store();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let path = vec![Stop::new("laptops", 60), Stop::new("headphones", 30)];
        let route = Route::walk(&spec, &path, 1_000, 1.0, &mut rng);
        let spans = route.zone_spans(&spec, 0, i64::MAX);
        let zones: Vec<&str> = spans
            .iter()
            .map(|s| s.zone.as_str())
            .filter(|z| *z != HALL_ZONE)
            .collect();
        assert_eq!(zones, ["entrance", "laptops", "headphones", "entrance"]);
        assert_eq!(spans.first().map(|s| s.from_ms), Some(1_000));
        assert_eq!(spans.last().map(|s| s.to_ms), Some(route.end_ms()));
        assert_eq!(route.position_at(route.end_ms()), None);
    }
}
