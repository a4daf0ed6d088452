//! Ledger behaviour: spending rule, partitions, equivocation, committee,
//! settlement, rewards, sync validation and tampering.

#![allow(clippy::unwrap_used)]

mod common;
// The protocol's own test fixtures (a federated round on the wine data).
#[path = "../../protocol/tests/common/mod.rs"]
mod fixtures;

use automerge::transaction::Transactable;
use common::*;
use crdt_ledger::{
    Action, Body, Entry, InvalidReason, LedgerError, Offence, PeerState, SlashProof, SyncError,
};
use protocol::{Amount, ComputeUnits, PricePerCu, Timestamp};

#[test]
fn transfer_credits_become_spendable_after_a_checkpoint() {
    let net = Net::new(6, 4, 4);
    let mut l = net.ledger(1);
    let (a, b) = (net.acct(4), net.acct(5));
    l.append(&net.ids[4], transfer(b, 300), T0).unwrap();
    assert_eq!(l.balance(&a), Amount::tokens(700));
    assert_eq!(l.balance(&b), Amount::tokens(1300));
    // a's own pending debit counts at once; b's credit is not spendable yet.
    assert_eq!(l.spendable(&a), Amount::tokens(700));
    assert_eq!(l.spendable(&b), Amount::tokens(1000));
    let err = l.append(&net.ids[5], transfer(a, 1200), T0).unwrap_err();
    assert!(
        matches!(err, LedgerError::Rejected(InvalidReason::Overspend { .. })),
        "{err}"
    );
    finalize(&net, &mut l, 1, 0);
    assert_eq!(l.spendable(&b), Amount::tokens(1300));
    l.append(&net.ids[5], transfer(a, 1200), T0).unwrap();
    assert_eq!(l.balance(&a), Amount::tokens(1900));
    conserved(&mut l);
}

#[test]
fn overspend_and_zero_amounts_are_refused_locally() {
    let net = Net::new(6, 4, 4);
    let mut l = net.ledger(1);
    let b = net.acct(5);
    l.append(&net.ids[4], transfer(b, 600), T0).unwrap();
    let err = l.append(&net.ids[4], transfer(b, 600), T0).unwrap_err();
    assert!(matches!(
        err,
        LedgerError::Rejected(InvalidReason::Overspend { .. })
    ));
    assert!(matches!(
        refused(
            &mut l,
            &net.ids[4],
            Body::Transfer {
                to: b,
                amount: Amount::ZERO,
            }
        ),
        InvalidReason::ZeroAmount
    ));
    assert_eq!(l.entry_count(), 1);
    let hist = l.entries_by(&net.acct(4));
    assert_eq!(hist.len(), 1);
    assert_eq!(hist[0].data.seq, 0);
    assert!(l.entries_by(&net.acct(5)).is_empty());
}

#[test]
fn double_spend_across_a_partition_takes_effect_once() {
    let net = Net::new(6, 4, 4);
    let mut base = net.ledger(1);
    finalize(&net, &mut base, 1, 0);
    let mut left = net.ledger(2);
    let mut right = net.ledger(3);
    sync(&mut base, &mut left);
    sync(&mut base, &mut right);
    let (a, b, c) = (net.acct(4), net.acct(5), net.acct(3));
    // The same key on both sides of a partition: each side accepts its spend.
    left.append(&net.ids[4], transfer(b, 800), T0).unwrap();
    right.append(&net.ids[4], transfer(c, 800), T0).unwrap();
    assert_eq!(left.balance(&a), Amount::tokens(200));
    assert_eq!(right.balance(&a), Amount::tokens(200));
    sync(&mut left, &mut right);
    for l in [&mut left, &mut right] {
        assert_eq!(l.balance(&a), Amount::tokens(200), "one spend only");
        let got_b = l.balance(&b) == Amount::tokens(1800);
        let got_c = l.balance(&c) == Amount::tokens(1800);
        assert!(got_b ^ got_c, "exactly one recipient is paid");
        assert!(
            l.invalid()
                .iter()
                .any(|i| i.reason == InvalidReason::ForkedBranch)
        );
        conserved(l);
    }
    assert_eq!(left.state().balances, right.state().balances);
    // The fork is a proof, but a has no stake: there is nothing to take, so
    // no proof is offered and a slash is refused (recording it would let a
    // stakeless key grow the record of offences for free).
    assert!(left.slash_proofs().is_empty());
    let fork = SlashProof::Fork {
        a: left.entries_by(&a)[0].entry.clone(),
        b: left.entries_by(&a)[1].entry.clone(),
    };
    assert!(matches!(
        refused(&mut left, &net.ids[1], Body::Slash(Box::new(fork))),
        InvalidReason::NothingToSlash
    ));
    // A checkpoint includes one branch, and it stays chosen.
    sync(&mut left, &mut right);
    finalize(&net, &mut right, 2, 0);
    sync(&mut left, &mut right);
    assert_eq!(left.finalized_epoch(), 2);
    assert_eq!(left.state(), right.state());
    assert_eq!(left.finalized_state().balance(&a), Amount::tokens(200));
}

#[test]
fn a_forking_staker_is_slashed() {
    let net = Net::new(6, 4, 4);
    let mut l1 = net.ledger(1);
    let mut l2 = net.ledger(2);
    let x = net.acct(2); // a staker
    l1.append(&net.ids[2], transfer(net.acct(4), 10), T0)
        .unwrap();
    l2.append(&net.ids[2], transfer(net.acct(5), 10), T0)
        .unwrap();
    sync(&mut l1, &mut l2);
    let proofs = l1.slash_proofs();
    assert_eq!(proofs.len(), 1);
    let before = l1.state().stake(&x);
    l1.append(&net.ids[0], Body::Slash(Box::new(proofs[0].clone())), T0)
        .unwrap();
    let st = l1.state();
    assert_eq!(st.stake(&x), Amount(before.0 / 2));
    assert_eq!(st.supply.burned, Amount(before.0 / 2));
    // the same offence twice is refused
    assert!(matches!(
        refused(
            &mut l1,
            &net.ids[1],
            Body::Slash(Box::new(proofs[0].clone()))
        ),
        InvalidReason::AlreadySlashed
    ));
    conserved(&mut l1);
}

#[test]
fn double_signed_checkpoints_are_detected_and_slashed() {
    let net = Net::new(6, 4, 4);
    let mut l = net.ledger(1);
    let committee = l.committee_for_checkpoint(1).unwrap();
    let proposer = committee[0];
    let p1 = l.propose_checkpoint(net.id_of(&proposer), 1, 0).unwrap();
    // Something new arrives; a second replica of the same member proposes again.
    let mut other = net.ledger(2);
    other
        .append(&net.ids[4], transfer(net.acct(5), 1), T0)
        .unwrap();
    let p2 = other
        .propose_checkpoint(net.id_of(&proposer), 1, 0)
        .unwrap();
    assert_ne!(p1.hash(), p2.hash());
    // A member's replica sees both (refusing to prevote the second in the
    // same round).
    let member = committee[1];
    let due = l.epoch_end(1);
    let early = l
        .vote(net.id_of(&member), &p1, Timestamp(due.0 - 1))
        .unwrap();
    assert!(
        matches!(early.refused, Some(LedgerError::WontSign(_))),
        "{:?}",
        early.refused
    );
    assert!(l.vote(net.id_of(&member), &p1, due).unwrap().prevoted);
    let second = l.vote(net.id_of(&member), &p2, due).unwrap();
    assert!(!second.prevoted);
    assert!(
        matches!(second.refused, Some(LedgerError::AlreadySigned { .. })),
        "{:?}",
        second.refused
    );
    // Proposing is no vote: nothing to slash yet. The member prevotes the
    // second body in the same round too, on a replica that forgot the
    // first; `l` sees it.
    assert!(l.slash_proofs().is_empty());
    let v = other.vote(net.id_of(&member), &p2, due).unwrap();
    assert!(v.prevoted);
    l.track_proposal(&v.proposal.unwrap()).unwrap();
    let proposer = member;
    let proofs = l.slash_proofs();
    let ds: Vec<_> = proofs
        .iter()
        .filter(|p| matches!(p, SlashProof::DoubleSign { .. }))
        .collect();
    assert_eq!(ds.len(), 1, "{proofs:?}");
    let stake = l.state().stake(&proposer);
    l.append(&net.ids[5], Body::Slash(Box::new(ds[0].clone())), T0)
        .unwrap();
    assert_eq!(l.state().stake(&proposer), Amount(stake.0 / 2));
    assert!(
        l.state()
            .slashed
            .contains(&(proposer, Offence::DoubleSign(1)))
    );
    conserved(&mut l);
}

#[test]
fn committee_timer_rotates_the_proposer_and_falls_back_to_the_backup() {
    let net = Net::new(8, 6, 4);
    let mut l = net.ledger(1);
    let committee = l.committee_for_checkpoint(1).unwrap();
    assert_eq!(committee.len(), 4);
    let end1 = l.epoch_end(1);
    assert_eq!(l.poll_timeout(), Some(end1));
    assert!(
        l.handle_timeout(&committee[0], Timestamp(end1.0 - 1))
            .is_empty()
    );
    assert_eq!(
        l.handle_timeout(&committee[0], end1),
        vec![Action::Propose { epoch: 1, round: 0 }]
    );
    assert!(l.handle_timeout(&committee[0], end1).is_empty(), "once");
    assert!(l.handle_timeout(&committee[1], end1).is_empty());
    // The leader stalls: after the timeout the next member proposes.
    let t = Timestamp(end1.0 + 1_000);
    assert_eq!(
        l.handle_timeout(&committee[1], t),
        vec![Action::Propose { epoch: 1, round: 1 }]
    );
    finalize(&net, &mut l, 1, 1);
    assert_eq!(l.finalized_epoch(), 1);
    // Epoch 2's committee stalls entirely: nothing moves before its members
    // skip it, once epoch 3 has ended; then the backup committee checkpoints
    // epoch 3 on top of epoch 1, carrying the skip certificate.
    let end3 = l.epoch_end(3);
    assert_eq!(
        l.checkpoint_target(Timestamp(end3.0 + 5_000)),
        Some((2, 15))
    );
    let committee2 = l.committee_for_checkpoint(2).unwrap();
    let acts = l.handle_timeout(&committee2[1], end3);
    assert!(acts.contains(&Action::Skip { epoch: 2 }), "{acts:?}");
    let early = l.sign_skip(net.id_of(&committee2[1]), 2, Timestamp(end3.0 - 1));
    assert!(matches!(early, Err(LedgerError::WontSign(_))), "{early:?}");
    assert!(skip_epoch(&net, &mut l, 2, end3));
    assert_eq!(l.checkpoint_target(end3), Some((3, 0)));
    let backup = l.committee_for_checkpoint(3).unwrap();
    assert_eq!(backup, l.finalized_state().backup);
    l.append(&net.ids[6], transfer(net.acct(7), 5), end3)
        .unwrap();
    finalize(&net, &mut l, 3, 0);
    assert_eq!(l.finalized_epoch(), 3);
    assert_eq!(l.checkpoints().len(), 2);
    // A member that skipped epoch 2 never signs a checkpoint of it.
    assert!(l.signed_for(&committee2[0], 2).is_some());
    conserved(&mut l);
}

