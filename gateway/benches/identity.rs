//! The rotating-ID table at store-chain scale: one million enrolled keys.
//!
//! Measures rolling to the next interval (one core: the roll is
//! single-threaded), lookup of a live id and of an unknown id, and prints the
//! table's resident memory (from /proc/self/statm, before and after building)
//! to stdout.
//!
//! `cargo bench -p gateway --bench identity`; `KEYS=100000` for a quick run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use gateway::identity::{RotatingIdTable, rotating_id};

const START_S: i64 = 2_642_976 * 600;

/// A deterministic 16-byte key per index (SplitMix64), no RNG dependency.
fn key(i: u64) -> [u8; 16] {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&mix(2 * i).to_le_bytes());
    k[8..].copy_from_slice(&mix(2 * i + 1).to_le_bytes());
    k
}

/// Resident set size in bytes, from /proc/self/statm (Linux only).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

fn keys_wanted() -> u64 {
    std::env::var("KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn bench(c: &mut Criterion) {
    let n = keys_wanted();
    let before = resident_bytes();
    let built = Instant::now();
    let mut table = RotatingIdTable::new();
    table.reserve(n as usize);
    for i in 0..n {
        table.insert_key(i as u32, key(i));
    }
    let enrolled = built.elapsed();
    let rolled = Instant::now();
    table.roll_to(START_S);
    let first_roll = rolled.elapsed();
    let after = resident_bytes();
    println!(
        "table: {n} keys, {} ids; enrol {enrolled:.2?}, first (full) roll {first_roll:.2?}",
        table.id_count()
    );
    if let (Some(b), Some(a)) = (before, after) {
        println!(
            "resident memory: {:.1} MB before, {:.1} MB after, table {:.1} MB ({:.0} bytes/key); \
             heap estimate from capacities {:.1} MB",
            b as f64 / 1e6,
            a as f64 / 1e6,
            (a - b) as f64 / 1e6,
            (a - b) as f64 / n as f64,
            table.heap_bytes() as f64 / 1e6,
        );
    }

    // Lookups. "cold": ids of 2^18 keys spread over the whole table, so
    // nearly every probe misses the CPU caches (the worst case). "hot": 1024
    // keys, like the few hundred phones in a store at once, looked up again
    // and again. Misses: ids nobody advertises.
    let interval = (START_S / 600) as u32;
    let spread = |count: u64| -> Vec<[u8; 16]> {
        (0..count)
            .map(|i| rotating_id(&key(i.wrapping_mul(2_654_435_761) % n), interval))
            .collect()
    };
    let cold_hits = spread(1 << 18);
    let hot_hits = spread(1 << 10);
    let misses: Vec<[u8; 16]> = (0..1u64 << 18).map(|i| key(n + 1 + i)).collect();
    assert!(cold_hits.iter().all(|id| table.lookup(id).is_some()));
    assert!(misses.iter().all(|id| table.lookup(id).is_none()));
    for (name, ids) in [
        ("lookup hit, cold", &cold_hits),
        ("lookup hit, hot", &hot_hits),
        ("lookup miss, cold", &misses),
    ] {
        let mask = ids.len() - 1;
        let mut i = 0usize;
        c.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) & mask;
                black_box(table.lookup(black_box(&ids[i])))
            })
        });
    }

    // The loops above let the CPU overlap independent lookups, so they show
    // throughput. Here each lookup's index depends on the previous result,
    // which serialises them: the latency of one cold lookup.
    let mask = cold_hits.len() - 1;
    let mut i = 0usize;
    c.bench_function("lookup hit, cold, dependent", |b| {
        b.iter(|| {
            let found = table.lookup(&cold_hits[i]);
            let owner = found.map_or(0, |o| o as usize);
            i = (i + 1 + (owner & 1)) & mask;
            found
        })
    });

    // Each iteration rolls one interval further: the real once-per-10-minutes
    // step (drop the oldest interval's ids, add the newest's).
    let mut group = c.benchmark_group("roll");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(20));
    let mut now_s = START_S;
    group.bench_function(format!("next interval, {n} keys"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                now_s += 600;
                let t = Instant::now();
                black_box(table.roll_to(now_s));
                total += t.elapsed();
            }
            total
        })
    });
    group.finish();
    assert_eq!(table.id_count() as u64, 3 * n);

    // The daemon's way: a roll in steps of 4,096 keys, one step per
    // sighting or tick (daemon::pipeline), so the longest step is the
    // longest a sighting waits for the roll.
    for _ in 0..3 {
        now_s += 600;
        table.start_roll(now_s);
        let mut steps = Vec::new();
        let whole = Instant::now();
        loop {
            let t = Instant::now();
            let done = table.roll_some(4096);
            steps.push(t.elapsed());
            if done {
                break;
            }
        }
        let whole = whole.elapsed();
        steps.sort_unstable();
        let at = |q: f64| steps[((steps.len() - 1) as f64 * q) as usize];
        println!(
            "roll in steps of 4096 keys, {n} keys: {} steps, {whole:.2?} in all; \
             step median {:.2?}, p99 {:.2?}, max {:.2?}",
            steps.len(),
            at(0.5),
            at(0.99),
            steps[steps.len() - 1]
        );
    }
    assert_eq!(table.id_count() as u64, 3 * n);
}

criterion_group!(benches, bench);
criterion_main!(benches);
