//! Counter-based random numbers, implemented identically here and in WGSL
//! (`shaders/common.wgsl`).
//!
//! A value is a pure function of `(seed, stream, counter)`: no state, so a verifier
//! that re-executes step 1234 of a training job regenerates exactly the noise the
//! provider drew there, and a GPU thread can draw its own element's noise without
//! coordination. The mixer is Wellons' `lowbias32` (bias ≈ 0.17 on the avalanche
//! test): the seed and stream fold into a 32-bit key once, then each draw is two
//! mixes of (counter, key). Gaussians come from Box–Muller, both branches used. On the CPU the output is bit-for-bit reproducible; on a GPU
//! `log`/`cos` differ in the last bits, so GPU noise matches within float tolerance.

/// Wellons' `lowbias32` integer hash.
#[inline]
pub fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// Key of one stream: folds the 64-bit seed and the stream number into 32 bits once,
/// so each draw afterwards costs two mixes.
#[inline]
pub fn stream_key(seed: u64, stream: u32) -> u32 {
    let (lo, hi) = (seed as u32, (seed >> 32) as u32);
    mix32(mix32(mix32(stream ^ 0x9e37_79b9) ^ lo) ^ hi)
}

/// Random `u32` number `counter` of the stream with key `key`.
#[inline]
pub fn rand_keyed(key: u32, counter: u32) -> u32 {
    mix32(mix32(counter ^ key).wrapping_add(counter))
}

/// Random `u32` keyed by a 64-bit seed, a stream (e.g. the training step) and a counter.
#[inline]
pub fn rand_u32(seed: u64, stream: u32, counter: u32) -> u32 {
    rand_keyed(stream_key(seed, stream), counter)
}

#[inline]
fn to_unit(bits: u32) -> f32 {
    ((bits >> 8) as f32 + 0.5) * (1.0 / 16_777_216.0)
}

/// Uniform in the open interval (0, 1), 24 bits of resolution.
#[inline]
pub fn uniform(seed: u64, stream: u32, counter: u32) -> f32 {
    to_unit(rand_u32(seed, stream, counter))
}

/// ln(u) for normal positive `u`, from IEEE basic operations only (so the result is
/// the same bits on every CPU, unlike libm's `logf`): u = 2ᵉ·m with m in [√½, √2),
/// ln m = 2·atanh(s), s = (m−1)/(m+1), |s| < 0.172, series to s⁹ (error < 1e-8).
#[inline(always)]
pub fn ln_fast(u: f32) -> f32 {
    let bits = u.to_bits();
    let e0 = ((bits >> 23) & 0xff) as i32 - 127;
    let m0 = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let big = m0 > std::f32::consts::SQRT_2;
    let m = if big { m0 * 0.5 } else { m0 };
    let e = if big { e0 + 1 } else { e0 };
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let p = s * (2.0 + s2 * (2.0 / 3.0 + s2 * (0.4 + s2 * (2.0 / 7.0 + s2 * (2.0 / 9.0)))));
    e as f32 * std::f32::consts::LN_2 + p
}

/// (sin 2πf, cos 2πf) for f in [0, 1], from IEEE basic operations only: reduce to
/// x in [−π/4, π/4] and a quadrant, Taylor to x⁷ / x⁸ (error < 4e-7).
#[inline(always)]
pub fn sincos_turns(f: f32) -> (f32, f32) {
    sincos_quadrant(f, (f * 4.0 + 0.5) as i32)
}

/// The quadrant `(f·4 + 0.5) as i32` that [`sincos_turns`] takes for
/// `f = to_unit(bits)`, from the integer bits alone: the float-to-int cast
/// saturates, which does not vectorize. With `m = bits >> 8`, `f = (m + ½)/2²⁴`
/// is exact below 2²³; above, `m + ½` rounds half to even, to `m + (m & 1)`.
/// The test `quadrants_from_bits_match_the_float_formula` checks every `m`.
#[inline(always)]
fn unit_quadrant(bits: u32) -> i32 {
    let m = bits >> 8;
    if m < 1 << 23 {
        ((2 * m + 1 + (1 << 22)) >> 23) as i32
    } else {
        ((m + (m & 1) + (1 << 21)) >> 22) as i32
    }
}

