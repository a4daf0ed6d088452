//! Whole simulations with a node core per peer (`simnet::cores`): the
//! binary's own protocol decisions, each peer with its own ledger replica and
//! real sync.

#![allow(clippy::unwrap_used)] // a helper outside #[test] fns

use simnet::Scenario;
use simnet::cores::{CoreWorld, FAKED_SHARE, Replicas};

/// Run `sc` on node cores; its invariants held (supply conserved in every
/// replica, no escrow open past its bound).
fn run_clean(sc: &Scenario, seed: u64, replicas: Replicas) -> (simnet::Metrics, simnet::Summary) {
    let m = CoreWorld::new(sc, seed, replicas).run(|_| {});
    let s = m.summary(&sc.requesters.fairness_groups);
    eprintln!("{s:#?}\n{:?}", m.events_by_kind);
    assert!(
        s.invariant_violations.is_empty(),
        "{:?}",
        s.invariant_violations
    );
    (m, s)
}

/// `smoke`, with the faults a real network has: cheaters, churn, a partition.
fn rough_smoke(days: f64) -> Scenario {
    let mut sc = Scenario::load("smoke").unwrap();
    sc.days = days;
    sc.faults.cheating_share = 0.34;
    sc.faults.churn_per_day = 2.0;
    sc.faults.partitions = vec![simnet::scenario::Partition {
        start_hours: 4.0,
        hours: 2.0,
        regions: vec!["eu-west".into()],
    }];
    sc
}

/// The `faults` scenario on node cores lent one converged replica, for a
/// day and a half (its first partition included): what `cloudchain sim
/// faults` runs.
#[test]
fn faults_on_node_cores_keep_the_books_and_make_cheating_lose() {
    let mut sc = Scenario::load("faults").unwrap();
    sc.days = 1.5;
    let (m, s) = run_clean(&sc, sc.seed, Replicas::Shared);
    // Most jobs settled, and nearly all the rest were still running at the
    // end (jobs take up to hours here; seeds settle 88-94 % in 1.5 days).
    assert!(s.jobs_settled > s.jobs_submitted * 85 / 100, "{s:?}");
    assert!(
        s.jobs_settled + s.still_locked >= s.jobs_submitted * 97 / 100,
        "{s:?}"
    );
    assert!(s.checkpoints >= 35, "{s:?}");
    assert!(m.crashes > 0 && m.partitioned_messages > 0, "{s:?}");
    // Nine samples per receipt: a faked half escapes one time in 512. A
    // catch slashes the cheater's whole bond, and with no free bond left it
    // gets no contract until it bonds again.
    assert_eq!(s.cheaters_caught, s.cheaters, "{s:?}");
    assert!(s.wrong_results_caught >= s.cheaters as u64, "{s:?}");
    assert_eq!(s.wrong_results_missed, 0, "{s:?}");
    // Caught cheaters were slashed, and cheating did not pay.
    assert_eq!(s.cheating_lost(), Ok(()));
}

/// The shared replica keeps its pending fold across a settlement, an
/// expiry or an SLA record that commutes with every entry sorted after it,
/// instead of refolding: with cheaters caught and slashed, churn and a
/// partition, every view kept equals a refold (the check panics if not).
#[test]
fn folds_kept_across_appends_equal_refolds() {
    let sc = rough_smoke(1.0);
    let (m, kept) = CoreWorld::new(&sc, 9, Replicas::Shared)
        .checking_views(true)
        .run_counting_views(|_| {});
    let s = m.summary(&sc.requesters.fairness_groups);
    assert!(s.jobs_settled > 50 && s.cheaters_caught > 0, "{s:?}");
    assert!(kept > s.jobs_settled / 2, "{kept} kept, {s:?}");
    assert!(s.invariant_violations.is_empty(), "{s:?}");
}

/// The same with a replica per peer and real sync: an entry that arrives by
/// sync is folded on top of the pending view when it extends its author's
/// chain and commutes, and every such view equals a refold.
#[test]
fn folds_kept_across_synced_entries_equal_refolds() {
    let mut sc = Scenario::load("smoke").unwrap();
    sc.days = 0.5;
    sc.faults.cheating_share = 0.34;
    let (m, kept) = CoreWorld::new(&sc, 9, Replicas::PerPeer)
        .checking_views(true)
        .run_counting_views(|_| {});
    let s = m.summary(&sc.requesters.fairness_groups);
    assert!(s.jobs_settled > 10, "{s:?}");
    assert!(s.invariant_violations.is_empty(), "{s:?}");
    assert!(kept > s.jobs_settled, "{kept} kept, {s:?}");
}

