//! Oracle engines driven together, with their verdicts passed between them.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::messages::{BlobRef, JobSpec, SlaTerms};
use crate::types::PricePerCu;

fn net() -> NetworkId {
    NetworkId::named("oracle-tests")
}

/// A one-CU contract signed by both parties, due at `deadline`.
fn contract(req: &Identity, prov: &Identity, now: Timestamp, deadline: Timestamp) -> Contract {
    let spec = JobSpec::inference(
        req.account(),
        BlobRef {
            hash: Hash32::of(b"dataset"),
            size: 1,
        },
        ComputeUnits::from_milli(1_000),
        PricePerCu(500),
        now,
        deadline,
        1,
    );
    let terms = ContractTerms {
        network: net(),
        job: Hash32::of(b"job"),
        spec,
        requester: req.account(),
        provider: prov.account(),
        price: PricePerCu(500),
        max_units: ComputeUnits::from_milli(1_000),
        sla: SlaTerms {
            deadline_slack: DurationMs(0),
            availability: Bps(0),
            penalty: Bps(0),
            exact: true,
        },
        deadline,
        created_at: now,
    };
    let mut c = Contract::new(&terms).expect("encodes");
    c.add_signature(req, &net());
    c.add_signature(prov, &net());
    c
}

fn epoch(epoch: u64, committee: &[Identity]) -> OracleInput {
    OracleInput::Epoch {
        epoch,
        committee: committee.iter().map(Identity::account).collect(),
        beacon: Hash32::of(&epoch.to_le_bytes()),
    }
}

/// A committee of `members` that checks nothing itself (verification share 0):
/// its configuration, accounts and fresh engines.
fn committee_of(
    members: &[Identity],
) -> (
    OracleConfig,
    Vec<AccountId>,
    Vec<OracleEngine<DeferredChecker>>,
) {
    let cfg = OracleConfig {
        verify_share: Bps(0),
        ..OracleConfig::default()
    };
    let engines = members
        .iter()
        .map(|m| OracleEngine::new(m.clone(), net(), cfg, DeferredChecker))
        .collect();
    (
        cfg,
        members.iter().map(Identity::account).collect(),
        engines,
    )
}

/// The provider's signed receipt for `c`: one CU, accepted at `start`,
/// finished at `at`.
fn receipt(prov: &Identity, c: &Contract, start: Timestamp, at: Timestamp) -> Signed<Receipt> {
    let receipt = Receipt {
        contract: c.body_hash(),
        provider: prov.account(),
        result: BlobRef {
            hash: Hash32::of(b"result"),
            size: 1,
        },
        units_used: ComputeUnits::from_milli(1_000),
        timings: crate::messages::Timings {
            accepted_at: start,
            inputs_ready_at: start,
            started_at: start,
            finished_at: at,
        },
        commitment: Hash32::default(),
        checkpoint_every: 0,
        checkpoints: 0,
    };
    Signed::sign(prov, &net(), &receipt).expect("signs")
}

/// Fire every member's timers at `due` (each publishes its verdict), hand each
/// verdict to the other members, and collect the settlements that come out.
fn exchange_verdicts(
    oracles: &mut [OracleEngine<DeferredChecker>],
    due: Timestamp,
    rng: &mut ChaCha8Rng,
) -> Vec<SettlementInstruction> {
    let mut published = Vec::new();
    let mut settles = Vec::new();
    for (i, o) in oracles.iter_mut().enumerate() {
        for x in o.handle_timeout(due, rng) {
            match x {
                OracleOutput::Publish(Message::Verdict(sv)) => published.push((i, sv)),
                OracleOutput::Settle(si) => settles.push(*si),
                _ => {}
            }
        }
    }
    assert_eq!(
        published.len(),
        oracles.len(),
        "every member gave its verdict"
    );
    for (from, sv) in &published {
        for (i, o) in oracles.iter_mut().enumerate() {
            if i == *from {
                continue;
            }
            for x in o.handle(due, OracleInput::Verdict(sv.clone()), rng) {
                if let OracleOutput::Settle(si) = x {
                    settles.push(*si);
                }
            }
        }
    }
    settles
}

