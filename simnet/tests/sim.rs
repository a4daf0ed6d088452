//! Whole simulations on the real engines.

use simnet::{Scenario, World};

#[test]
fn smoke_scenario_runs_settles_jobs_and_keeps_the_ledger_whole() {
    let sc = Scenario::load("smoke").unwrap();
    let m = simnet::run(&sc, None, |_| {});
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
