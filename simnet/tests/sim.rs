//! Whole simulations: a node core per peer.

use simnet::Scenario;

#[test]
fn report_writes_csv_svg_and_html() {
    let sc = Scenario::load("smoke").unwrap();
    let mut stages = Vec::new();
    let o = simnet::report::run_all(&sc, 3, |stage, share| {
        if share >= 1.0 {
            stages.push(stage.to_string());
        }
    });
    assert_eq!(stages, vec!["main run"]);
    let dir = tempfile::tempdir().unwrap();
    let page = simnet::report::write_report(&o, dir.path()).unwrap();
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("Jain") && html.contains("SLA compliance"));
    // smoke runs a node core per peer, and the report says so.
    assert!(html.contains("a node core per peer"), "{html}");
    for f in [
        "providers.csv",
        "fairness.csv",
        "storage.csv",
        "summary.json",
        "tokens.svg",
        "fairness.svg",
        "storage.svg",
        "dp.svg",
    ] {
        let p = dir.path().join(f);
        assert!(std::fs::metadata(&p).unwrap().len() > 30, "{f}");
    }
    let providers = std::fs::read_to_string(dir.path().join("providers.csv")).unwrap();
    assert_eq!(providers.lines().count(), 1 + 6);
    // Each of the paper's figures is set against the run with a verdict; a
    // model (no calibration here) is never said to hold.
    let claims = simnet::report::paper_claims(&o);
    let figures: Vec<&str> = claims.iter().map(|c| c.figure).collect();
    assert_eq!(figures.len(), 4, "{figures:?}"); // no sweep: no Fig. 3
    for want in ["Fig. 2", "Fig. 4", "Fig. 5", "Fig. 6"] {
        assert!(figures.iter().any(|f| f.starts_with(want)), "{figures:?}");
    }
    for c in &claims {
        assert!(!c.why.is_empty() && !c.here.is_empty(), "{c:?}");
        if c.figure.starts_with("Fig. 2") || c.figure.starts_with("Fig. 6") {
            assert_eq!(c.holds, None, "{c:?}");
        }
    }
    assert!(html.contains("claims against this run"), "{html}");

    // Without requester groups there is no fairness figure, rather than an
    // empty one.
    let mut o = o;
    o.summary.jain_by_group.clear();
    let bare = tempfile::tempdir().unwrap();
    let page = simnet::report::write_report(&o, bare.path()).unwrap();
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(!html.contains("fairness.svg"), "{html}");
    assert!(!bare.path().join("fairness.svg").exists());
    assert!(bare.path().join("tokens.png").exists());
}

/// Figs. 2 and 6 come from a calibration when the scenario carries one, and
/// say they are a model when it does not; a DP job's units carry the
/// overhead measured at its batch size.
#[test]
fn figures_two_and_six_come_from_the_calibration_or_say_they_are_a_model() {
    use simnet::calibration::{Calibration, DpPoint, StoragePoint};
    let mut sc = Scenario::load("smoke").unwrap();
    sc.days = 0.2;
    sc.requesters.dp_share = 1.0;
    let model = simnet::report::run_all(&sc, 3, |_, _| {});
    let dir = tempfile::tempdir().unwrap();
    let page = simnet::report::write_report(&model, dir.path()).unwrap();
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("a model, not measured"), "{html}");
    for f in ["dp.svg", "dp.png", "storage.png", "dp.csv"] {
        assert!(dir.path().join(f).exists(), "{f}");
    }

    let point = |mb: u64| StoragePoint {
        size_mb: mb,
        blob_write_s: mb as f64 / 400.0,
        blob_read_s: mb as f64 / 250.0,
        ledger_write_s: mb as f64 / 400.0 + 1.3,
    };
    sc.calibration = Some(Calibration {
        source: "a test machine".into(),
        dp: vec![DpPoint {
            batch: 64,
            layers: vec![64, 256, 10],
            rows: 1024,
            plain_s: 1.0,
            dp_s: 1.1,
        }],
        storage: sc.storage.sizes_mb.iter().map(|&mb| point(mb)).collect(),
        storage_epoch_s: 2.0,
    });
    let measured = simnet::report::run_all(&sc, 3, |_, _| {});
    let dir = tempfile::tempdir().unwrap();
    let page = simnet::report::write_report(&measured, dir.path()).unwrap();
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("a test machine") && html.contains("64: +10 %"),
        "{html}"
    );
    let fit = simnet::report::storage_figure(&sc);
    assert!((fit.fit.read_mb_s - 250.0).abs() < 1e-6 && (fit.fit.write_mb_s - 400.0).abs() < 1e-6);
    // T_c on the scenario's epochs: half an epoch and the 0.3 s commit.
    let want = sc.epoch_minutes as f64 * 30.0 + 0.3;
    assert!((fit.tc_s - want).abs() < 1e-6, "{} vs {want}", fit.tc_s);
    let csv = std::fs::read_to_string(dir.path().join("storage.csv")).unwrap();
    assert!(
        csv.lines()
            .nth(1)
            .unwrap()
            .starts_with("50,0.2000,0.1250,1.4250,"),
        "{csv}"
    );
    let dp = std::fs::read_to_string(dir.path().join("dp.csv")).unwrap();
    assert_eq!(dp.lines().nth(1), Some("64,0.1000,true"));
}