#[test]
fn escrow_settlement_needs_a_quorum_and_exact_payout() {
    let net = Net::new(8, 4, 4);
    let mut l = net.ledger(1);
    let (req, prov) = (4, 5);
    let contract = net.contract(req, prov, 1);
    let escrow = Amount::tokens(10); // price 1 token/CU × 10 CU
    let lock = || Body::EscrowLock {
        contract: contract.clone(),
    };
    l.append(&net.ids[req], lock(), T0).unwrap();
    assert_eq!(
        l.balance(&net.acct(req)),
        Amount(Amount::tokens(1000).0 - escrow.0)
    );
    // locked twice: refused
    assert!(matches!(
        refused(&mut l, &net.ids[req], lock()),
        InvalidReason::AlreadyLocked(_)
    ));
    // a contract the provider did not sign: refused
    let mut half = contract.clone();
    half.signatures.retain(|(a, _)| *a == net.acct(req));
    assert!(matches!(
        refused(&mut l, &net.ids[req], Body::EscrowLock { contract: half }),
        InvalidReason::BadContract(_)
    ));

    // The provider bonds 100 tokens: the mint goes only to bonded providers.
    l.append(
        &net.ids[prov],
        Body::Bond {
            amount: Amount::tokens(100),
        },
        T0,
    )
    .unwrap();
    let committee = l.committee_for_checkpoint(1).unwrap();
    let params = l.params().clone();
    // one verdict of four: no quorum
    let weak = net.settlement(&contract, 1, &committee[..1], good_outcome(8_000), &params);
    assert!(matches!(
        refused(&mut l, &net.ids[prov], weak),
        InvalidReason::NoQuorum(_)
    ));
    // a payout that does not match the certified outcome
    let mut wrong = net.settlement(&contract, 1, &committee[..3], good_outcome(8_000), &params);
    if let Body::Settlement { payout, .. } = &mut wrong {
        payout.provider = Amount(payout.provider.0 + 1);
        payout.refund = Amount(payout.refund.0 - 1);
    }
    assert!(matches!(
        refused(&mut l, &net.ids[prov], wrong),
        InvalidReason::PayoutMismatch
    ));
    // a settlement for an unknown contract
    let other = net.contract(req, prov, 2);
    let unknown = net.settlement(&other, 1, &committee[..3], good_outcome(8_000), &params);
    assert!(matches!(
        refused(&mut l, &net.ids[prov], unknown),
        InvalidReason::UnknownContract(_)
    ));

    let good = net.settlement(&contract, 1, &committee[..3], good_outcome(8_000), &params);
    l.append(&net.ids[prov], good.clone(), T0).unwrap();
    // Neither the certificate nor the contract can be used again.
    assert!(matches!(
        refused(&mut l, &net.ids[prov], good),
        InvalidReason::AlreadySettled(_)
    ));
    assert!(matches!(
        refused(&mut l, &net.ids[req], lock()),
        InvalidReason::AlreadyLocked(_)
    ));
    assert!(l.state().escrows.is_empty());
    let st = l.state();
    // 8 CU at 1 token: 8 tokens to the provider, 1% fee of 10 to the oracles, the rest back.
    assert_eq!(st.balance(&net.acct(prov)), Amount::tokens(908));
    assert_eq!(
        st.balance(&net.acct(req)),
        Amount(Amount::tokens(1000).0 - Amount::tokens(8).0 - 100_000)
    );
    let rep = st.reputation[&net.acct(prov)];
    assert_eq!((rep.jobs, rep.jobs_ok, rep.units_milli), (1, 1, 8_000));
    assert_eq!(st.sla[&net.acct(prov)].len(), 1);
    conserved(&mut l);
    // The checkpoint mints the epoch reward to the provider (the only one with
    // units and the only bond).
    finalize(&net, &mut l, 1, 0);
    let st = l.finalized_state().clone();
    assert_eq!(st.supply.minted, Amount::tokens(100));
    assert_eq!(st.balance(&net.acct(prov)), Amount::tokens(1008));
    conserved(&mut l);
}

#[test]
fn rewards_halve_and_stop_at_the_cap() {
    let net = Net::new(8, 4, 4);
    let mut l = net.ledger(1);
    let params = l.params().clone();
    let bond = Body::Bond {
        amount: Amount::tokens(10),
    };
    l.append(&net.ids[5], bond, T0).unwrap();
    let mut minted = Vec::new();
    for epoch in 1..=6u64 {
        let c = net.locked(&mut l, 4, 5, epoch);
        let committee = l.committee_for_checkpoint(epoch).unwrap();
        let s = net.settlement(&c, epoch, &committee, good_outcome(1_000), &params);
        l.append(&net.ids[5], s, T0).unwrap();
        let before = l.finalized_state().supply.minted;
        finalize(&net, &mut l, epoch, 0);
        minted.push(l.finalized_state().supply.minted.0 - before.0);
        conserved(&mut l);
    }
    let t = Amount::tokens(1).0;
    // 100, 100, 50, 0 (cap 250 reached) ...
    assert_eq!(minted, vec![100 * t, 100 * t, 50 * t, 0, 0, 0]);
}

#[test]
fn stake_and_unbonding_over_epochs() {
    let net = Net::new(6, 4, 4);
    let mut l = net.ledger(1);
    let a = net.acct(4);
    l.append(
        &net.ids[4],
        Body::Stake {
            amount: Amount::tokens(500),
        },
        T0,
    )
    .unwrap();
    assert_eq!(l.state().stake(&a), Amount::tokens(500));
    let err = l
        .append(
            &net.ids[4],
            Body::Unstake {
                amount: Amount::tokens(600),
            },
            T0,
        )
        .unwrap_err();
    assert!(matches!(
        err,
        LedgerError::Rejected(InvalidReason::InsufficientStake { .. })
    ));
    finalize(&net, &mut l, 1, 0);
    // unbonding_epochs = 2: released at the checkpoint of epoch 1 + 1 + 2 = 4
    l.append(
        &net.ids[4],
        Body::Unstake {
            amount: Amount::tokens(200),
        },
        T0,
    )
    .unwrap();
    for e in 2..=4 {
        assert_eq!(
            l.finalized_state().balance(&a),
            Amount::tokens(500),
            "epoch {e}"
        );
        finalize(&net, &mut l, e, 0);
    }
    assert_eq!(l.finalized_state().balance(&a), Amount::tokens(700));
    assert_eq!(l.finalized_state().stake(&a), Amount::tokens(300));
    conserved(&mut l);
}

#[test]
fn sla_records_need_a_committee_member() {
    let net = Net::new(8, 4, 4);
    let mut l = net.ledger(1);
    let committee = l.committee_for_checkpoint(1).unwrap();
    let rec = crdt_ledger::SlaRecord {
        provider: net.acct(6),
        epoch: 1,
        probes: 10,
        answered: 9,
        mean_latency_ms: 20,
    };
    let outsider = (0..8).find(|i| !committee.contains(&net.acct(*i))).unwrap();
    let err = l
        .append(&net.ids[outsider], Body::SlaRecord(rec), T0)
        .unwrap_err();
    assert!(matches!(
        err,
        LedgerError::Rejected(InvalidReason::NotCommitteeMember(1))
    ));
    l.append(net.id_of(&committee[0]), Body::SlaRecord(rec), T0)
        .unwrap();
    let r = l.state().reputation[&net.acct(6)];
    assert_eq!((r.probes, r.answered), (10, 9));
    // No job yet: the prior's half, times 9 of 10 probes answered.
    assert_eq!(r.score_bps(), 4_500);
    // One record per member, provider and epoch; a bounded number of probes.
    let again = l
        .append(net.id_of(&committee[0]), Body::SlaRecord(rec), T0)
        .unwrap_err();
    assert!(matches!(
        again,
        LedgerError::Rejected(InvalidReason::Malformed(m)) if m.contains("second")
    ));
    let grief = crdt_ledger::SlaRecord {
        probes: u32::MAX,
        answered: 0,
        ..rec
    };
    let err = l
        .append(net.id_of(&committee[1]), Body::SlaRecord(grief), T0)
        .unwrap_err();
    assert!(matches!(
        err,
        LedgerError::Rejected(InvalidReason::Malformed(m)) if m.contains("probes")
    ));
    l.append(net.id_of(&committee[1]), Body::SlaRecord(rec), T0)
        .unwrap();
    assert_eq!(l.state().reputation[&net.acct(6)].probes, 20);
}

/// A fresh account starts at half, below a provider with a history of good
/// work even after a failure: a key thrown away after being caught starts
/// lower than the one it replaces, and its bond is gone.
#[test]
fn a_new_account_starts_below_a_provider_with_a_good_history() {
    let fresh = crdt_ledger::Reputation::default();
    let good = crdt_ledger::Reputation {
        jobs: 10,
        jobs_ok: 9,
        ..fresh
    };
    assert_eq!(fresh.score_bps(), 5_000);
    assert!(good.score_bps() > 8_000, "{}", good.score_bps());
    let caught_once = crdt_ledger::Reputation {
        jobs: 1,
        jobs_ok: 0,
        ..fresh
    };
    assert!(caught_once.score_bps() < fresh.score_bps());
    // Past five good jobs, a longer record (a self-dealer's bought one)
    // scores no higher.
    let five = crdt_ledger::Reputation {
        jobs: 5,
        jobs_ok: 5,
        ..fresh
    };
    let bought = crdt_ledger::Reputation {
        jobs: 10_000,
        jobs_ok: 10_000,
        ..fresh
    };
    assert_eq!(five.score_bps(), bought.score_bps());
    assert!(good.score_bps() < five.score_bps());
}

