//! The CSV importer (`cloudchain data import`): any file gives a data set
//! whose labels are all classes (or, for a regression, finite targets), or a
//! clear error.
#![no_main]

use compute::mlp::{Data, Labels, Task};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((&task, csv)) = rest.split_first() else {
        return;
    };
    let task = if task & 1 == 0 {
        Task::Classify
    } else {
        Task::Regress
    };
    let opts = compute::import::ImportOptions {
        label: "y".into(),
        test_share: f64::from(flags & 0x7f) / 141.0,
        standardize: flags & 0x80 != 0,
        name: "fuzz".into(),
        task,
    };
    if let Ok(got) = compute::import::import_csv(csv, &opts) {
        let d = Data::read(&got.bytes, "x", "y", task).expect("reads back");
        assert_eq!(d.rows, got.train_rows);
        match &d.y {
            Labels::Classes(c) => assert!(c.iter().all(|c| (*c as usize) < got.classes.len())),
            Labels::Values(v) => assert!(v.iter().all(|t| t.is_finite())),
        }
    }
});