/// A job due long after its contract: the committee rotates 25 times (more than
/// [`aggregate::EPOCHS_KEPT`]) before the deadline passes without a receipt. The
/// members that watched it still hold their epoch's committee, so their "not
/// delivered" verdicts reach a quorum and the requester is refunded.
#[test]
fn verdicts_count_many_epochs_after_the_contract() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (req, prov) = (Identity::from_seed(1), Identity::from_seed(2));
    let members: Vec<Identity> = (0..3).map(|i| Identity::from_seed(10 + i)).collect();
    let others: Vec<Identity> = (0..3).map(|i| Identity::from_seed(20 + i)).collect();
    let cfg = OracleConfig::default();
    let mut oracles: Vec<OracleEngine<DeferredChecker>> = members
        .iter()
        .map(|m| OracleEngine::new(m.clone(), net(), cfg, DeferredChecker))
        .collect();

    let start = Timestamp(1_000_000);
    let deadline = start.plus(DurationMs::secs(86_400));
    let c = contract(&req, &prov, start, deadline);
    let id = c.body_hash();
    for o in &mut oracles {
        o.handle(start, epoch(1, &members), &mut rng);
        o.handle(start, OracleInput::Contract(c.clone()), &mut rng);
        assert_eq!(o.watching(), 1);
    }
    // 25 epochs pass, every other one with a committee none of them is on.
    for e in 2..=26 {
        let committee = if e % 2 == 0 { &others } else { &members };
        let at = start.plus(DurationMs::secs(60 * e));
        for o in &mut oracles {
            o.handle(at, epoch(e, committee), &mut rng);
        }
    }

    // The deadline passes with no receipt: each member publishes its verdict.
    let due = deadline.plus(cfg.grace);
    let settles = exchange_verdicts(&mut oracles, due, &mut rng);

    assert_eq!(settles.len(), 3, "every member settles the contract");
    let committee: Vec<AccountId> = members.iter().map(Identity::account).collect();
    let terms = c.body_unverified().expect("decodes");
    for (si, o) in settles.iter().zip(&oracles) {
        assert_eq!(si.contract, id);
        assert_eq!(si.cert.epoch, 1);
        assert_eq!(*si, settles[0], "the same certificate everywhere");
        let (outcome, _) = si.cert.check(&net(), &committee).expect("valid cert");
        assert!(!outcome.delivered);
        assert_eq!(si.payout.provider.0, 0);
        assert_eq!(Some(si.payout.escrow), terms.escrow());
        assert_eq!(si.payout.total(), terms.escrow());
        assert_eq!(o.stats().unknown_epoch, 0);
        assert_eq!(o.watching(), 0);
    }
}

/// `by`'s verdict on the contract named `contract` for `epoch`: all good if
/// `delivered`, else not delivered.
fn verdict_on(contract: &[u8], by: &Identity, epoch: u64, delivered: bool) -> Signed<Verdict> {
    let v = Verdict {
        contract: Hash32::of(contract),
        epoch,
        oracle: by.account(),
        sla_ok: delivered,
        violations: 0,
        result_ok: delivered,
        units: ComputeUnits::default(),
        delivered,
    };
    Signed::sign(by, &net(), &v).expect("signs")
}

/// A verdict for an epoch whose committee nobody holds any more is refused, and
/// the refusal is counted.
#[test]
fn verdicts_for_a_forgotten_epoch_are_counted() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let members: Vec<Identity> = (0..3).map(|i| Identity::from_seed(30 + i)).collect();
    let mut o = OracleEngine::new(
        members[0].clone(),
        net(),
        OracleConfig::default(),
        DeferredChecker,
    );
    let now = Timestamp(1_000_000);
    for e in 1..=(aggregate::EPOCHS_KEPT + 2) {
        o.handle(now, epoch(e, &members), &mut rng);
    }
    let sv = verdict_on(b"unwatched", &members[1], 1, false);
    assert!(o.handle(now, OracleInput::Verdict(sv), &mut rng).is_empty());
    assert_eq!(o.stats().unknown_epoch, 1);
    assert_eq!(o.stats().ignored, 1);
}