#[test]
fn a_flipped_bit_anywhere_in_an_entry_is_rejected() {
    let net = Net::new(6, 4, 4);
    let mut l = net.ledger(1);
    l.append(&net.ids[4], transfer(net.acct(5), 3), T0).unwrap();
    let state = l.state().clone();
    let last = l.state().last_checkpoint;
    assert!(l.entry(&last).is_none(), "not an entry");
    let entry = net.signed_entry(4, 4, 1, [1; 32], transfer(net.acct(5), 1));
    let bytes = entry.to_bytes().unwrap();
    for bit in 0..bytes.len() * 8 {
        let mut b = bytes.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        let ok = Entry::from_bytes(&b)
            .ok()
            .and_then(|e| e.verify(&net.genesis.network()).ok());
        assert!(ok.is_none(), "bit {bit} flipped and still valid");
    }
    // Received: a rogue peer puts tampered bytes into its document and syncs.
    let mut rejected = 0;
    for bit in (0..bytes.len() * 8).step_by(97) {
        let mut b = bytes.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        let mut rogue = automerge::AutoCommit::new();
        put_raw_entry(&mut rogue, &net, 1, b);
        let mut ps = automerge::sync::State::new();
        let mut mine = PeerState::new();
        let any_err = sync_with_raw(&mut l, &mut mine, &mut rogue, &mut ps, 4).is_some();
        assert!(any_err, "bit {bit}: tampered entry was not refused");
        assert!(mine.errors >= 1);
        rejected += 1;
    }
    assert!(rejected > 3);
    assert_eq!(l.state(), &state, "nothing changed");
}

#[test]
fn garbage_and_overwrites_from_a_peer_are_counted_and_refused() {
    let net = Net::new(6, 4, 4);
    let mut l = net.ledger(1);
    let mut p = PeerState::new();
    for junk in [&b""[..], b"\x42\x00\x01", &[0xff; 64]] {
        assert!(matches!(
            l.receive_sync_message(&mut p, junk),
            Err(SyncError::Decode(_))
        ));
    }
    assert_eq!(p.errors, 3);
    // A peer that overwrites a real entry with another value.
    let mut honest = net.ledger(2);
    honest
        .append(&net.ids[4], transfer(net.acct(5), 3), T0)
        .unwrap();
    let mut evil = net.ledger(3);
    sync(&mut honest, &mut evil);
    // evil writes over the key through the raw document
    let mut raw = automerge::AutoCommit::load(&evil_doc_bytes(&mut evil)).unwrap();
    put_raw_entry(&mut raw, &net, 0, vec![1, 2, 3]);
    let mut ps = automerge::sync::State::new();
    let mut q = PeerState::new();
    let e = sync_with_raw(&mut l, &mut q, &mut raw, &mut ps, 6).expect("refused");
    assert!(
        e.to_string().contains("change") || e.to_string().contains("value"),
        "{e}"
    );
    assert_eq!(q.errors, 1);
    assert_eq!(l.entry_count(), 0);
    // and a peer past the limit is ignored
    let mut bad = PeerState::new();
    bad.errors = crdt_ledger::MAX_PEER_ERRORS;
    assert!(matches!(
        l.receive_sync_message(&mut bad, b"x"),
        Err(SyncError::PeerBanned { .. })
    ));
}

/// Write `bytes` as account 4's entry `seq` into a raw document, as a rogue peer
/// could, and commit.
fn put_raw_entry(doc: &mut automerge::AutoCommit, net: &Net, seq: u64, bytes: Vec<u8>) {
    let key = format!("{}/{seq}", hex::encode(net.acct(4).0));
    doc.put(
        automerge::ROOT,
        key.as_str(),
        automerge::ScalarValue::Bytes(bytes),
    )
    .unwrap();
    doc.commit();
}

/// Up to `rounds` sync rounds between `l` (its state for the peer: `q`) and a raw
/// document `raw` (its state: `ps`), the ledger speaking first; the first error
/// the ledger reports, which ends them.
fn sync_with_raw(
    l: &mut crdt_ledger::Ledger,
    q: &mut PeerState,
    raw: &mut automerge::AutoCommit,
    ps: &mut automerge::sync::State,
    rounds: usize,
) -> Option<SyncError> {
    use automerge::sync::SyncDoc;
    for _ in 0..rounds {
        if let Some(m) = l.generate_sync_message(q) {
            let m = automerge::sync::Message::decode(&m).unwrap();
            raw.sync().receive_sync_message(ps, m).unwrap();
        }
        if let Some(m) = raw.sync().generate_sync_message(ps)
            && let Err(e) = l.receive_sync_message(q, &m.encode())
        {
            return Some(e);
        }
    }
    None
}

fn evil_doc_bytes(l: &mut crdt_ledger::Ledger) -> Vec<u8> {
    let snap = l.snapshot().unwrap();
    let len = u64::from_le_bytes(snap[..8].try_into().unwrap()) as usize;
    snap[8 + len..].to_vec()
}

#[test]
fn three_replicas_converge_with_settlements_across_authors() {
    let net = Net::new(8, 4, 4);
    let mut a = net.ledger(1);
    let mut b = net.ledger(2);
    let mut c = net.ledger(3);
    let contract = net.locked(&mut a, 6, 7, 9);
    sync(&mut a, &mut b);
    let committee = b.committee_for_checkpoint(1).unwrap();
    let params = b.params().clone();
    let s = net.settlement(&contract, 1, &committee[..3], good_outcome(5_000), &params);
    b.append(&net.ids[7], s, T0).unwrap();
    c.append(&net.ids[5], transfer(net.acct(6), 1), T0).unwrap();
    sync(&mut b, &mut c);
    sync(&mut a, &mut c);
    sync(&mut a, &mut b);
    assert_eq!(a.state(), b.state());
    assert_eq!(b.state(), c.state());
    assert!(a.invalid().is_empty(), "{:?}", a.invalid());
    let prov = a.state().balance(&net.acct(7));
    assert_eq!(prov, Amount::tokens(1005));
    let _ = ComputeUnits::from_milli(0);
}

#[test]
fn settlements_are_found_by_contract_id() {
    let net = Net::new(8, 4, 4);
    let mut a = net.ledger(1);
    let mut b = net.ledger(2);
    let contract = net.locked(&mut a, 6, 7, 11);
    let id = contract.body_hash();
    // Locked, not settled yet.
    assert!(a.settlement(&id).is_none());
    let committee = a.committee_for_checkpoint(1).unwrap();
    let params = a.params().clone();
    let body = net.settlement(&contract, 1, &committee[..3], good_outcome(6_000), &params);
    let Body::Settlement { cert, payout } = body.clone() else {
        unreachable!()
    };
    let written = a.append(&net.ids[7], body, T0).unwrap();
    assert_eq!(a.state().settled.get(&id), Some(&written.hash));
    assert_eq!(a.settlement(&id), Some((cert.clone(), payout.clone())));
    // Another replica finds it once synced, and it stays found once final.
    sync(&mut a, &mut b);
    assert_eq!(b.settlement(&id), Some((cert.clone(), payout.clone())));
    finalize(&net, &mut a, 1, 0);
    assert_eq!(a.settlement(&id), Some((cert, payout)));
    let unknown = net.contract(6, 7, 12).body_hash();
    assert!(a.settlement(&unknown).is_none());
    assert!(b.settlement(&unknown).is_none());
}

#[test]
fn mangled_sync_messages_never_panic_or_let_a_bad_entry_in() {
    let net = Net::new(6, 4, 4);
    let mut src = net.ledger(1);
    for i in 0..3 {
        src.append(&net.ids[4], transfer(net.acct(5), 1 + i), T0)
            .unwrap();
    }
    // The first message carries no changes; answer it to get one that does.
    let mut fresh = net.ledger(2);
    let (mut ps, mut pf) = (PeerState::new(), PeerState::new());
    let m = src.generate_sync_message(&mut ps).unwrap();
    fresh.receive_sync_message(&mut pf, &m).unwrap();
    let reply = fresh.generate_sync_message(&mut pf).unwrap();
    src.receive_sync_message(&mut ps, &reply).unwrap();
    let full = src.generate_sync_message(&mut ps).unwrap();
    let good: Vec<_> = {
        let mut f2 = net.ledger(3);
        let mut p = PeerState::new();
        let m0 = src.generate_sync_message(&mut PeerState::new()).unwrap();
        f2.receive_sync_message(&mut p, &m0).unwrap();
        f2.receive_sync_message(&mut p, &full).unwrap();
        assert_eq!(f2.entry_count(), 3);
        f2.state().balances.clone().into_iter().collect()
    };
    let mut refused = 0;
    for bit in (0..full.len() * 8).step_by(11) {
        let mut b = full.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        let mut l = net.ledger(4);
        let mut p = PeerState::new();
        let m0 = src.generate_sync_message(&mut PeerState::new()).unwrap();
        l.receive_sync_message(&mut p, &m0).unwrap();
        match l.receive_sync_message(&mut p, &b) {
            Err(_) => refused += 1,
            Ok(_) => {
                // Whatever got in is genuine: the fold is a prefix of the real one.
                assert!(l.invalid().is_empty(), "bit {bit}: {:?}", l.invalid());
                assert!(l.entry_count() <= 3);
                if l.entry_count() == 3 {
                    let got: Vec<_> = l.state().balances.clone().into_iter().collect();
                    assert_eq!(got, good);
                }
            }
        }
    }
    assert!(refused > 0);
}

#[test]
fn an_overwrite_in_an_incremental_change_is_refused() {
    let net = Net::new(6, 4, 4);
    let mut honest = net.ledger(1);
    for i in 0..6 {
        honest
            .append(&net.ids[4], transfer(net.acct(5), 1 + i), T0)
            .unwrap();
    }
    let mut l = net.ledger(2);
    sync(&mut honest, &mut l);
    // A peer with the same document overwrites one entry: a single new change,
    // which automerge sends on its own (not as a whole document).
    let mut raw = automerge::AutoCommit::load(&evil_doc_bytes(&mut honest)).unwrap();
    let mut ps = automerge::sync::State::new();
    let mut q = PeerState::new();
    // first get in sync
    if let Some(e) = sync_with_raw(&mut l, &mut q, &mut raw, &mut ps, 6) {
        panic!("{e}");
    }
    put_raw_entry(&mut raw, &net, 2, evil_entry(&net));
    let before = l.state().clone();
    let mut refused = None;
    for _ in 0..6 {
        use automerge::sync::SyncDoc;
        if let Some(m) = raw.sync().generate_sync_message(&mut ps)
            && let Err(e) = l.receive_sync_message(&mut q, &m.encode())
        {
            refused = Some(e);
            break;
        }
        if let Some(m) = l.generate_sync_message(&mut q) {
            let m = automerge::sync::Message::decode(&m).unwrap();
            raw.sync().receive_sync_message(&mut ps, m).unwrap();
        }
    }
    let e = refused.expect("the overwrite was refused");
    assert!(e.to_string().contains("overwrites"), "{e}");
    assert_eq!(l.state(), &before);
    assert_eq!(l.entry_count(), 6);
}

