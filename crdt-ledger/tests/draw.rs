//! The committee draw against a grinding leader and stake moved at the last
//! moment: stakes frozen at the checkpoint before the draw, and a seed (the
//! beacon) made of the precommits on that checkpoint, which nobody can
//! compute before the members sign.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use crdt_ledger::checkpoint::{Beacon, committee_seed, draw_committee};
use crdt_ledger::{Body, CheckpointBody, InvalidReason};
use protocol::codec::Wire;
use protocol::signed::sign_bytes;
use protocol::{AccountId, Amount, Hash32, Identity, MultiSigned, NetworkId};

/// Stake added in an epoch weighs from the draw after next, not in the draw
/// its own checkpoint makes; stake unbonded weighs no more at once.
#[test]
fn the_draw_weighs_stakes_frozen_at_the_last_checkpoint() {
    let net = Net::new(10, 6, 3);
    let mut l = net.ledger(1);
    let newcomer = net.acct(8);
    l.append(
        &net.ids[8],
        Body::Stake {
            amount: Amount::tokens(900),
        },
        T0,
    )
    .unwrap();
    // A member of the first committee unbonds all its stake in epoch 1.
    let leaving = l.committee_for_checkpoint(1).unwrap()[1];
    l.append(
        net.id_of(&leaving),
        Body::Unstake {
            amount: Amount::tokens(1000),
        },
        T0,
    )
    .unwrap();
    finalize(&net, &mut l, 1, 0);
    let st = l.finalized_state().clone();
    let next = &st.schedule[&2];
    assert!(
        !next.contains(&newcomer),
        "stake of the epoch drawn at once"
    );
    assert!(!next.contains(&leaving), "unbonded stake still drawn");
    assert!(!st.backup.contains(&leaving) && !st.backup.contains(&newcomer));
    // Frozen now, for the next draw.
    assert_eq!(st.drawn_stakes.get(&newcomer), Some(&Amount::tokens(900)));
    assert_eq!(st.drawn_stakes.get(&leaving), None);
    finalize(&net, &mut l, 2, 0);
    conserved(&mut l);
}

/// A checkpoint must carry a quorum of the precommits of the last one: none,
/// too few, a forged one, one of another round or an outsider's is refused.
#[test]
fn a_checkpoint_without_a_true_beacon_is_refused() {
    let net = Net::new(8, 6, 4);
    let mut l = net.ledger(1);
    finalize(&net, &mut l, 1, 0);
    let committee = l.committee_for_checkpoint(2).unwrap();
    let p = l
        .propose_checkpoint(net.id_of(&committee[0]), 2, 0)
        .unwrap();
    let body = p.checkpoint.body_unverified().unwrap();
    let beacon = body.beacon.clone().expect("a beacon after the genesis");
    let mut variants: Vec<(&str, CheckpointBody)> = Vec::new();
    let mut none = body.clone();
    none.beacon = None;
    variants.push(("none", none));
    let mut thin = body.clone();
    thin.beacon.as_mut().unwrap().sigs.pop();
    variants.push(("below quorum", thin));
    let mut forged = body.clone();
    forged.beacon.as_mut().unwrap().sigs[0].1 = protocol::Sig([7; 64]);
    variants.push(("forged", forged));
    let mut other_round = body.clone();
    other_round.beacon.as_mut().unwrap().round = beacon.round + 1;
    variants.push(("another round", other_round));
    let mut outsider = body.clone();
    let stranger = net
        .ids
        .iter()
        .find(|i| !l.finalized_state().schedule[&1].contains(&i.account()))
        .unwrap();
    outsider.beacon.as_mut().unwrap().sigs[0] = (
        stranger.account(),
        sign_bytes(
            stranger,
            <CheckpointBody as Wire>::KIND,
            &l.network(),
            l.checkpoints()[0].body_bytes(),
        ),
    );
    outsider
        .beacon
        .as_mut()
        .unwrap()
        .sigs
        .sort_by_key(|(a, _)| *a);
    variants.push(("outsider", outsider));
    for (what, b) in variants {
        let mut ms = MultiSigned::new(&b).unwrap();
        for m in &committee {
            ms.add_signature(net.id_of(m), &l.network());
        }
        let why = refused(&mut l, &net.ids[7], Body::Checkpoint(Box::new(ms)));
        assert!(
            matches!(why, InvalidReason::BadCheckpoint(_)),
            "{what}: {why}"
        );
    }
    // The true one is final.
    let members: Vec<&Identity> = committee.iter().map(|m| net.id_of(m)).collect();
    let due = l.epoch_end(2);
    let fin = l.vote_all(&members, &p, due).unwrap().unwrap();
    l.append(&net.ids[7], Body::Checkpoint(Box::new(fin)), due)
        .unwrap();
    assert_eq!(l.finalized_epoch(), 2);
}

