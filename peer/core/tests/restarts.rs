//! Every escrow ends, whatever crashes: peers killed at the worst moments and
//! restarted from their ledger's store and their last persisted state.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use common::{Net, PROV, REQ, ROLES, TOKENS, state};
use node_core::{JobEnd, JobState};
use protocol::{DurationMs, Hash32};

fn run_secs(net: &mut Net, secs: u64) {
    let t = net.now.plus(DurationMs::secs(secs));
    net.run(t, |_| false);
}

fn run_until(net: &mut Net, secs: u64, what: &str, mut f: impl FnMut(&mut Net) -> bool) {
    let t = net.now.plus(DurationMs::secs(secs));
    assert!(net.run(t, |n| f(n)), "{what} did not happen in {secs} s");
}

/// Run until the job is done; its state.
fn finish(net: &mut Net, job: Hash32, secs: u64) -> JobState {
    run_until(net, secs, "the job's end", |n| {
        let c = &n.nodes[REQ];
        c.job(&job).unwrap().done(c.requester())
    });
    state(net, &job)
}

/// No escrow is left open in any live replica.
fn no_escrow_open(net: &mut Net) {
    for i in 0..net.nodes.len() {
        if !net.down[i] {
            let open = net.nodes[i].ledger().state().escrows.len();
            assert_eq!(open, 0, "replica {i} holds {open} open escrows");
        }
    }
}

fn submit(net: &mut Net) -> Hash32 {
    run_secs(net, 2);
    let spec = net.job_spec(REQ, 10, 1_000);
    net.submit(REQ, spec)
}

#[test]
fn a_provider_killed_mid_job_resumes_it_after_a_restart() {
    let mut net = Net::new(&ROLES, TOKENS, 11);
    net.run_time = DurationMs::secs(3);
    let job = submit(&mut net);
    run_until(&mut net, 30, "the provider's run", |n| !n.runs.is_empty());
    provider_down_for_two_seconds(&mut net, job);
    assert_eq!(net.runs.len(), 2, "the job ran again after the restart");
}

/// Kill the provider, restart it 2 s later, and see the job settle `ok` with
/// no escrow left open.
fn provider_down_for_two_seconds(net: &mut Net, job: Hash32) {
    net.kill(PROV);
    run_secs(net, 2);
    net.restart(PROV);
    assert_eq!(finish(net, job, 120), JobState::Ended(JobEnd::Ok));
    run_secs(net, 6);
    no_escrow_open(net);
}

#[test]
fn a_provider_down_when_its_key_was_sent_gets_it_again() {
    let mut net = Net::new(&ROLES, TOKENS, 18);
    let job = submit(&mut net);
    // Accepted by the engine, not yet escrowed nor keyed.
    run_until(&mut net, 30, "the provider's acceptance", |n| {
        n.nodes[PROV].provider().unwrap().running() == 1
    });
    provider_down_for_two_seconds(&mut net, job);
}

#[test]
fn a_requester_killed_after_its_escrow_finds_its_job_settled_after_a_restart() {
    let mut net = Net::new(&ROLES, TOKENS, 12);
    let job = submit(&mut net);
    run_until(&mut net, 30, "the escrow lock", |n| {
        n.nodes[REQ].job(&job).unwrap().contract.is_some()
    });
    net.kill(REQ);
    // Down while the provider delivers and the committee settles.
    run_secs(&mut net, 10);
    net.restart(REQ);
    let j = net.nodes[REQ]
        .job(&job)
        .expect("the job survived the restart");
    assert!(j.contract.is_some());
    assert_eq!(finish(&mut net, job, 60), JobState::Ended(JobEnd::Ok));
    let j = net.nodes[REQ].job(&job).unwrap();
    assert!(
        j.result.is_some(),
        "the result was fetched after the restart"
    );
    run_secs(&mut net, 6);
    no_escrow_open(&mut net);
}

/// Two of the three members crash once the receipt was sent to them: with it
/// in hand (`arrived`), or with it still in flight and lost.
fn two_of_three_oracles_killed_after_a_receipt(seed: u64, arrived: bool) {
    let mut net = Net::new(&ROLES, TOKENS, seed);
    let job = submit(&mut net);
    run_until(&mut net, 30, "the receipt", |n| {
        (0..2).all(|o| n.sent(PROV, o, "receipt"))
    });
    if arrived {
        let t = net.now.plus(common::HOP);
        net.run(t, |_| false);
    }
    // Before their check and verdict.
    net.kill(0);
    net.kill(1);
    run_secs(&mut net, 3);
    net.restart(0);
    net.restart(1);
    assert_eq!(finish(&mut net, job, 120), JobState::Ended(JobEnd::Ok));
    run_secs(&mut net, 6);
    no_escrow_open(&mut net);
}

