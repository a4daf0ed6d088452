//! The canonical matrix product, which every exact backend computes bit for bit:
//! each element of `C = op(A)·op(B)` is one accumulator that starts at `+0.0` and
//! takes `acc + a·b` (two roundings, never a fused multiply-add) for `l = 0, 1, …,
//! k − 1` in that order. A tiled WGSL kernel that accumulates each output over `k`
//! in increasing order computes the same bits (`shaders/gemm.wgsl`), so a verifier
//! on the CPU can compare a GPU provider's weights by their hash.
//!
//! The kernel packs `A` in panels of [`MR`] rows and `B` in panels of [`NR`]
//! columns, and keeps an `MR×NR` tile of accumulators in registers over the whole
//! of `k`. Rows of tiles run in parallel; that changes no element's order of
//! summation. Built for AVX-512 and AVX2 as well as the baseline target, chosen at
//! run time (`multiversion`); Rust never contracts `acc + a*b` into an FMA, so every
//! build gives the same bits.

use rayon::prelude::*;

use crate::backend::GemmShape;

/// Rows of `A` in one register tile.
const MR: usize = 4;
/// Columns of `B` in one register tile.
const NR: usize = 16;
/// Below this many multiply-adds the product runs on one thread.
const PAR_MIN_FLOPS: usize = 1 << 20;

/// `C = op(A)·op(B)` in the canonical order (see the module docs). The caller
/// has checked the operands' lengths against `s`.
pub(crate) fn gemm(a: &[f32], b: &[f32], s: GemmShape) -> Vec<f32> {
    let GemmShape { m, k, n, ta, tb } = s;
    let mut c = vec![0f32; m * n];
    if m == 0 || n == 0 || k == 0 {
        return c;
    }
    // B in panels of NR columns, each k×NR with its rows contiguous; columns
    // past n are zero and their outputs are dropped.
    let panels = n.div_ceil(NR);
    let mut bp = vec![0f32; panels * k * NR];
    for (p, panel) in bp.chunks_mut(k * NR).enumerate() {
        for (l, row) in panel.chunks_mut(NR).enumerate() {
            for (jj, v) in row.iter_mut().enumerate() {
                let j = p * NR + jj;
                if j < n {
                    *v = if tb { b[j * k + l] } else { b[l * n + j] };
                }
            }
        }
    }
    let a_at = |i: usize, l: usize| if ta { a[l * m + i] } else { a[i * k + l] };
    let tile_rows = |(t, out): (usize, &mut [f32])| {
        // This tile row's A, k×MR with its rows contiguous; rows past m are zero.
        let i0 = t * MR;
        let mut ap = vec![0f32; k * MR];
        for (l, col) in ap.chunks_mut(MR).enumerate() {
            for (r, v) in col.iter_mut().enumerate() {
                if i0 + r < m {
                    *v = a_at(i0 + r, l);
                }
            }
        }
        let rows = out.len() / n;
        for (p, panel) in bp.chunks(k * NR).enumerate() {
            let acc = tile(&ap, panel);
            let j0 = p * NR;
            let cols = NR.min(n - j0);
            for (r, acc_r) in acc.iter().enumerate().take(rows) {
                out[r * n + j0..r * n + j0 + cols].copy_from_slice(&acc_r[..cols]);
            }
        }
    };
    if m * k * n >= PAR_MIN_FLOPS {
        c.par_chunks_mut(MR * n).enumerate().for_each(tile_rows);
    } else {
        c.chunks_mut(MR * n).enumerate().for_each(tile_rows);
    }
    c
}

/// One `MR×NR` tile: `acc[r][j] = Σ_l ap[l][r]·bp[l][j]`, `l` increasing, one
/// accumulator each, `acc + a*b`.
#[multiversion::multiversion(targets(
    "x86_64+avx+avx2+avx512f+avx512bw+avx512vl",
    "x86_64+avx+avx2"
))]
fn tile(ap: &[f32], bp: &[f32]) -> [[f32; NR]; MR] {
    // Four named rows of accumulators, each updated across its NR columns:
    // written so that the columns, not the rows or k, become the vector lanes.
    let (mut c0, mut c1, mut c2, mut c3) = ([0f32; NR], [0f32; NR], [0f32; NR], [0f32; NR]);
    for (a, b) in ap.chunks_exact(MR).zip(bp.chunks_exact(NR)) {
        let (a0, a1, a2, a3) = (a[0], a[1], a[2], a[3]);
        for j in 0..NR {
            let bj = b[j];
            c0[j] += a0 * bj;
            c1[j] += a1 * bj;
            c2[j] += a2 * bj;
            c3[j] += a3 * bj;
        }
    }
    [c0, c1, c2, c3]
}

/// The definition itself, one element at a time: what [`gemm`] must equal bit
/// for bit (tests and the self-test compare against it).
#[cfg(test)]
pub(crate) fn naive(a: &[f32], b: &[f32], s: GemmShape) -> Vec<f32> {
    let GemmShape { m, k, n, ta, tb } = s;
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f32;
            for l in 0..k {
                let av = if ta { a[l * m + i] } else { a[i * k + l] };
                let bv = if tb { b[j * k + l] } else { b[l * n + j] };
                acc += av * bv;
            }
            c[i * n + j] = acc;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, salt: u32) -> Vec<f32> {
        (0..len as u32)
            .map(|i| crate::rng::uniform(7, salt, i) * 2.0 - 1.0)
            .collect()
    }

    #[test]
    fn the_tiled_kernel_equals_the_definition_bit_for_bit() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (3, 5, 2),
            (4, 16, 16),
            (7, 33, 17),
            (64, 64, 64),
            (257, 129, 301),
        ] {
            let (a, b) = (data(m * k, 1), data(k * n, 2));
            for s in GemmShape::layouts(m, k, n) {
                let (want, got) = (naive(&a, &b, s), gemm(&a, &b, s));
                assert!(
                    want.iter()
                        .zip(&got)
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{s:?}"
                );
            }
        }
    }

    #[test]
    fn empty_dimensions_give_zeros() {
        assert_eq!(gemm(&[], &[], GemmShape::new(2, 0, 3)), vec![0.0; 6]);
        assert!(gemm(&[], &[1.0], GemmShape::new(0, 1, 1)).is_empty());
    }
}
