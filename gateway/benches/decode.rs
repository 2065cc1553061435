//! Decode throughput on a realistic mix of what a store's scanners hear, and
//! decode plus rotating-id lookup against 10,000 enrolled keys.
//!
//! `cargo bench -p gateway --bench decode`; criterion reports elements/s,
//! one element being one advert.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gateway::decode::{DecodeOptions, Frame, decode_into};
use gateway::identity::{RotatingIdTable, interval_of, rotating_id};

/// Fixed time so the run is reproducible: 2026-11-23T10:00:00Z.
const NOW_S: i64 = 1_795_485_600;
const KEYS: usize = 10_000;
const ADVERTS: usize = 4096;

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

fn key(i: usize) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&(i as u64).to_le_bytes());
    k[8..].copy_from_slice(&(!(i as u64)).to_le_bytes());
    k
}

fn structure(ad_type: u8, data: &[u8]) -> Vec<u8> {
    let mut s = vec![(data.len() + 1) as u8, ad_type];
    s.extend_from_slice(data);
    s
}

const FLAGS: [u8; 3] = [0x02, 0x01, 0x06];

fn ibeacon(rng: &mut Rng) -> Vec<u8> {
    let mut d = vec![0x4C, 0x00, 0x02, 0x15];
    d.extend_from_slice(b"BlueCharmBeacons");
    d.extend_from_slice(&(rng.below(8) as u16).to_be_bytes());
    d.extend_from_slice(&(rng.below(64) as u16).to_be_bytes());
    d.push(0xC5);
    [&FLAGS[..], &structure(0xFF, &d)].concat()
}

fn app_token(id: [u8; 16]) -> Vec<u8> {
    let mut d = vec![0xFF, 0xFF, 0x01];
    d.extend_from_slice(&id);
    d.push(0xC5);
    [&FLAGS[..], &structure(0xFF, &d)].concat()
}

fn tlm(rng: &mut Rng) -> Vec<u8> {
    let mut d = vec![0xAA, 0xFE, 0x20, 0x00, 0x0B, 0x18, 0x13, 0x00];
    d.extend_from_slice(&(rng.next() as u32).to_be_bytes());
    d.extend_from_slice(&(rng.next() as u32).to_be_bytes());
    [&FLAGS[..], &[0x03, 0x03, 0xAA, 0xFE], &structure(0x16, &d)].concat()
}

/// What strangers' phones, watches and headphones send: Apple continuity,
/// Microsoft swift pair, a name, service UUIDs, and plain random bytes.
fn junk(rng: &mut Rng) -> Vec<u8> {
    match rng.below(4) {
        0 => {
            let mut d = vec![0x4C, 0x00, 0x10, 0x05];
            d.extend_from_slice(&rng.bytes::<5>());
            [&FLAGS[..], &structure(0xFF, &d)].concat()
        }
        1 => {
            let mut d = vec![0x06, 0x00, 0x03, 0x00, 0x80];
            d.extend_from_slice(&rng.bytes::<20>());
            structure(0xFF, &d)
        }
        2 => [
            &FLAGS[..],
            &structure(0x09, b"Galaxy Buds2"),
            &structure(0x03, &[0x0A, 0x18, 0x0F, 0x18]),
        ]
        .concat(),
        _ => {
            let len = 1 + rng.below(31) as usize;
            (0..len).map(|_| rng.next() as u8).collect()
        }
    }
}

/// 30 % iBeacon, 30 % app token, 10 % TLM, 30 % strangers.
fn mix(rng: &mut Rng, token: &mut dyn FnMut(&mut Rng) -> [u8; 16]) -> Vec<Vec<u8>> {
    (0..ADVERTS)
        .map(|_| match rng.below(10) {
            0..=2 => ibeacon(rng),
            3..=5 => app_token(token(rng)),
            6 => tlm(rng),
            _ => junk(rng),
        })
        .collect()
}

fn bench_decode(c: &mut Criterion) {
    let mut rng = Rng(0x5EED_0001);
    let adverts = mix(&mut rng, &mut |r| r.bytes::<16>());
    let opts = DecodeOptions::default();
    let mut out: Vec<Frame> = Vec::with_capacity(4);

    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(adverts.len() as u64));
    group.bench_function("mix", |b| {
        b.iter(|| {
            let mut frames = 0usize;
            for adv in &adverts {
                decode_into(black_box(adv), &opts, &mut out);
                // Make the frames observable, so none of their fields can be
                // optimised away.
                frames += black_box(&out).len();
            }
            black_box(frames)
        })
    });
    group.finish();
}

fn bench_decode_and_resolve(c: &mut Criterion) {
    let mut table = RotatingIdTable::new();
    for i in 0..KEYS {
        table.insert_key(i as u32, key(i));
    }
    table.roll_to(NOW_S);
    let interval = interval_of(NOW_S);

    // Half the app tokens are enrolled people, half are strangers' installs.
    let mut rng = Rng(0x5EED_0002);
    let adverts = mix(&mut rng, &mut |r| {
        if r.below(2) == 0 {
            rotating_id(&key(r.below(KEYS as u64) as usize), interval)
        } else {
            r.bytes::<16>()
        }
    });
    let opts = DecodeOptions::default();
    let mut out: Vec<Frame> = Vec::with_capacity(4);
    let resolved = adverts
        .iter()
        .filter(|adv| {
            decode_into(adv, &opts, &mut out);
            out.iter().any(|f| matches!(f, Frame::AppToken { rotating_id, .. } if table.lookup(rotating_id).is_some()))
        })
        .count();
    assert!(resolved > 0, "the mix must hold enrolled tokens");

    let mut group = c.benchmark_group("decode_and_resolve");
    group.throughput(Throughput::Elements(adverts.len() as u64));
    group.bench_function("mix_10k_keys", |b| {
        b.iter(|| {
            let mut hits = 0usize;
            for adv in &adverts {
                decode_into(black_box(adv), &opts, &mut out);
                for frame in &out {
                    if let Frame::AppToken { rotating_id, .. } = frame {
                        hits += usize::from(table.lookup(rotating_id).is_some());
                    }
                }
            }
            black_box(hits)
        })
    });
    group.finish();
}

criterion_group!(benches, bench_decode, bench_decode_and_resolve);
criterion_main!(benches);