/// A validly signed entry by account 4 at seq 2 that differs from the real one.
fn evil_entry(net: &Net) -> Vec<u8> {
    net.signed_entry(4, 4, 2, [3; 32], transfer(net.acct(3), 1))
        .to_bytes()
        .unwrap()
}

/// A proposal that reached one member and then lost its leader is finished by
/// the members: each forwards what it signed to the whole committee.
#[test]
fn a_half_signed_epoch_is_finished_without_its_leader() {
    let net = Net::new(8, 6, 4);
    let mut l = net.ledger(1);
    let committee = l.committee_for_checkpoint(1).unwrap();
    let end1 = l.epoch_end(1);
    let p = l
        .propose_checkpoint(net.id_of(&committee[0]), 1, 0)
        .unwrap();
    // One member prevotes round 0, then the proposer vanishes: no quorum yet.
    let v = l.vote(net.id_of(&committee[1]), &p, end1).unwrap();
    assert!(v.prevoted && !v.precommitted);
    let p = v.proposal.unwrap();
    // What it signed reaches the others, in a later round too: they signed
    // nothing in a later round, so they may still vote on round 0's body.
    let later = Timestamp(end1.0 + 3_500);
    let mut b = net.ledger(2);
    sync(&mut l, &mut b);
    let members: Vec<_> = committee[1..].iter().map(|m| net.id_of(m)).collect();
    let fin = b.vote_all(&members, &p, later).unwrap();
    let Some(fin) = fin else {
        panic!("three of four voted, and no quorum");
    };
    let fin = Box::new(fin);
    assert!(
        !fin.signatures.iter().any(|(s, _)| *s == committee[0]),
        "final without its proposer's vote"
    );
    b.append(&net.ids[7], Body::Checkpoint(fin), later).unwrap();
    assert_eq!(b.finalized_epoch(), 1);
    sync(&mut l, &mut b);
    assert_eq!(l.finalized_epoch(), 1);
    conserved(&mut l);
}

/// The attack of a leader that collects its quorum and withholds the
/// checkpoint, hoping that the backup committee finalizes a later epoch and
/// that publishing its own later rewinds finality: the members that signed
/// refuse to skip, so no backup checkpoint can exist, and finality only moves
/// forward.
#[test]
fn a_withholding_leader_cannot_reverse_finality() {
    let net = Net::new(8, 6, 4);
    let mut l = net.ledger(1);
    let committee = l.committee_for_checkpoint(1).unwrap();
    let end1 = l.epoch_end(1);
    let leader = net.id_of(&committee[0]);
    let p = l.propose_checkpoint(leader, 1, 0).unwrap();
    let members: Vec<_> = committee[1..].iter().map(|m| net.id_of(m)).collect();
    let withheld = Box::new(l.vote_all(&members, &p, end1).unwrap().expect("a quorum"));
    // Two epochs later the members have still seen no checkpoint. Those that
    // precommitted cannot skip; the rest (the leader, whose vote was not needed)
    // are too few for a certificate.
    let end3 = l.epoch_end(3);
    let mut skipped = 0;
    for m in &committee {
        match l.sign_skip(net.id_of(m), 1, end3) {
            Ok(s) => {
                skipped += 1;
                assert!(!l.apply_skip(&s).unwrap(), "no skip certificate");
            }
            Err(e) => assert!(matches!(e, LedgerError::AlreadySigned { .. }), "{e}"),
        }
    }
    assert_eq!(
        skipped, 1,
        "three members precommitted the withheld checkpoint"
    );
    assert_eq!(l.checkpoint_target(end3).map(|t| t.0), Some(1));
    let backup = l.finalized_state().backup.clone();
    let refused = l.propose_checkpoint(net.id_of(&backup[0]), 3, 0);
    assert!(
        matches!(&refused, Err(LedgerError::Epoch { reason, .. }) if reason.contains("skip")),
        "{refused:?}"
    );
    // The leader publishes at last: epoch 1 is final, and stays final.
    l.append(leader, Body::Checkpoint(withheld), end3).unwrap();
    assert_eq!(l.finalized_epoch(), 1);
    let first = l.checkpoints()[0].body_hash();
    finalize(&net, &mut l, 2, 0);
    assert_eq!(l.checkpoints()[0].body_hash(), first);
    conserved(&mut l);
}

/// A backup checkpoint without a skip certificate for the epoch it passes
/// over, or with one signed by too few or by outsiders, is refused by every
/// replica; and a member that signed the checkpoint of an epoch and its skip
/// is caught and slashed.
#[test]
fn backup_checkpoints_need_a_real_skip_certificate_and_double_skips_are_slashed() {
    let net = Net::new(8, 6, 4);
    let mut l = net.ledger(1);
    let committee = l.committee_for_checkpoint(1).unwrap();
    let end2 = l.epoch_end(2);
    assert!(skip_epoch(&net, &mut l, 1, end2));
    let backup = l.committee_for_checkpoint(2).unwrap();
    let good = l.propose_checkpoint(net.id_of(&backup[0]), 2, 0).unwrap();
    let body = good.checkpoint.body_unverified().unwrap();
    assert_eq!(body.skipped.len(), 1);
    // Forge variants of the body: no certificate, a certificate cut below
    // quorum, and one with an outsider's signature.
    let q = protocol::quorum(committee.len());
    let mut variants = Vec::new();
    let mut none = body.clone();
    none.skipped.clear();
    variants.push(("no certificate", none));
    let mut thin = body.clone();
    thin.skipped[0].signatures.truncate(q - 1);
    variants.push(("below quorum", thin));
    let mut outsider = body.clone();
    let stranger = net
        .ids
        .iter()
        .find(|i| !committee.contains(&i.account()))
        .unwrap();
    outsider.skipped[0].add_signature(stranger, &l.network());
    variants.push(("outsider", outsider));
    for (what, b) in variants {
        let mut ms = protocol::MultiSigned::new(&b).unwrap();
        for m in &backup {
            ms.add_signature(net.id_of(m), &l.network());
        }
        let why = refused(&mut l, &net.ids[7], Body::Checkpoint(Box::new(ms)));
        assert!(
            matches!(why, InvalidReason::BadCheckpoint(_)),
            "{what}: {why}"
        );
    }
    // A member that skipped epoch 1 also precommits its checkpoint (on a
    // replica that forgot): one proof, slashed once.
    let mut forgetful = net.ledger(3);
    let p = forgetful
        .propose_checkpoint(net.id_of(&committee[0]), 1, 0)
        .unwrap();
    // (Member 1 votes first: it is among the first three to precommit.)
    let members: Vec<_> = [1, 0, 2, 3]
        .iter()
        .map(|i| net.id_of(&committee[*i]))
        .collect();
    forgetful.vote_all(&members, &p, end2).unwrap().unwrap();
    let p = forgetful.proposal(&p.hash()).unwrap();
    assert!(
        p.checkpoint
            .signatures
            .iter()
            .any(|(s, _)| *s == committee[1])
    );
    l.track_proposal(&p).unwrap();
    let proofs: Vec<_> = l
        .slash_proofs()
        .into_iter()
        .filter(|x| matches!(x, SlashProof::DoubleSign { signer, .. } if *signer == committee[1]))
        .collect();
    assert_eq!(proofs.len(), 1, "{proofs:?}");
    let (who, offence) = proofs[0].check(&l.network()).unwrap();
    assert_eq!((who, offence), (committee[1], Offence::DoubleSign(1)));
    let stake = l.state().stake(&committee[1]);
    l.append(&net.ids[7], Body::Slash(Box::new(proofs[0].clone())), end2)
        .unwrap();
    assert!(l.state().stake(&committee[1]) < stake);
    conserved(&mut l);
}

#[test]
fn a_stored_value_with_a_bad_signature_is_reported_and_kept_out() {
    use crdt_ledger::{MemStore, Store};
    let net = Net::new(6, 4, 4);
    let (mut l, _) =
        crdt_ledger::Ledger::open(net.genesis.clone(), &[1; 16], MemStore::new()).unwrap();
    l.append(&net.ids[4], transfer(net.acct(5), 3), T0).unwrap();
    let mut store = l.into_store();
    // Someone writes a forged entry (signed by the wrong key) into the stored log.
    let forged = net.signed_entry(5, 4, 1, [0; 32], transfer(net.acct(5), 900));
    let mut rogue = automerge::AutoCommit::new();
    put_raw_entry(&mut rogue, &net, 1, forged.to_bytes().unwrap());
    let mut rec = vec![0u8]; // a document record
    rec.extend(rogue.save());
    store.append(&rec).unwrap();
    let (mut l, rep) = crdt_ledger::Ledger::open(net.genesis.clone(), &[1; 16], store).unwrap();
    assert_eq!(rep.rejected.len(), 1, "{:?}", rep.rejected);
    assert!(matches!(rep.rejected[0].1, InvalidReason::BadSignature(_)));
    assert_eq!(l.entry_count(), 1);
    assert_eq!(l.balance(&net.acct(5)), Amount::tokens(1003));
}

/// An escrow records the epoch it was locked in, and only that epoch's
/// committee (or the next one's, or the one before's) settles it: a quorum of
/// a committee drawn long after cannot certify it.
#[test]
fn only_the_committee_of_the_lock_epoch_settles_an_escrow() {
    let net = Net::new(8, 4, 4);
    let mut a = net.ledger(1);
    let contract = net.locked(&mut a, 6, 7, 21);
    let id = contract.body_hash();
    let e = a.state().escrows.get(&id).cloned().unwrap();
    assert_eq!(e.epoch, 1, "locked before any checkpoint: epoch 1");
    assert_eq!(a.entry(&e.lock).map(|x| x.data.seq), Some(0));
    let committee = a.committee_for_checkpoint(1).unwrap();
    let params = a.params().clone();
    // The same members, certifying as epoch 3: refused.
    let late = net.settlement(&contract, 3, &committee[..3], good_outcome(6_000), &params);
    let why = refused(&mut a, &net.ids[7], late);
    assert!(
        matches!(
            why,
            crdt_ledger::InvalidReason::CertEpoch { cert: 3, lock: 1 }
        ),
        "{why:?}"
    );
    // The lock epoch's committee settles it.
    let body = net.settlement(&contract, 1, &committee[..3], good_outcome(6_000), &params);
    a.append(&net.ids[7], body, T0).unwrap();
    assert!(a.state().settled.contains_key(&id));
    conserved(&mut a);
}

