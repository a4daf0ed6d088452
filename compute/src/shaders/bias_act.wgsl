// y = x + bias (per column), then ReLU when flags bit 0. m = rows, n = cols.
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.m * p.n) { return; }
    var z = x[i] + bias[i % p.n];
    if ((p.flags & 1u) != 0u) { z = select(0.0, z, z > 0.0); }
    y[i] = z;
}