/// [`sincos_turns`] with its quadrant `q` given.
#[inline(always)]
fn sincos_quadrant(f: f32, q: i32) -> (f32, f32) {
    let x = (f - q as f32 * 0.25) * std::f32::consts::TAU;
    let x2 = x * x;
    let s = x * (1.0 + x2 * (-1.0 / 6.0 + x2 * (1.0 / 120.0 + x2 * (-1.0 / 5040.0))));
    let c = 1.0 + x2 * (-0.5 + x2 * (1.0 / 24.0 + x2 * (-1.0 / 720.0 + x2 * (1.0 / 40320.0))));
    // Rotate by q quarter turns: (s, c), (c, −s), (−s, −c), (−c, s). Written with
    // selects and exact sign flips so the loop vectorizes.
    let odd = q & 1 == 1;
    let sin_sign = if q & 2 == 2 { -1.0 } else { 1.0 };
    let cos_sign = if (q + 1) & 2 == 2 { -1.0 } else { 1.0 };
    (
        if odd { c } else { s } * sin_sign,
        if odd { s } else { c } * cos_sign,
    )
}

/// Standard normals number `2·pair` and `2·pair + 1` of a stream (Box–Muller: the
/// cosine and the sine branch of one pair of uniforms).
#[inline(always)]
pub fn gaussian_pair(key: u32, pair: u32) -> (f32, f32) {
    let u1 = to_unit(rand_keyed(key, pair.wrapping_mul(2)));
    let u2 = to_unit(rand_keyed(key, pair.wrapping_mul(2).wrapping_add(1)));
    let r = (-2.0 * ln_fast(u1)).sqrt();
    let (sn, cs) = sincos_turns(u2);
    (r * cs, r * sn)
}

/// Normals number `first..first + out.len()` of the keyed stream, written in blocks
/// the compiler can vectorize. Same bits as calling [`gaussian`] per index.
///
/// Compiled once more for AVX2 and for AVX-512 and chosen at run time: the
/// baseline x86-64 build has no 32-bit vector multiply, so the hash ran scalar.
/// The wider builds enable no FMA and take no float liberties, so every
/// operation rounds as in the baseline build: the same bits on every CPU (the
/// test `block_fill_equals_per_index_draws` compares them with [`gaussian`]).
#[multiversion::multiversion(targets(
    "x86_64+avx+avx2+avx512f+avx512bw+avx512vl",
    "x86_64+avx+avx2"
))]
pub fn fill_gaussians(key: u32, first: u32, out: &mut [f32]) {
    const B: usize = 256;
    let (mut cb, mut sb) = ([0f32; B + 1], [0f32; B + 1]);
    let (mut h1, mut h2) = ([0u32; B + 1], [0u32; B + 1]);
    let mut done = 0usize;
    while done < out.len() {
        let start = first.wrapping_add(done as u32);
        // Stay clear of u32 wrap-around so the pairs of a block are consecutive.
        let room = (u32::MAX - start) as usize;
        let len = (out.len() - done).min(2 * B).min(room.max(1));
        let p0 = start / 2;
        let pairs = ((start as usize + len - 1) / 2 - p0 as usize) + 1;
        // Separate passes (hash, then float math) so each loop vectorizes.
        for (k, (a, b)) in h1[..pairs].iter_mut().zip(&mut h2[..pairs]).enumerate() {
            let c = (p0 + k as u32).wrapping_mul(2);
            *a = rand_keyed(key, c);
            *b = rand_keyed(key, c.wrapping_add(1));
        }
        for k in 0..pairs {
            let r = (-2.0 * ln_fast(to_unit(h1[k]))).sqrt();
            let (sn, cs) = sincos_quadrant(to_unit(h2[k]), unit_quadrant(h2[k]));
            cb[k] = r * cs;
            sb[k] = r * sn;
        }
        let dst = &mut out[done..done + len];
        if start.is_multiple_of(2) {
            let mut two = dst.chunks_exact_mut(2);
            for ((o, &c), &s) in (&mut two).zip(&cb).zip(&sb) {
                o[0] = c;
                o[1] = s;
            }
            if let [last] = two.into_remainder() {
                *last = cb[len / 2];
            }
        } else {
            for (j, o) in dst.iter_mut().enumerate() {
                let idx = start as usize + j;
                let k = idx / 2 - p0 as usize;
                *o = if idx.is_multiple_of(2) { cb[k] } else { sb[k] };
            }
        }
        done += len;
    }
}

