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
