//! The wgpu backend: every [`Backend`] operation is a WGSL compute shader
//! (`src/shaders/*.wgsl`). Each call uploads its operands, dispatches once and reads
//! the result back, so host and device never share mutable state.

use crate::backend::{
    Backend, BackendInfo, BackendKind, ColStats, GemmShape, NoiseParams, check_len,
    check_softmax_xent,
};
use crate::error::{ComputeError, Result, shape_err};
use bytemuck::{Pod, Zeroable};
use std::sync::mpsc;
use wgpu::util::DeviceExt;

const COMMON: &str = include_str!("shaders/common.wgsl");

/// The kernels, in the order their pipelines are stored.
#[derive(Debug, Clone, Copy)]
enum Kernel {
    Gemm,
    BiasAct,
    ReluBackward,
    SoftmaxXent,
    ColSums,
    RowSqNorms,
    ScaleRows,
    DpNoise,
    SgdUpdate,
    ColStats,
    AffineCols,
    DpSgdUpdate,
}

const KERNELS: [(Kernel, &str, &str); 12] = [
    (Kernel::Gemm, "gemm", include_str!("shaders/gemm.wgsl")),
    (
        Kernel::BiasAct,
        "bias_act",
        include_str!("shaders/bias_act.wgsl"),
    ),
    (
        Kernel::ReluBackward,
        "relu_backward",
        include_str!("shaders/relu_backward.wgsl"),
    ),
    (
        Kernel::SoftmaxXent,
        "softmax_xent",
        include_str!("shaders/softmax_xent.wgsl"),
    ),
    (
        Kernel::ColSums,
        "col_sums",
        include_str!("shaders/col_sums.wgsl"),
    ),
    (
        Kernel::RowSqNorms,
        "row_sq_norms",
        include_str!("shaders/row_sq_norms.wgsl"),
    ),
    (
        Kernel::ScaleRows,
        "scale_rows",
        include_str!("shaders/scale_rows.wgsl"),
    ),
    (
        Kernel::DpNoise,
        "dp_noise",
        include_str!("shaders/dp_noise.wgsl"),
    ),
    (
        Kernel::SgdUpdate,
        "sgd_update",
        include_str!("shaders/sgd_update.wgsl"),
    ),
    (
        Kernel::ColStats,
        "col_stats",
        include_str!("shaders/col_stats.wgsl"),
    ),
    (
        Kernel::AffineCols,
        "affine_cols",
        include_str!("shaders/affine_cols.wgsl"),
    ),
    (
        Kernel::DpSgdUpdate,
        "dp_sgd_update",
        include_str!("shaders/dp_sgd_update.wgsl"),
    ),
];

/// GEMM output tile edge (must match `TS` in `gemm.wgsl`).
const GEMM_TILE: usize = 64;
/// Threads per workgroup of the 1-D kernels.
const WG: usize = 256;
const MAX_GROUPS: usize = 65_535;

/// Matches `struct Params` in `common.wgsl`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable, Default)]
struct Params {
    m: u32,
    k: u32,
    n: u32,
    flags: u32,
    u: [u32; 4],
    f: [f32; 4],
}

/// wgpu device with the compiled kernels.
#[derive(Debug)]
pub struct WgpuBackend {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    pipelines: Vec<wgpu::ComputePipeline>,
    max_binding: u64,
}

fn u32_of(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| shape_err(op, format!("dimension {v} exceeds u32")))
}

