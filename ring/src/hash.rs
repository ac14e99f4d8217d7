//! The ring's hash functions: documented, stable and free of platform or `std` choices.
//!
//! Every node computes the ring on its own, so these functions are part of the ring format: any
//! change to them changes rings and must bump [`FORMAT_VERSION`](crate::FORMAT_VERSION). They use
//! only 64-bit wrapping integer arithmetic (and, for weights, IEEE-754 `+ - * /`), never Rust's
//! `Hash` trait, `usize` or a randomly seeded hasher, so the same input gives the same value on
//! every machine and in every Rust version.
//!
//! - [`mix64`]: the SplitMix64 finalizer (Stafford's "variant 13"), a bijection on `u64`.
//! - [`splitmix64`]: one step of the SplitMix64 generator, `mix64(x + 0x9E3779B97F4A7C15)`.
//! - [`fnv1a64`]: 64-bit FNV-1a over bytes (offset basis `0xcbf29ce484222325`, prime
//!   `0x100000001b3`).
//! - [`hash_bytes`]: `mix64(fnv1a64(bytes))`; FNV-1a alone avalanches poorly in its high bits,
//!   the finalizer fixes that. Used for session ids and node ids.
//! - [`hash_u64`]: `splitmix64(key)`. Used for guild ids (snowflakes).
//! - [`reduce`]: maps a 64-bit hash onto `0..n` as `(hash * n) >> 64` (Lemire's multiply-shift),
//!   which keeps the high bits and has no modulo bias worth the name for `n <= 2^16`.

/// The SplitMix64 increment ("golden gamma").
pub const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// FNV-1a 64-bit offset basis.
pub const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a 64-bit prime.
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The SplitMix64 finalizer: a bijective mix of all 64 bits.
#[must_use]
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One SplitMix64 step on `x`: the output the generator gives for state `x`.
#[must_use]
pub const fn splitmix64(x: u64) -> u64 {
    mix64(x.wrapping_add(GOLDEN_GAMMA))
}

/// 64-bit FNV-1a over `bytes`.
#[must_use]
pub const fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET_BASIS;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(FNV_PRIME);
        i += 1;
    }
    h
}

/// The key hash of a byte string (session ids, node ids): `mix64(fnv1a64(bytes))`.
#[must_use]
pub const fn hash_bytes(bytes: &[u8]) -> u64 {
    mix64(fnv1a64(bytes))
}

/// The key hash of a 64-bit key (guild ids): `splitmix64(key)`.
#[must_use]
pub const fn hash_u64(key: u64) -> u64 {
    splitmix64(key)
}

/// Maps `hash` uniformly onto `0..n` by multiply-shift: `(hash * n) >> 64`.
#[must_use]
pub const fn reduce(hash: u64, n: u32) -> u32 {
    // The product of a u64 and a u32 shifted right by 64 is < n, so it fits in u32.
    ((hash as u128 * n as u128) >> 64) as u32
}

/// Natural logarithm of `x` for `x > 0` and finite, built only from IEEE-754 basic operations so
/// that the result is bit-identical on every platform (`f64::ln` calls the platform's libm,
/// whose last bit may differ between systems).
///
/// `x = m * 2^e` with `m` in `[sqrt(1/2), sqrt(2))`, then `ln(m) = 2 atanh(s)` with
/// `s = (m - 1) / (m + 1)`, `|s| <= 0.1716`, summed to `s^17`: the error is below `1e-15`
/// relative, far below anything that could change a weighted comparison's meaning.
#[must_use]
pub(crate) fn ln(x: f64) -> f64 {
    const LN_2: f64 = std::f64::consts::LN_2;
    const SQRT_2: f64 = std::f64::consts::SQRT_2;
    debug_assert!(x > 0.0 && x.is_finite());
    let mut bits = x.to_bits();
    let mut exponent = ((bits >> 52) & 0x7ff) as i64;
    if exponent == 0 {
        // Subnormal: scale into the normal range first (2^54 is exact).
        bits = (x * 18_014_398_509_481_984.0).to_bits();
        exponent = ((bits >> 52) & 0x7ff) as i64 - 54;
    }
    let mut e = exponent - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if m >= SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    // Horner form of 1 + s^2/3 + s^4/5 + ... + s^16/17.
    let mut series = 1.0 / 17.0;
    for odd in [15.0, 13.0, 11.0, 9.0, 7.0, 5.0, 3.0, 1.0] {
        series = series * s2 + 1.0 / odd;
    }
    (e as f64) * LN_2 + 2.0 * s * series
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_generator() {
        // Reference SplitMix64 (Vigna) seeded with 0: its outputs are splitmix64(k * gamma).
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(splitmix64(GOLDEN_GAMMA), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(
            splitmix64(GOLDEN_GAMMA.wrapping_mul(2)),
            0x06c4_5d18_8009_454f
        );
    }

    #[test]
    fn fnv1a64_matches_the_published_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn key_hashes_are_pinned() {
        // Known answers: if one of these changes, every ring changes; bump FORMAT_VERSION.
        assert_eq!(hash_u64(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(hash_u64(175_928_847_299_117_063), 0xeb9a_175e_a6b1_69db);
        assert_eq!(hash_bytes(b""), 0xf52a_15e9_a9b5_e89b);
        assert_eq!(hash_bytes(b"node-a"), 0x8299_5e46_723a_0e5f);
        assert_eq!(reduce(u64::MAX, 4096), 4095);
        assert_eq!(reduce(0, 4096), 0);
        assert_eq!(reduce(1 << 63, 4096), 2048);
    }

    #[test]
    fn ln_agrees_with_std_closely() {
        let mut state = 1u64;
        for _ in 0..10_000 {
            state = splitmix64(state);
            let x = ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            for v in [x, x * 1e-300, 1.0 / x, 1.0 - x] {
                let want = v.ln();
                let got = ln(v);
                assert!(
                    (got - want).abs() <= 1e-14 * want.abs().max(1.0),
                    "{v}: {got} vs {want}"
                );
            }
        }
        assert_eq!(ln(1.0), 0.0);
    }
}
