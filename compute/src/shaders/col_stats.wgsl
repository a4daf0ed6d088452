// One thread per column: mean, population std, min, max, written as four blocks of
// n values. Two passes over the column for a numerically sound variance.
// m = rows, n = cols.
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> st: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_index(gid, nwg);
    if (c >= p.n) { return; }
    var sum = 0.0;
    var lo = x[c];
    var hi = x[c];
    for (var r = 0u; r < p.m; r++) {
        let v = x[r * p.n + c];
        sum += v;
        lo = select(lo, v, v < lo);
        hi = select(hi, v, v > hi);
    }
    let mean = sum / f32(p.m);
    var ss = 0.0;
    for (var r = 0u; r < p.m; r++) { let d = x[r * p.n + c] - mean; ss = madd(d, d, ss); }
    st[c] = mean;
    st[p.n + c] = sqrt(ss / f32(p.m));
    st[2u * p.n + c] = lo;
    st[3u * p.n + c] = hi;
}