impl WgpuBackend {
    /// Opens the highest-performance adapter wgpu finds (a real GPU if there is one,
    /// else a software one such as lavapipe) and compiles every kernel.
    ///
    /// Fails with [`ComputeError::NoAdapter`] when wgpu finds no adapter at all.
    pub fn new() -> Result<Self> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            ..Default::default()
        }))
        .map_err(|e| ComputeError::NoAdapter(e.to_string()))?;
        Self::from_adapter(&adapter)
    }

    /// Lists the adapters wgpu can see (name, API, device type), for diagnostics.
    pub fn list_adapters() -> Vec<BackendInfo> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
            .iter()
            .map(|a| to_info(&a.get_info()))
            .collect()
    }

    fn from_adapter(adapter: &wgpu::Adapter) -> Result<Self> {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("cloudchain-compute"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| ComputeError::Device(e.to_string()))?;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let pipelines = KERNELS
            .iter()
            .map(|(_, name, body)| {
                let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(name),
                    source: wgpu::ShaderSource::Wgsl(format!("{COMMON}\n{body}").into()),
                });
                device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(name),
                    layout: None,
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: Default::default(),
                    cache: None,
                })
            })
            .collect();
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(ComputeError::Device(format!("compiling kernels: {e}")));
        }
        let max_binding = limits.max_storage_buffer_binding_size;
        tracing::info!(adapter = %info.name, api = ?info.backend, device_type = ?info.device_type, "wgpu backend ready");
        Ok(Self {
            device,
            queue,
            info,
            pipelines,
            max_binding,
        })
    }

    /// The wgpu device type (used by [`crate::select_backend`]).
    pub fn device_type(&self) -> wgpu::DeviceType {
        self.info.device_type
    }

    /// Runs `kernel` with `params`, binding `inputs` then `outputs` (sizes in bytes)
    /// after the uniform block, over `groups` workgroups; returns the outputs.
    fn run(
        &self,
        kernel: Kernel,
        params: Params,
        inputs: &[&[u8]],
        outputs: &[usize],
        groups: (u32, u32),
    ) -> Result<Vec<Vec<u8>>> {
        let dev = &self.device;
        let scope = dev.push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = dev.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let uniform = dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("params"),
            contents: bytemuck::bytes_of(&params),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        // Zero-sized bindings are invalid: pad empty tensors to one element.
        let pad = |len: usize| (len.max(4)) as u64;
        for len in inputs
            .iter()
            .map(|i| i.len())
            .chain(outputs.iter().copied())
        {
            if pad(len) > self.max_binding {
                return Err(ComputeError::Device(format!(
                    "tensor of {len} bytes exceeds the device's binding limit {}",
                    self.max_binding
                )));
            }
        }
        let ins: Vec<wgpu::Buffer> = inputs
            .iter()
            .map(|data| {
                let mut bytes = data.to_vec();
                bytes.resize(pad(data.len()) as usize, 0);
                dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("input"),
                    contents: &bytes,
                    usage: wgpu::BufferUsages::STORAGE,
                })
            })
            .collect();
        let outs: Vec<(wgpu::Buffer, wgpu::Buffer)> = outputs
            .iter()
            .map(|&len| {
                let size = pad(len);
                let storage = dev.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("output"),
                    size,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                });
                let staging = dev.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("readback"),
                    size,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                (storage, staging)
            })
            .collect();
        let pipeline = &self.pipelines[kernel as usize];
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        for (i, buf) in ins.iter().chain(outs.iter().map(|(s, _)| s)).enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: buf.as_entire_binding(),
            });
        }
        let bind = dev.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let mut enc = dev.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: None,
            });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &bind, &[]);
            if groups.0 > 0 && groups.1 > 0 {
                pass.dispatch_workgroups(groups.0, groups.1, 1);
            }
        }
        for (s, st) in &outs {
            enc.copy_buffer_to_buffer(s, 0, st, 0, s.size());
        }
        self.queue.submit([enc.finish()]);
        let mut result = Vec::with_capacity(outs.len());
        for ((_, st), &len) in outs.iter().zip(outputs) {
            let (tx, rx) = mpsc::channel();
            st.slice(..).map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
            self.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| ComputeError::Device(e.to_string()))?;
            rx.recv()
                .map_err(|e| ComputeError::Device(e.to_string()))?
                .map_err(|e| ComputeError::Device(e.to_string()))?;
            let view = st
                .slice(..)
                .get_mapped_range()
                .map_err(|e| ComputeError::Device(e.to_string()))?;
            result.push(view[..len].to_vec());
            drop(view);
            st.unmap();
        }
        if let Some(e) = pollster::block_on(oom.pop()) {
            return Err(ComputeError::Device(format!("{kernel:?}: {e}")));
        }
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(ComputeError::Device(format!("{kernel:?}: {e}")));
        }
        Ok(result)
    }

    /// One output of `floats` f32 values.
    fn run1(
        &self,
        kernel: Kernel,
        params: Params,
        inputs: &[&[u8]],
        floats: usize,
        groups: (u32, u32),
    ) -> Result<Vec<f32>> {
        let mut out = self.run(kernel, params, inputs, &[floats * 4], groups)?;
        Ok(out.pop().map(|b| to_f32(&b)).unwrap_or_default())
    }
}

