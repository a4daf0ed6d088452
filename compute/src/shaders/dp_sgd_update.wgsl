// Fused DP-SGD update: w' = w − lr·(g + std·N(key, offset + i))·scale, one pass over
// the parameters. m = element count, u0 = stream key, u3 = offset, f0 = std,
// f1 = scale, f2 = lr.
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.m) { return; }
    let z = gaussian(p.u0, p.u3 + i);
    out[i] = w[i] - p.f2 * ((g[i] + p.f0 * z) * p.f1);
}