/// A lock the checkpoint of its epoch did not include folds into the next
/// epoch, but the members saw it pending in the epoch before and watched it
/// under that epoch's committee: that committee's certificate settles it.
/// (CI saw such a settlement refused, and the escrow stay locked.)
#[test]
fn the_committee_of_the_epoch_before_the_lock_settles_it_too() {
    let net = Net::new(8, 4, 4);
    let mut a = net.ledger(1);
    finalize(&net, &mut a, 1, 0);
    let contract = net.locked(&mut a, 6, 7, 22);
    let id = contract.body_hash();
    assert_eq!(
        a.state().escrows[&id].epoch,
        2,
        "locked after epoch 1's checkpoint"
    );
    let committee = a.state().committee_for(1).unwrap().to_vec();
    let params = a.params().clone();
    let body = net.settlement(&contract, 1, &committee[..3], good_outcome(6_000), &params);
    a.append(&net.ids[7], body, T0).unwrap();
    assert!(a.state().settled.contains_key(&id));
    conserved(&mut a);
}

fn bond(l: &mut crdt_ledger::Ledger, net: &Net, who: usize, tokens: u64) {
    let body = Body::Bond {
        amount: Amount::tokens(tokens),
    };
    l.append(&net.ids[who], body, T0).unwrap();
}

/// A contract reserves its escrow's share of the provider's bond (100 % in
/// the defaults); a certified wrong result slashes the provider's whole bond
/// (`wrong_result_slash` = 100 %), half to the requester and half burned,
/// and the ledger records what it took. An undelivered job (a crash is no
/// proof of cheating) and a correct one only release the reservation.
#[test]
fn a_proven_wrong_result_slashes_the_whole_bond() {
    let net = Net::new(8, 4, 4);
    let mut l = net.ledger(1);
    let (req, prov) = (6, 7);
    bond(&mut l, &net, prov, 100);
    let params = l.params().clone();
    let committee = l.committee_for_checkpoint(1).unwrap();
    let outcomes = [
        (false, true), // not delivered
        (true, true),  // correct
        (true, false), // wrong
    ];
    for (nonce, (delivered, result_ok)) in outcomes.into_iter().enumerate() {
        let contract = net.locked(&mut l, req, prov, 100 + nonce as u64);
        // 10 tokens of escrow reserve 10 of the 100 bonded.
        assert_eq!(l.state().free_bond(&net.acct(prov)), Amount::tokens(90));
        let before = l.state().clone();
        let outcome = protocol::settlement::Outcome {
            delivered,
            result_ok,
            ..good_outcome(8_000)
        };
        let s = net.settlement(&contract, 1, &committee[..3], outcome, &params);
        l.append(&net.ids[prov], s, T0).unwrap();
        let st = l.state();
        let bond_now = st.bonds.get(&net.acct(prov)).copied().unwrap_or_default();
        let slashed = Amount::tokens(100).0 - bond_now.0;
        let burned = st.supply.burned.0 - before.supply.burned.0;
        let recorded = st.slash_of(&net.acct(prov), &contract.body_hash());
        if delivered && !result_ok {
            assert_eq!(bond_now, Amount::ZERO, "the whole bond is slashed");
            assert_eq!(burned, Amount::tokens(50).0, "half of it burned");
            let refund = before.balance(&net.acct(req)).0 + Amount::tokens(50).0;
            assert!(
                st.balance(&net.acct(req)).0 > refund,
                "the requester got half"
            );
            assert_eq!(recorded, Some(Amount::tokens(100)));
            assert_eq!(st.bond_slashed[&net.acct(prov)], Amount::tokens(100));
        } else {
            assert_eq!((slashed, burned), (0, 0), "{delivered} {result_ok}");
            assert_eq!(recorded, Some(Amount::ZERO));
        }
        assert_eq!(st.free_bond(&net.acct(prov)), bond_now, "released");
        conserved(&mut l);
    }
}

/// With a smaller share of the whole bond, a wrong result still slashes at
/// least what its contract reserved.
#[test]
fn a_wrong_result_slashes_at_least_the_contracts_reservation() {
    let mut params = crdt_ledger::Params {
        wrong_result_slash: protocol::Bps(500),
        ..crdt_ledger::Params::default()
    };
    let wrong = protocol::settlement::Outcome {
        result_ok: false,
        ..good_outcome(8_000)
    };
    let t = Amount::tokens;
    // 5 % of 100 is less than the 10 reserved: the reservation.
    assert_eq!(params.slashed(t(10), t(100), &wrong), t(10));
    // 5 % of 1,000 is more.
    assert_eq!(params.slashed(t(10), t(1_000), &wrong), t(50));
    // Never more than the bond holds.
    assert_eq!(params.slashed(t(10), t(4), &wrong), t(4));
    params.wrong_result_slash = protocol::Bps(10_000);
    assert_eq!(params.slashed(t(10), t(1_000), &wrong), t(1_000));
    assert_eq!(
        params.slashed(t(10), t(1_000), &good_outcome(8_000)),
        Amount::ZERO
    );
}

#[test]
fn a_provider_cannot_unbond_what_its_open_contracts_reserve() {
    let net = Net::new(8, 4, 4);
    let mut l = net.ledger(1);
    let (req, prov) = (6, 7);
    bond(&mut l, &net, prov, 100);
    net.locked(&mut l, req, prov, 1);
    let unbond = |tokens| Body::Unbond {
        amount: Amount::tokens(tokens),
    };
    assert!(matches!(
        refused(&mut l, &net.ids[prov], unbond(95)),
        InvalidReason::InsufficientBond { .. }
    ));
    l.append(&net.ids[prov], unbond(90), T0).unwrap();
    let st = l.state();
    assert_eq!(st.free_bond(&net.acct(prov)), Amount::ZERO);
    assert_eq!(st.unbonding[&net.acct(prov)][0].1, Amount::tokens(90));
    conserved(&mut l);
}

/// A verified unit mints at most `mint_per_cu`: with the rate below what a
/// unit costs to compute, a provider that buys its own compute to earn the
/// mint loses on every unit, however idle the rest of the network is.
#[test]
fn a_unit_mints_at_most_the_rate_per_unit() {
    let net = Net::new(8, 4, 4);
    let mut l = net.ledger(1);
    let prov = 5;
    bond(&mut l, &net, prov, 100);
    let mut params = l.params().clone();
    let committee = l.committee_for_checkpoint(1).unwrap();
    // 8 CU of verified work, alone in its epoch: by units and by bond it
    // would take the whole pool.
    let contract = net.locked(&mut l, 4, prov, 300);
    let s = net.settlement(&contract, 1, &committee[..3], good_outcome(8_000), &params);
    l.append(&net.ids[prov], s, T0).unwrap();
    let pool = params.scheduled_reward(1).0;
    assert_eq!(
        l.state().reward_mint(1, &params),
        vec![(net.acct(prov), Amount(pool))]
    );
    // At 2,500 µ-tokens per CU, 8 CU mint 0.02 tokens.
    params.mint_per_cu = PricePerCu(2_500);
    assert_eq!(
        l.state().reward_mint(1, &params),
        vec![(net.acct(prov), Amount(20_000))]
    );
    params.mint_per_cu = PricePerCu(0);
    assert!(l.state().reward_mint(1, &params).is_empty());
}

/// The epoch's mint goes by verified units, each provider's share capped by
/// its share of all bonds: a second key with no bond earns nothing, and a
/// provider earns at most what its bond's share allows, whatever units a
/// self-dealing pair claims.
#[test]
fn the_mint_is_capped_by_each_providers_share_of_the_bonds() {
    let net = Net::new(8, 4, 4);
    let mut l = net.ledger(1);
    let (small, large, unbonded) = (5, 6, 7);
    bond(&mut l, &net, small, 10);
    bond(&mut l, &net, large, 30);
    let params = l.params().clone();
    let committee = l.committee_for_checkpoint(1).unwrap();
    // Each provider does the same verified work for requester 4.
    for (nonce, prov) in [small, large, unbonded].into_iter().enumerate() {
        let contract = net.locked(&mut l, 4, prov, 200 + nonce as u64);
        let s = net.settlement(&contract, 1, &committee[..3], good_outcome(8_000), &params);
        l.append(&net.ids[prov], s, T0).unwrap();
    }
    let mint = l.state().reward_mint(1, &params);
    let of = |who: usize| {
        mint.iter()
            .find(|(a, _)| *a == net.acct(who))
            .map_or(0, |(_, x)| x.0)
    };
    let pool = params.scheduled_reward(1).0;
    // By units each would get a third; the small bond caps at a quarter.
    assert_eq!(of(small), pool / 4);
    assert_eq!(of(large), pool / 3);
    assert_eq!(of(unbonded), 0, "no bond, no mint");
    finalize(&net, &mut l, 1, 0);
    assert_eq!(
        l.finalized_state().supply.minted.0,
        pool / 4 + pool / 3,
        "what the caps hold back is not minted"
    );
    conserved(&mut l);
}

