// One thread per row: s[r] = Σ_c x[r][c]². m = rows, n = cols.
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> s: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = flat_index(gid, nwg);
    if (r >= p.m) { return; }
    var acc = 0.0;
    for (var c = 0u; c < p.n; c++) { let v = x[r * p.n + c]; acc += v * v; }
    s[r] = acc;
}