fn to_info(info: &wgpu::AdapterInfo) -> BackendInfo {
    BackendInfo {
        kind: BackendKind::Wgpu,
        name: info.name.clone(),
        api: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
    }
}

fn to_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn bytes(x: &[f32]) -> &[u8] {
    bytemuck::cast_slice(x)
}

/// Workgroup grid for `threads` 1-D threads in 256-wide groups.
fn grid(threads: usize) -> (u32, u32) {
    let groups = threads.div_ceil(WG);
    if groups <= MAX_GROUPS {
        (groups as u32, 1)
    } else {
        (MAX_GROUPS as u32, groups.div_ceil(MAX_GROUPS) as u32)
    }
}

fn params(op: &'static str, m: usize, k: usize, n: usize, flags: u32) -> Result<Params> {
    Ok(Params {
        m: u32_of(op, m)?,
        k: u32_of(op, k)?,
        n: u32_of(op, n)?,
        flags,
        ..Default::default()
    })
}

impl Backend for WgpuBackend {
    fn info(&self) -> BackendInfo {
        to_info(&self.info)
    }

    fn gemm_checked(&self, a: &[f32], b: &[f32], s: GemmShape) -> Result<Vec<f32>> {
        let GemmShape { m, k, n, ta, tb } = s;
        let flags = u32::from(ta) | (u32::from(tb) << 1);
        let groups = (
            u32_of("gemm", n.div_ceil(GEMM_TILE))?,
            u32_of("gemm", m.div_ceil(GEMM_TILE))?,
        );
        if groups.0 as usize > MAX_GROUPS || groups.1 as usize > MAX_GROUPS {
            return Err(shape_err("gemm", format!("{m}×{n} output is too large")));
        }
        self.run1(
            Kernel::Gemm,
            params("gemm", m, k, n, flags)?,
            &[bytes(a), bytes(b)],
            m * n,
            groups,
        )
    }

    fn bias_act(
        &self,
        x: &[f32],
        bias: &[f32],
        rows: usize,
        cols: usize,
        relu: bool,
    ) -> Result<Vec<f32>> {
        check_len("bias_act", "x", x.len(), rows * cols)?;
        check_len("bias_act", "bias", bias.len(), cols)?;
        self.run1(
            Kernel::BiasAct,
            params("bias_act", rows, 0, cols, u32::from(relu))?,
            &[bytes(x), bytes(bias)],
            x.len(),
            grid(x.len()),
        )
    }

    fn relu_backward(&self, delta: &[f32], act: &[f32]) -> Result<Vec<f32>> {
        check_len("relu_backward", "act", act.len(), delta.len())?;
        self.run1(
            Kernel::ReluBackward,
            params("relu_backward", delta.len(), 0, 0, 0)?,
            &[bytes(delta), bytes(act)],
            delta.len(),
            grid(delta.len()),
        )
    }

    fn softmax_xent(
        &self,
        logits: &[f32],
        labels: &[u32],
        rows: usize,
        classes: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        check_softmax_xent(logits, labels, rows, classes)?;
        let mut out = self.run(
            Kernel::SoftmaxXent,
            params("softmax_xent", rows, 0, classes, 0)?,
            &[bytes(logits), bytemuck::cast_slice(labels)],
            &[rows * 4, rows * classes * 4],
            grid(rows),
        )?;
        let grad = out.pop().map(|b| to_f32(&b)).unwrap_or_default();
        let loss = out.pop().map(|b| to_f32(&b)).unwrap_or_default();
        Ok((loss, grad))
    }

