// One thread per row: s[r] = Σ_c x[r][c]². m = rows, n = cols.
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> s: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = flat_index(gid, nwg);
    if (r >= p.m) { return; }
    // Eight lanes, element c in lane c % 8, then the lanes left to right
    // (`canon::sq_norm`).
    var acc: array<f32, 8>;
    for (var l = 0u; l < 8u; l++) { acc[l] = 0.0; }
    for (var c = 0u; c < p.n; c++) { let v = x[r * p.n + c]; acc[c % 8u] = madd(v, v, acc[c % 8u]); }
    var total = 0.0;
    for (var l = 0u; l < 8u; l++) { total = total + acc[l]; }
    s[r] = total;
}
