//! Configuration reload without a restart: on SIGHUP and when the site
//! file changes (debounced, so a file still being written is not read half
//! way). A valid file takes effect at once, without dropping presence or
//! the outbox; an invalid one is refused, logged and counted, and the last
//! good configuration stays. Settings that only a restart can change keep
//! their running values, with a warning naming them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::telemetry::{ReloadResult, Telemetry, events};

/// How often the file's metadata is looked at.
const POLL: Duration = Duration::from_millis(500);
/// A change is read once the file has stayed the same this long.
const SETTLE: Duration = Duration::from_millis(700);

/// The settings a running gateway cannot change: listeners, storage, the
/// broker connection and the store's identity. Returns the names of those
/// that differ.
pub fn restart_only_changes(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if running.store_id != new.store_id {
        changed.push("store.id");
    }
    if running.mqtt != new.mqtt {
        changed.push("mqtt");
    }
    if running.storage_path != new.storage_path {
        changed.push("storage.path");
    }
    if running.storage_cache_bytes != new.storage_cache_bytes {
        changed.push("storage.cache_mb");
    }
    if running.sources != new.sources {
        changed.push("sources");
    }
    if running.admin_listen != new.admin_listen {
        changed.push("admin.listen");
    }
    // Joining or leaving a chain changes the subscriptions, and the secret
    // keys every chain hash already exchanged: both only on restart. The
    // chain caps' values apply at once.
    if running.chain.is_some() != new.chain.is_some() {
        changed.push("caps.chain");
    }
    if let (Some(running), Some(new)) = (&running.chain, &new.chain) {
        if running.secret != new.secret {
            changed.push("chain.secret_file");
        }
    }
    changed
}

/// `new` with the restart-only settings of `running`.
pub fn applicable(running: &Config, new: Config) -> Config {
    Config {
        store_id: running.store_id.clone(),
        mqtt: running.mqtt.clone(),
        storage_path: running.storage_path.clone(),
        storage_cache_bytes: running.storage_cache_bytes,
        sources: running.sources.clone(),
        admin_listen: running.admin_listen,
        chain: match (&running.chain, new.chain) {
            (Some(running), Some(new)) => Some(config::ChainSettings {
                caps: new.caps,
                secret: running.secret.clone(),
            }),
            (running, _) => running.clone(),
        },
        // Built from the store id, the prefix and the sources.
        topics: running.topics.clone(),
        ..new
    }
}

/// The outcome of one reload attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied { needs_restart: Vec<&'static str> },
    Unchanged,
    Refused(String),
}

