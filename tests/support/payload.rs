//! Deterministic pseudo-random bytes for the tests that write their own
//! payload files (`create`, `info`, `--direct-io`): the same bytes on every
//! run, and no two pieces alike, so a piece hash catches a misplaced byte.

/// `len` bytes from a xorshift64 generator seeded with `seed` (the low
/// byte of each step).
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