    fn col_sums(&self, x: &[f32], rows: usize, cols: usize) -> Result<Vec<f32>> {
        check_len("col_sums", "x", x.len(), rows * cols)?;
        self.run1(
            Kernel::ColSums,
            params("col_sums", rows, 0, cols, 0)?,
            &[bytes(x)],
            cols,
            grid(cols),
        )
    }

    fn row_sq_norms(&self, x: &[f32], rows: usize, cols: usize) -> Result<Vec<f32>> {
        check_len("row_sq_norms", "x", x.len(), rows * cols)?;
        self.run1(
            Kernel::RowSqNorms,
            params("row_sq_norms", rows, 0, cols, 0)?,
            &[bytes(x)],
            rows,
            grid(rows),
        )
    }

    fn scale_rows(&self, x: &[f32], rows: usize, cols: usize, s: &[f32]) -> Result<Vec<f32>> {
        check_len("scale_rows", "x", x.len(), rows * cols)?;
        check_len("scale_rows", "s", s.len(), rows)?;
        self.run1(
            Kernel::ScaleRows,
            params("scale_rows", rows, 0, cols, 0)?,
            &[bytes(x), bytes(s)],
            x.len(),
            grid(x.len()),
        )
    }

    fn dp_noise(&self, g: &[f32], p: NoiseParams) -> Result<Vec<f32>> {
        let mut prm = params("dp_noise", g.len(), 0, 0, 0)?;
        prm.u = [crate::rng::stream_key(p.seed, p.stream), 0, 0, p.offset];
        prm.f = [p.std, p.scale, 0.0, 0.0];
        self.run1(Kernel::DpNoise, prm, &[bytes(g)], g.len(), grid(g.len()))
    }

    fn dp_sgd_update(&self, w: &[f32], g: &[f32], lr: f32, p: NoiseParams) -> Result<Vec<f32>> {
        check_len("dp_sgd_update", "g", g.len(), w.len())?;
        let mut prm = params("dp_sgd_update", w.len(), 0, 0, 0)?;
        prm.u = [crate::rng::stream_key(p.seed, p.stream), 0, 0, p.offset];
        prm.f = [p.std, p.scale, lr, 0.0];
        self.run1(
            Kernel::DpSgdUpdate,
            prm,
            &[bytes(w), bytes(g)],
            w.len(),
            grid(w.len()),
        )
    }

    fn sgd_update(&self, w: &[f32], g: &[f32], lr: f32) -> Result<Vec<f32>> {
        check_len("sgd_update", "g", g.len(), w.len())?;
        let mut prm = params("sgd_update", w.len(), 0, 0, 0)?;
        prm.f[0] = lr;
        self.run1(
            Kernel::SgdUpdate,
            prm,
            &[bytes(w), bytes(g)],
            w.len(),
            grid(w.len()),
        )
    }

    fn col_stats(&self, x: &[f32], rows: usize, cols: usize) -> Result<ColStats> {
        check_len("col_stats", "x", x.len(), rows * cols)?;
        if rows == 0 {
            return Err(shape_err("col_stats", "no rows"));
        }
        let st = self.run1(
            Kernel::ColStats,
            params("col_stats", rows, 0, cols, 0)?,
            &[bytes(x)],
            4 * cols,
            grid(cols),
        )?;
        let part = |i: usize| st[i * cols..(i + 1) * cols].to_vec();
        Ok(ColStats {
            mean: part(0),
            std: part(1),
            min: part(2),
            max: part(3),
        })
    }

    fn affine_cols(
        &self,
        x: &[f32],
        rows: usize,
        cols: usize,
        shift: &[f32],
        scale: &[f32],
    ) -> Result<Vec<f32>> {
        check_len("affine_cols", "x", x.len(), rows * cols)?;
        check_len("affine_cols", "shift", shift.len(), cols)?;
        check_len("affine_cols", "scale", scale.len(), cols)?;
        self.run1(
            Kernel::AffineCols,
            params("affine_cols", rows, 0, cols, 0)?,
            &[bytes(x), bytes(shift), bytes(scale)],
            x.len(),
            grid(x.len()),
        )
    }
}
