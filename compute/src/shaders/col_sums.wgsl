// One thread per column: s[c] = Σ_r x[r][c]. m = rows, n = cols.
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> s: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_index(gid, nwg);
    if (c >= p.n) { return; }
    var acc = 0.0;
    for (var r = 0u; r < p.m; r++) { acc += x[r * p.n + c]; }
    s[c] = acc;
}
