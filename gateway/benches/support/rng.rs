//! Shared by the benches: the same deterministic input on every run.

/// A small deterministic generator (xorshift64*), so the mix is the same on
/// every run without pulling in `rand`.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        std::array::from_fn(|_| self.next() as u8)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