/// Offers held back for idle cores and handed over before their next input
/// change nothing but the number of events: the same market, payouts,
/// prices and latencies as when every offer wakes every core on arrival.
#[test]
fn holding_offers_back_for_idle_cores_changes_nothing_but_the_events() {
    let sc = rough_smoke(1.0);
    let held = CoreWorld::new(&sc, 5, Replicas::Shared).run(|_| {});
    let woken = CoreWorld::new(&sc, 5, Replicas::Shared)
        .holding_offers(false)
        .run(|_| {});
    assert!(
        held.events < woken.events,
        "{} {}",
        held.events,
        woken.events
    );
    let outcome = |m: &simnet::Metrics| {
        let mut s = m.summary(&sc.requesters.fairness_groups);
        s.events = 0;
        s.events_by_kind.clear();
        (
            s,
            m.provider_earned.clone(),
            m.balances.clone(),
            m.latency_s.clone(),
        )
    };
    let (held, woken) = (outcome(&held), outcome(&woken));
    assert!(held.0.jobs_settled > 0, "{:?}", held.0);
    assert_eq!(held, woken);
}

#[test]
fn smoke_on_node_cores_settles_jobs_and_every_escrow_ends() {
    let mut sc = Scenario::load("smoke").unwrap();
    sc.days = 0.5;
    // run_clean: supply conserved in every replica, no escrow open past its
    // bound in any.
    let (_, s) = run_clean(&sc, sc.seed, Replicas::PerPeer);
    assert!(s.jobs_submitted > 30, "{s:?}");
    assert!(s.jobs_settled > s.jobs_submitted * 3 / 4, "{s:?}");
    // The committee checkpointed (nearly) every hourly epoch of the half day.
    assert!(s.checkpoints >= 10, "{s:?}");
    assert!(s.paid_tokens > 0.0 && s.minted_tokens > 0.0, "{s:?}");
}

#[test]
fn node_cores_same_seed_same_digest_other_seed_other_digest() {
    let mut sc = Scenario::load("smoke").unwrap();
    sc.days = 0.25;
    let a = CoreWorld::new(&sc, 5, Replicas::PerPeer)
        .run(|_| {})
        .digest();
    let b = CoreWorld::new(&sc, 5, Replicas::PerPeer)
        .run(|_| {})
        .digest();
    let c = CoreWorld::new(&sc, 6, Replicas::PerPeer)
        .run(|_| {})
        .digest();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

/// Cheaters fake half of each result; each committee member's challenge
/// (its signature over the receipt, revealed to the others) names one
/// segment through the node's own choice of segment, so a faked result
/// passes only when every seed misses the faked half. Churn restarts
/// providers from their persisted state, and a partition cuts a region off
/// for two hours: every escrow still ends, and cheating does not pay.
#[test]
fn on_node_cores_cheaters_are_caught_by_the_challenge_and_lose() {
    let sc = rough_smoke(1.0);
    let (m, s) = run_clean(&sc, 3, Replicas::PerPeer);
    assert!(m.crashes > 0 && m.partitioned_messages > 0, "{s:?}");
    // Every cheater that returned a wrong result was caught at least once,
    // and each catch slashed its bond and cut its reputation, so requesters
    // moved to honest providers.
    assert!(s.wrong_results_caught > 0, "{s:?}");
    for (provider, (caught, missed)) in &m.caught_by_provider {
        assert!(
            *caught > 0,
            "cheater {provider} escaped all {missed} checks"
        );
    }
    // Caught cheaters were slashed, and cheating did not pay.
    assert_eq!(s.cheating_lost(), Ok(()));
}

/// A cheater's faked half escapes three members' seeds one time in eight.
#[test]
fn the_stand_in_check_catches_a_faked_half_at_the_rate_of_three_samples() {
    let trials = 20_000u64;
    let caught = (0..trials)
        .filter(|t| simnet::cores::lands_on_faked(&[t * 3, t * 3 + 1, t * 3 + 2], FAKED_SHARE))
        .count() as f64;
    let rate = caught / trials as f64;
    assert!((rate - 0.875).abs() < 0.01, "caught {rate:.4}");
    // One seed alone: one half.
    let one = (0..trials)
        .filter(|t| simnet::cores::lands_on_faked(&[*t], FAKED_SHARE))
        .count() as f64;
    assert!((one / trials as f64 - 0.5).abs() < 0.015, "{one}");
}
