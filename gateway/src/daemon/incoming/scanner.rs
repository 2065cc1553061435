//! Scanner nodes over MQTT (own records, ESPresense, OpenMQTTGateway):
//! into the same sighting path as the local sources.

use super::*;

impl Pipeline {
    /// A sighting from a remote scanner node: into the same pipeline as
    /// the local sources. Bad ones are counted by field, never reported
    /// with their content (they may carry a stranger's address).
    pub(super) async fn on_scanner_message(
        &mut self,
        feed: topics::ScannerFeed,
        message: &IncomingMessage,
    ) {
        use topics::ScannerFeed;
        let source = crate::telemetry::Source::from(feed);
        events::sighting_received(&self.telemetry, source);
        let now = self.clock.now_ms();
        let parsed = match feed {
            ScannerFeed::Own => scanners::parse_scanner_record(&message.topic, &message.payload)
                .map(|s| {
                    self.scanner_nodes.accepted(&message.topic, None);
                    vec![s]
                }),
            ScannerFeed::Espresense => scanners::parse_espresense_report(
                &message.topic,
                &message.payload,
                now,
                &self.config.beacons,
            )
            .map(|r| {
                self.scanner_nodes.accepted(&message.topic, r.rx_adj);
                vec![r.sighting]
            }),
            ScannerFeed::OpenMqttGateway => {
                scanners::parse_openmqttgateway(&message.topic, &message.payload, now).map(|p| {
                    self.scanner_nodes.accepted(&message.topic, None);
                    self.merger.push(p, now)
                })
            }
        };
        if let Err(e) = &parsed {
            self.scanner_nodes.refused(&message.topic, e);
        }
        match parsed {
            Ok(sightings) => {
                for sighting in sightings {
                    self.on_sighting(Ingested {
                        source,
                        sighting,
                        received: std::time::Instant::now(),
                    })
                    .await;
                }
            }
            Err(e) if e.ignored => {
                events::scanner_message_ignored(&self.telemetry, source, e.field)
            }
            Err(e) => {
                events::sighting_rejected(&self.telemetry, source, "mqtt", e.field, &e.reason)
            }
        }
    }
}
