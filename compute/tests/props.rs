//! Property tests: tensor files round-trip, arbitrary bytes never panic the parsers,
//! and the CPU product agrees with its definition for every transpose.

#![allow(clippy::unwrap_used)]

use compute::mlp::{Data, Mlp};
use compute::{Backend, CpuBackend, tensors};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn model_roundtrips_through_safetensors(
        layers in prop::collection::vec(1usize..12, 2..5),
        seed in any::<u64>(),
    ) {
        let m = Mlp::init(&layers, seed).unwrap();
        let bytes = m.to_safetensors().unwrap();
        prop_assert_eq!(Mlp::from_safetensors(&bytes).unwrap(), m);
    }

    #[test]
    fn data_roundtrips(rows in 0usize..20, cols in 1usize..6, seed in any::<u64>()) {
        let x: Vec<f32> = (0..(rows * cols) as u32).map(|i| compute::rng::gaussian(seed, 0, i)).collect();
        let y: Vec<u32> = (0..rows as u32).map(|i| compute::rng::rand_u32(seed, 1, i) % 7).collect();
        let bytes = tensors::Writer::new().f32("x", &[rows, cols], &x).u32("y", &[rows], &y).meta("k", "v").to_bytes().unwrap();
        let d = Data::from_safetensors(&bytes, "x", "y").unwrap();
        prop_assert_eq!((d.rows, d.cols), (rows, cols));
        prop_assert_eq!(d.x, x);
        prop_assert_eq!(d.y, compute::mlp::Labels::Classes(y));
        let meta = tensors::metadata(&bytes).unwrap();
        prop_assert_eq!(meta.get("k").map(String::as_str), Some("v"));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Mlp::from_safetensors(&bytes);
        let _ = Data::from_safetensors(&bytes, "x", "y");
    }

    #[test]
    fn corrupted_model_files_are_errors_not_panics(layers in prop::collection::vec(1usize..6, 2..4), cut in 0usize..400, flip in 0usize..400) {
        let bytes = Mlp::init(&layers, 1).unwrap().to_safetensors().unwrap();
        let _ = Mlp::from_safetensors(&bytes[..cut.min(bytes.len())]);
        let mut b = bytes.clone();
        let i = flip % b.len();
        b[i] ^= 0x5a;
        let _ = Mlp::from_safetensors(&b);
    }

    #[test]
    fn cpu_gemm_matches_definition(m in 1usize..9, k in 1usize..9, n in 1usize..9, ta: bool, tb: bool, seed in any::<u64>()) {
        let a: Vec<f32> = (0..(m * k) as u32).map(|i| compute::rng::uniform(seed, 0, i)).collect();
        let b: Vec<f32> = (0..(k * n) as u32).map(|i| compute::rng::uniform(seed, 1, i)).collect();
        let c = CpuBackend::new().gemm(&a, &b, m, k, n, ta, tb).unwrap();
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k)
                    .map(|l| {
                        let av = if ta { a[l * m + i] } else { a[i * k + l] };
                        let bv = if tb { b[j * k + l] } else { b[l * n + j] };
                        av * bv
                    })
                    .sum();
                prop_assert!((c[i * n + j] - want).abs() < 1e-5);
            }
        }
    }
}
