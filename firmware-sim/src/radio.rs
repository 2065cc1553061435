//! The radio channel between a device and a scanner: log-distance path loss,
//! Gaussian noise, body shadowing, missed adverts and a sensitivity floor.

use rand::Rng;

use crate::spec::{Point, RadioParams, StoreSpec};

/// Strongest reading a scanner reports; real radios saturate well below.
pub const MAX_RSSI: i16 = 0;
/// Weakest reading any scanner can report.
pub const MIN_RSSI: i16 = -100;

/// Mean received power at `distance_m`: `tx_1m - 10 n log10(d)`.
pub fn mean_rssi(tx_power_1m: f64, distance_m: f64, path_loss_exponent: f64) -> f64 {
    // Closer than 10 cm the model is meaningless; clamp instead of +inf.
    tx_power_1m - 10.0 * path_loss_exponent * distance_m.max(0.1).log10()
}

/// A standard normal sample (Box–Muller), so the simulation needs no extra
/// crate for one distribution.
pub fn standard_normal(rng: &mut impl Rng) -> f64 {
    // gen::<f64>() is in [0, 1); 1 - u is in (0, 1] so ln never sees 0.
    let u1: f64 = 1.0 - rng.r#gen::<f64>();
    let u2: f64 = rng.r#gen::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Per device-and-scanner state: an ongoing body shadow.
#[derive(Debug, Clone, Copy, Default)]
pub struct Link {
    shadowed_until_ms: i64,
}

/// The channel model for one store.
#[derive(Debug, Clone)]
pub struct Radio {
    params: RadioParams,
    scanners: Vec<ScannerRadio>,
}

#[derive(Debug, Clone)]
struct ScannerRadio {
    position: Point,
    noise_sigma_db: f64,
    gain_db: f64,
}

impl Radio {
    pub fn new(spec: &StoreSpec) -> Self {
        let scanners = spec
            .scanners
            .iter()
            .map(|s| ScannerRadio {
                position: s.position,
                noise_sigma_db: s.noise_sigma_db.unwrap_or(spec.radio.noise_sigma_db),
                gain_db: s.gain_db.unwrap_or(0.0),
            })
            .collect();
        Self {
            params: spec.radio.clone(),
            scanners,
        }
    }

    pub fn scanner_count(&self) -> usize {
        self.scanners.len()
    }

    /// Straight-line distance from a device on the floor to a scanner on
    /// the ceiling.
    pub fn distance(&self, scanner: usize, device: Point) -> f64 {
        let horizontal = self.scanners[scanner].position.distance_to(device);
        let vertical = self.params.scanner_height_m - self.params.device_height_m;
        horizontal.hypot(vertical)
    }

    /// What `scanner` reads for one advert sent at `at_ms` from `device`
    /// with radiated power `tx_power_1m`, or `None` if it does not hear it.
    pub fn receive(
        &self,
        rng: &mut impl Rng,
        link: &mut Link,
        scanner: usize,
        device: Point,
        tx_power_1m: f64,
        at_ms: i64,
    ) -> Option<i16> {
        let p = &self.params;
        // Draw every random number on every call, heard or not, so one
        // change of geometry does not reshuffle all later randomness.
        let missed = rng.r#gen::<f64>() < p.miss_probability;
        let noise = standard_normal(rng) * self.scanners[scanner].noise_sigma_db;
        let shadow_starts = rng.r#gen::<f64>() < p.shadow_probability;
        if shadow_starts && at_ms >= link.shadowed_until_ms {
            link.shadowed_until_ms = at_ms + i64::from(p.shadow_duration_ms);
        }
        let shadow = if at_ms < link.shadowed_until_ms {
            p.shadow_depth_db
        } else {
            0.0
        };
        if missed {
            return None;
        }
        let distance = self.distance(scanner, device);
        let rssi = mean_rssi(tx_power_1m, distance, p.path_loss_exponent) + noise - shadow
            + self.scanners[scanner].gain_db;
        if !rssi.is_finite() || rssi < f64::from(p.floor_dbm.max(MIN_RSSI)) {
            return None;
        }
        // In range [-100, 0] after the clamp, so the cast is exact.
        Some(rssi.round().clamp(f64::from(MIN_RSSI), f64::from(MAX_RSSI)) as i16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn path_loss_is_tx_power_at_one_metre_and_falls_with_distance() {
        assert!((mean_rssi(-59.0, 1.0, 2.2) + 59.0).abs() < 1e-9);
        assert!((mean_rssi(-59.0, 10.0, 2.0) + 79.0).abs() < 1e-9);
        assert!(mean_rssi(-59.0, 5.0, 2.2) < mean_rssi(-59.0, 2.0, 2.2));
    }

    #[test]
    fn normal_samples_have_unit_spread() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let samples: Vec<f64> = (0..20_000).map(|_| standard_normal(&mut rng)).collect();
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        let var = samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / samples.len() as f64;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
    }

    #[test]
    fn far_devices_are_not_heard() {
        let spec = StoreSpec::small_store();
        let radio = Radio::new(&spec);
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut link = Link::default();
        let far = Point {
            x: 5000.0,
            y: 5000.0,
        };
        for t in 0..1000 {
            assert_eq!(radio.receive(&mut rng, &mut link, 0, far, -59.0, t), None);
        }
    }
}
