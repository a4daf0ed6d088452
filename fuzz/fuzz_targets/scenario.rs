//! A scenario file and a calibration file as `cloudchain sim` reads them
//! (a researcher's TOML, a cache or a file handed over): any bytes give a
//! scenario or a calibration, or a clear error naming the field, never a
//! panic; and what is accepted gives finite figures (the DP overhead by
//! batch, the storage fit and its `T_c`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use simnet::calibration::Calibration;

fn figures(sc: &simnet::Scenario) {
    for &b in &sc.requesters.train_batches {
        let x = simnet::setup::dp_overhead(sc, b);
        assert!(x.is_finite() && x >= 0.0, "overhead {x} at batch {b}");
    }
    let st = simnet::report::storage_figure(sc);
    for &mb in &sc.storage.sizes_mb {
        let (r, w, lw) = st.at(mb as f64);
        assert!(r.is_finite() && w.is_finite() && lw.is_finite(), "{st:?}");
    }
    let _ = simnet::report::dp_figure(sc);
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(sc) = simnet::Scenario::parse(text, "fuzz.toml") {
        figures(&sc);
    }
    // The same bytes as a calibration (JSON), put into a scenario.
    if let Ok(cal) = serde_json::from_str::<Calibration>(text)
        && cal.validate().is_ok()
        && let Ok(mut sc) = simnet::Scenario::load("smoke")
    {
        sc.calibration = Some(cal);
        figures(&sc);
    }
});