/// What no rule can read again is forgotten, so the state (which every
/// checkpoint re-encodes for its root) stays bounded: old committees, settled
/// contracts past their deadline, and double signs too old to slash. What a
/// rule still needs is kept: the committees an open escrow's settlement needs.
#[test]
fn schedule_settled_and_slashed_records_are_pruned() {
    use crdt_ledger::state::{SLA_RECORD_EPOCHS, SLASH_EPOCHS};
    let net = Net::new(8, 4, 4);
    let mut a = net.ledger(1);
    let params = a.params().clone();
    let c1 = a.committee_for_checkpoint(1).unwrap();
    // Settled in epoch 1.
    let done = net.locked(&mut a, 6, 7, 31);
    let body = net.settlement(&done, 1, &c1[..3], good_outcome(6_000), &params);
    a.append(&net.ids[7], body, T0).unwrap();
    // Left open: nobody certified anything yet.
    let open = net.locked(&mut a, 5, 7, 32);
    // A member that signs two checkpoints of epoch 1 (on two replicas).
    let mut other = net.ledger(2);
    other
        .append(&net.ids[4], transfer(net.acct(5), 1), T0)
        .unwrap();
    let p1 = a.propose_checkpoint(net.id_of(&c1[0]), 1, 0).unwrap();
    let p2 = other.propose_checkpoint(net.id_of(&c1[0]), 1, 0).unwrap();
    let due = a.epoch_end(1);
    assert!(a.vote(net.id_of(&c1[1]), &p1, due).unwrap().prevoted);
    let v = other.vote(net.id_of(&c1[1]), &p2, due).unwrap();
    a.track_proposal(&v.proposal.unwrap()).unwrap();
    let proof = a
        .slash_proofs()
        .into_iter()
        .find(|p| matches!(p, SlashProof::DoubleSign { .. }))
        .unwrap();

    let last = SLASH_EPOCHS + 2;
    for e in 1..=last {
        finalize(&net, &mut a, e, 0);
    }
    let st = a.finalized_state().clone();
    assert_eq!(st.epoch, last);
    assert!(!st.settled.contains_key(&done.body_hash()));
    assert!(st.settled_by_deadline.is_empty());
    let around_open = [0, 1, 2];
    assert!(
        st.schedule.len() <= SLA_RECORD_EPOCHS as usize + 1 + around_open.len(),
        "{:?}",
        st.schedule.keys().collect::<Vec<_>>()
    );
    assert!(
        around_open
            .iter()
            .all(|e| *e == 0 || st.schedule.contains_key(e))
    );
    // The settled contract cannot be locked again, pruned or not.
    let why = refused(
        &mut a,
        &net.ids[6],
        Body::EscrowLock {
            contract: done.clone(),
        },
    );
    assert!(
        matches!(why, InvalidReason::ContractDeadline { .. }),
        "{why:?}"
    );
    // The double sign is too old to slash now, and is not offered.
    assert!(a.slash_proofs().is_empty());
    let why = refused(&mut a, &net.ids[5], Body::Slash(Box::new(proof)));
    assert!(matches!(why, InvalidReason::StaleProof(1)), "{why:?}");
    // The open escrow's committee is still known: it settles it.
    let body = net.settlement(&open, 1, &c1[..3], good_outcome(6_000), &params);
    a.append(&net.ids[7], body, T0).unwrap();
    finalize(&net, &mut a, last + 1, 0);
    let st = a.finalized_state();
    assert!(st.escrows.is_empty());
    assert!(st.schedule.len() <= SLA_RECORD_EPOCHS as usize + 1);
    conserved(&mut a);
}

/// `escrow-fork-partition`: a requester signs two escrow locks at one seq,
/// one on each side of a partition, for two providers. On each side the
/// pending escrow is backed by the requester's final bond, so its provider
/// may start at once; once the sides meet only one lock survives, the fork
/// is proven and slashed, and the bond the requester loses is worth more
/// than the work the dropped escrow would have paid. A requester without a
/// bond gets no pending escrow backed: providers wait for the checkpoint.
#[test]
fn an_escrow_forked_across_a_partition_costs_the_requester_more_than_it_gains() {
    let net = Net::new(8, 4, 4);
    let mut base = net.ledger(1);
    let (req, unbacked) = (6, 4);
    let r = net.acct(req);
    bond(&mut base, &net, req, 100);
    finalize(&net, &mut base, 1, 0);
    assert_eq!(base.finalized_state().bonds[&r], Amount::tokens(100));
    let mut left = net.ledger(2);
    let mut right = net.ledger(3);
    sync(&mut base, &mut left);
    sync(&mut base, &mut right);
    let a = net.locked(&mut left, req, 7, 41);
    let b = net.locked(&mut right, req, 5, 42);
    let (ida, idb) = (a.body_hash(), b.body_hash());
    let seq = |l: &mut crdt_ledger::Ledger, id| {
        let lock = l.state().escrows[&id].lock;
        l.entry(&lock).unwrap().data.seq
    };
    assert_eq!(
        seq(&mut left, ida),
        seq(&mut right, idb),
        "one seq, two locks"
    );
    let price = left.state().escrows[&ida].amount;
    assert!(
        left.escrow_ready(&ida),
        "a bonded requester's pending escrow is backed"
    );
    assert!(right.escrow_ready(&idb));
    // The unbacked requester's pending escrow is not, until it is final.
    let c = net.locked(&mut left, unbacked, 7, 43);
    assert!(!left.escrow_ready(&c.body_hash()));

    // The sides meet: one lock survives, the fork is proven.
    sync(&mut left, &mut right);
    for l in [&mut left, &mut right] {
        let st = l.state();
        assert!(
            st.escrows.contains_key(&ida) ^ st.escrows.contains_key(&idb),
            "exactly one of the forked escrows survives"
        );
    }
    let proofs = left.slash_proofs();
    assert!(
        proofs.iter().any(
            |p| matches!(p.check(&net.genesis.network()), Ok((who, Offence::Fork(_))) if who == r)
        ),
        "{proofs:?}"
    );
    let before = left.state().slashable(&r);
    for p in proofs {
        left.append(&net.ids[0], Body::Slash(Box::new(p)), T0)
            .unwrap();
    }
    let lost = before.0 - left.state().slashable(&r).0;
    assert!(
        lost > price.0,
        "the fork cost {lost} µ; the dropped escrow was worth {price}"
    );
    finalize(&net, &mut left, 2, 0);
    assert!(left.escrow_ready(&c.body_hash()), "final now");
    sync(&mut left, &mut right);
    assert_eq!(left.finalized_state(), right.finalized_state());
    conserved(&mut left);
}

/// A vote split (a late round-0 body against round 1's) is resolved in a
/// later round: a member locked on round 0's body refuses a fresh body, but
/// moves to one with a newer quorum of prevotes; a member never goes back to
/// an earlier round; and precommits of different rounds are no double sign.
#[test]
fn a_split_vote_is_resolved_in_a_later_round_without_a_double_sign() {
    let net = Net::new(8, 6, 4);
    let mut l = net.ledger(1);
    let c = l.committee_for_checkpoint(1).unwrap();
    assert_eq!(c.len(), 4);
    let id = |i: usize| net.id_of(&c[i]);
    let end1 = l.epoch_end(1);
    let stall = l.params().stall_timeout.0;
    let round = |r: u64| Timestamp(end1.0 + r * stall);
    // Round 0: body A. Members 1, 2, 3 prevote it; the third prevote makes a
    // quorum, and member 3 precommits (it is locked on A); 1 and 2 do not
    // get to (they move on).
    let a = l.propose_checkpoint(id(0), 1, 0).unwrap();
    let mut p = a.clone();
    for i in 1..=3 {
        let v = l.vote(id(i), &p, round(0)).unwrap();
        assert!(v.prevoted, "member {i}: {:?}", v.refused);
        assert_eq!(v.precommitted, i == 3);
        p = v.proposal.unwrap();
    }
    // Round 1: a proposer that saw none of it proposes body B (with an entry
    // A lacks).
    let mut other = net.ledger(2);
    other
        .append(&net.ids[6], transfer(net.acct(7), 2), T0)
        .unwrap();
    let b = other.propose_checkpoint(id(1), 1, 1).unwrap();
    sync(&mut l, &mut other);
    assert_ne!(
        a.checkpoint.body_unverified().unwrap().content_hash(),
        b.checkpoint.body_unverified().unwrap().content_hash()
    );
    // Member 3 is locked on A and B carries no newer quorum: refused.
    let v = l.vote(id(3), &b, round(1)).unwrap();
    assert!(
        matches!(&v.refused, Some(LedgerError::WontSign(w)) if w.contains("locked")),
        "{:?}",
        v.refused
    );
    // 0, 1, 2 prevote B: a quorum in round 1; member 2 precommits it.
    let mut p = b.clone();
    for i in [0, 1, 2] {
        let v = l.vote(id(i), &p, round(1)).unwrap();
        assert!(v.prevoted, "member {i}: {:?}", v.refused);
        p = v.proposal.unwrap();
    }
    // Nobody goes back: member 0 signed in round 1, so round 0's A is refused.
    let v = l.vote(id(0), &a, round(1)).unwrap();
    assert!(!v.prevoted && !v.precommitted);
    assert!(
        matches!(&v.refused, Some(LedgerError::WontSign(w)) if w.contains("round 1")),
        "{:?}",
        v.refused
    );
    // Round 2: its proposer proposes B again with round 1's prevotes as the
    // proof; member 3 may now move from A (locked in round 0) to B.
    let b2 = l.propose_checkpoint(id(2), 1, 2).unwrap();
    let pol = b2.valid.as_ref().expect("a proof of lock change");
    assert_eq!(pol.round, 1);
    let body2 = b2.checkpoint.body_unverified().unwrap();
    assert_eq!(
        body2.content_hash(),
        b.checkpoint.body_unverified().unwrap().content_hash()
    );
    // A replica that saw only the re-proposal takes its proof as well.
    let mut fresh = net.ledger(3);
    sync(&mut l, &mut fresh);
    let v = fresh.vote(id(3), &b2, round(2)).unwrap();
    assert!(v.prevoted, "{:?}", v.refused);
    let members: Vec<_> = (0..4).map(id).collect();
    let fin = l.vote_all(&members, &b2, round(2)).unwrap().expect("final");
    assert_eq!(fin.body_unverified().unwrap().round, 2);
    assert!(fin.signatures.iter().any(|(s, _)| *s == c[3]));
    // Member 3 precommitted A in round 0 and B in round 2: allowed.
    assert!(l.slash_proofs().is_empty(), "{:?}", l.slash_proofs());
    l.append(&net.ids[7], Body::Checkpoint(Box::new(fin)), round(2))
        .unwrap();
    assert_eq!(l.finalized_epoch(), 1);
    conserved(&mut l);
}