/// Try to load `path` and, if valid, publish the new config.
pub fn reload_once(
    path: &std::path::Path,
    current: &watch::Sender<Arc<Config>>,
    telemetry: &Telemetry,
) -> Outcome {
    let outcome = match config::load(Some(path)) {
        Err(e) => Outcome::Refused(e.to_string()),
        Ok(new) => {
            let running = current.borrow().clone();
            if new.hash == running.hash {
                Outcome::Unchanged
            } else {
                let needs_restart = restart_only_changes(&running, &new);
                current.send_replace(Arc::new(applicable(&running, new)));
                Outcome::Applied { needs_restart }
            }
        }
    };
    match &outcome {
        Outcome::Applied { needs_restart } => {
            events::config_reload(telemetry, ReloadResult::Applied);
            tracing::info!(hash = %current.borrow().hash, "configuration reloaded");
            if !needs_restart.is_empty() {
                tracing::warn!(settings = ?needs_restart, "these settings change only on restart; keeping the running values");
            }
        }
        Outcome::Unchanged => events::config_reload(telemetry, ReloadResult::Unchanged),
        Outcome::Refused(reason) => {
            events::config_reload(telemetry, ReloadResult::Refused);
            tracing::error!(%reason, "configuration reload refused; keeping the last good configuration");
        }
    }
    outcome
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &std::path::Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

/// Watch `path` and SIGHUP until cancelled.
pub async fn run(
    path: PathBuf,
    current: watch::Sender<Arc<Config>>,
    telemetry: Arc<Telemetry>,
    cancel: CancellationToken,
) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading on file changes only");
            None
        }
    };
    let mut seen = stamp(&path);
    // A change noticed, and when the file last changed.
    let mut pending: Option<(Stamp, tokio::time::Instant)> = None;
    let mut poll = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                tracing::info!("SIGHUP: reloading configuration");
                reload_once(&path, &current, &telemetry);
                seen = stamp(&path);
                pending = None;
            }
            _ = poll.tick() => {
                let now = stamp(&path);
                if now == seen {
                    pending = None;
                    continue;
                }
                let Some(now) = now else { continue };
                match pending {
                    Some((last, since)) if last == now => {
                        if since.elapsed() >= SETTLE {
                            reload_once(&path, &current, &telemetry);
                            seen = Some(now);
                            pending = None;
                        }
                    }
                    _ => pending = Some((now, tokio::time::Instant::now())),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITE: &str = "[store]\nid = \"s1\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nprefix = \"retail\"\n[caps]\nper_day = 3\n";

    #[test]
    fn valid_applies_invalid_keeps_the_last_good_and_restart_only_settings_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.toml");
        std::fs::write(&path, SITE).unwrap();
        let first = Arc::new(config::load(Some(&path)).unwrap());
        let (tx, rx) = watch::channel(first);
        let telemetry = Telemetry::new();

        assert_eq!(reload_once(&path, &tx, &telemetry), Outcome::Unchanged);

        std::fs::write(
            &path,
            SITE.replace("per_day = 3", "per_day = 1")
                .replace("1883", "2883"),
        )
        .unwrap();
        assert_eq!(
            reload_once(&path, &tx, &telemetry),
            Outcome::Applied {
                needs_restart: vec!["mqtt"]
            }
        );
        assert_eq!(rx.borrow().caps.per_day, 1, "caps apply at once");
        assert_eq!(
            rx.borrow().mqtt.port,
            1883,
            "the broker connection needs a restart"
        );

        // Half written: not even valid TOML.
        std::fs::write(&path, "[store]\nid = \"s1\"\n[mqtt\nurl").unwrap();
        assert!(
            matches!(reload_once(&path, &tx, &telemetry), Outcome::Refused(reason) if reason.contains("site.toml"))
        );
        std::fs::write(&path, SITE.replace("per_day = 3", "per_day = -1")).unwrap();
        assert!(
            matches!(reload_once(&path, &tx, &telemetry), Outcome::Refused(reason) if reason.contains("caps.per_day"))
        );
        assert_eq!(rx.borrow().caps.per_day, 1, "the last good config stays");
        assert_eq!(
            telemetry.counter("config_reloads_total", &[("result", "refused")]),
            2
        );
        assert_eq!(
            telemetry.counter("config_reloads_total", &[("result", "applied")]),
            1
        );
    }

    #[test]
    fn chain_caps_reload_and_the_chain_secret_needs_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (dir.path().join("one"), dir.path().join("two"));
        std::fs::write(&one, "0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::write(&two, "fedcba9876543210fedcba9876543210\n").unwrap();
        let site = |per_day: u32, secret: &std::path::Path| {
            format!(
                "{SITE}[caps.chain]\nper_day = {per_day}\nper_week = 5\ntimezone = \"Europe/Berlin\"\n[chain]\nsecret_file = \"{}\"\n",
                secret.display()
            )
        };
        let path = dir.path().join("site.toml");
        std::fs::write(&path, site(2, &one)).unwrap();
        let (tx, rx) = watch::channel(Arc::new(config::load(Some(&path)).unwrap()));
        let telemetry = Telemetry::new();
        let secret = |c: &Config| c.chain.as_ref().unwrap().secret.expose().to_vec();
        let first_secret = secret(&rx.borrow());

        std::fs::write(&path, site(1, &two)).unwrap();
        assert_eq!(
            reload_once(&path, &tx, &telemetry),
            Outcome::Applied {
                needs_restart: vec!["chain.secret_file"]
            }
        );
        assert_eq!(
            rx.borrow().chain.as_ref().unwrap().caps.per_day,
            1,
            "caps apply at once"
        );
        assert_eq!(
            secret(&rx.borrow()),
            first_secret,
            "the secret waits for a restart"
        );

        // Leaving the chain waits for a restart too: the chain stays as it was.
        std::fs::write(&path, SITE).unwrap();
        assert_eq!(
            reload_once(&path, &tx, &telemetry),
            Outcome::Applied {
                needs_restart: vec!["caps.chain"]
            }
        );
        assert_eq!(rx.borrow().chain.as_ref().unwrap().caps.per_day, 1);
    }

    #[tokio::test]
    async fn a_change_to_the_file_is_picked_up_once_it_settles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.toml");
        std::fs::write(&path, SITE).unwrap();
        let (tx, mut rx) = watch::channel(Arc::new(config::load(Some(&path)).unwrap()));
        let telemetry = Arc::new(Telemetry::new());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(path.clone(), tx, telemetry.clone(), cancel.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::fs::write(&path, SITE.replace("per_day = 3", "per_day = 2")).unwrap();
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("reloaded within 10 s")
            .unwrap();
        assert_eq!(rx.borrow().caps.per_day, 2);
        cancel.cancel();
        task.await.unwrap();
    }
}