/// An oracle off a committee drops that committee's verdicts on arrival: it
/// can never be in their quorum, and keeping them made every oracle's memory
/// grow with every contract of the network.
#[test]
fn verdicts_of_a_committee_we_are_not_on_are_dropped() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let members: Vec<Identity> = (0..3).map(|i| Identity::from_seed(40 + i)).collect();
    let outsider = Identity::from_seed(49);
    let mut o = OracleEngine::new(outsider, net(), OracleConfig::default(), DeferredChecker);
    let now = Timestamp(1_000_000);
    o.handle(now, epoch(1, &members), &mut rng);
    let sv = verdict_on(b"theirs", &members[1], 1, true);
    assert!(o.handle(now, OracleInput::Verdict(sv), &mut rng).is_empty());
    assert_eq!(o.stats().not_our_committee, 1);
    assert_eq!(o.stats().ignored, 1);
}

/// Two of three members restart after a receipt came, long after the contract's
/// epoch. Their fresh engines learn only later epochs (of another committee), are
/// handed back the contract, its epoch, committee and receipt, and judge it
/// again: the three verdicts settle it under the epoch-1 committee.
#[test]
fn resumed_watches_settle_under_their_epoch() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (req, prov) = (Identity::from_seed(5), Identity::from_seed(6));
    let members: Vec<Identity> = (0..3).map(|i| Identity::from_seed(40 + i)).collect();
    let others: Vec<Identity> = (0..3).map(|i| Identity::from_seed(50 + i)).collect();
    let (cfg, committee, mut oracles) = committee_of(&members);
    let fresh = |m: &Identity| OracleEngine::new(m.clone(), net(), cfg, DeferredChecker);

    let start = Timestamp(1_000_000);
    let c = contract(&req, &prov, start, start.plus(DurationMs::secs(3_600)));
    let id = c.body_hash();
    let at = start.plus(DurationMs::secs(60));
    let sr = receipt(&prov, &c, start, at);
    for o in &mut oracles {
        o.handle(start, epoch(1, &members), &mut rng);
        o.handle(start, OracleInput::Contract(c.clone()), &mut rng);
        o.handle(at, OracleInput::Receipt(sr.clone()), &mut rng);
        assert_eq!(o.watch_epoch(&id), Some(1));
    }

    // Members 1 and 2 restart in an epoch whose committee they are not on, too
    // late for epoch 1's committee to be among the recent ones.
    let later = 1 + aggregate::EPOCHS_KEPT + 3;
    let restart = at.plus(DurationMs::secs(5));
    for (i, m) in members.iter().enumerate().skip(1) {
        let mut o = fresh(m);
        o.handle(restart, epoch(later, &others), &mut rng);
        let resume = OracleInput::Watch {
            contract: c.clone(),
            epoch: 1,
            committee: committee.clone(),
            receipt: Some(Box::new((sr.clone(), at))),
            verdict: None,
        };
        o.handle(restart, resume.clone(), &mut rng);
        assert_eq!(o.watch_epoch(&id), Some(1));
        assert_eq!(o.stats().resumed, 1);
        // The current epoch is untouched; a second copy is ignored.
        assert_eq!(o.aggregator.epoch(), later);
        assert_eq!(
            o.aggregator.committee(),
            &others.iter().map(Identity::account).collect::<Vec<_>>()[..]
        );
        assert!(o.handle(restart, resume, &mut rng).is_empty());
        assert_eq!(o.watching(), 1);
        oracles[i] = o;
    }
    // Epoch 1's committee outlives the next rotation: a watch pins it.
    for o in &mut oracles {
        o.handle(restart, epoch(later + 1, &others), &mut rng);
    }

    let due = restart.plus(cfg.dispute_window);
    let settles = exchange_verdicts(&mut oracles, due, &mut rng);

    assert_eq!(settles.len(), 3, "every member settles the contract");
    for (si, o) in settles.iter().zip(&oracles) {
        assert_eq!(si.contract, id);
        assert_eq!(si.cert.epoch, 1);
        assert_eq!(*si, settles[0], "the same certificate everywhere");
        let (outcome, _) = si.cert.check(&net(), &committee).expect("valid cert");
        assert!(outcome.delivered && outcome.sla_ok && outcome.result_ok);
        assert_eq!(si.cert.verdicts.len(), 3);
        assert_eq!(o.stats().unknown_epoch, 0);
        assert_eq!(o.watch_epoch(&id), None);
    }
}

