//! A job's whole life through node cores, each with its own ledger replica:
//! the paths a job can take, and that every one of them ends.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use common::{Net, PROV, REQ, ROLES, Role, TOKENS, state, told};
use node_core::{JobEnd, JobState};
use protocol::{DurationMs, Hash32, Message, Timestamp};

fn run_to_end(net: &mut Net, job: Hash32, secs: u64) -> JobState {
    let until = net.now.plus(DurationMs::secs(secs));
    let done = net.run(until, |n| {
        let c = &n.nodes[REQ];
        c.job(&job).unwrap().done(c.requester())
    });
    let s = state(net, &job);
    assert!(done, "the job did not end in {secs} s: {s:?}");
    s
}

/// Submit the tests' usual job (10 CU at up to 1,000 µ-tokens per CU).
fn submit_one(net: &mut Net) -> Hash32 {
    let spec = net.job_spec(REQ, 10, 1_000);
    net.submit(REQ, spec)
}

/// Let offers spread and a checkpoint or two finalize the oracles' stakes.
fn warm_up(net: &mut Net) {
    let t = net.now.plus(DurationMs::secs(2));
    net.run(t, |_| false);
}

/// The usual network on `seed`, warmed up, with the usual job run to its
/// good end.
fn one_job_settled_ok(seed: u64) -> (Net, Hash32) {
    let mut net = Net::new(&ROLES, TOKENS, seed);
    warm_up(&mut net);
    let job = submit_one(&mut net);
    assert_eq!(run_to_end(&mut net, job, 120), JobState::Ended(JobEnd::Ok));
    (net, job)
}

#[test]
fn a_proposed_job_settles_ok_and_every_replica_agrees() {
    let (mut net, job) = one_job_settled_ok(1);
    let j = net.nodes[REQ].job(&job).unwrap();
    let paid = j.settled.as_ref().unwrap().payout.provider;
    assert!(paid.0 > 0, "the provider was paid nothing");
    // Let sync and a checkpoint spread the settlement; every replica then holds
    // the same balances.
    let t = net.now.plus(DurationMs::secs(12));
    net.run(t, |_| false);
    let b0 = net.balances(0);
    for i in 1..ROLES.len() {
        assert_eq!(net.balances(i), b0, "replica {i} disagrees");
    }
    // The proposal path: the requester proposed directly, nobody posted a bid.
    assert!(!net.log.iter().any(|(_, _, _, k)| *k == "job"));
}

/// Once a job's settlement is final, nothing of it stays in an engine or a
/// key store: the requester's engine drops the deal (the job keeps its
/// settlement), and the provider and the committee forget the job key. A node
/// that runs for months held every one before.
#[test]
fn a_settled_job_leaves_no_deal_and_no_key_behind() {
    let (mut net, job) = one_job_settled_ok(3);
    assert_eq!(net.nodes[REQ].requester().deals().count(), 0);
    assert!(net.nodes[PROV].grants_held() > 0 || net.nodes[0].grants_held() > 0);
    let until = net.now.plus(DurationMs::secs(300));
    let forgot = net.run(until, |n| n.nodes.iter().all(|c| c.grants_held() == 0));
    let held: Vec<usize> = net.nodes.iter().map(|c| c.grants_held()).collect();
    assert!(forgot, "keys still held: {held:?}");
    assert!(net.nodes[REQ].job(&job).unwrap().settled.is_some());
    // The provider keeps the receipt for a requester that comes back while
    // the result is kept, and drops it once the result is gone.
    assert_eq!(net.nodes[PROV].receipts_kept(), 1);
    let deadline = net.nodes[REQ]
        .job(&job)
        .unwrap()
        .terms
        .as_ref()
        .unwrap()
        .deadline;
    let keep = net.nodes[PROV].timing().result_keep;
    let gone = deadline.plus(keep).plus(DurationMs::secs(30));
    let dropped = net.run(gone, |n| n.nodes[PROV].receipts_kept() == 0);
    assert!(dropped, "the receipt outlived its result");
}