/// The grinding leader, on 100 seeds: it may build its checkpoint in many
/// ways (which entries to include) and keeps the variant whose draw gives it
/// the most: the first seat (it proposes the next epoch's checkpoint, so it
/// may grind again), then the most seats. With the checkpoint's own hash as
/// the seed, it can evaluate every variant and wins both far beyond its
/// share; with the beacon (the members' precommits on the variant, unknown
/// until they sign), its pick draws what a random one does.
#[test]
fn a_grinding_leader_gains_no_seats() {
    const SEEDS: u64 = 100;
    const VARIANTS: u64 = 64;
    const K: usize = 7;
    let members: Vec<Identity> = (0..K as u64).map(|i| Identity::from_seed(50 + i)).collect();
    let network = NetworkId([3; 32]);
    let mut stakes: BTreeMap<AccountId, Amount> = (0..7u64)
        .map(|i| (Identity::from_seed(100 + i).account(), Amount::tokens(1000)))
        .collect();
    let attacker = Identity::from_seed(99).account();
    stakes.insert(attacker, Amount::tokens(3_000)); // 30 % of all stake
    // (leads round 0, seats held)
    let draw = |seed: &Hash32| {
        let c = draw_committee(seed, &stakes, Amount::tokens(1), K);
        let leads = usize::from(c[0] == attacker);
        (leads, c.iter().filter(|a| **a == attacker).count())
    };
    let variant = |seed: u64, i: u64| {
        let mut h = blake3::Hasher::new();
        h.update(&seed.to_le_bytes());
        h.update(&i.to_le_bytes());
        Hash32(*h.finalize().as_bytes())
    };
    // The beacon of a variant: a quorum of the members' signatures on it.
    let beacon = |v: &Hash32| {
        let mut sigs: Vec<_> = members
            .iter()
            .take(protocol::quorum(K))
            .map(|m| {
                let sig = sign_bytes(m, <CheckpointBody as Wire>::KIND, &network, &v.0);
                (m.account(), sig)
            })
            .collect();
        sigs.sort_by_key(|(a, _)| *a);
        Beacon::hash(Some(&Beacon { round: 0, sigs }))
    };
    let no_beacon = Beacon::hash(None);
    let add = |a: (usize, usize), b: (usize, usize)| (a.0 + b.0, a.1 + b.1);
    let (mut fair, mut old, mut new) = ((0, 0), (0, 0), (0, 0));
    for seed in 0..SEEDS {
        let e = seed + 2;
        // What the leader can compute for each variant before anyone signs.
        let predicted = |v: &Hash32| draw(&committee_seed("next", v, e, &no_beacon));
        let pick = (0..VARIANTS)
            .map(|i| variant(seed, i))
            .max_by_key(|v| predicted(v))
            .unwrap();
        old = add(old, predicted(&pick));
        new = add(new, draw(&committee_seed("next", &pick, e, &beacon(&pick))));
        let any = variant(seed, 0);
        fair = add(fair, draw(&committee_seed("next", &any, e, &beacon(&any))));
    }
    let per = |x: usize| x as f64 / SEEDS as f64;
    println!(
        "grinding-leader, {SEEDS} seeds, {VARIANTS} variants, 30 % of stake, k = {K}: \
         leads / seats per committee without grinding {:.2} / {:.2}; grinding on the \
         checkpoint hash {:.2} / {:.2}; grinding against the beacon {:.2} / {:.2}",
        per(fair.0),
        per(fair.1),
        per(old.0),
        per(old.1),
        per(new.0),
        per(new.1)
    );
    // Its due: the first seat with its share (0.3), k·share seats (2.1).
    let due = |x: (usize, usize)| (per(x.0) - 0.3).abs() <= 0.15 && (per(x.1) - 2.1).abs() <= 0.25;
    assert!(due(fair), "the draw itself is off");
    assert!(
        per(old.0) >= 0.9 && per(old.1) >= 2.6,
        "grinding the hash should pay"
    );
    assert!(due(new), "grinding against the beacon paid");
}

