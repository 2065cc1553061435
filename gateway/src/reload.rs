//! Configuration reload without a restart: on SIGHUP and when the site
//! file or the radio map it names changes (debounced, so a file still
//! being written is not read half way). A valid file takes effect at once, without dropping presence or
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

/// The stamps of the files watched: the site file, then the catalog and
/// the radio map of the configuration in force (a new path is watched once
/// applied).
fn stamps(path: &std::path::Path, current: &watch::Sender<Arc<Config>>) -> Vec<Option<Stamp>> {
    let others = current.borrow().content_files.clone();
    std::iter::once(stamp(path))
        .chain(others.iter().map(|f| stamp(f)))
        .collect()
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
    let mut seen = stamps(&path, &current);
    // A change noticed, and when the files last changed.
    let mut pending: Option<(Vec<Option<Stamp>>, tokio::time::Instant)> = None;
    let mut poll = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                tracing::info!("SIGHUP: reloading configuration");
                reload_once(&path, &current, &telemetry);
                seen = stamps(&path, &current);
                pending = None;
            }
            _ = poll.tick() => {
                let now = stamps(&path, &current);
                if now == seen {
                    pending = None;
                    continue;
                }
                // The site file gone (being replaced): wait for it. A
                // missing map is read, and refused, like any bad map.
                if now[0].is_none() {
                    continue;
                }
                match &pending {
                    Some((last, since)) if *last == now => {
                        if since.elapsed() >= SETTLE {
                            reload_once(&path, &current, &telemetry);
                            // What the applied (or kept) config watches now.
                            seen = stamps(&path, &current);
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

    /// A radio map for zones `za` (scanner `a`) and `zb` (scanner `b`)
    /// and the hall, or for other `scanners`; `heard` tells two apart.
    fn map_json(scanners: &[&str], heard: f32) -> String {
        use crate::presence::radiomap::{
            BINS, Coverage, PlaceLevels, RADIO_MAP_VERSION, RadioMap, ScannerLevels,
        };
        let places: Vec<PlaceLevels> = ["za", "zb", "hall"]
            .iter()
            .map(|p| PlaceLevels {
                place: p.to_string(),
                scanners: scanners
                    .iter()
                    .map(|_| ScannerLevels {
                        heard,
                        mean_dbm: None,
                        sd_db: None,
                        histogram: vec![1.0 / BINS as f32; BINS],
                    })
                    .collect(),
            })
            .collect();
        RadioMap {
            version: RADIO_MAP_VERSION,
            scanners: scanners.iter().map(|s| s.to_string()).collect(),
            scanner_gain_db: vec![0.0; scanners.len()],
            beacon_gain_db: Default::default(),
            adjacency: Vec::new(),
            coverage: places
                .iter()
                .map(|p| Coverage {
                    place: p.place.clone(),
                    seconds: 30.0,
                    readings: 10,
                })
                .collect(),
            places,
            tuning: None,
        }
        .to_json()
    }

    /// What the loaded radio map says the first place's first scanner
    /// hears: the value the map tests write and read back.
    fn first_heard(config: &Config) -> f32 {
        config.presence.radio_map.as_ref().unwrap().map().places[0].scanners[0].heard
    }

    fn site_with_map(map: &std::path::Path) -> String {
        format!(
            "{SITE}[[zones]]\nid = \"za\"\nscanners = [\"a\"]\n[[zones]]\nid = \"zb\"\nscanners = [\"b\"]\n[presence]\nradio_map = {:?}\n",
            map.display().to_string()
        )
    }

    /// `[presence.map]` is applied by a reload like the rest of
    /// `[presence]` (no restart; the engine takes it in `set_config`), and
    /// a knob out of range is refused naming it, the last good kept.
    #[test]
    fn presence_map_knobs_reload_and_a_bad_one_keeps_the_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.toml");
        let map = dir.path().join("radio-map.json");
        std::fs::write(&map, map_json(&["a", "b"], 0.5)).unwrap();
        let site = |knobs: &str| format!("{}\n[presence.map]\n{knobs}\n", site_with_map(&map));
        std::fs::write(&path, site("switch_p = 0.9")).unwrap();
        let first = Arc::new(config::load(Some(&path)).unwrap());
        let (tx, rx) = watch::channel(first);
        let telemetry = Telemetry::new();
        let engine_knobs = |rx: &watch::Receiver<Arc<Config>>| {
            crate::presence::PresenceEngine::new(rx.borrow().presence.clone())
                .map_tuning()
                .clone()
        };
        assert_eq!(engine_knobs(&rx).switch_p, 0.9);

        std::fs::write(&path, site("switch_p = 0.7\nhold_ms = 1000")).unwrap();
        assert_eq!(
            reload_once(&path, &tx, &telemetry),
            Outcome::Applied {
                needs_restart: vec![]
            }
        );
        let knobs = engine_knobs(&rx);
        assert_eq!((knobs.switch_p, knobs.hold_ms), (0.7, 1_000));

        std::fs::write(&path, site("switch_p = 2")).unwrap();
        assert!(matches!(
            reload_once(&path, &tx, &telemetry),
            Outcome::Refused(reason) if reason.contains("presence.map.switch_p")
        ));
        assert_eq!(engine_knobs(&rx).switch_p, 0.7, "the last good knobs stay");
    }

    #[test]
    fn a_map_rewritten_in_place_reloads_and_a_bad_or_foreign_one_keeps_the_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.toml");
        let map = dir.path().join("radio-map.json");
        std::fs::write(&map, map_json(&["a", "b"], 0.5)).unwrap();
        std::fs::write(&path, site_with_map(&map)).unwrap();
        let first = Arc::new(config::load(Some(&path)).unwrap());
        assert_eq!(first.radio_map_path.as_deref(), Some(map.as_path()));
        let (tx, rx) = watch::channel(first);
        let telemetry = Telemetry::new();
        let heard = |rx: &watch::Receiver<Arc<Config>>| first_heard(&rx.borrow());

        // Same path, new contents (a new walk): a new configuration.
        std::fs::write(&map, map_json(&["a", "b"], 0.7)).unwrap();
        assert_eq!(
            reload_once(&path, &tx, &telemetry),
            Outcome::Applied {
                needs_restart: vec![]
            }
        );
        assert_eq!(heard(&rx), 0.7);
        assert_eq!(reload_once(&path, &tx, &telemetry), Outcome::Unchanged);

        // A map of another store's scanners, then no JSON at all: refused,
        // naming the field; the last good map stays.
        std::fs::write(&map, map_json(&["a", "c"], 0.9)).unwrap();
        assert!(matches!(
            reload_once(&path, &tx, &telemetry),
            Outcome::Refused(reason) if reason.contains("presence.radio_map") && reason.contains("other scanners")
        ));
        std::fs::write(&map, "{\"version\": 1, \"scan").unwrap();
        assert!(matches!(
            reload_once(&path, &tx, &telemetry),
            Outcome::Refused(reason) if reason.contains("presence.radio_map")
        ));
        std::fs::remove_file(&map).unwrap();
        assert!(matches!(
            reload_once(&path, &tx, &telemetry),
            Outcome::Refused(_)
        ));
        assert_eq!(heard(&rx), 0.7, "the last good map stays");
        assert_eq!(
            telemetry.counter("config_reloads_total", &[("result", "refused")]),
            3
        );
    }

    #[tokio::test]
    async fn a_change_to_the_radio_map_file_is_picked_up_by_the_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.toml");
        let map = dir.path().join("radio-map.json");
        std::fs::write(&map, map_json(&["a", "b"], 0.5)).unwrap();
        std::fs::write(&path, site_with_map(&map)).unwrap();
        let (tx, mut rx) = watch::channel(Arc::new(config::load(Some(&path)).unwrap()));
        let telemetry = Arc::new(Telemetry::new());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(path.clone(), tx, telemetry.clone(), cancel.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The site file is not touched; only the map is written again
        // (longer, so the stamp differs even within one mtime tick).
        std::fs::write(&map, map_json(&["a", "b"], 0.625)).unwrap();
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("reloaded within 10 s")
            .unwrap();
        assert_eq!(first_heard(&rx.borrow()), 0.625);
        cancel.cancel();
        task.await.unwrap();
    }

    /// The catalog is part of the configuration: rewritten in place, the
    /// site file untouched, it is reloaded (its contents are in the hash).
    #[tokio::test]
    async fn a_catalog_rewritten_in_place_is_reloaded_by_the_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.toml");
        let catalog = dir.path().join("catalog.toml");
        let product = |price: &str| {
            format!(
                "currency = \"EUR\"\n[[products]]\nid = \"lt-1\"\nname = \"Aero\"\n\
                 category = \"laptops\"\nprice = \"{price}\"\nrating = 4.5\nreviews = 10\n"
            )
        };
        std::fs::write(&catalog, product("999.00")).unwrap();
        std::fs::write(
            &path,
            format!(
                "{SITE}[catalog]\npath = {:?}\n",
                catalog.display().to_string()
            ),
        )
        .unwrap();
        let (tx, mut rx) = watch::channel(Arc::new(config::load(Some(&path)).unwrap()));
        let first_hash = rx.borrow().hash.clone();
        let telemetry = Arc::new(Telemetry::new());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(path.clone(), tx, telemetry.clone(), cancel.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::fs::write(&catalog, product("1099.00")).unwrap();
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("reloaded within 10 s")
            .unwrap();
        let price = {
            let config = rx.borrow();
            let catalog = config.catalog.as_ref().unwrap();
            catalog.in_category("laptops")[0].price.cents
        };
        assert_eq!(price, 109_900);
        assert_ne!(rx.borrow().hash, first_hash);
        cancel.cancel();
        task.await.unwrap();
    }
}
