//! A gateway site for a test: its own config file, sled directory and UDP
//! port, the `gateway` binary run as a real process against a test broker.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::{
    ChildGuard, Workdir, free_tcp_port, free_udp_port, gateway_bin, spawn_guarded_in,
    wait_until_blocking,
};

pub const STORE_ID: &str = "store-e2e";

/// The twin's small store: one zone per scanner.
pub const THREE_ZONES: &str = r#"
[[zones]]
id = "entrance"
scanners = ["entrance"]

[[zones]]
id = "laptops"
scanners = ["laptops"]

[[zones]]
id = "headphones"
scanners = ["headphones"]
"#;

/// The dwell rule most tests exercise.
pub const LAPTOP_COMPARE: &str = r#"
[[rules]]
id = "laptop-compare"
zone = "laptops"
dwell_s = 20
interest = "laptops"
kind = "compare"
title = "Comparing laptops?"
body = "Side-by-side specs, reviews and prices for the models on this table."
"#;

/// Caps loose enough that a test sees every nudge its rules allow in a
/// visit or two.
pub const LOOSE_CAPS: &str = r#"
[caps]
per_visit = 5
per_day = 5
per_week = 10
min_gap_s = 0
rule_cooldown_s = 0
"#;

/// The twin's zones and clock, two rules for laptop fans (a compare at the
/// laptops, an info at the headphones), tight caps and `min_gap_s`: the
/// crash and power-cut runs, where every shopper is decided on twice a visit.
pub fn laptop_and_headphone_site(min_gap_s: u32) -> String {
    [
        THREE_ZONES,
        &laptop_and_headphone_rules(min_gap_s),
        SIM_CLOCK,
    ]
    .concat()
}

fn laptop_and_headphone_rules(min_gap_s: u32) -> String {
    format!(
        r#"
[[rules]]
id = "laptop-compare"
zone = "laptops"
dwell_s = 15
interest = "laptops"
kind = "compare"
title = "Comparing laptops?"
body = "Side-by-side specs, reviews and prices for the models on this table."

[[rules]]
id = "headphones-info"
zone = "headphones"
dwell_s = 15
interest = "laptops"
kind = "info"
title = "Headphones that work with your laptop"
body = "Battery life, noise cancelling and comfort scores for every model on this wall."

[caps]
per_visit = 2
per_day = 3
per_week = 7
min_gap_s = {min_gap_s}
rule_cooldown_s = 0
"#
    )
}

/// The twin's clock runs ahead of the wall clock: let its sightings in.
pub const SIM_CLOCK: &str = r#"
[presence]
max_future_skew_ms = 86400000
"#;

/// A thank-you after every purchase (the chain tests' nudge: a till
/// names the person, no presence needed).
pub const THANK_YOU: &str = r#"
[[rules]]
id = "thank-you"
on = "purchase"
kind = "thanks"
title = "Thank you"
body = "Enjoy it. If anything is not right, the team at the service desk is happy to help."
"#;

/// A store of a chain: `[caps.chain]` with `per_day` nudges a person a
/// chain day (five a week, no gap, the chain's day in Europe/Berlin) and
/// `[chain]` reading the chain secret from `secret_file`.
pub fn chain_caps(per_day: usize, secret_file: &std::path::Path) -> String {
    format!(
        r#"
[caps.chain]
per_day = {per_day}
per_week = 5
min_gap_s = 0
day = "chain"
timezone = "Europe/Berlin"

[chain]
secret_file = "{secret}"
"#,
        secret = secret_file.display(),
    )
}

/// The twin's zones, the laptop rule, loose caps and the twin's clock:
/// the site most end-to-end tests start from.
pub fn laptop_site() -> String {
    [THREE_ZONES, LAPTOP_COMPARE, LOOSE_CAPS, SIM_CLOCK].concat()
}

/// Wall-clock Unix milliseconds: where the tests start the twin's clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
pub const PREFIX: &str = "retail";

pub struct Site {
    pub dir: Workdir,
    pub config_path: PathBuf,
    pub udp: SocketAddr,
    pub admin: SocketAddr,
    /// `[store] id`: [`STORE_ID`] unless made with [`Site::for_store`].
    pub store: String,
    starts: usize,
}

impl Site {
    /// Write a site file for `broker_port`; `extra` is appended verbatim
    /// (zones, rules, caps, presence tuning).
    pub fn new(broker_port: u16, extra: &str) -> Result<Site> {
        Site::for_store(STORE_ID, broker_port, extra)
    }

