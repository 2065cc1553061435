//! A plain bounded random-input runner for the decoder, for machines without
//! a nightly toolchain (libFuzzer needs one). No coverage feedback: it throws
//! random bytes, random text and mutated valid adverts at
//! `gateway_fuzz::check` until the time is up.
//!
//! `decode_random [seconds] [seed]`; on a failing input it prints the input
//! in hex and exits 1.

use std::panic;
use std::time::{Duration, Instant};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn input(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    match rng.below(3) {
        0 => (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
        1 => {
            const TEXT: &[u8] = b"0123456789abcdefABCDEF \n-x";
            (0..rng.below(64))
                .map(|_| TEXT[rng.below(TEXT.len())])
                .collect()
        }
        _ => {
            let mut adv = seeds[rng.below(seeds.len())].clone();
            for _ in 0..=rng.below(4) {
                let at = rng.below(adv.len() + 1);
                match rng.below(5) {
                    0 if at < adv.len() => adv[at] = rng.next() as u8,
                    1 if at < adv.len() => adv[at] ^= 1 << rng.below(8),
                    2 => adv.insert(at, rng.next() as u8),
                    3 => adv.truncate(at),
                    _ if at < adv.len() => {
                        adv[at] = adv[at].wrapping_add(rng.below(3) as u8).wrapping_sub(1)
                    }
                    _ => {}
                }
            }
            adv
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(60);
    let seed: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(0x5EED);
    let seeds: Vec<Vec<u8>> = gateway_fuzz::SEEDS
        .iter()
        .map(|h| hex::decode(h).expect("seed is hex"))
        .collect();

    let mut rng = Rng(seed);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut runs: u64 = 0;
    while Instant::now() < deadline {
        for _ in 0..1024 {
            let data = input(&mut rng, &seeds);
            if let Err(e) = panic::catch_unwind(|| gateway_fuzz::check(&data)) {
                let msg = e
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| e.downcast_ref::<&str>().copied())
                    .unwrap_or("panic");
                eprintln!("FAILED after {runs} inputs (seed {seed}): {msg}");
                eprintln!("input: {}", hex::encode(&data));
                std::process::exit(1);
            }
            runs += 1;
        }
    }
    println!("decode_random: {runs} inputs in {seconds} s (seed {seed}), no failure");
}
