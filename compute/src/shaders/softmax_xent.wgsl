// One thread per row: loss = logsumexp(z) − z[y], grad = softmax(z) − onehot(y),
// as `canon::softmax_grad_row` and `canon::xent_row` compute them.
// m = rows, n = classes.
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;
@group(0) @binding(4) var<storage, read_write> grad: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = flat_index(gid, nwg);
    if (r >= p.m) { return; }
    let base = r * p.n;
    var mx = z[base];
    for (var c = 1u; c < p.n; c++) { mx = select(mx, z[base + c], z[base + c] > mx); }
    var sum = 0.0;
    for (var c = 0u; c < p.n; c++) { sum = sum + exp_c(z[base + c] - mx); }
    let y = labels[r];
    for (var c = 0u; c < p.n; c++) {
        var g = exp_c(z[base + c] - mx) / sum;
        if (c == y) { g -= 1.0; }
        grad[base + c] = g;
    }
    loss[r] = ln_c(sum) + mx - z[base + y];
}