/// A member may only resume a contract of a committee it is on.
#[test]
fn resume_by_a_non_member_is_ignored() {
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let (req, prov) = (Identity::from_seed(7), Identity::from_seed(8));
    let members: Vec<Identity> = (0..3).map(|i| Identity::from_seed(60 + i)).collect();
    let outsider = Identity::from_seed(63);
    let now = Timestamp(1_000_000);
    let c = contract(&req, &prov, now, now.plus(DurationMs::secs(3_600)));
    let mut o = OracleEngine::new(outsider, net(), OracleConfig::default(), DeferredChecker);
    o.handle(now, epoch(4, &members), &mut rng);
    let out = o.handle(
        now,
        OracleInput::Watch {
            contract: c.clone(),
            epoch: 1,
            committee: members.iter().map(Identity::account).collect(),
            receipt: None,
            verdict: None,
        },
        &mut rng,
    );
    assert!(out.is_empty());
    assert_eq!(o.watching(), 0);
    assert_eq!(o.watch_epoch(&c.body_hash()), None);
    assert_eq!((o.stats().ignored, o.stats().resumed), (1, 0));
    assert!(o.aggregator.committee_at(1).is_none(), "nothing learnt");
}

/// A member that had signed its verdict before a restart counts and publishes
/// that verdict again and signs no other: a second, different verdict (its
/// probe counts are gone) would be an equivocation.
#[test]
fn a_resumed_member_publishes_its_old_verdict_and_signs_no_other() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (req, prov) = (Identity::from_seed(1), Identity::from_seed(2));
    let members: Vec<Identity> = (10..13).map(Identity::from_seed).collect();
    let (cfg, committee, mut oracles) = committee_of(&members);
    let fresh = |m: &Identity| OracleEngine::new(m.clone(), net(), cfg, DeferredChecker);
    let start = Timestamp(1_000_000);
    let c = contract(&req, &prov, start, start.plus(DurationMs::secs(3_600)));
    let at = start.plus(DurationMs::secs(60));
    let sr = receipt(&prov, &c, start, at);
    let due = at.plus(cfg.dispute_window);
    let mut verdicts = Vec::new();
    for o in &mut oracles {
        o.handle(start, epoch(1, &members), &mut rng);
        o.handle(start, OracleInput::Contract(c.clone()), &mut rng);
        o.handle(at, OracleInput::Receipt(sr.clone()), &mut rng);
        for x in o.handle_timeout(due, &mut rng) {
            if let OracleOutput::Publish(Message::Verdict(sv)) = x {
                verdicts.push(sv);
            }
        }
    }
    assert_eq!(verdicts.len(), 3);
    // Member 0 restarts before any verdict reached it.
    let restart = due.plus(DurationMs::secs(5));
    let mut o = fresh(&members[0]);
    o.handle(restart, epoch(1, &members), &mut rng);
    let out = o.handle(
        restart,
        OracleInput::Watch {
            contract: c.clone(),
            epoch: 1,
            committee: committee.clone(),
            receipt: Some(Box::new((sr.clone(), at))),
            verdict: Some(Box::new(verdicts[0].clone())),
        },
        &mut rng,
    );
    let again: Vec<_> = out
        .iter()
        .filter_map(|x| match x {
            OracleOutput::Publish(Message::Verdict(sv)) => Some(sv.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        again,
        vec![verdicts[0].clone()],
        "the old verdict, as it was"
    );
    let later = o.handle_timeout(restart.plus(DurationMs::secs(3_600)), &mut rng);
    assert!(
        !later
            .iter()
            .any(|x| matches!(x, OracleOutput::Publish(Message::Verdict(_)))),
        "a second verdict was signed"
    );
    // Someone else's verdict cannot be passed off as ours.
    let mut other = fresh(&members[0]);
    other.handle(restart, epoch(1, &members), &mut rng);
    other.handle(
        restart,
        OracleInput::Watch {
            contract: c,
            epoch: 1,
            committee,
            receipt: None,
            verdict: Some(Box::new(verdicts[1].clone())),
        },
        &mut rng,
    );
    assert_eq!(other.stats().ignored, 1);
    // With the others' verdicts it settles.
    let mut settled = false;
    for sv in &verdicts[1..] {
        for x in o.handle(restart, OracleInput::Verdict(sv.clone()), &mut rng) {
            settled |= matches!(x, OracleOutput::Settle(_));
        }
    }
    assert!(settled);
}