/// The escrow-fork-partition scenario on 100 seeds: a bonded requester
/// (a random bond) locks a random number of escrows on each side of a
/// partition at the same seqs; providers on each side take those their
/// replica says are backed. When the sides meet, one side's chain survives,
/// the fork is proven and slashed, and the slash burns more than the backed
/// escrows of the dropped side were worth (the work providers did for
/// nothing).
#[test]
fn a_hundred_escrow_forks_cost_the_requester_more_than_they_gain() {
    let (req, providers) = (6, [7, 5]);
    let (mut with_work, mut refused) = (0, 0);
    for seed in 0..100u64 {
        let r = *blake3::hash(&seed.to_le_bytes()).as_bytes();
        let net = Net::new(8, 4, 4);
        let mut base = net.ledger(1);
        let requester = net.acct(req);
        bond(&mut base, &net, req, 20 + u64::from(r[0]) * 2);
        finalize(&net, &mut base, 1, 0);
        let mut sides = [net.ledger(2), net.ledger(3)];
        let mut locked: [Vec<(protocol::Hash32, u64, bool)>; 2] = [Vec::new(), Vec::new()];
        for (s, side) in sides.iter_mut().enumerate() {
            sync(&mut base, side);
            for i in 0..1 + u64::from(r[1 + s]) % 4 {
                let nonce = seed * 100 + s as u64 * 10 + i;
                let c = net.locked(side, req, providers[(s + i as usize) % 2], nonce);
                let id = c.body_hash();
                let amount = side.state().escrows[&id].amount.0;
                locked[s].push((id, amount, side.escrow_ready(&id)));
            }
        }
        let [mut left, mut right] = sides;
        sync(&mut left, &mut right);
        let held = |l: &mut crdt_ledger::Ledger, s: usize| {
            let st = l.state();
            locked[s]
                .iter()
                .filter(|(id, ..)| st.escrows.contains_key(id))
                .count()
        };
        let (l0, l1) = (held(&mut left, 0), held(&mut left, 1));
        assert!(
            (l0 == locked[0].len() && l1 == 0) || (l1 == locked[1].len() && l0 == 0),
            "seed {seed}: one side's chain survives whole ({l0}, {l1})"
        );
        assert_eq!(
            (l0, l1),
            (held(&mut right, 0), held(&mut right, 1)),
            "seed {seed}"
        );
        let dropped = usize::from(l0 > 0);
        let worked: u64 = locked[dropped]
            .iter()
            .filter(|(_, _, ready)| *ready)
            .map(|(_, a, _)| a)
            .sum();
        let proofs = left.slash_proofs();
        assert!(
            proofs.iter().any(|p| matches!(
                p.check(&net.genesis.network()),
                Ok((who, Offence::Fork(_))) if who == requester
            )),
            "seed {seed}: the fork is proven"
        );
        let before = left.state().slashable(&requester);
        for p in proofs {
            left.append(&net.ids[0], Body::Slash(Box::new(p)), T0)
                .unwrap();
        }
        let lost = before.0 - left.state().slashable(&requester).0;
        assert!(
            lost > worked,
            "seed {seed}: the fork cost {lost} µ; backed work dropped {worked} µ"
        );
        with_work += usize::from(worked > 0);
        refused += locked
            .iter()
            .flatten()
            .filter(|(_, _, ready)| !*ready)
            .count();
        conserved(&mut left);
    }
    println!(
        "escrow-fork-partition: 100 of 100 seeds slashed; {with_work} dropped backed work; \
         {refused} locks past the bond were not backed"
    );
    assert!(with_work > 10 && refused > 10, "{with_work} {refused}");
}

/// An escrow no committee settled (its verdicts split three ways, or its
/// members vanished) does not stay locked for good: from `expire_after` past
/// its deadline, by the last final epoch's end, anyone may expire it; the
/// requester gets the whole escrow back, the provider's bond reservation is
/// released, and no settlement can follow.
#[test]
fn an_escrow_nobody_settles_expires_back_to_the_requester() {
    // Epochs of three hours: the third ends six past the deadline.
    let net = Net::with_params(8, 4, 4, |p| {
        p.epoch_length = protocol::DurationMs(3 * 3_600 * 1000)
    });
    let mut l = net.ledger(1);
    let params = l.params().clone();
    let contract = net.locked(&mut l, 6, 7, 51);
    let id = contract.body_hash();
    let expire = Body::Expire { contract: id };
    let why = refused(&mut l, &net.ids[6], expire.clone());
    assert!(
        matches!(why, InvalidReason::Malformed(ref m) if m.contains("expired from")),
        "{why}"
    );
    finalize(&net, &mut l, 1, 0);
    finalize(&net, &mut l, 2, 0);
    let deadline = l.state().escrows[&id].terms.deadline;
    let after = params.expire_after;
    assert!(l.epoch_end(2) < deadline.plus(after));
    assert!(!l.expiry_due(&id));
    let why = refused(&mut l, &net.ids[6], expire.clone());
    assert!(matches!(why, InvalidReason::Malformed(_)), "{why}");
    finalize(&net, &mut l, 3, 0);
    assert!(l.epoch_end(3) >= deadline.plus(after));
    assert!(l.expiry_due(&id));
    let r = net.acct(6);
    let before = l.state().balance(&r);
    let amount = l.state().escrows[&id].amount;
    // Anyone may write it (here a third party).
    l.append(&net.ids[5], expire.clone(), T0).unwrap();
    assert!(l.expired(&id));
    assert_eq!(l.state().balance(&r), Amount(before.0 + amount.0));
    assert!(!l.state().escrows.contains_key(&id));
    assert!(
        l.state()
            .bond_reserved
            .get(&net.acct(7))
            .is_none_or(|b| b.0 == 0)
    );
    assert!(matches!(
        refused(&mut l, &net.ids[6], expire),
        InvalidReason::AlreadySettled(_)
    ));
    let committee = l.finalized_state().schedule[&1].clone();
    let late = net.settlement(&contract, 1, &committee[..3], good_outcome(6_000), &params);
    assert!(matches!(
        refused(&mut l, &net.ids[7], late),
        InvalidReason::AlreadySettled(_)
    ));
    // Final with the next checkpoint (which, the deadline long past, also
    // forgets the contract as it forgets settled ones).
    finalize(&net, &mut l, 4, 0);
    assert!(!l.finalized_state().escrows.contains_key(&id));
    assert_eq!(l.finalized_state().balance(&r), Amount(before.0 + amount.0));
    conserved(&mut l);
}

/// A requester that forks its escrow across a partition and unbonds its bond
/// on one side, hoping the partition outlasts the unbonding: a bond stays
/// slashable for `bond_unbonding_epochs` (a day by default), longer than the
/// stake's, so when the sides meet five epochs later the fork's slash still
/// burns half of it. With bonds unbonding as fast as stake (the control), the
/// bond has left and the fork costs nothing.
#[test]
fn a_fork_that_outlasts_the_stake_unbonding_still_meets_its_slash() {
    for (bond_epochs, caught) in [(10, true), (2, false)] {
        let net = Net::with_params(8, 4, 4, |p| p.bond_unbonding_epochs = bond_epochs);
        let mut base = net.ledger(1);
        let (req, r) = (6, net.acct(6));
        bond(&mut base, &net, req, 100);
        finalize(&net, &mut base, 1, 0);
        let mut left = net.ledger(2);
        let mut right = net.ledger(3);
        sync(&mut base, &mut left);
        sync(&mut base, &mut right);
        net.locked(&mut left, req, 7, 61);
        net.locked(&mut right, req, 5, 62);
        bond_out(&mut right, &net, req, 100);
        for e in 2..=6 {
            finalize(&net, &mut right, e, 0);
        }
        sync(&mut left, &mut right);
        let proofs: Vec<_> = right
            .slash_proofs()
            .into_iter()
            .filter(|p| matches!(p.check(&net.genesis.network()), Ok((who, Offence::Fork(_))) if who == r))
            .collect();
        let before = right.state().slashable(&r);
        for p in proofs {
            right
                .append(&net.ids[0], Body::Slash(Box::new(p)), T0)
                .unwrap();
        }
        let lost = before.0 - right.state().slashable(&r).0;
        if caught {
            assert_eq!(lost, Amount::tokens(50).0, "half the unbonding bond burned");
        } else {
            assert_eq!(lost, 0, "the bond left before the sides met");
        }
        conserved(&mut right);
    }
}

fn bond_out(l: &mut crdt_ledger::Ledger, net: &Net, who: usize, tokens: u64) {
    let body = Body::Unbond {
        amount: Amount::tokens(tokens),
    };
    l.append(&net.ids[who], body, T0).unwrap();
}

/// A federated job's ε is written to the ledger when a round's update was
/// delivered: once per job, however many rounds settle, and not for a round
/// that delivered nothing. Any replica reads the same spends for the owner.
#[test]
fn a_federated_job_spends_its_privacy_budget_once_in_the_ledger() {
    use protocol::{Hash32, PrivacyTarget};
    let net = Net::new(8, 4, 4);
    let mut l = net.ledger(1);
    let (req, prov) = (4, 5);
    let data = Hash32::of(b"shard");
    let round = |federation: &'static [u8], round: u32, epsilon: f64| {
        move |spec: &mut protocol::JobSpec| {
            spec.kind = fixtures::wine_round(federation, round, vec![11, 16, 6]);
            spec.dataset.hash = data;
            spec.privacy = Some(PrivacyTarget {
                epsilon,
                delta: 1e-5,
            });
        }
    };
    let contracts = [
        (net.contract_with(req, prov, 1, round(b"f", 1, 2.5)), true),
        (net.contract_with(req, prov, 2, round(b"f", 2, 2.5)), true),
        (net.contract_with(req, prov, 3, round(b"g", 1, 1.0)), false),
    ];
    let committee = l.committee_for_checkpoint(1).unwrap();
    let params = l.params().clone();
    for (c, delivered) in &contracts {
        l.append(
            &net.ids[req],
            Body::EscrowLock {
                contract: c.clone(),
            },
            T0,
        )
        .unwrap();
        let outcome = protocol::Outcome {
            delivered: *delivered,
            result_ok: *delivered,
            ..good_outcome(1_000)
        };
        let s = net.settlement(c, 1, &committee[..3], outcome, &params);
        l.append(&net.ids[prov], s, T0).unwrap();
    }
    let spends = l.state().privacy_spends(&net.acct(prov));
    assert_eq!(
        spends,
        vec![protocol::market::PrivacySpend {
            dataset: data,
            federation: Hash32::of(b"f"),
            requester: net.acct(req),
            epsilon: 2.5,
            rounds: vec![1, 2],
        }]
    );
    // Another replica that syncs reads the same.
    let mut other = net.ledger(2);
    sync(&mut l, &mut other);
    assert_eq!(other.state().privacy_spends(&net.acct(prov)), spends);
    assert!(l.state().privacy_spends(&net.acct(req)).is_empty());
    conserved(&mut l);
}

/// A reader of the escrow feed: a cursor, and the open escrows as the feed
/// told them.
struct EscrowReader {
    cursor: crdt_ledger::EscrowCursor,
    open: std::collections::BTreeSet<protocol::Hash32>,
    full_reads: usize,
}

impl EscrowReader {
    fn new() -> Self {
        EscrowReader {
            cursor: Default::default(),
            open: Default::default(),
            full_reads: 0,
        }
    }

