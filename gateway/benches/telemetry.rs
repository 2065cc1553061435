//! The cost of counting: the events on the per-sighting path (a labelled
//! counter, a latency observation) and a full `/metrics` render, on
//! prometheus-client's registry.
//!
//! `cargo bench -p gateway --bench telemetry`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use gateway::telemetry::{Source, Telemetry, events};

fn bench(c: &mut Criterion) {
    let t = Telemetry::new();
    c.bench_function("events::sighting_received (labelled counter)", |b| {
        b.iter(|| events::sighting_received(black_box(&t), black_box(Source::Udp)))
    });
    c.bench_function("events::stranger_dropped (plain counter)", |b| {
        b.iter(|| events::stranger_dropped(black_box(&t)))
    });
    c.bench_function("events::incoming_rejected (field table + 2 labels)", |b| {
        b.iter(|| {
            events::incoming_rejected(
                black_box(&t),
                black_box("consent"),
                black_box("consent.spam"),
                black_box("unknown purpose"),
            )
        })
    });
    c.bench_function("events::sighting_to_puback (histogram)", |b| {
        b.iter(|| events::sighting_to_puback(black_box(&t), black_box(Duration::from_micros(1200))))
    });
    // A scrape of a gateway that has seen some of everything.
    events::mqtt_connection(&t, true, "bench");
    events::nudge_acked(&t, "n-1");
    c.bench_function("render (/metrics)", |b| b.iter(|| black_box(t.render())));
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