/// A sweep runs each requester count on several seeds, side by side, and
/// reports the mean with its 95 % confidence interval, the utilization and
/// the knee; the result does not depend on how many threads ran it.
#[test]
fn a_sweep_on_seeds_reports_means_intervals_and_utilization() {
    let mut sc = Scenario::load("smoke").unwrap();
    sc.days = 0.1;
    sc.sweep = Some(simnet::scenario::Sweep {
        requesters: vec![2, 12],
        days: 0.5,
        seeds: 3,
    });
    let mut ends = Vec::new();
    let o = simnet::report::run_all(&sc, 5, |stage, share| {
        if stage.starts_with("sweep") {
            ends.push(share);
        }
    });
    assert_eq!(ends.len(), 6, "one report per run");
    assert_eq!(ends.last(), Some(&1.0));
    assert_eq!(o.sweep.len(), 2);
    for p in &o.sweep {
        let seeds: Vec<u64> = p.runs.iter().map(|(k, _)| *k).collect();
        assert_eq!(seeds, vec![5, 6, 7]);
        assert!(
            p.runs
                .iter()
                .all(|(_, x)| x.requesters == p.requesters as usize)
        );
        let u = p.utilization();
        assert!(u.mean > 0.0 && u.ci95 > 0.0, "{u:?}");
        assert!(p.offered_per_h().mean > 0.0);
    }
    // More requesters, more work.
    assert!(o.sweep[1].utilization().mean > o.sweep[0].utilization().mean);
    // Each run is its own simulation: the seed alone decides it.
    let again = simnet::report::run_one(&sc, 6, Some(12), Some(0.5), |_| {});
    let one = again.summary(&sc.requesters.fairness_groups);
    assert_eq!(format!("{:?}", o.sweep[1].runs[1].1), format!("{one:?}"));

    let dir = tempfile::tempdir().unwrap();
    let page = simnet::report::write_report(&o, dir.path()).unwrap();
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("utilization.svg") && html.contains("over 3 seeds"),
        "{html}"
    );
    assert!(html.contains("knee"), "{html}");
    let csv = std::fs::read_to_string(dir.path().join("sweep.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 3, "{csv}");
    assert!(rows[0].contains("settled_ci95") && rows[0].contains("contracted_share"));
    let classes = std::fs::read_to_string(dir.path().join("sweep_classes.csv")).unwrap();
    assert!(classes.lines().any(|l| l.starts_with("12,")), "{classes}");
    for p in &o.sweep {
        let share = p.contracted_share();
        assert!(share.mean > 0.0 && share.mean <= 1.0, "{share:?}");
        assert!(!p.utilization_by_class().is_empty());
    }
    assert!(
        rows[1].starts_with("2,3,") && rows[2].starts_with("12,3,"),
        "{csv}"
    );
    let claims = simnet::report::paper_claims(&o);
    assert!(
        claims.iter().any(|c| c.figure.starts_with("Fig. 3")),
        "{claims:?}"
    );
    for f in ["throughput.png", "utilization.png", "fairness_load.png"] {
        assert!(
            std::fs::metadata(dir.path().join(f)).unwrap().len() > 1000,
            "{f}"
        );
    }
}

/// With profile outages, providers are down about as long as their profiles
/// advertise: a home node (95 %, outages of two hours) far more than a data
/// centre (99.9 %, a quarter of an hour); and every escrow still ends.
#[test]
fn outages_follow_the_profiles_uptime() {
    let mut sc = Scenario::load("smoke").unwrap();
    sc.days = 4.0;
    sc.faults.profile_outages = true;
    let m = simnet::run(&sc, Some(11), |_| {});
    let s = m.summary(&[]);
    assert!(
        s.invariant_violations.is_empty(),
        "{:?}",
        s.invariant_violations
    );
    assert!(m.crashes > 0);
    let up = |c: &str| s.uptime_by_class[c];
    // 4 community nodes for 4 days at 0.63 outages a day of 2 h on average:
    // about 10 outages; the interval is wide, the order is not.
    assert!(
        (0.85..0.995).contains(&up("COM")),
        "{:?}",
        s.uptime_by_class
    );
    assert!(
        up("AWS") > 0.99 && up("AWS") > up("COM"),
        "{:?}",
        s.uptime_by_class
    );
    // Without the flag nobody goes down.
    sc.faults.profile_outages = false;
    let s = simnet::run(&sc, Some(11), |_| {}).summary(&[]);
    assert!(
        s.uptime_by_class.values().all(|u| *u == 1.0),
        "{:?}",
        s.uptime_by_class
    );
}