    /// Like [`Site::new`] for the store `store` (several stores of a chain).
    pub fn for_store(store: &str, broker_port: u16, extra: &str) -> Result<Site> {
        let dir = Workdir::new("gateway-site")?;
        let udp: SocketAddr = format!("127.0.0.1:{}", free_udp_port()?).parse()?;
        let admin: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()?).parse()?;
        let storage = dir.join("db");
        let text = format!(
            r#"
[store]
id = "{store}"
timezone = "Europe/Berlin"

[mqtt]
url = "mqtt://127.0.0.1:{broker_port}"
prefix = "{PREFIX}"
keep_alive_s = 5

[storage]
path = "{}"

[[sources]]
kind = "udp"
bind = "{udp}"

[admin]
listen = "{admin}"

{extra}
"#,
            storage.display()
        );
        let config_path = dir.write("site.toml", text)?;
        Ok(Site {
            dir,
            config_path,
            udp,
            admin,
            store: store.to_string(),
            starts: 0,
        })
    }

    pub fn topic(&self, rest: &str) -> String {
        format!("{PREFIX}/{}/{rest}", self.store)
    }

    /// Run a `gateway` subcommand with this site's config to completion.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        let output = Command::new(gateway_bin()?)
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .env("GATEWAY_LOG", "warn")
            .output()
            .context("running gateway")?;
        Ok(output)
    }

    pub fn import_people(&self, jsonl: &str) -> Result<()> {
        let path = self.dir.write("people.jsonl", jsonl)?;
        let out = self.cli(&["people", "import", path.to_str().context("utf-8 path")?])?;
        if !out.status.success() {
            bail!(
                "people import failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Start `gateway run` and wait until it says it is running.
    pub fn start(&mut self) -> Result<ChildGuard> {
        self.start_with(&[])
    }

    /// Start `gateway run <extra args>` and wait until it is running.
    pub fn start_with(&mut self, extra: &[&str]) -> Result<ChildGuard> {
        self.start_with_env(extra, Vec::<(&str, &str)>::new())
    }

    /// Like [`Site::start_with`], with extra environment variables (e.g.
    /// the power-cut shim's).
    pub fn start_with_env<K, V>(
        &mut self,
        extra: &[&str],
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Result<ChildGuard>
    where
        K: AsRef<std::ffi::OsStr>,
        V: AsRef<std::ffi::OsStr>,
    {
        self.starts += 1;
        let mut cmd = Command::new(gateway_bin()?);
        cmd.arg("--config")
            .arg(&self.config_path)
            .arg("run")
            .args(extra)
            .env("GATEWAY_LOG", "info,rumqttc=warn")
            .envs(env);
        let guard = spawn_guarded_in(cmd, self.dir.path(), &format!("gateway-{}", self.starts))?;
        let ready = wait_until_blocking(Duration::from_secs(20), || {
            guard.stderr().contains("gateway running")
        });
        if ready.is_err() {
            bail!("gateway did not start:\n{}", guard.logs());
        }
        Ok(guard)
    }

    /// GET a path of the admin endpoint.
    pub fn admin_get(&self, path: &str) -> Result<String> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect_timeout(&self.admin, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text)
    }

    /// The value of one metric line (exact name and labels), 0 if absent.
    pub fn metric(&self, series: &str) -> Result<u64> {
        let text = self.admin_get("/metrics")?;
        Ok(text
            .lines()
            .filter_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.trim().parse::<u64>().ok())
            })
            .sum())
    }
}

/// The `q` quantile of a histogram in a `/metrics` text (`name` without
/// `_bucket`), estimated as Prometheus' `histogram_quantile` does: linear
/// within the bucket the rank falls in. `None` without observations.
pub fn histogram_quantile(metrics: &str, name: &str, q: f64) -> Option<f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let within = count - below;
            let share = if within > 0.0 {
                (rank - below) / within
            } else {
                1.0
            };
            return Some(lower + (le - lower) * share);
        }
        (lower, below) = (le, count);
    }
    Some(lower)
}

/// Send simulator records to the gateway over UDP at `speed`× real time.
pub async fn send(
    records: Vec<firmware_sim::SightingRecord>,
    target: SocketAddr,
    speed: f64,
) -> Result<u64> {
    let report = firmware_sim::output::send_udp(
        records,
        target,
        speed,
        tokio_util::sync::CancellationToken::new(),
    )
    .await?;
    Ok(report.records_sent as u64)
}

#[cfg(test)]
mod tests {
    use super::histogram_quantile;

    #[test]
    fn histogram_quantiles_interpolate_within_the_bucket() {
        let text = "x_seconds_bucket{le=\"0.001\"} 50\n\
                    x_seconds_bucket{le=\"0.002\"} 90\n\
                    x_seconds_bucket{le=\"0.004\"} 100\n\
                    x_seconds_bucket{le=\"+Inf\"} 100\n\
                    x_seconds_count 100\n";
        let q = |q| histogram_quantile(text, "x_seconds", q).unwrap();
        assert!((q(0.5) - 0.001).abs() < 1e-12);
        assert!((q(0.7) - 0.0015).abs() < 1e-12);
        assert!((q(0.99) - 0.0038).abs() < 1e-12);
        assert_eq!(histogram_quantile("", "x_seconds", 0.5), None);
    }
}
