//! Finality against a malicious leader or a stalled committee, played on node
//! cores that each hold their own ledger replica and sync it over a simulated
//! network (`common::Net`): the committee's messages go through the wire
//! encoding, and an adversary decides which of them arrive, and when.
//!
//! Each scenario runs on `FINALITY_SEEDS` seeds (5 by default). On every seed,
//! after every event: no replica's finalized chain ever loses a checkpoint, and
//! any two replicas' chains agree (one is a prefix of the other). At the end
//! every replica's finality lags the clock by at most `MAX_LAG` epochs, and the
//! job submitted at the start has ended (settled or refunded).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use protocol::{DurationMs, Hash32};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Four oracles (a committee of four: a quorum of three, one may misbehave),
/// a provider and a requester.
const ROLES: [Role; 6] = [
    Role::Oracle,
    Role::Oracle,
    Role::Oracle,
    Role::Oracle,
    Role::Provider { cheat: false },
    Role::Requester,
];
const REQUESTER: usize = 5;
const EPOCHS: u64 = 12;
/// How far behind the clock a replica's finality may be at the end.
const MAX_LAG: u64 = 2;

#[derive(Clone, Copy, Debug)]
enum Attack {
    /// The byzantine oracle, when it leads, sends its proposal to a random
    /// subset of the committee, late; it forwards nothing it signs and keeps
    /// its ledger (with any checkpoint it publishes) to itself until a random
    /// time (cut off from ledger sync both ways), then releases it.
    WithholdingLeader,
    /// The byzantine oracle never sends a proposal (nor forwards one).
    StalledLeader,
    /// Every proposal of one epoch is lost: the whole committee stalls, signs
    /// the epoch's skip, and the backup committee takes over.
    StalledCommittee,
    /// The byzantine oracle signs a skip of an epoch as it ends, sends it to
    /// the others, then votes for the epoch's checkpoint as well: a double
    /// sign, which every replica must see slashed.
    DoubleSigner,
}

/// The epoch the double signer signs twice.
const DOUBLE_EPOCH: u64 = 3;

fn epoch_of(d: &node_core::Direct) -> Option<(u64, protocol::AccountId)> {
    match d {
        node_core::Direct::Proposal(p) => p
            .checkpoint
            .body_unverified()
            .ok()
            .map(|b| (b.epoch, b.proposer)),
        _ => None,
    }
}

/// What a seed's run ended with.
struct Held {
    /// The lowest final epoch of any replica at the end.
    lowest: u64,
    /// The longest time from an epoch's end to a replica seeing its
    /// checkpoint (or a later one) final, in ms.
    worst_ms: u64,
}