    /// Catch up with `l`, and check that what the feed told equals the state.
    fn follow(&mut self, l: &mut crdt_ledger::Ledger, net: &Net) -> bool {
        let changes = l.escrow_changes(&mut self.cursor);
        let state = l.state().clone();
        match changes.changed {
            None => {
                self.full_reads += 1;
                self.open = state.escrows.keys().copied().collect();
            }
            Some(ids) => {
                for id in ids {
                    if state.escrows.contains_key(&id) {
                        self.open.insert(id);
                    } else {
                        self.open.remove(&id);
                    }
                }
            }
        }
        let truth: std::collections::BTreeSet<_> = state.escrows.keys().copied().collect();
        assert_eq!(self.open, truth);
        for p in &net.ids {
            let mut mine: Vec<_> = state
                .escrows
                .iter()
                .filter(|(_, e)| e.provider == p.account())
                .map(|(id, _)| *id)
                .collect();
            mine.sort();
            assert_eq!(l.open_escrows_of(&p.account()), mine);
        }
        changes.finality_moved
    }
}

/// A node core follows the open escrows through the ledger's feed instead of
/// scanning them at every change: locks, settlements written here and
/// arriving by sync (folded on top or refolded), and a checkpoint. After
/// every step the reader's copy is the
/// state's, and the escrows by provider are right.
#[test]
fn the_escrow_feed_tells_a_reader_every_escrow_that_opened_or_closed() {
    let net = Net::new(8, 4, 4);
    let mut a = net.ledger(1);
    let mut b = net.ledger(2);
    let mut reader = EscrowReader::new();
    let mut other = EscrowReader::new();
    assert!(reader.follow(&mut a, &net));
    let c1 = net.locked(&mut a, 4, 5, 1);
    let c2 = net.locked(&mut a, 4, 6, 2);
    assert!(!reader.follow(&mut a, &net));
    let c3 = net.locked(&mut b, 6, 7, 3);
    sync(&mut a, &mut b);
    reader.follow(&mut a, &net);
    other.follow(&mut b, &net);
    assert_eq!(reader.open.len(), 3);
    // Settled on b, synced to a.
    let committee = b.committee_for_checkpoint(1).unwrap();
    let params = b.params().clone();
    let s1 = net.settlement(&c1, 1, &committee[..3], good_outcome(5_000), &params);
    b.append(&net.ids[5], s1, T0).unwrap();
    other.follow(&mut b, &net);
    sync(&mut a, &mut b);
    reader.follow(&mut a, &net);
    assert!(!reader.open.contains(&c1.body_hash()));
    // Settled here.
    let s3 = net.settlement(&c3, 1, &committee[..3], good_outcome(5_000), &params);
    a.append(&net.ids[7], s3, T0).unwrap();
    reader.follow(&mut a, &net);
    assert_eq!(
        reader.open.iter().copied().collect::<Vec<_>>(),
        vec![c2.body_hash()]
    );
    // A checkpoint moves finality.
    finalize(&net, &mut a, 1, 0);
    assert!(reader.follow(&mut a, &net));
    // A reader of another replica reads everything at first.
    let mut crossed = EscrowReader {
        cursor: reader.cursor,
        ..EscrowReader::new()
    };
    crossed.follow(&mut b, &net);
    assert_eq!(crossed.full_reads, 1);
    // Many more locks and settlements, followed step by step.
    for n in 10..40u64 {
        let c = net.locked(&mut a, 4 + (n as usize % 2), 6 + (n as usize % 2), n);
        if n % 3 == 0 {
            let committee = a.committee_for_checkpoint(2).unwrap();
            let s = net.settlement(&c, 2, &committee[..3], good_outcome(1_000), &params);
            a.append(&net.ids[6 + (n as usize % 2)], s, T0).unwrap();
        }
        reader.follow(&mut a, &net);
    }
    sync(&mut a, &mut b);
    other.follow(&mut b, &net);
    reader.follow(&mut a, &net);
    assert_eq!(reader.full_reads, 1, "only the first read was a full one");
    conserved(&mut a);
}

/// Settlements and SLA records of one provider commute (its SLA history
/// keeps the events that sort last, whatever the order they came in), so a
/// replica applies each on top of its pending view even when it sorts
/// before ones already applied; and every such view equals a refold (the
/// check panics if not). A settlement that may slash does not commute with
/// another of the same provider: the replica refolds.
#[test]
fn settlements_and_records_of_one_provider_fold_on_top_in_any_order() {
    let net = Net::new(10, 4, 4);
    let mut l = net.ledger(1);
    l.check_incremental_views(true);
    let prov = 6;
    let contracts: Vec<_> = (0..4u64)
        .map(|n| net.locked(&mut l, 4 + (n as usize % 2), prov, 100 + n))
        .collect();
    let committee = l.committee_for_checkpoint(1).unwrap();
    let params = l.params().clone();
    // Writers in descending account order: each new entry sorts before
    // the ones already applied.
    let mut writers: Vec<usize> = vec![0, 1, 2, 3, 7, 8, 9];
    writers.sort_by_key(|i| std::cmp::Reverse(net.acct(*i)));
    let before = l.views_kept();
    for (c, w) in contracts[..3].iter().zip(&writers) {
        let s = net.settlement(c, 1, &committee[..3], good_outcome(4_000), &params);
        l.append(&net.ids[*w], s, T0).unwrap();
    }
    let mut records = 0;
    for m in committee.iter().rev() {
        let rec = crdt_ledger::SlaRecord {
            provider: net.acct(prov),
            epoch: 1,
            probes: 4,
            answered: 3,
            mean_latency_ms: 15,
        };
        l.append(net.id_of(m), Body::SlaRecord(rec), T0).unwrap();
        records += 1;
    }
    assert_eq!(l.views_kept() - before, 3 + records);
    let history = l.state().sla[&net.acct(prov)].clone();
    assert_eq!(history.len(), 3 + records as usize);
    assert!(history.is_sorted_by_key(|e| e.sort_key()));
    assert_eq!(l.state().reputation[&net.acct(prov)].jobs, 3);
    // A wrong result may slash: it sorts before the settlements above and
    // touches the bond, so the view is refolded.
    let bad = protocol::settlement::Outcome {
        result_ok: false,
        ..good_outcome(4_000)
    };
    let kept = l.views_kept();
    let s = net.settlement(&contracts[3], 1, &committee[..3], bad, &params);
    let last = *writers.last().unwrap();
    l.append(&net.ids[last], s, T0).unwrap();
    assert_eq!(l.views_kept(), kept);
    assert_eq!(l.state().reputation[&net.acct(prov)].jobs, 4);
    conserved(&mut l);
}

#[test]
fn final_entries_leave_memory_and_are_read_back_from_the_document() {
    let net = Net::new(10, 4, 4);
    let mut a = net.ledger(1);
    // The node of provider 7 keeps its own history.
    a.keep_entries_of(net.acct(7));
    let mine = net.locked(&mut a, 6, 7, 1);
    let other = net.locked(&mut a, 5, 8, 2);
    let committee = a.committee_for_checkpoint(1).unwrap();
    let params = a.params().clone();
    let settle = |c| net.settlement(c, 1, &committee[..3], good_outcome(4_000), &params);
    a.append(&net.ids[9], settle(&mine), T0).unwrap();
    let paid_other = a.append(&net.ids[9], settle(&other), T0).unwrap();
    // A staker's transfer, which it forks below on another replica.
    let sent = a
        .append(&net.ids[2], transfer(net.acct(4), 10), T0)
        .unwrap();
    let count = a.entry_count();
    let held = a.entries().count();
    assert_eq!(a.entries_retired(), 0);
    finalize(&net, &mut a, 1, 0);
    // Final entries left memory, but not those of provider 7's contract.
    assert!(a.entries_retired() >= 3, "{} retired", a.entries_retired());
    assert_eq!(a.entry_count(), count + 1, "the checkpoint entry counts");
    assert!(a.entries().count() < held);
    let listed: Vec<_> = a.entries().map(|e| e.hash).collect();
    assert!(!listed.contains(&sent.hash) && !listed.contains(&paid_other.hash));
    let settled_by = |l: &mut crdt_ledger::Ledger, c: &protocol::Contract| {
        l.finalized_state().settled.get(&c.body_hash()).copied()
    };
    let mine_paid = settled_by(&mut a, &mine).unwrap();
    assert!(
        listed.contains(&mine_paid),
        "a settlement of a kept account stays held"
    );
    // Read back from the document, whole.
    let e = a.entry(&sent.hash).expect("a retired entry reads back");
    assert_eq!(e.hash, sent.hash);
    assert_eq!(e.data.body, transfer(net.acct(4), 10));
    assert_eq!(e.entry.hash(), sent.hash);
    assert_eq!(
        a.settlement(&other.body_hash()).map(|(c, _)| c.contract),
        Some(other.body_hash())
    );
    // A fork of the retired transfer, arriving later, is still seen: handed
    // over directly (kept as evidence only), or by sync.
    let mut c = net.ledger(3);
    let fork = c
        .append(&net.ids[2], transfer(net.acct(5), 10), T0)
        .unwrap();
    let forked = c.entry(&fork.hash).unwrap().entry.clone();
    let mut b = net.ledger(4);
    sync(&mut a, &mut b);
    finalize(&net, &mut b, 2, 0);
    assert!(b.entries_retired() > a.entries_retired());
    assert!(!b.receive_entry(forked).unwrap());
    assert!(
        b.slash_proofs()
            .iter()
            .any(|p| matches!(p, SlashProof::Fork { .. })),
        "a fork handed over directly is evidence"
    );
    sync(&mut a, &mut c);
    let proofs = a.slash_proofs();
    assert!(
        proofs
            .iter()
            .any(|p| matches!(p, SlashProof::Fork { a: x, b: y }
                if x.hash() == sent.hash || y.hash() == sent.hash)),
        "{proofs:?}"
    );
    // Only the branch that is not final is reported invalid.
    let invalid: Vec<_> = a.invalid().into_iter().map(|i| i.id.hash).collect();
    assert!(!invalid.contains(&sent.hash));
    assert!(
        a.invalid()
            .iter()
            .any(|i| i.reason == InvalidReason::ForkedBranch)
    );
    conserved(&mut a);
    // A replica reopened from the same store agrees on the state.
    let root = a.finalized_state().root();
    let (mut again, _) =
        crdt_ledger::Ledger::open(net.genesis.clone(), &[9], a.store().clone()).unwrap();
    assert_eq!(again.finalized_state().root(), root);
}
