//! The one `unsafe` call in the crate: `matrixmultiply::sgemm` takes raw pointers.
//! This wrapper checks every index the kernel can touch before handing them over.

/// `C (m×n, row-major, overwritten) = A·B` where `A[i][l] = a[i·rsa + l·csa]` and
/// `B[l][j] = b[l·rsb + j·csb]`.
///
/// # Panics
/// If a stride is negative or the slices are too short for the given shape; callers
/// validate shapes first, so this is an internal invariant.
#[allow(unsafe_code)]
pub(crate) fn sgemm(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    [rsa, csa, rsb, csb]: [isize; 4],
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c[..m * n].fill(0.0);
        return;
    }
    let last = |rows: usize, cols: usize, rs: isize, cs: isize| -> usize {
        assert!(rs >= 0 && cs >= 0, "negative stride");
        (rows - 1) * rs as usize + (cols - 1) * cs as usize
    };
    assert!(
        last(m, k, rsa, csa) < a.len(),
        "A too short for its strides"
    );
    assert!(
        last(k, n, rsb, csb) < b.len(),
        "B too short for its strides"
    );
    assert!(m * n <= c.len(), "C too short");
    // SAFETY: the asserts above prove that every element matrixmultiply reads from
    // `a`/`b` and writes to `c` (row-major with strides (n, 1)) lies inside the slices;
    // the slices are borrowed for the duration of the call and `c` does not alias them.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}
