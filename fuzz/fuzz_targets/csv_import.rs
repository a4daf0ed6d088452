//! The CSV importer (`cloudchain data import`): any file gives a data set
//! whose labels are all classes, or a clear error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, csv)) = data.split_first() else {
        return;
    };
    let opts = compute::import::ImportOptions {
        label: "y".into(),
        test_share: f64::from(flags & 0x7f) / 141.0,
        standardize: flags & 0x80 != 0,
        name: "fuzz".into(),
    };
    if let Ok(got) = compute::import::import_csv(csv, &opts) {
        let d = compute::mlp::Data::from_safetensors(&got.bytes, "x", "y").expect("reads back");
        assert_eq!(d.rows, got.train_rows);
        assert!(d.y.iter().all(|c| (*c as usize) < got.classes.len()));
    }
});