/// Standard normal sample number `index` of stream `stream`.
#[inline]
pub fn gaussian(seed: u64, stream: u32, index: u32) -> f32 {
    let (c, s) = gaussian_pair(stream_key(seed, stream), index / 2);
    if index.is_multiple_of(2) { c } else { s }
}

/// Streams below this value are training steps; the ones above name other uses.
pub(crate) const STREAM_INIT: u32 = 0xF000_0000;
pub(crate) const STREAM_SHUFFLE: u32 = 0xE000_0000;
pub(crate) const STREAM_VERIFY: u32 = 0xD000_0000;
pub(crate) const STREAM_DATA: u32 = 0xC000_0000;

/// A deterministic Fisher–Yates permutation of `0..n` keyed by `(seed, stream)`.
pub fn permutation(n: usize, seed: u64, stream: u32) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        // 64-bit draw so the modulo bias is negligible for any realistic n.
        let hi = rand_u32(seed, stream, (2 * i) as u32) as u64;
        let lo = rand_u32(seed, stream, (2 * i + 1) as u32) as u64;
        let j = (((hi << 32) | lo) % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_moments_are_standard() {
        let n = 200_000u32;
        let (mut s, mut s2) = (0f64, 0f64);
        for i in 0..n {
            let z = gaussian(42, 7, i) as f64;
            s += z;
            s2 += z * z;
        }
        let mean = s / n as f64;
        let var = s2 / n as f64 - mean * mean;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
    }

    #[test]
    fn fast_ln_and_sincos_are_accurate() {
        for i in 1..=10_000u32 {
            let u = i as f32 / 10_000.0;
            assert!((ln_fast(u) - u.ln()).abs() < 2e-6, "ln {u}");
            let (s, c) = sincos_turns(u);
            let t = std::f32::consts::TAU * u;
            assert!(
                (s - t.sin()).abs() < 2e-6 && (c - t.cos()).abs() < 2e-6,
                "sincos {u}"
            );
        }
        assert!((ln_fast(3e-8) - 3e-8f32.ln()).abs() < 1e-5);
    }

    #[test]
    fn block_fill_equals_per_index_draws() {
        let key = stream_key(5, 6);
        for first in [0u32, 1, 1000, u32::MAX - 700] {
            let mut out = vec![0f32; 701];
            fill_gaussians(key, first, &mut out);
            for (j, z) in out.iter().enumerate() {
                let want = gaussian(5, 6, first.wrapping_add(j as u32));
                assert_eq!(z.to_bits(), want.to_bits(), "first {first} j {j}");
            }
        }
    }

    #[test]
    fn quadrants_from_bits_match_the_float_formula() {
        for m in 0..1u32 << 24 {
            let bits = m << 8 | (m & 0xff);
            let f = to_unit(bits);
            assert_eq!(unit_quadrant(bits), (f * 4.0 + 0.5) as i32, "m = {m}");
        }
    }

    #[test]
    fn streams_and_seeds_differ() {
        assert_ne!(gaussian(1, 0, 0), gaussian(2, 0, 0));
        assert_ne!(gaussian(1, 0, 0), gaussian(1, 1, 0));
        assert_eq!(gaussian(1, 5, 9).to_bits(), gaussian(1, 5, 9).to_bits());
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut p = permutation(1000, 3, 1);
        assert_ne!(p, (0..1000).collect::<Vec<_>>());
        p.sort_unstable();
        assert_eq!(p, (0..1000).collect::<Vec<_>>());
    }
}
