//! The attack library on a few seeds (the README shows the 100-seed runs):
//! each attacker nets less than an honest provider of the same hardware.

use simnet::Scenario;
use simnet::attack::{AttackReport, run_seeds};
use simnet::scenario::AttackKind;

/// `name` on `seeds`, two at a time: each run's attack report.
fn attack(name: &str, seeds: &[u64], edit: impl Fn(&mut Scenario)) -> Vec<(u64, AttackReport)> {
    let mut sc = Scenario::load(name).expect("a built-in scenario");
    edit(&mut sc);
    run_seeds(&sc, seeds, 2, |_| {})
        .into_iter()
        .map(|(seed, m)| (seed, m.attack.expect("an attack scenario reports")))
        .collect()
}

/// Every attacker nets less than the honest provider, no honest provider is
/// slashed, and the ledger's invariants (every escrow ended) hold.
fn assert_lost(runs: &[(u64, AttackReport)]) {
    for (seed, r) in runs {
        for a in &r.attackers {
            assert!(
                a.net() < r.honest_net(),
                "seed {seed}: {} nets {:.1}, an honest provider {:.1}",
                a.label,
                a.net(),
                r.honest_net()
            );
        }
        assert_eq!(r.honest_slashed, 0, "seed {seed}: {r:?}");
        assert!(r.invariant_violations.is_empty(), "seed {seed}: {r:?}");
    }
}

#[test]
fn lazy_providers_are_caught_and_net_less_than_honest_ones() {
    let runs = attack("attack-lazy", &[1, 3], |_| {});
    assert_lost(&runs);
    for (seed, r) in &runs {
        for a in &r.attackers {
            assert!(a.caught > 0, "seed {seed}: {} never caught", a.label);
        }
        // Skipping half the work or more is a net loss on every seed.
        for a in &r.attackers[1..] {
            assert!(
                a.net() <= 0.0,
                "seed {seed}: {} nets {:.1}",
                a.label,
                a.net()
            );
        }
    }
    // Skipping a tenth: a loss in expectation (caught 61 % of the time on
    // nine samples); on these seeds too.
    let tenth: f64 = runs.iter().map(|(_, r)| r.attackers[0].net()).sum();
    assert!(
        tenth < 0.0,
        "skipping 10 % netted {tenth:.1} over the seeds"
    );
}

#[test]
fn inflated_units_are_caught_on_every_receipt_and_lose() {
    let runs = attack("attack-units", &[1, 2], |_| {});
    assert_lost(&runs);
    for (seed, r) in &runs {
        let a = &r.attackers[0];
        assert!(a.jobs > 0, "seed {seed}: no requester chose the attacker");
        assert_eq!(a.caught, a.jobs, "seed {seed}: {a:?}");
        assert!(a.net() < 0.0, "seed {seed}: {a:?}");
    }
}

#[test]
fn a_whitewasher_loses_a_bond_per_key_and_nets_less() {
    let runs = attack("attack-whitewash", &[1, 2], |_| {});
    assert_lost(&runs);
    for (seed, r) in &runs {
        assert!(r.attackers[0].caught > 1, "seed {seed}: {r:?}");
        assert!(r.failures().is_empty(), "seed {seed}: {:?}", r.failures());
    }
}

/// Buying one's own compute to farm the mint: a verified unit mints less
/// than it costs to compute, so the attacker's keys mint less than their
/// compute cost them.
#[test]
fn self_dealing_mints_less_than_the_compute_costs() {
    for name in ["attack-self-deal", "attack-self-deal-split"] {
        for (seed, r) in attack(name, &[1], |_| {}) {
            let a = &r.attackers[0];
            assert!(a.jobs > 0, "{name} seed {seed}: {a:?}");
            assert!(
                a.minted < a.cost,
                "{name} seed {seed}: minted {:.1}, compute cost {:.1}",
                a.minted,
                a.cost
            );
        }
    }
}

/// A self-dealer that splits one machine over four keys buys each key a
/// record of good jobs at once, while an honest newcomer of the same
/// hardware waits for its first. Requesters give young providers a share of
/// their matches, so the honest newcomer gets work on every seed and the
/// attack rarely pays. Measured on seeds 1–100 (release): the honest
/// newcomer nets at least 96.8 tokens on each (without that share it netted
/// 0 on 5 seeds), and the attack pays on 3 (7 without the share). Which
/// seeds those are moves with any change to what is signed, so this test
/// asks the rates of ten seeds, not a seed's outcome: at most two may pay
/// (a 0.3 % chance at a 3 % rate).
#[test]
fn a_record_bought_from_oneself_rarely_beats_an_honest_newcomer() {
    let seeds: Vec<u64> = (1..=10).collect();
    let runs = attack("attack-self-deal-split", &seeds, |_| {});
    for (seed, r) in &runs {
        assert!(
            r.honest_net() > 0.0,
            "seed {seed}: the honest newcomer got no work: {r:?}"
        );
        assert!(r.invariant_violations.is_empty(), "seed {seed}: {r:?}");
    }
    let paid: Vec<_> = runs
        .iter()
        .filter(|(_, r)| !r.failures().is_empty())
        .collect();
    assert!(
        paid.len() <= 2,
        "the attack paid on {} of 10 seeds: {:?}",
        paid.len(),
        paid.iter()
            .map(|(s, r)| (s, r.failures()))
            .collect::<Vec<_>>()
    );
}

/// A flood of fake contracts and receipts changes nothing for real jobs:
/// every settlement comes at the same virtual time as without the flood.
#[test]
fn a_flood_of_fake_contracts_delays_no_real_settlement() {
    let seed = 2;
    let few = |sc: &mut Scenario| {
        if let Some(a) = sc.attack.as_mut() {
            a.fakes = 10_000;
        }
    };
    let flooded = {
        let mut sc = Scenario::load("attack-flood").unwrap();
        few(&mut sc);
        simnet::cores::run(&sc, seed, simnet::cores::Replicas::Shared, |_| {})
    };
    let calm = {
        let mut sc = Scenario::load("attack-flood").unwrap();
        sc.attack = None;
        simnet::cores::run(&sc, seed, simnet::cores::Replicas::Shared, |_| {})
    };
    let r = flooded.attack.as_ref().unwrap();
    assert_eq!(r.kind, AttackKind::Flood);
    assert_eq!(r.fakes, 10_000);
    // Each fake receipt reached the committee.
    assert!(flooded.messages >= calm.messages + 10_000);
    assert!(r.failures().is_empty(), "{:?}", r.failures());
    assert!(!calm.contract_at.is_empty());
    assert_eq!(flooded.contract_at, calm.contract_at);
    assert_eq!(flooded.still_locked, calm.still_locked);
}
