//! The canonical arithmetic: what an exact backend computes, bit for bit, so a
//! verifier compares a provider's weights by their hash instead of within a
//! tolerance (a tolerance is slack a cheater can use and a trap for an honest
//! GPU).
//!
//! The rules, which the WGSL kernels follow line for line (`shaders/common.wgsl`):
//!
//! - every sum has a fixed order and one accumulator per lane that starts at
//!   `+0.0`; products are `acc + a*b` with two roundings, never a fused
//!   multiply-add (Rust never contracts them; WGSL's `fma` is not fused on every
//!   driver, so neither side uses it);
//! - `exp` and `ln` are built here from `+`, `*`, `/`, bit casts and integer
//!   conversions only ([`exp`], [`ln`]), never a library's, whose results differ
//!   by up to thousands of ulps between a GPU driver and libm;
//! - nothing relies on the compiler leaving `(a + b) − b` alone (lavapipe folds
//!   it), and comparisons pick values with `select`, never `min`/`max` on signed
//!   zeros.
//!
//! Whether a given wgpu driver follows them is a property of that driver, found
//! at start-up by [`crate::selftest`].

/// `c + a·b` with two roundings: the one multiply-add of the canonical arithmetic.
#[inline(always)]
pub(crate) fn madd(a: f32, b: f32, c: f32) -> f32 {
    c + a * b
}

// The constants are the WGSL kernel's, digit for digit, and the clamp keeps
// `min`/`max` semantics (NaN becomes 88, as on lavapipe), not `clamp`'s.
#[allow(
    clippy::excessive_precision,
    clippy::approx_constant,
    clippy::manual_clamp
)]
/// `e^x` for `x ≤ 88`; below −87 the input is clamped (≈ 1.6e-38, never
/// subnormal). Cody–Waite reduction and a degree-6 polynomial: within 3 ulp of
/// the true value, and the same bits on every exact backend.
#[inline]
pub fn exp(x0: f32) -> f32 {
    let x = x0.min(88.0).max(-87.0);
    // n = round(x / ln 2) by the 1.5·2^23 trick, read back through the bits.
    let t = madd(x, 1.442_695_04, 12_582_912.0);
    let n = (t.to_bits() as i32) - 0x4b40_0000;
    let nf = n as f32;
    let mut r = madd(-nf, 0.693_145_752, x);
    r = madd(-nf, 1.428_606_77e-6, r);
    let mut q = (1.0f64 / 720.0) as f32;
    q = madd(q, r, (1.0f64 / 120.0) as f32);
    q = madd(q, r, (1.0f64 / 24.0) as f32);
    q = madd(q, r, (1.0f64 / 6.0) as f32);
    q = madd(q, r, 0.5);
    q = madd(q, r, 1.0);
    q = madd(q, r, 1.0);
    q * f32::from_bits(((n + 127) as u32) << 23)
}

#[allow(clippy::excessive_precision, clippy::approx_constant)]
/// `ln x` for normal `x > 0`, within 3 ulp, the same bits on every exact backend.
#[inline]
pub fn ln(x: f32) -> f32 {
    let bits = x.to_bits();
    let e0 = (bits >> 23) as i32 - 127;
    let m0 = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let big = m0 > 1.414_213_56;
    let m = if big { m0 * 0.5 } else { m0 };
    let e = (if big { e0 + 1 } else { e0 }) as f32;
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut q = (2.0f64 / 9.0) as f32;
    q = madd(q, s2, (2.0f64 / 7.0) as f32);
    q = madd(q, s2, 0.4);
    q = madd(q, s2, (2.0f64 / 3.0) as f32);
    q = madd(q, s2, 2.0);
    madd(e, 0.693_145_752, madd(e, 1.428_606_77e-6, q * s))
}

/// `max(0, z)`, with `+0.0` for every `z ≤ 0` (−0.0 included) and NaN.
#[inline(always)]
pub fn relu(z: f32) -> f32 {
    if z > 0.0 { z } else { 0.0 }
}

/// Lanes of [`sq_norm`].
pub(crate) const NORM_LANES: usize = 8;

/// `Σ v²` in [`NORM_LANES`] lanes: element `c` goes to lane `c mod 8`, each lane
/// in increasing `c`, then the lanes are added left to right. A fixed order the
/// CPU vectorizes, where one serial chain would not.
pub fn sq_norm(r: &[f32]) -> f32 {
    let mut acc = [0f32; NORM_LANES];
    let mut chunks = r.chunks_exact(NORM_LANES);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a = madd(*v, *v, *a);
        }
    }
    for (a, v) in acc.iter_mut().zip(chunks.remainder()) {
        *a = madd(*v, *v, *a);
    }
    acc.iter().fold(0f32, |s, &a| s + a)
}

/// The largest of a row (its first element for a row of NaNs).
fn row_max(z: &[f32]) -> f32 {
    let mut mx = z[0];
    for &v in &z[1..] {
        if v > mx {
            mx = v;
        }
    }
    mx
}

/// Writes the row's softmax minus one-hot into `g`: `e_c = exp(z_c − max)`,
/// summed in increasing `c`, then `e_c / sum`, less 1 at the label.
pub fn softmax_grad_row(z: &[f32], y: usize, g: &mut [f32]) {
    let mx = row_max(z);
    let mut sum = 0f32;
    for (g, &v) in g.iter_mut().zip(z) {
        *g = exp(v - mx);
        sum += *g;
    }
    for g in g.iter_mut() {
        *g /= sum;
    }
    g[y] -= 1.0;
}

/// The row's cross-entropy, `ln Σ exp(z_c − max) + max − z_y`.
pub fn xent_row(z: &[f32], y: usize) -> f32 {
    let mx = row_max(z);
    let mut sum = 0f32;
    for &v in z {
        sum += exp(v - mx);
    }
    ln(sum) + mx - z[y]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_ln_are_within_a_few_ulp_of_libm() {
        let ulps = |a: f32, b: f32| (a.to_bits() as i64 - b.to_bits() as i64).abs();
        let mut bits = 0u64;
        while bits <= 0xffff_ffff {
            let x = f32::from_bits(bits as u32);
            if x.is_finite() && (-87.0..=88.0).contains(&x) {
                assert!(ulps(exp(x), x.exp()) <= 3, "exp({x})");
                let y = x.abs() * 0.09 + 1e-30;
                assert!(ulps(ln(y), y.ln()) <= 3, "ln({y})");
            }
            bits += 9_973;
        }
    }

    #[test]
    fn relu_gives_positive_zero() {
        assert_eq!(relu(-0.0).to_bits(), 0f32.to_bits());
        assert_eq!(relu(f32::NAN).to_bits(), 0f32.to_bits());
        assert_eq!(relu(2.5), 2.5);
    }

    #[test]
    fn sq_norm_follows_its_lanes() {
        let r: Vec<f32> = (0..21).map(|i| i as f32 * 0.37 - 3.0).collect();
        let mut acc = [0f32; NORM_LANES];
        for (c, v) in r.iter().enumerate() {
            acc[c % NORM_LANES] += v * v;
        }
        let want = acc.iter().fold(0f32, |s, &a| s + a);
        assert_eq!(sq_norm(&r).to_bits(), want.to_bits());
    }
}