#[test]
fn an_open_bid_is_answered_and_settles() {
    let mut net = Net::new(&ROLES, TOKENS, 2);
    // The requester hears no offers: its job fits nothing it knows, so it posts
    // a bid, which the provider answers with a proposal.
    net.filter = Some(Box::new(|_, to, m| {
        !(to == REQ && matches!(m, Message::Offer(_)))
    }));
    warm_up(&mut net);
    let job = submit_one(&mut net);
    assert_eq!(run_to_end(&mut net, job, 120), JobState::Ended(JobEnd::Ok));
    let sent = |from: usize, to: usize, kind: &str| {
        net.log
            .iter()
            .any(|(f, t, _, k)| *f == from && *t == to && *k == kind)
    };
    assert!(sent(REQ, PROV, "job"), "the requester posted no bid");
    assert!(
        sent(PROV, REQ, "proposal"),
        "the provider did not answer it"
    );
    assert!(
        sent(REQ, PROV, "proposal-answer"),
        "the requester did not accept"
    );
    assert!(
        sent(PROV, REQ, "contract"),
        "the provider sent no contract back"
    );
}

#[test]
fn gossip_and_direct_delivery_take_one_path() {
    let outcome = |as_direct: bool| {
        let mut net = Net::new(&ROLES, TOKENS, 3);
        net.gossip_as_direct = as_direct;
        warm_up(&mut net);
        let job = submit_one(&mut net);
        let s = run_to_end(&mut net, job, 120);
        let t = net.now.plus(DurationMs::secs(12));
        net.run(t, |_| false);
        (s, net.balances(REQ), net.nodes[REQ].ledger().state().root())
    };
    assert_eq!(outcome(false), outcome(true));
}

#[test]
fn a_wrong_result_ends_failed_and_refunded() {
    let roles = [
        Role::Oracle,
        Role::Oracle,
        Role::Oracle,
        Role::Provider { cheat: true },
        Role::Requester,
    ];
    let mut net = Net::new(&roles, TOKENS, 4);
    warm_up(&mut net);
    let job = submit_one(&mut net);
    let s = run_to_end(&mut net, job, 120);
    assert_eq!(s, JobState::Ended(JobEnd::WrongResult));
    let j = net.nodes[REQ].job(&job).unwrap();
    let settled = j.settled.as_ref().unwrap();
    assert_eq!(settled.payout.provider.0, 0, "a wrong result was paid");
    assert_eq!(state(&net, &job).name(), "settled");
}

