// DP-SGD noise: out[i] = (g[i] + std·N(seed, stream, offset + i))·scale.
// m = element count, u0 = stream key (see rng.rs), u3 = offset, f0 = std, f1 = scale.
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.m) { return; }
    let z = gaussian(p.u0, p.u3 + i);
    out[i] = (g[i] + p.f0 * z) * p.f1;
}