#[test]
fn two_of_three_oracles_killed_after_a_receipt_still_settle_it() {
    two_of_three_oracles_killed_after_a_receipt(13, true);
}

#[test]
fn two_of_three_oracles_killed_with_the_receipt_in_flight_still_settle_it() {
    two_of_three_oracles_killed_after_a_receipt(19, false);
}

#[test]
fn a_job_longer_than_sixteen_epochs_settles() {
    // 5 s epochs; the provider works 100 s (20 epochs) of a 150 s deadline.
    let mut net = Net::new(&ROLES, TOKENS, 14);
    net.run_time = DurationMs::secs(100);
    run_secs(&mut net, 2);
    let mut spec = net.job_spec(REQ, 10, 1_000);
    spec.deadline = net.now.plus(DurationMs::secs(150));
    spec.expires_at = spec.deadline;
    let job = net.submit(REQ, spec);
    assert_eq!(finish(&mut net, job, 300), JobState::Ended(JobEnd::Ok));
    let certified = net.nodes[REQ]
        .job(&job)
        .unwrap()
        .settled
        .as_ref()
        .unwrap()
        .epoch;
    let epoch_now = net.nodes[REQ].ledger().finalized_epoch();
    assert!(
        epoch_now >= certified + 16,
        "certified by epoch {certified} at epoch {epoch_now}"
    );
    run_secs(&mut net, 6);
    no_escrow_open(&mut net);
}

#[test]
fn a_vanished_provider_is_refunded_more_than_sixteen_epochs_later() {
    let mut net = Net::new(&ROLES, TOKENS, 15);
    net.run_time = DurationMs::secs(10);
    run_secs(&mut net, 2);
    let mut spec = net.job_spec(REQ, 10, 1_000);
    spec.deadline = net.now.plus(DurationMs::secs(120));
    spec.expires_at = spec.deadline;
    let job = net.submit(REQ, spec);
    run_until(&mut net, 30, "the provider's run", |n| {
        n.nodes[PROV].provider().unwrap().running() == 1
    });
    net.kill(PROV); // for good
    assert_eq!(
        finish(&mut net, job, 300),
        JobState::Ended(JobEnd::NotDelivered)
    );
    run_secs(&mut net, 6);
    no_escrow_open(&mut net);
}

#[test]
fn a_refused_job_keeps_its_outcome_across_a_restart() {
    let mut net = Net::new(&ROLES, 100, 16);
    let job = submit(&mut net);
    let s = finish(&mut net, job, 30);
    assert!(matches!(s, JobState::Ended(JobEnd::Refused(_))), "{s:?}");
    net.kill(REQ);
    net.restart(REQ);
    assert_eq!(state(&net, &job), s);
}

#[test]
fn a_saved_state_that_fails_its_checksum_is_refused() {
    let mut net = Net::new(&ROLES, TOKENS, 17);
    let _job = submit(&mut net);
    run_secs(&mut net, 1);
    let mut bytes = net.saved[REQ]
        .clone()
        .expect("the requester saved its state");
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    let mut out = Vec::new();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
    let now = net.now;
    let err = net.nodes[PROV]
        .restore(now, &bytes, &mut rng, &mut out)
        .unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    // Someone else's (intact) state is refused too.
    let theirs = net.saved[REQ].clone().unwrap();
    let err = net.nodes[PROV]
        .restore(now, &theirs, &mut rng, &mut out)
        .unwrap_err();
    assert!(err.to_string().contains("belongs to account"), "{err}");
}

#[test]
fn a_provider_killed_before_the_contract_reached_it_takes_it_from_the_ledger() {
    let mut net = Net::new(&ROLES, TOKENS, 20);
    net.run_time = DurationMs::secs(2);
    // The requester's contract never reaches the provider (lost gossip, or
    // the provider was down): the escrow lock in the ledger carries it.
    net.filter = Some(Box::new(|_, to, m| {
        !(to == PROV && matches!(m, protocol::Message::Contract(_)))
    }));
    let job = submit(&mut net);
    assert_eq!(finish(&mut net, job, 120), JobState::Ended(JobEnd::Ok));
    run_secs(&mut net, 6);
    no_escrow_open(&mut net);
}