#[test]
fn a_job_the_requester_cannot_pay_ends_refused_and_frees_the_provider() {
    // 100 µ-tokens cannot cover an escrow of 10 CU at the provider's 20
    // µ-tokens/CU.
    let mut net = Net::new(&ROLES, 100, 5);
    warm_up(&mut net);
    let job = submit_one(&mut net);
    let s = run_to_end(&mut net, job, 30);
    match s {
        JobState::Ended(JobEnd::Refused(why)) => {
            assert!(why.contains("escrow"), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The provider accepted the contract, never saw its escrow, and gives it up
    // by the deadline with a signed failure: no slot stays taken.
    let deadline: Timestamp = net.nodes[REQ].job(&job).unwrap().spec.deadline;
    net.run(deadline.plus(DurationMs::secs(2)), |_| false);
    let p = net.nodes[PROV].provider().unwrap();
    assert_eq!(p.running(), 0, "a slot is still held");
}

#[test]
fn a_contract_whose_gossip_is_lost_is_watched_from_the_ledger() {
    let mut net = Net::new(&ROLES, TOKENS, 6);
    // No contract gossip reaches the committee (a partition, say): members
    // learn of it from the escrow lock that ledger sync brings.
    net.filter = Some(Box::new(|_, to, m| {
        !(to < 3 && matches!(m, Message::Contract(_)))
    }));
    warm_up(&mut net);
    let job = submit_one(&mut net);
    assert_eq!(run_to_end(&mut net, job, 120), JobState::Ended(JobEnd::Ok));
    assert!(!(0..3).any(|o| net.sent(REQ, o, "contract")));
}

#[test]
fn the_state_is_saved_when_it_changes_and_only_then() {
    let mut net = Net::new(&ROLES, TOKENS, 7);
    warm_up(&mut net);
    // Offers, ticks, sync and checkpoints change nothing a restart needs.
    let idle = net.saves[REQ];
    let t = net.now.plus(DurationMs::secs(20));
    net.run(t, |_| false);
    assert_eq!(net.saves[REQ], idle, "an idle requester rewrote its state");
    // A job is saved as it moves.
    let job = submit_one(&mut net);
    assert_eq!(run_to_end(&mut net, job, 120), JobState::Ended(JobEnd::Ok));
    assert!(net.saves[REQ] > idle + 3, "{} saves", net.saves[REQ] - idle);
}

#[test]
fn receipts_and_keys_lost_on_the_way_to_the_committee_are_handed_again() {
    let mut net = Net::new(&ROLES, TOKENS, 8);
    // Each member loses the first two receipts (the gossip and the direct
    // copy) and the first key grant: only the provider's and the requester's
    // next-epoch resends can let it judge the job delivered and correct.
    let lost = std::cell::RefCell::new(std::collections::HashMap::new());
    net.filter = Some(Box::new(move |_, to, m| {
        let limit = match m {
            Message::Receipt(_) => 2,
            Message::KeyGrant(_) => 1,
            _ => return true,
        };
        if to >= 3 {
            return true;
        }
        let mut lost = lost.borrow_mut();
        let n: &mut u32 = lost.entry((to, m.kind())).or_default();
        *n += 1;
        *n > limit
    }));
    warm_up(&mut net);
    let job = submit_one(&mut net);
    assert_eq!(run_to_end(&mut net, job, 120), JobState::Ended(JobEnd::Ok));
    for o in 0..3 {
        let got = |kind: &str| {
            net.log
                .iter()
                .filter(|(_, t, _, k)| *t == o && *k == kind)
                .count()
        };
        assert!(got("receipt") >= 1, "member {o} never got the receipt");
        assert!(got("key-grant") >= 1, "member {o} never got the key");
    }
}

/// Commit, then challenge: a member's sample comes from its own signature
/// over the receipt. It is the same each time (the member cannot grind it),
/// another member's differs (each checks its own sample), and any change to
/// the receipt gives another one (the provider commits before it exists).
#[test]
fn each_member_draws_its_own_challenge_from_the_receipt() {
    use node_core::oracle::challenge_seed;
    use protocol::{BlobRef, ComputeUnits, Identity, NetworkId, Receipt, Timings};
    let t = Timestamp(1_000);
    let receipt = Receipt {
        contract: Hash32([1; 32]),
        provider: Identity::from_seed(9).account(),
        result: BlobRef {
            hash: Hash32([2; 32]),
            size: 10,
        },
        units_used: ComputeUnits::from_milli(5_000),
        timings: Timings {
            accepted_at: t,
            inputs_ready_at: t,
            started_at: t,
            finished_at: t,
        },
        commitment: Hash32([3; 32]),
        checkpoint_every: 20,
        checkpoints: 11,
    };
    let net = NetworkId::named("challenge");
    let members: Vec<Identity> = (1..=5).map(Identity::from_seed).collect();
    let seeds: Vec<u64> = members
        .iter()
        .map(|m| challenge_seed(m, &net, &receipt))
        .collect();
    for (m, s) in members.iter().zip(&seeds) {
        assert_eq!(challenge_seed(m, &net, &receipt), *s);
    }
    let mut distinct = seeds.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), seeds.len(), "two members share a sample");
    let mut other = receipt.clone();
    other.commitment = Hash32([4; 32]);
    assert_ne!(challenge_seed(&members[0], &net, &other), seeds[0]);
    let elsewhere = NetworkId::named("another");
    assert_ne!(challenge_seed(&members[0], &elsewhere, &receipt), seeds[0]);
    // Another member checks a revealed challenge against its own copy of the
    // receipt: it holds only for that member, that receipt and that network.
    use node_core::oracle::{challenge, verify_challenge};
    let sig = challenge(&members[0], &net, &receipt);
    let (m0, m1) = (members[0].account(), members[1].account());
    assert_eq!(verify_challenge(&net, &m0, &receipt, &sig), Some(seeds[0]));
    assert_eq!(verify_challenge(&net, &m1, &receipt, &sig), None);
    assert_eq!(verify_challenge(&net, &m0, &other, &sig), None);
    assert_eq!(verify_challenge(&elsewhere, &m0, &receipt, &sig), None);
}

/// A provider fakes only the part of its work that one member's sample lands
/// on. Alone, that member would be outvoted (the quorum is two of three); as
/// each member reveals its challenge to the others and checks every sample it
/// holds, all three find the result wrong.
#[test]
fn one_members_sample_on_a_faked_part_fails_the_result_for_the_whole_committee() {
    let mut net = Net::new(&ROLES, TOKENS, 9);
    let (member, network) = (net.ids[0].clone(), net.genesis.network());
    net.faked = Some(Box::new(move |receipt, seeds| {
        let seed = node_core::oracle::challenge_seed(&member, &network, receipt);
        seeds.contains(&seed)
    }));
    warm_up(&mut net);
    let job = submit_one(&mut net);
    assert_eq!(
        run_to_end(&mut net, job, 120),
        JobState::Ended(JobEnd::WrongResult)
    );
    // Every member checked the three members' samples, not its own alone.
    let members: Vec<usize> = net.checks.iter().map(|(m, _)| *m).collect();
    assert_eq!(members.len(), 3, "{:?}", net.checks);
    for (m, seeds) in &net.checks {
        assert_eq!(
            seeds.len(),
            3 * node_core::oracle::SAMPLES_PER_MEMBER,
            "member {m} checked {seeds:?}"
        );
    }
    assert!(net.sent(1, 0, "challenge") && net.sent(0, 2, "challenge"));
}

/// Gossip carries contracts signed by any two keys. A flooder signs ten
/// thousand between accounts it made up and gossips them to the committee:
/// members watch what the ledger escrows, never a gossiped contract, so the
/// flood costs the flooder its signatures and blinds no one; a real job
/// settles as it would have.
#[test]
fn a_flood_of_fake_contracts_blinds_no_member_and_delays_no_settlement() {
    use protocol::{ContractTerms, Identity, MultiSigned, PricePerCu, SlaTerms};
    let mut net = Net::new(&ROLES, TOKENS, 10);
    warm_up(&mut net);
    let (a, b) = (Identity::from_seed(77_001), Identity::from_seed(77_002));
    let network = net.genesis.network();
    let base = net.job_spec(REQ, 10, 1_000);
    for n in 0..10_000u64 {
        let spec = protocol::JobSpec {
            requester: a.account(),
            nonce: n,
            ..base.clone()
        };
        let terms = ContractTerms {
            network,
            job: Hash32::of(&n.to_le_bytes()),
            spec,
            requester: a.account(),
            provider: b.account(),
            price: PricePerCu(1),
            max_units: base.estimated_units,
            sla: SlaTerms {
                deadline_slack: DurationMs::secs(10),
                availability: protocol::Bps(9_900),
                penalty: protocol::Bps(1_000),
                exact: true,
            },
            deadline: base.deadline,
            created_at: net.now,
        };
        let mut c = MultiSigned::new(&terms).unwrap();
        c.add_signature(&a, &network);
        c.add_signature(&b, &network);
        for member in 0..3 {
            net.handle(
                member,
                node_core::Input::Message {
                    from: None,
                    via: node_core::Via::Gossip,
                    msg: Message::Contract(c.clone()),
                },
            );
        }
    }
    for member in 0..3 {
        let o = net.nodes[member].oracle().unwrap();
        assert_eq!(
            o.watching(),
            0,
            "member {member} watches a gossiped contract"
        );
    }
    let spec = net.job_spec(REQ, 10, 1_000);
    let started = net.now;
    let job = net.submit(REQ, spec);
    assert_eq!(run_to_end(&mut net, job, 120), JobState::Ended(JobEnd::Ok));
    // As long as an unflooded job takes here (a few epochs of 5 s).
    let took = net.now.since(started);
    assert!(took < DurationMs::secs(30), "settled after {took:?}");
}

/// A provider whose run fails for good withdraws the contract, signed: the
/// committee judges it not delivered at once and the escrow comes back then,
/// not after the deadline (here 60 s) and the grace.
#[test]
fn a_run_that_fails_for_good_is_withdrawn_and_refunded_before_its_deadline() {
    let mut net = Net::new(&ROLES, TOKENS, 11);
    net.runs_fail = true;
    warm_up(&mut net);
    let spec = net.job_spec(REQ, 10, 1_000);
    let deadline = spec.deadline;
    let job = net.submit(REQ, spec);
    assert_eq!(
        run_to_end(&mut net, job, 120),
        JobState::Ended(JobEnd::NotDelivered)
    );
    assert!(net.now < deadline, "refunded only at {:?}", net.now);
    assert!((0..3).all(|o| net.sent(PROV, o, "withdrawal")));
    assert_eq!(told(&net, &job, "gave the contract up"), Ok(()));
}

/// Members write what their probes found into SLA records, once an epoch:
/// the provider's reputation counts the probes it answered.
#[test]
fn members_write_their_probes_into_sla_records() {
    let mut net = Net::new(&ROLES, TOKENS, 12);
    net.run_time = DurationMs::secs(20);
    warm_up(&mut net);
    let job = submit_one(&mut net);
    assert_eq!(run_to_end(&mut net, job, 120), JobState::Ended(JobEnd::Ok));
    let t = net.now.plus(DurationMs::secs(12));
    net.run(t, |_| false);
    let provider = net.ids[PROV].account();
    let rep = net.nodes[REQ].ledger().state().reputation[&provider];
    assert!(rep.probes > 0, "no SLA record: {rep:?}");
    assert_eq!(rep.answered, rep.probes, "{rep:?}");
    assert_eq!(rep.jobs_ok, 1);
}

/// A pending escrow can vanish (a requester that forks its chain keeps only
/// one branch), so a provider starts on one only when its requester's final
/// bond backs it. A requester too poor to bond: a job whose deadline leaves
/// no room for the wait is declined (rather than the provider being judged
/// late for a wait the protocol set), and its next job runs once its escrow
/// is final.
#[test]
fn an_unbacked_escrow_is_run_only_once_final() {
    use protocol::Amount;
    // 15 tokens: less than four times the 5-token bond, so it never bonds.
    let mut net = Net::new_bonded(&ROLES, 15_000_000, 1, Amount::ZERO);
    warm_up(&mut net);
    // Two 5 s epochs and a 3 s round of wait make an 8 s deadline infeasible.
    let mut tight = net.job_spec(REQ, 10, 1_000);
    tight.deadline = net.now.plus(DurationMs::secs(8));
    tight.expires_at = tight.deadline;
    let job = net.submit(REQ, tight);
    assert_eq!(
        run_to_end(&mut net, job, 60),
        JobState::Ended(JobEnd::Expired)
    );
    assert!(net.runs.is_empty());
    let why = "a provider starts only once the escrow is final";
    assert_eq!(
        told(&net, &job, why),
        Ok(()),
        "the requester was not told why"
    );
    let job = submit_one(&mut net);
    let until = net.now.plus(DurationMs::secs(60));
    assert!(net.run(until, |n| !n.runs.is_empty()), "the job never ran");
    let (p, contract) = net.runs[0];
    assert_eq!(p, PROV);
    assert!(
        net.nodes[PROV]
            .ledger()
            .finalized_state()
            .escrows
            .contains_key(&contract),
        "the provider ran on an escrow that was not final, with no bond behind it"
    );
    assert_eq!(run_to_end(&mut net, job, 120), JobState::Ended(JobEnd::Ok));
    let r = net.ids[REQ].account();
    assert!(!net.nodes[PROV].ledger().state().bonds.contains_key(&r));
}

/// A requester that can afford it bonds at its first job; once that bond is
/// final, a provider runs its next job on a pending escrow.
#[test]
fn a_requesters_bond_lets_its_next_job_start_before_its_escrow_is_final() {
    use protocol::Amount;
    let mut net = Net::new_bonded(&ROLES, TOKENS, 1, Amount::ZERO);
    warm_up(&mut net);
    let job = submit_one(&mut net);
    assert_eq!(run_to_end(&mut net, job, 120), JobState::Ended(JobEnd::Ok));
    let until = net.now.plus(DurationMs::secs(12));
    net.run(until, |_| false);
    let r = net.ids[REQ].account();
    assert!(
        net.nodes[PROV]
            .ledger()
            .finalized_state()
            .bonds
            .contains_key(&r),
        "the requester did not bond"
    );
    let job = submit_one(&mut net);
    let until = net.now.plus(DurationMs::secs(60));
    assert!(
        net.run(until, |n| n.runs.len() > 1),
        "the second job never ran"
    );
    let (_, contract) = net.runs[1];
    let prov = net.nodes[PROV].ledger();
    assert!(prov.state().escrows.contains_key(&contract));
    assert!(
        !prov.finalized_state().escrows.contains_key(&contract),
        "a backed escrow should not wait for its checkpoint"
    );
    assert_eq!(run_to_end(&mut net, job, 120), JobState::Ended(JobEnd::Ok));
    assert!(
        told(
            &net,
            &job,
            "a provider starts only once the escrow is final"
        )
        .is_err()
    );
}

/// A committee that never reaches a quorum (here every verdict is lost)
/// leaves the escrow open past its deadline. Once the genesis's
/// `expire_after` has passed, the requester expires it: the whole escrow
/// comes back, the job ends refunded with the reason, and every replica
/// agrees.
#[test]
fn an_escrow_no_committee_settles_expires_and_the_job_ends_refunded() {
    let mut net = Net::new_with(&ROLES, TOKENS, 1, common::REQUESTER_BOND, |p| {
        p.expire_after = DurationMs::secs(60)
    });
    net.filter = Some(Box::new(|_, _, m| !matches!(m, Message::Verdict(_))));
    warm_up(&mut net);
    let before = net.nodes[REQ]
        .ledger()
        .state()
        .balance(&net.ids[REQ].account());
    let job = submit_one(&mut net);
    assert_eq!(
        run_to_end(&mut net, job, 900),
        JobState::Ended(JobEnd::NotDelivered)
    );
    assert_eq!(told(&net, &job, "no committee settled it"), Ok(()));
    let j = net.nodes[REQ].job(&job).unwrap();
    let contract = j.contract.unwrap();
    assert_eq!(j.settled.as_ref().unwrap().verdicts, 0);
    // Final on every replica, and the requester has its escrow back.
    let until = net.now.plus(DurationMs::secs(30));
    net.run(until, |n| {
        n.nodes
            .iter_mut()
            .all(|c| !c.ledger().finalized_state().escrows.contains_key(&contract))
    });
    for c in &mut net.nodes {
        assert!(!c.ledger().finalized_state().escrows.contains_key(&contract));
    }
    let after = net.nodes[REQ]
        .ledger()
        .finalized_state()
        .balance(&net.ids[REQ].account());
    assert_eq!(after, before, "the whole escrow came back");
}

/// In a market of two shards a requester books only the offers of its own
/// shard and its job goes to that shard's provider; the committee still
/// learns where the other shard's provider serves its results.
#[test]
fn a_market_of_shards_trades_within_each() {
    // The usual network, and a second provider.
    let roles: Vec<Role> = ROLES
        .into_iter()
        .chain([Role::Provider { cheat: false }])
        .collect();
    let (same, req, other) = (PROV, REQ, ROLES.len());
    let shard = |seed: u64, i: u64| {
        let a = protocol::Identity::from_seed(seed * 1000 + i).account();
        protocol::market::market_shard(&a, 2)
    };
    let seed = (1..100)
        .find(|&s| shard(s, 3) == shard(s, 4) && shard(s, 5) != shard(s, 4))
        .unwrap();
    let mut net = Net::new_with(&roles, TOKENS, seed, common::REQUESTER_BOND, |p| {
        p.market_shards = 2
    });
    warm_up(&mut net);
    let booked: Vec<_> = net.nodes[req]
        .requester()
        .book()
        .iter()
        .map(|e| e.offer.provider)
        .collect();
    assert_eq!(booked, vec![net.ids[same].account()]);
    let far = net.ids[other].account();
    assert!(!net.nodes[0].contact_of(&far).is_empty());
    let spec = net.job_spec(req, 10, 1_000);
    let job = net.submit(req, spec);
    let until = net.now.plus(DurationMs::secs(120));
    assert!(net.run(until, |n| {
        let c = &n.nodes[req];
        c.job(&job).unwrap().done(c.requester())
    }));
    assert_eq!(state(&net, &job), JobState::Ended(JobEnd::Ok));
    let terms = net.nodes[req].job(&job).unwrap().terms.clone().unwrap();
    assert_eq!(terms.provider, net.ids[same].account());
}
