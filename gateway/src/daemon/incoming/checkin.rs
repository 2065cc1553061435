//! `<p>/<s>/checkin/<recipient>`: iOS check-ins (the app heard the
//! store's beacons).

use super::*;
use crate::daemon::roll::Pace;

impl Pipeline {
    /// An iOS check-in: the app heard the store's beacons and says which
    /// identifier it holds now. It must be that recipient's own.
    pub(super) async fn on_checkin(
        &mut self,
        recipient: &str,
        payload: &[u8],
    ) -> Result<(), Rejection> {
        let text = std::str::from_utf8(payload).map_err(|_| rejection("payload", "not UTF-8"))?;
        let checkin = CheckIn::from_json(text)?;
        let expected = match self.people.by_recipient(recipient) {
            Ok(owner) => owner.map(|r| r.person),
            Err(e) => {
                events::storage_error(&self.telemetry, "person_record", &e);
                return Err(rejection("storage", "could not be read; retry"));
            }
        };
        self.roll_people(Pace::WorkWaiting);
        let resolved = self.people.resolve(&checkin.rotating_id).cloned();
        let person = match (expected, resolved) {
            (Some(expected), Some(resolved)) if expected == resolved => expected,
            _ => {
                events::checkin_rejected(&self.telemetry);
                return Err(rejection(
                    "rotating_id",
                    "does not belong to this recipient",
                ));
            }
        };
        // A phone's word never moves the decision clock: its time is only
        // checked against the wall clock, and a reading dated ahead of the
        // clock counts as now.
        if checkin.at_ms > wall_ms().saturating_add(self.config.max_future_skew_ms) {
            return Err(rejection("at_ms", "too far ahead of the gateway's clock"));
        }
        let at_ms = checkin.at_ms.min(self.clock.now_ms());
        if self.recognise(&checkin.rotating_id).is_none() {
            return Ok(());
        }
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        for beacon in &checkin.beacons {
            let scanner = beacon_scanner_id(&beacon.uuid, beacon.major, beacon.minor);
            self.presence
                .observe(&person, &scanner, beacon.rssi as i16, at_ms, &mut events);
        }
        self.touch_visit(&person, at_ms);
        self.handle_events(&events).await;
        self.events = events;
        events::checkin_accepted(&self.telemetry);
        Ok(())
    }
}

/// The scanner id an iOS check-in's beacon counts as: list it in a zone's
/// `scanners` to place check-ins in that zone.
pub fn beacon_scanner_id(uuid: &[u8; 16], major: u16, minor: u16) -> String {
    format!(
        "beacon:{}:{major}:{minor}",
        crate::decode::uuid_string(uuid)
    )
}