/// Run `attack` on `seed`: how finality held, or what went wrong.
fn play(attack: Attack, seed: u64) -> Result<Held, String> {
    let mut net = Net::new(&ROLES, TOKENS, 7_000 + seed);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let byz = rng.random_range(0..4usize);
    let byz_account = net.ids[byz].account();
    let epoch_ms = 5_000u64;
    match attack {
        Attack::WithholdingLeader => {
            let release = T0.plus(DurationMs(rng.random_range(1..6) * epoch_ms));
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
            net.direct_filter = Some(Box::new(move |now, from, to, d| {
                // Its ledger (and any checkpoint it publishes) stays its own:
                // no sync either way until the release.
                if matches!(d, node_core::Direct::LedgerSync(_)) && now < release {
                    return (from != byz && to != byz).then_some(DurationMs(0));
                }
                if from != byz {
                    return Some(DurationMs(0));
                }
                match d {
                    node_core::Direct::Proposal(_) => match epoch_of(d) {
                        Some((_, p)) if p == byz_account && rng.random_bool(0.5) => {
                            Some(DurationMs(rng.random_range(0..6_000)))
                        }
                        _ => None,
                    },
                    _ => Some(DurationMs(0)),
                }
            }));
        }
        Attack::StalledLeader => {
            net.direct_filter = Some(Box::new(move |_, from, _, d| {
                (from != byz || !matches!(d, node_core::Direct::Proposal(_)))
                    .then_some(DurationMs(0))
            }));
        }
        Attack::DoubleSigner => {
            // The epoch's proposals are a second late, so that the skip
            // reaches the others while the epoch is still open.
            net.direct_filter = Some(Box::new(move |_, _, _, d| match epoch_of(d) {
                Some((e, _)) if e == DOUBLE_EPOCH => Some(DurationMs(1_000)),
                _ => Some(DurationMs(0)),
            }));
        }
        Attack::StalledCommittee => {
            let lost = rng.random_range(2..6u64);
            net.direct_filter = Some(Box::new(move |_, _, _, d| match epoch_of(d) {
                Some((e, _)) if e == lost => None,
                _ => Some(DurationMs(0)),
            }));
        }
    }
    net.run(T0.plus(DurationMs::secs(2)), |_| false);
    let spec = net.job_spec(REQUESTER, 10, 1_000);
    let job = net.submit(REQUESTER, spec);

    let n = net.nodes.len();
    let mut chains: Vec<Vec<Hash32>> = vec![Vec::new(); n];
    let mut broken: Option<String> = None;
    let mut worst_ms = 0u64;
    let mut fin_before = vec![0u64; n];
    let mut skipped_twice = false;
    let end = T0.plus(DurationMs(EPOCHS * epoch_ms));
    net.run(end, |net| {
        if matches!(attack, Attack::DoubleSigner)
            && !skipped_twice
            && net.now >= net.nodes[0].ledger().epoch_end(DOUBLE_EPOCH)
        {
            skipped_twice = true;
            let honest = (byz + 1) % 4;
            let prev = net.nodes[honest].ledger().finalized_state().last_checkpoint;
            let body = crdt_ledger::SkipBody {
                epoch: DOUBLE_EPOCH,
                prev,
            };
            let mut skip = protocol::MultiSigned::new(&body).unwrap();
            skip.add_signature(&net.ids[byz], &net.genesis.network());
            for i in (0..n).filter(|i| *i != byz) {
                net.handle(i, node_core::Input::Skip(Box::new(skip.clone())));
            }
        }
        for (i, seen) in chains.iter_mut().enumerate() {
            let chain: Vec<Hash32> = net.nodes[i]
                .ledger()
                .checkpoints()
                .iter()
                .filter_map(crdt_ledger::checkpoint::checkpoint_id)
                .collect();
            if chain.len() > seen.len() {
                let l = net.nodes[i].ledger();
                let fin = l.finalized_epoch();
                // Every epoch up to the new final one was waiting since its end
                // (the byzantine peer's own replica aside: it cut itself off).
                if i != byz {
                    for e in fin_before[i] + 1..=fin {
                        worst_ms = worst_ms.max(net.now.0.saturating_sub(l.epoch_end(e).0));
                    }
                }
                fin_before[i] = fin;
            }
            if !chain.starts_with(seen) {
                broken = Some(format!(
                    "peer {i} rewound finality at {:?}: {} final checkpoints, then {}",
                    net.now,
                    seen.len(),
                    chain.len()
                ));
                return true;
            }
            *seen = chain;
        }
        for i in 0..n {
            for j in i + 1..n {
                let (a, b) = if chains[i].len() <= chains[j].len() {
                    (&chains[i], &chains[j])
                } else {
                    (&chains[j], &chains[i])
                };
                if !b.starts_with(a) {
                    broken = Some(format!("peers {i} and {j} finalized different checkpoints"));
                    return true;
                }
            }
        }
        false
    });
    if let Some(b) = broken {
        return Err(b);
    }
    let ended = net.nodes[0].ledger().ended_epoch(net.now);
    let mut lowest = u64::MAX;
    for i in 0..n {
        let fin = net.nodes[i].ledger().finalized_epoch();
        lowest = lowest.min(fin);
        if fin + MAX_LAG < ended {
            return Err(format!(
                "peer {i} finalized epoch {fin} of {ended} ({attack:?}, byzantine {byz})"
            ));
        }
    }
    if matches!(attack, Attack::DoubleSigner) {
        let offence = crdt_ledger::Offence::DoubleSign(DOUBLE_EPOCH);
        for i in 0..n {
            let st = net.nodes[i].ledger().finalized_state();
            if !st.slashed.contains(&(byz_account, offence)) {
                return Err(format!(
                    "peer {i}: the double sign of oracle {byz} is not slashed (final epoch {})",
                    st.epoch
                ));
            }
            let staked = st.stake(&byz_account).0 + st.unbonding(&byz_account).0;
            let honest = st.stake(&net.ids[(byz + 1) % 4].account()).0;
            if staked >= honest {
                return Err(format!(
                    "peer {i}: the double signer holds {staked} µ of stake, an honest member {honest}"
                ));
            }
        }
    }
    let r = &net.nodes[REQUESTER];
    let st = r.job(&job).unwrap().state(r.requester());
    if !matches!(st, node_core::JobState::Ended(_)) {
        let j = r.job(&job).unwrap();
        let events: Vec<String> = j
            .events
            .iter()
            .map(|(t, e)| format!("{:.1} s {e}", (t.0 - T0.0) as f64 / 1000.0))
            .collect();
        return Err(format!(
            "the job has not ended: {st:?} (byzantine {byz}, locked in epoch {:?}):\n  {}",
            j.contract.and_then(|c| net.nodes[REQUESTER]
                .ledger()
                .state()
                .escrows
                .get(&c)
                .map(|e| e.epoch)),
            events.join("\n  ")
        ));
    }
    Ok(Held { lowest, worst_ms })
}

