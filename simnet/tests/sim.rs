//! Whole simulations on the real engines.

use simnet::{Scenario, World};

#[test]
fn smoke_scenario_runs_settles_jobs_and_keeps_the_ledger_whole() {
    let sc = Scenario::load("smoke").unwrap();
    let m = World::new(&sc, sc.seed, None, None).run(|_| {});
    let s = m.summary(&sc.requesters.fairness_groups);
    eprintln!("{s:#?}\n{:?}", m.events_by_kind);
    assert!(s.jobs_submitted > 50, "{s:?}");
    assert!(s.jobs_settled > s.jobs_submitted / 2, "{s:?}");
    assert!(
        s.invariant_violations.is_empty(),
        "{:?}",
        s.invariant_violations
    );
    assert!(s.sla_compliance > 0.8, "{s:?}");
    // The real ledger took every lock and settlement, and checkpointed epochs.
    assert!(
        s.checkpoints > 0 && s.ledger_entries > 2 * s.jobs_settled,
        "{s:?}"
    );
}

#[test]
fn same_seed_same_digest_other_seed_other_digest() {
    let sc = Scenario::load("smoke").unwrap();
    let a = World::new(&sc, 5, Some(3), Some(0.25)).run(|_| {}).digest();
    let b = World::new(&sc, 5, Some(3), Some(0.25)).run(|_| {}).digest();
    let c = World::new(&sc, 6, Some(3), Some(0.25)).run(|_| {}).digest();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

/// Idle requesters taking offers ahead, on two cores, gives the very same run as
/// taking each when the requester next acts.
#[test]
fn taking_offers_ahead_in_parallel_changes_nothing() {
    let sc = Scenario::load("smoke").unwrap();
    let ahead = World::new(&sc, 9, None, Some(1.0)).run(|_| {});
    let lazy = World::new(&sc, 9, None, Some(1.0))
        .without_offer_steps()
        .run(|_| {});
    assert!(ahead.settled_jobs > 10, "{}", ahead.settled_jobs);
    assert!(ahead.invariant_violations.is_empty());
    assert_eq!(ahead.digest(), lazy.digest());
}

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
    ] {
        let p = dir.path().join(f);
        assert!(std::fs::metadata(&p).unwrap().len() > 30, "{f}");
    }
    let providers = std::fs::read_to_string(dir.path().join("providers.csv")).unwrap();
    assert_eq!(providers.lines().count(), 1 + 6);

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
    for f in ["throughput.png", "utilization.png"] {
        assert!(
            std::fs::metadata(dir.path().join(f)).unwrap().len() > 1000,
            "{f}"
        );
    }
}

/// The `faults` scenario (partitions, churn, cheaters), shortened to two days:
/// the real ledger's invariants hold (every written entry valid in its fold, so
/// no balance went negative; supply = genesis + minted − burned), and cheaters are caught at the verification
/// rate — each wrong result is re-executed with probability `verify_share`.
#[test]
fn faults_keep_the_ledger_whole_and_catch_cheaters() {
    let sc = Scenario::load("faults").unwrap();
    let m = World::new(&sc, sc.seed, None, Some(2.0)).run(|_| {});
    let s = m.summary(&[]);
    assert!(
        s.invariant_violations.is_empty(),
        "{:?}",
        s.invariant_violations
    );
    // Two days of hourly epochs: every ended epoch got its checkpoint, so the
    // invariants above were checked against the ledger's state 47 times.
    assert!(s.checkpoints >= 47, "{s:?}");
    assert!(s.cheaters > 0);
    let wrong = s.wrong_results_caught + s.wrong_results_missed;
    assert!(wrong > 30, "{s:?}");
    let p = sc.oracles.verify_share;
    let rate = s.wrong_results_caught as f64 / wrong as f64;
    let sd = (p * (1.0 - p) / wrong as f64).sqrt();
    assert!(
        (rate - p).abs() < 4.0 * sd + 0.02,
        "caught {rate:.3} of wrong results, expected {p} ± {:.3}",
        4.0 * sd
    );
    // Caught is punished: a proven wrong result slashes the contract's bond,
    // and cheaters end with less than honest providers.
    assert_eq!(s.cheating_lost(), Ok(()));
    // A cheater that returned many wrong results cannot have escaped every check.
    for (provider, (caught, missed)) in &m.caught_by_provider {
        if caught + missed >= 25 {
            assert!(*caught > 0, "cheater {provider} escaped {missed} checks");
        }
    }
    assert!(
        m.crashes > 0 && m.partitioned_messages > 0,
        "faults were injected"
    );
}