/// The split staker, on 100 seeds: one stake in one account, or split over
/// five, draws the same seats on average (k·share); the draw before this
/// one (one seat per account, without replacement) gave the split stake
/// more.
#[test]
fn a_split_stake_draws_no_more_seats() {
    const SEEDS: u64 = 100;
    const K: usize = 7;
    let honest: Vec<(AccountId, Amount)> = (0..7u64)
        .map(|i| (Identity::from_seed(100 + i).account(), Amount::tokens(1000)))
        .collect();
    let whole = [Identity::from_seed(99).account()];
    let split: Vec<AccountId> = (0..5u64)
        .map(|i| Identity::from_seed(200 + i).account())
        .collect();
    let stakes = |mine: &[AccountId]| {
        let mut s: BTreeMap<AccountId, Amount> = honest.iter().copied().collect();
        for a in mine {
            s.insert(*a, Amount::tokens(3_000 / mine.len() as u64));
        }
        s
    };
    let (whole_stakes, split_stakes) = (stakes(&whole), stakes(&split));
    let held = |c: &[AccountId], mine: &[AccountId]| c.iter().filter(|a| mine.contains(a)).count();
    let (mut one, mut five, mut before_one, mut before) = (0, 0, 0, 0);
    for seed in 0..SEEDS {
        let s = Hash32(*blake3::hash(&seed.to_le_bytes()).as_bytes());
        one += held(
            &draw_committee(&s, &whole_stakes, Amount::tokens(1), K),
            &whole,
        );
        five += held(
            &draw_committee(&s, &split_stakes, Amount::tokens(1), K),
            &split,
        );
        before_one += held(&without_replacement(&s, &whole_stakes, K), &whole);
        before += held(&without_replacement(&s, &split_stakes, K), &split);
    }
    let per = |x: usize| x as f64 / SEEDS as f64;
    println!(
        "split-staker, {SEEDS} seeds, 30 % of stake, k = {K}: seats in one account {:.2}, \
         split over five {:.2} (k·share = {:.2}); with the old draw (one seat per account, \
         without replacement) {:.2} in one account, {:.2} split over five",
        per(one),
        per(five),
        K as f64 * 0.3,
        per(before_one),
        per(before)
    );
    assert!((per(one) - 2.1).abs() <= 0.15, "one account: {}", per(one));
    assert!(
        (per(five) - per(one)).abs() <= 0.25,
        "split: {} vs {}",
        per(five),
        per(one)
    );
    assert!(
        per(before) >= per(before_one) + 0.8,
        "the old draw favoured splitting"
    );
}

/// The draw before this one (one seat per account, by stake, without
/// replacement): the control of the split-staker test.
fn without_replacement(
    seed: &Hash32,
    stakes: &BTreeMap<AccountId, Amount>,
    k: usize,
) -> Vec<AccountId> {
    let mut pool: Vec<(AccountId, u128)> =
        stakes.iter().map(|(a, s)| (*a, u128::from(s.0))).collect();
    let mut out = Vec::new();
    let mut i = 0u64;
    while out.len() < k && !pool.is_empty() {
        let total: u128 = pool.iter().map(|(_, w)| *w).sum();
        let mut h = blake3::Hasher::new();
        h.update(&seed.0);
        h.update(&i.to_le_bytes());
        let mut r16 = [0u8; 16];
        r16.copy_from_slice(&h.finalize().as_bytes()[..16]);
        let mut r = u128::from_le_bytes(r16) % total;
        let mut pick = pool.len() - 1;
        for (j, (_, w)) in pool.iter().enumerate() {
            if r < *w {
                pick = j;
                break;
            }
            r -= *w;
        }
        out.push(pool.remove(pick).0);
        i += 1;
    }
    out
}