/// `FINALITY_SEED=n` runs one seed (to look into a failure).
fn seed_list() -> Vec<u64> {
    if let Some(s) = std::env::var("FINALITY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        // One seed: its peers' logs too (RUST_LOG sets the level).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        return vec![s];
    }
    (0..seeds()).collect()
}

fn seeds() -> u64 {
    std::env::var("FINALITY_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

fn run_all(attack: Attack) {
    let list = seed_list();
    let n = list.len() as u64;
    let mut failed = Vec::new();
    let (mut lowest, mut worst) = (u64::MAX, 0);
    for seed in list {
        match play(attack, seed) {
            Ok(h) => {
                lowest = lowest.min(h.lowest);
                worst = worst.max(h.worst_ms);
            }
            Err(e) => failed.push(format!("seed {seed}: {e}")),
        }
    }
    println!(
        "{attack:?}: {} of {n} seeds held; lowest final epoch at the end {lowest} of {EPOCHS}; \
         longest wait from an epoch's end to its finality {:.1} s (epochs of 5 s, rounds of 3 s)",
        n as usize - failed.len(),
        worst as f64 / 1000.0
    );
    assert!(failed.is_empty(), "{attack:?}:\n{}", failed.join("\n"));
    // Rounds of 3 s. A stalled leader costs its round; a withholding one its
    // round, and the round members wait for it to publish before they do; a
    // stalled committee the further epoch its members wait before skipping.
    let bound = match attack {
        Attack::StalledLeader => 3_000 + 1_000,
        Attack::WithholdingLeader => 2 * 3_000 + 1_000,
        Attack::StalledCommittee => 5_000 + 3_000,
        // The double-signed epoch's proposals come a second late.
        Attack::DoubleSigner => 3_000 + 1_000,
    };
    assert!(worst <= bound, "{attack:?}: waited {worst} ms for finality");
}

#[test]
fn a_withholding_leader_neither_reverses_nor_stops_finality() {
    run_all(Attack::WithholdingLeader);
}

#[test]
fn a_stalled_leader_costs_a_round_not_an_epoch() {
    run_all(Attack::StalledLeader);
}

#[test]
fn a_double_signer_is_slashed_on_every_replica() {
    run_all(Attack::DoubleSigner);
}

#[test]
fn a_stalled_committee_is_skipped_by_the_backup_committee() {
    run_all(Attack::StalledCommittee);
}
