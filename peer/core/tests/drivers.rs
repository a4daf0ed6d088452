//! Both drivers hand the core the same inputs. The node maps what comes off
//! the wire (a gossip frame's bytes, a direct request's bytes); simnet maps
//! what its model carries (the message in memory). Both go through the same
//! functions (`Input::gossip`, `Input::direct`, `Input::from_direct_bytes`),
//! so a core fed one recorded sequence both ways gives the same outputs, for
//! every message kind, gossiped and sent directly.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::collections::BTreeSet;

use common::{Net, REQ, ROLES, T0, TOKENS, Wire};
use crdt_ledger::Ledger;
use node_core::{Direct, Input, Output};
use protocol::{
    AccountId, Dispute, DisputeReason, DurationMs, Frame, Message, NetworkId, Signed, Timestamp,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The node's path: through the bytes on the wire.
fn as_the_node(network: NetworkId, from: AccountId, wire: &Wire) -> Input {
    match wire {
        Wire::Gossip(m) => {
            let bytes = Frame::new(network, m.clone()).to_bytes().unwrap();
            let frame = Frame::from_bytes(&bytes, &network).unwrap();
            Input::gossip(Some(from), frame.message)
        }
        Wire::Direct(d) => {
            Input::from_direct_bytes(from, &d.to_bytes().unwrap(), &network).unwrap()
        }
    }
}

/// simnet's path: the message in memory.
fn as_simnet(from: AccountId, wire: &Wire) -> Input {
    match wire {
        Wire::Gossip(m) => Input::gossip(Some(from), m.clone()),
        Wire::Direct(d) => Input::direct(from, d.clone()),
    }
}

fn kind(wire: &Wire) -> String {
    match wire {
        Wire::Gossip(m) => format!("gossip {}", m.kind()),
        Wire::Direct(Direct::Frame(f)) => format!("direct {}", f.message.kind()),
        Wire::Direct(Direct::LedgerSync(_)) => "ledger sync".into(),
        Wire::Direct(Direct::Proposal(_)) => "checkpoint proposal".into(),
        Wire::Direct(Direct::Skip(_)) => "checkpoint skip".into(),
        Wire::Direct(Direct::Challenge { .. }) => "challenge".into(),
        Wire::Direct(Direct::Progress { .. }) => "progress".into(),
    }
}

fn run_secs(net: &mut Net, secs: u64) {
    let t = net.now.plus(DurationMs::secs(secs));
    net.run(t, |_| false);
}

/// Networks whose runs, together, send every kind of message: a job proposed
/// and settled (probes included), a job placed by an open bid, a run that
/// fails for good (a withdrawal), and a requester's dispute.
fn recorded_runs() -> Vec<Net> {
    let mut runs = Vec::new();

    let mut net = Net::new(&ROLES, TOKENS, 31);
    net.run_time = DurationMs::secs(6);
    run_secs(&mut net, 2);
    let spec = net.job_spec(REQ, 10, 1_000);
    let job = net.submit(REQ, spec);
    run_secs(&mut net, 40);
    // The requester disputes the result (whatever it was): the committee
    // hears it, by gossip and directly.
    let contract = net.nodes[REQ].job(&job).unwrap().contract.unwrap();
    let dispute = Dispute {
        contract,
        by: net.ids[REQ].account(),
        reason: DisputeReason::WrongResult,
        evidence: None,
        raised_at: net.now,
    };
    let signed = Signed::sign(&net.ids[REQ], &net.genesis.network(), &dispute).unwrap();
    let at = net.now;
    let from = net.ids[REQ].account();
    let network = net.genesis.network();
    net.tape
        .push((at, 0, from, Wire::Gossip(Message::Dispute(signed.clone()))));
    let d = Direct::Frame(Frame::new(network, Message::Dispute(signed)));
    net.tape.push((at, 1, from, Wire::Direct(d)));
    runs.push(net);

    let mut net = Net::new(&ROLES, TOKENS, 32);
    net.filter = Some(Box::new(|_, to, m| {
        !(to == REQ && matches!(m, Message::Offer(_)))
    }));
    run_secs(&mut net, 2);
    let spec = net.job_spec(REQ, 10, 1_000);
    net.submit(REQ, spec);
    run_secs(&mut net, 40);
    runs.push(net);

    let mut net = Net::new(&ROLES, TOKENS, 33);
    net.runs_fail = true;
    run_secs(&mut net, 2);
    let spec = net.job_spec(REQ, 10, 1_000);
    net.submit(REQ, spec);
    run_secs(&mut net, 40);
    runs.push(net);
    runs
}

#[test]
fn the_node_and_simnet_feed_the_core_alike() {
    let mut kinds = BTreeSet::new();
    let mut compared = 0usize;
    for net in recorded_runs() {
        let network = net.genesis.network();
        for i in 0..net.nodes.len() {
            let fresh = || {
                let id = &net.ids[i];
                let ledger = Ledger::new(net.genesis.clone(), &id.account().0).unwrap();
                common::core(id, net.roles[i], ledger)
            };
            let (mut node, mut sim) = (fresh(), fresh());
            let (mut rng_node, mut rng_sim) =
                (ChaCha8Rng::seed_from_u64(7), ChaCha8Rng::seed_from_u64(7));
            let (mut out_node, mut out_sim): (Vec<Output>, Vec<Output>) = (vec![], vec![]);
            node.handle(T0, Input::Start, &mut rng_node, &mut out_node);
            sim.handle(T0, Input::Start, &mut rng_sim, &mut out_sim);
            let tape: Vec<&(Timestamp, usize, AccountId, Wire)> =
                net.tape.iter().filter(|(_, to, _, _)| *to == i).collect();
            for (t, _, from, wire) in tape {
                kinds.insert(kind(wire));
                out_node.clear();
                out_sim.clear();
                node.handle(
                    *t,
                    as_the_node(network, *from, wire),
                    &mut rng_node,
                    &mut out_node,
                );
                sim.handle(*t, as_simnet(*from, wire), &mut rng_sim, &mut out_sim);
                assert_eq!(
                    format!("{out_node:?}"),
                    format!("{out_sim:?}"),
                    "peer {i} ({:?}) at {t:?}: {}",
                    net.roles[i],
                    kind(wire)
                );
                compared += 1;
            }
        }
    }
    // Every message kind went through both paths, gossiped or direct, and
    // every kind of direct message the core exchanges.
    let every = [
        "offer",
        "job",
        "proposal",
        "proposal-answer",
        "contract",
        "receipt",
        "probe",
        "probe-reply",
        "verdict",
        "dispute",
        "key-grant",
        "withdrawal",
    ];
    for k in every {
        assert!(
            kinds.iter().any(|s| s.ends_with(&format!(" {k}"))),
            "no {k} in {kinds:?}"
        );
    }
    for k in ["ledger sync", "checkpoint proposal", "challenge"] {
        assert!(kinds.contains(k), "no {k} in {kinds:?}");
    }
    assert!(kinds.iter().any(|k| k.starts_with("gossip ")));
    assert!(kinds.iter().any(|k| k.starts_with("direct ")));
    assert!(compared > 100, "{compared}");
}
