//! A model file as `cloudchain model export`, `model inspect` and `predict`
//! read it (a requester's result, or a file anyone hands over): any bytes
//! give a model or a clear error, never a panic, and a model that loads
//! exports to ONNX and predicts a row.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = compute::predict::Model::from_safetensors(data) else {
        return;
    };
    let _ = compute::onnx::export(data);
    let features = m.info.features();
    if features > 0 && features <= 4096 {
        let x = vec![0.5f32; features];
        let _ = compute::predict::predict(data, &x, 1);
    }
});
