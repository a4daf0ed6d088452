//! Properties of the market and oracle engines: settlement conserves escrow,
//! expired offers are never matched, every no-match reason is reachable and true,
//! work is spread fairly, prices settle, and illegal transitions are refused.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use proptest::prelude::*;
use protocol::accounting::jain_index;
use protocol::market::book::eta;
use protocol::market::{
    AnyDeal, BookConfig, Deal, DealEvent, DropReason, LifecycleError, MatchConfig, MatchOutcome,
    NoMatchReason, OrderBook, Phase, PricingConfig, PricingPolicy, TableReputation,
    UniformReputation,
};
use protocol::oracle::Aggregator;
use protocol::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn net() -> NetworkId {
    NetworkId::named("market-tests")
}

const T0: Timestamp = Timestamp(1_000_000_000);

fn acct(i: u32) -> AccountId {
    let mut a = [0u8; 32];
    a[..4].copy_from_slice(&i.to_le_bytes());
    AccountId(a)
}

fn offer(i: u32, price: u64, slots: u16, expires_at: Timestamp) -> Offer {
    Offer {
        provider: acct(i),
        class: ResourceClass::Gpu,
        device: "gpu".into(),
        speed_milli_cu_per_s: 1_000_000,
        memory_bytes: 1 << 30,
        bandwidth_bytes_per_s: 10 << 20,
        price: PricePerCu(price),
        sla: SlaTerms {
            deadline_slack: DurationMs::secs(5),
            availability: Bps(9_900),
            penalty: Bps(1_000),
            exact: true,
        },
        region: "eu".into(),
        slots,
        busy_slots: 0,
        holds: vec![],
        datasets: vec![],
        contact: vec![],
        issued_at: T0,
        expires_at,
        nonce: u64::from(i),
    }
}

fn oid(i: u32) -> Hash32 {
    Hash32::of(&i.to_le_bytes())
}

fn job(max_price: u64, units_milli: u64, deadline: Timestamp) -> JobSpec {
    JobSpec {
        requester: acct(999_999),
        kind: JobKind::Infer { batch: 1 },
        model: Some(BlobRef {
            hash: Hash32::of(b"model"),
            size: 50 << 20,
        }),
        dataset: BlobRef {
            hash: Hash32::of(b"data"),
            size: 10 << 20,
        },
        estimated_units: ComputeUnits::from_milli(units_milli),
        result_bytes: 1 << 20,
        max_price: PricePerCu(max_price),
        deadline,
        sla: SlaRequirement {
            min_availability: Bps(9_000),
            min_penalty: Bps(500),
        },
        privacy: None,
        issued_at: T0,
        expires_at: T0.plus(DurationMs::secs(3_600)),
        nonce: 1,
    }
}

fn terms(price: u64, max_units: u64, penalty: u16) -> ContractTerms {
    let spec = job(
        price.max(1),
        max_units.max(1),
        T0.plus(DurationMs::secs(600)),
    );
    ContractTerms {
        network: net(),
        job: Hash32::of(b"job"),
        requester: acct(1),
        provider: acct(2),
        price: PricePerCu(price),
        max_units: ComputeUnits::from_milli(max_units),
        sla: SlaTerms {
            deadline_slack: DurationMs(0),
            availability: Bps(9_000),
            penalty: Bps(penalty),
            exact: true,
        },
        deadline: spec.deadline,
        created_at: T0,
        spec,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The settlement instruction a quorum yields pays out exactly the escrow:
    /// provider + refund + fees = locked.
    #[test]
    fn settlement_conserves_escrow(
        price in 0u64..1_000_000,
        max_units in 0u64..10_000_000_000,
        penalty in 0u16..=10_000,
        fee in 0u16..=10_000,
        delivered: bool,
        result_ok: bool,
        violations in 0u32..20,
        units in 0u64..20_000_000_000,
        k in 1usize..=5,
    ) {
        let t = terms(price, max_units, penalty);
        let ids: Vec<Identity> = (0..k as u64).map(|i| Identity::from_seed(500 + i)).collect();
        let committee: Vec<AccountId> = ids.iter().map(|i| i.account()).collect();
        let mut agg = Aggregator::new(net(), Bps(fee), 16);
        agg.set_committee(3, committee.clone());
        let contract = Hash32::of(b"c");
        prop_assert!(agg.set_terms(contract, t.clone()).is_none());
        let mut settled = None;
        for id in &ids {
            let v = Verdict {
                contract,
                epoch: 3,
                oracle: id.account(),
                sla_ok: violations == 0,
                violations,
                result_ok,
                units: ComputeUnits::from_milli(units),
                delivered,
            };
            let sv = Signed::sign(id, &net(), &v).unwrap();
            if let Some(si) = agg.add(sv).unwrap() {
                settled = Some(si);
            }
        }
        let si = settled.unwrap();
        let escrow = t.escrow().unwrap();
        prop_assert_eq!(si.payout.escrow, escrow);
        prop_assert_eq!(si.payout.total(), Some(escrow));
        prop_assert!(si.cert.check(&net(), &committee).is_ok());
        if !(delivered && result_ok) {
            prop_assert_eq!(si.payout.provider, Amount::ZERO);
        }
    }

    /// Whatever the book and the clock, a matched offer has not expired (nor is
    /// it above the job's max price, nor out of slots).
    #[test]
    fn expired_offers_are_never_matched(
        offers in proptest::collection::vec((50u64..2_000, 1u64..2_000, 0u16..3), 1..40),
        advance in 0u64..2_000,
        seed: u64,
    ) {
        let mut book = OrderBook::new(BookConfig {
            capacity: 64,
            replay_capacity: 256,
            ..Default::default()
        });
        for (i, (price, ttl_s, slots)) in offers.iter().enumerate() {
            let mut o = offer(i as u32, *price, (*slots).max(1), T0.plus(DurationMs::secs(*ttl_s)));
            o.busy_slots = o.slots.min(*slots % 2);
            let _ = book.insert_verified(T0, oid(i as u32), o);
        }
        // Time moves on without a prune: the matcher itself must skip expired offers.
        let now = T0.plus(DurationMs::secs(advance));
        let j = job(1_000, 1_000_000, now.plus(DurationMs::secs(3_600)));
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        match book.match_job(now, &j, &UniformReputation(0.8), &MatchConfig::default(), &[], &mut rng) {
            MatchOutcome::Matched { chosen, alternatives } => {
                for c in std::iter::once(&chosen).chain(&alternatives) {
                    let e = book.get(&c.offer).unwrap();
                    prop_assert!(e.offer.expires_at > now);
                    prop_assert!(e.offer.price <= j.max_price);
                    prop_assert!(e.free_slots() > 0);
                }
            }
            MatchOutcome::NoMatch { reasons, .. } => {
                // Every offer is explained, and every explanation is true.
                prop_assert_eq!(reasons.len(), book.len());
                for r in reasons {
                    let e = book.get(&r.offer).unwrap();
                    match r.reason {
                        NoMatchReason::Expired => prop_assert!(e.offer.expires_at <= now),
                        NoMatchReason::PriceAboveMax { price, max } => prop_assert!(price > max),
                        NoMatchReason::NoCapacity => prop_assert_eq!(e.free_slots(), 0),
                        NoMatchReason::DeadlineInfeasible { eta, deadline } => prop_assert!(eta > deadline),
                        other => prop_assert!(false, "unexpected {:?}", other),
                    }
                }
            }
        }
    }

    /// Every no-match reason can be produced, and each is the true one: the offer
    /// built to fail one requirement is explained by exactly that requirement.
    #[test]
    fn every_no_match_reason_is_reachable(
        price_over in 1u64..500,
        penalty_short in 1u16..500,
        units in 1_000u64..10_000_000,
        seed: u64,
    ) {
        let now = T0.plus(DurationMs::secs(10));
        let j = job(1_000, units, now.plus(DurationMs::secs(600)));
        let mut book = OrderBook::new(BookConfig::default());
        let far = T0.plus(DurationMs::secs(7_200));
        // 0: too dear.
        book.insert_verified(T0, oid(0), offer(0, 1_000 + price_over, 2, far)).unwrap();
        // 1: full.
        let mut o = offer(1, 500, 2, far);
        o.busy_slots = 2;
        book.insert_verified(T0, oid(1), o).unwrap();
        // 2: weaker SLA.
        let mut o = offer(2, 500, 2, far);
        o.sla.penalty = Bps(500 - penalty_short);
        book.insert_verified(T0, oid(2), o).unwrap();
        // 3: too slow to make the deadline.
        let mut o = offer(3, 500, 2, far);
        o.speed_milli_cu_per_s = (units / 700).max(1);
        book.insert_verified(T0, oid(3), o).unwrap();
        // 4: expired by `now` (not yet pruned).
        book.insert_verified(T0, oid(4), offer(4, 500, 2, T0.plus(DurationMs::secs(5)))).unwrap();
        // 5: excluded (it refused this job before).
        book.insert_verified(T0, oid(5), offer(5, 500, 2, far)).unwrap();
        // 6: a low-quality provider, under the requester's floor.
        book.insert_verified(T0, oid(6), offer(6, 500, 2, far)).unwrap();
        let mut rep = TableReputation { prior: 0.9, ..Default::default() };
        rep.table.insert(acct(6), 0.1);
        let cfg = MatchConfig { min_quality: 0.5, ..MatchConfig::default() };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let MatchOutcome::NoMatch { reasons, examined } =
            book.match_job(now, &j, &rep, &cfg, &[acct(5)], &mut rng)
        else {
            panic!("nothing should fit");
        };
        prop_assert_eq!(examined, 7);
        let of = |i: u32| reasons.iter().find(|r| r.offer == oid(i)).unwrap().reason;
        prop_assert!(matches!(of(0), NoMatchReason::PriceAboveMax { .. }), "{:?}", of(0));
        prop_assert_eq!(of(1), NoMatchReason::NoCapacity);
        prop_assert_eq!(of(2), NoMatchReason::SlaBelowRequirement);
        prop_assert!(matches!(of(3), NoMatchReason::DeadlineInfeasible { .. }), "{:?}", of(3));
        prop_assert_eq!(of(4), NoMatchReason::Expired);
        prop_assert_eq!(of(5), NoMatchReason::Excluded);
        prop_assert_eq!(of(6), NoMatchReason::SlaBelowRequirement);
    }
}

/// Simulate `jobs` identical jobs arriving one per second, each holding a slot of
/// its provider for `hold_s` seconds; return the jobs each provider got.
fn spread(slots: &[u16], jobs: usize, hold_s: u64, seed: u64) -> Vec<f64> {
    let mut book = OrderBook::new(BookConfig::default());
    for (i, s) in slots.iter().enumerate() {
        book.insert_verified(
            T0,
            oid(i as u32),
            offer(i as u32, 500, *s, T0.plus(DurationMs::secs(86_000))),
        )
        .unwrap();
    }
    let rep = UniformReputation(0.9);
    let cfg = MatchConfig::default();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut work = vec![0.0; slots.len()];
    let mut running: std::collections::VecDeque<(Timestamp, AccountId)> = Default::default();
    for n in 0..jobs {
        let now = T0.plus(DurationMs::secs(n as u64 + 1));
        while running.front().is_some_and(|(end, _)| *end <= now) {
            let (_, p) = running.pop_front().unwrap();
            book.add_load(&p, -1);
        }
        let j = job(1_000, 1_000_000, now.plus(DurationMs::secs(600)));
        if let MatchOutcome::Matched { chosen, .. } =
            book.match_job(now, &j, &rep, &cfg, &[], &mut rng)
        {
            let i = (0..slots.len())
                .find(|&i| acct(i as u32) == chosen.provider)
                .unwrap();
            work[i] += 1.0;
            book.add_load(&chosen.provider, 1);
            running.push_back((now.plus(DurationMs::secs(hold_s)), chosen.provider));
        }
    }
    work
}

#[test]
fn equal_providers_share_work_fairly() {
    let work = spread(&[4; 10], 1_000, 20, 7);
    assert_eq!(work.iter().sum::<f64>(), 1_000.0);
    let j = jain_index(&work);
    eprintln!("equal providers: Jain {j:.4}, work {work:?}");
    assert!(j >= 0.95, "Jain's index {j} over {work:?}");
    // And without herding: nobody gets more than twice the fair share.
    assert!(work.iter().all(|&w| w < 200.0), "{work:?}");
}

#[test]
fn work_share_tracks_capacity() {
    let slots: Vec<u16> = (1..=10).collect();
    let work = spread(&slots, 1_000, 25, 11);
    let total_slots: f64 = slots.iter().map(|&s| f64::from(s)).sum();
    let total_work: f64 = work.iter().sum();
    // Work per slot is even (Jain's index of work/capacity close to 1)...
    let per_slot: Vec<f64> = work
        .iter()
        .zip(&slots)
        .map(|(w, &s)| w / f64::from(s))
        .collect();
    let j = jain_index(&per_slot);
    eprintln!("unequal capacities: Jain of work/slot {j:.4}, work {work:?}");
    assert!(j >= 0.9, "Jain's index of work per slot {j}: {work:?}");
    // ...and each provider's share is within 5 points of its capacity share.
    for (w, &s) in work.iter().zip(&slots) {
        let d = (w / total_work - f64::from(s) / total_slots).abs();
        assert!(
            d < 0.05,
            "share {} vs capacity {}: {work:?}",
            w / total_work,
            f64::from(s) / total_slots
        );
    }
}

#[test]
fn better_utility_wins_more_often_but_not_always() {
    // Equal prices, one provider of higher quality: it gets more work, but the
    // near-best others still get some (no herding).
    let mut book = OrderBook::new(BookConfig::default());
    for i in 0..4 {
        book.insert_verified(
            T0,
            oid(i),
            offer(i, 500, 1_000, T0.plus(DurationMs::secs(86_000))),
        )
        .unwrap();
    }
    let mut rep = TableReputation {
        prior: 0.90,
        ..Default::default()
    };
    rep.table.insert(acct(0), 0.93);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut wins = [0u32; 4];
    for _ in 0..2_000 {
        let j = job(1_000, 1_000_000, T0.plus(DurationMs::secs(600)));
        if let MatchOutcome::Matched { chosen, .. } =
            book.match_job(T0, &j, &rep, &MatchConfig::default(), &[], &mut rng)
        {
            wins[(0..4).find(|&i| acct(i) == chosen.provider).unwrap() as usize] += 1;
        }
    }
    assert!(
        wins[0] > wins[1] && wins[0] > wins[2] && wins[0] > wins[3],
        "{wins:?}"
    );
    assert!(wins[1..].iter().all(|&w| w > 100), "{wins:?}");
}

#[test]
fn holding_the_model_makes_a_provider_faster() {
    let mut with = offer(1, 500, 1, T0.plus(DurationMs::secs(100)));
    let without = with.clone();
    with.holds = vec![Hash32::of(b"model")];
    let j = job(1_000, 1_000, T0.plus(DurationMs::secs(600)));
    // 50 MiB at 10 MiB/s: 5 s saved.
    assert_eq!(
        eta(&without, &j, T0).since(eta(&with, &j, T0)),
        DurationMs(5_000)
    );
}

#[test]
fn book_drops_bad_offers_with_counted_reasons() {
    let network = net();
    let id = Identity::from_seed(1);
    let mut o = offer(0, 500, 2, T0.plus(DurationMs::secs(600)));
    o.provider = id.account();
    let good = Signed::sign(&id, &network, &o).unwrap();
    let mut book = OrderBook::new(BookConfig {
        capacity: 2,
        replay_capacity: 16,
        ..Default::default()
    });
    assert!(book.insert(T0, &network, &good).is_ok());
    assert_eq!(book.insert(T0, &network, &good), Err(DropReason::Duplicate));
    // Signed by someone else than the provider it names.
    let forged = Signed::sign(&Identity::from_seed(2), &network, &o).unwrap();
    assert_eq!(
        book.insert(T0, &network, &forged),
        Err(DropReason::BadSignature)
    );
    // Another network's signature.
    let other = Signed::sign(&id, &NetworkId::named("other"), &o).unwrap();
    assert_eq!(
        book.insert(T0, &network, &other),
        Err(DropReason::BadSignature)
    );
    // Same nonce, new envelope: a replay.
    let mut again = o.clone();
    again.issued_at = T0.plus(DurationMs(1));
    let again = Signed::sign(&id, &network, &again).unwrap();
    assert_eq!(book.insert(T0, &network, &again), Err(DropReason::Replayed));
    // An older offer of the same provider and class: stale.
    let mut old = o.clone();
    old.nonce = 77;
    old.issued_at = Timestamp(T0.0 - 1_000);
    let old = Signed::sign(&id, &network, &old).unwrap();
    assert_eq!(book.insert(T0, &network, &old), Err(DropReason::Stale));
    // Expired, and invalid.
    let mut exp = o.clone();
    exp.nonce = 78;
    exp.provider = Identity::from_seed(3).account();
    exp.expires_at = T0;
    let exp = Signed::sign(&Identity::from_seed(3), &network, &exp).unwrap();
    assert_eq!(book.insert(T0, &network, &exp), Err(DropReason::Expired));
    let mut bad = o.clone();
    bad.provider = Identity::from_seed(4).account();
    bad.slots = 0;
    let bad = Signed::sign(&Identity::from_seed(4), &network, &bad).unwrap();
    assert_eq!(book.insert(T0, &network, &bad), Err(DropReason::Invalid));
    // A newer offer replaces the older.
    let mut newer = o.clone();
    newer.nonce = 79;
    newer.issued_at = T0.plus(DurationMs(5));
    newer.price = PricePerCu(400);
    let newer = Signed::sign(&id, &network, &newer).unwrap();
    assert!(book.insert(T0, &network, &newer).is_ok());
    assert_eq!(book.len(), 1);
    let s = book.stats();
    assert_eq!(
        (
            s.inserted,
            s.replaced,
            s.duplicate,
            s.bad_signature,
            s.replayed,
            s.stale,
            s.expired,
            s.invalid
        ),
        (2, 1, 1, 2, 1, 1, 1, 1)
    );
}

#[test]
fn book_memory_is_bounded_by_evicting_the_first_to_expire() {
    let mut book = OrderBook::new(BookConfig {
        capacity: 3,
        replay_capacity: 100,
        ..Default::default()
    });
    for i in 0..3 {
        book.insert_verified(
            T0,
            oid(i),
            offer(i, 500, 1, T0.plus(DurationMs::secs(100 + u64::from(i)))),
        )
        .unwrap();
    }
    // A longer-lived newcomer evicts the offer that expires first.
    book.insert_verified(T0, oid(3), offer(3, 500, 1, T0.plus(DurationMs::secs(500))))
        .unwrap();
    assert_eq!(book.len(), 3);
    assert!(book.get(&oid(0)).is_none());
    // One that would expire first itself is refused.
    assert_eq!(
        book.insert_verified(T0, oid(4), offer(4, 500, 1, T0.plus(DurationMs::secs(50)))),
        Err(DropReason::Full)
    );
    assert_eq!(book.stats().evicted, 1);
    // Expiry drops offers.
    book.prune(T0.plus(DurationMs::secs(200)));
    assert_eq!(book.len(), 1);
}

/// Past its share for a class, a book keeps that class's cheapest offers: a
/// cheaper newcomer evicts the dearest, a dearer one is refused, and another
/// class keeps its own share.
#[test]
fn a_class_past_its_share_keeps_its_cheapest_offers() {
    let mut book = OrderBook::new(BookConfig {
        capacity: 100,
        per_class: 3,
        replay_capacity: 100,
    });
    let until = T0.plus(DurationMs::secs(600));
    for (i, price) in [(0, 300), (1, 100), (2, 200)] {
        book.insert_verified(T0, oid(i), offer(i, price, 1, until))
            .unwrap();
    }
    // Dearer than all three: refused, nothing evicted.
    assert_eq!(
        book.insert_verified(T0, oid(3), offer(3, 400, 1, until)),
        Err(DropReason::Full)
    );
    // Cheaper than the dearest: it takes the dearest's place.
    book.insert_verified(T0, oid(4), offer(4, 150, 1, until))
        .unwrap();
    assert_eq!(book.len(), 3);
    assert!(book.get(&oid(0)).is_none(), "the dearest went");
    assert_eq!(book.stats().evicted, 1);
    // A kept provider that re-offers dearer stays (it holds its place), and
    // is then the first to go.
    let mut dearer = offer(1, 500, 1, until);
    dearer.issued_at = T0.plus(DurationMs(5));
    dearer.nonce = 99;
    book.insert_verified(T0, oid(5), dearer).unwrap();
    assert_eq!(book.len(), 3);
    book.insert_verified(T0, oid(6), offer(6, 120, 1, until))
        .unwrap();
    assert!(book.offer_of(&acct(1), ResourceClass::Gpu).is_none());
    let mut prices: Vec<u64> = book.iter().map(|e| e.offer.price.0).collect();
    prices.sort_unstable();
    assert_eq!(prices, vec![120, 150, 200]);
    // Another class has its own share.
    let mut cpu = offer(7, 900, 1, until);
    cpu.class = ResourceClass::Cpu;
    book.insert_verified(T0, oid(7), cpu).unwrap();
    assert_eq!(book.len(), 4);
    // Removal and expiry free the share.
    book.remove(&oid(6));
    book.insert_verified(T0, oid(8), offer(8, 800, 1, until))
        .unwrap();
    assert_eq!(book.len(), 4);
}

#[test]
fn illegal_transitions_are_refused() {
    let t = terms(100, 1_000, 1_000);
    let d = Deal::propose(
        T0,
        Hash32::of(b"p"),
        t.clone(),
        acct(2),
        T0.plus(DurationMs::secs(5)),
    );
    // `Deal<Proposed>` has no `settle`, `deliver` or `start`: those do not compile.
    // At run time, through `AnyDeal`, they are refused and the deal handed back.
    let any = AnyDeal::Proposed(d);
    let err = any.apply(T0, DealEvent::Start).unwrap_err();
    assert_eq!(
        err.error,
        LifecycleError::Illegal {
            deal: Hash32::of(b"p"),
            from: Phase::Proposed,
            event: "start"
        }
    );
    assert_eq!(err.deal.phase(), Phase::Proposed);
    let expired = err.deal.apply(T0, DealEvent::Expire).unwrap();
    assert_eq!(expired.phase(), Phase::Expired);
    assert!(expired.phase().is_terminal());
    let err = expired.apply(T0, DealEvent::Expire).unwrap_err();
    assert_eq!(err.deal.phase(), Phase::Expired);
    // A full happy path keeps its history.
    let mut c = Contract::new(&t).unwrap();
    c.add_signature(&Identity::from_seed(1), &net());
    let d = Deal::propose(T0, Hash32::of(b"p"), t, acct(2), T0)
        .accept(T0, c.clone())
        .start(T0.plus(DurationMs(1)));
    assert_eq!(d.id, c.body_hash());
    let phases: Vec<Phase> = d.history.iter().map(|(_, p)| *p).collect();
    assert_eq!(phases, [Phase::Proposed, Phase::Accepted, Phase::Running]);
}

#[test]
fn competing_providers_converge_to_a_stable_price() {
    let cfg = PricingConfig {
        cost: PricePerCu(100),
        initial: PricePerCu(150),
        ..PricingConfig::default()
    };
    let mut a = PricingPolicy::new(cfg);
    let mut b = PricingPolicy::new(PricingConfig {
        initial: PricePerCu(900),
        ..cfg
    });
    let (ida, idb) = (acct(1), acct(2));
    let mut history = Vec::new();
    for round in 0..300u64 {
        let now = T0.plus(DurationMs::secs(round * 60));
        // The same demand for both: requesters paying up to 400..1000.
        for k in 0..4 {
            let wtp = PricePerCu(400 + ((round * 4 + k) * 37) % 600);
            a.observe_demand(now, wtp);
            b.observe_demand(now, wtp);
        }
        a.observe_competitor(now, idb, b.price());
        b.observe_competitor(now, ida, a.price());
        let pa = a.update(now);
        let pb = b.update(now);
        history.push((pa.0 as f64, pb.0 as f64));
    }
    let tail = &history[200..];
    let (fa, fb) = history[299];
    eprintln!(
        "prices: start {:?}, round 50 {:?}, end {:?}",
        history[0], history[50], history[299]
    );
    // Stable: the last 100 rounds move less than 1% ...
    for w in tail.windows(2) {
        assert!(
            (w[1].0 - w[0].0).abs() <= 0.01 * w[0].0,
            "{:?}",
            &history[190..]
        );
        assert!(
            (w[1].1 - w[0].1).abs() <= 0.01 * w[0].1,
            "{:?}",
            &history[190..]
        );
    }
    // ... the two meet (symmetric providers, symmetric equilibrium) ...
    assert!((fa - fb).abs() <= 0.02 * fa, "{fa} vs {fb}");
    // ... above cost, below the monopoly price of a lone provider.
    assert!(fa > 105.0, "{fa}");
    let mut alone = PricingPolicy::new(cfg);
    for round in 0..300u64 {
        let now = T0.plus(DurationMs::secs(round * 60));
        for k in 0..4 {
            alone.observe_demand(now, PricePerCu(400 + ((round * 4 + k) * 37) % 600));
        }
        alone.update(now);
    }
    eprintln!("monopoly price {:?}", alone.price());
    assert!(alone.price().0 as f64 > fa, "{} vs {fa}", alone.price().0);
    // No oscillation: few changes of direction over the whole run.
    let turns = history
        .windows(3)
        .filter(|w| (w[1].0 - w[0].0) * (w[2].0 - w[1].0) < 0.0 && (w[2].0 - w[1].0).abs() > 1.0)
        .count();
    assert!(turns <= 3, "{turns} turns: {history:?}");
}

#[test]
fn a_lone_provider_never_prices_above_what_requesters_pay() {
    let mut p = PricingPolicy::new(PricingConfig {
        cost: PricePerCu(100),
        initial: PricePerCu(5_000),
        ..PricingConfig::default()
    });
    let mut max_seen = 0;
    for round in 0..200u64 {
        let now = T0.plus(DurationMs::secs(round * 60));
        let wtp = 300 + (round * 53) % 500;
        max_seen = max_seen.max(wtp);
        p.observe_demand(now, PricePerCu(wtp));
        let price = p.update(now);
        assert!(price.0 <= max_seen, "round {round}: {price:?} > {max_seen}");
        assert!(price >= p.floor());
    }
    // Scarcity raises the price: with one slot it asks more than with many.
    let mut scarce = p.clone();
    scarce.set_capacity(0.01);
    let mut plenty = p.clone();
    plenty.set_capacity(1e9);
    let now = T0.plus(DurationMs::secs(200 * 60));
    assert!(scarce.best_response(now).unwrap() >= plenty.best_response(now).unwrap());
}

#[test]
fn aggregation_needs_two_thirds_and_reports_a_split_committee() {
    let ids: Vec<Identity> = (0..3u64).map(|i| Identity::from_seed(700 + i)).collect();
    let committee: Vec<AccountId> = ids.iter().map(|i| i.account()).collect();
    let contract = Hash32::of(b"split");
    // A verdict: `judged` = (delivered, result ok), with `violations`.
    let judged = |id: &Identity, (delivered, result_ok): (bool, bool), violations: u32| {
        let v = Verdict {
            contract,
            epoch: 1,
            oracle: id.account(),
            sla_ok: violations == 0,
            violations,
            result_ok,
            units: ComputeUnits::from_milli(1_000),
            delivered,
        };
        Signed::sign(id, &net(), &v).unwrap()
    };
    let verdict = |id: &Identity, violations: u32| judged(id, (true, true), violations);
    // Three different judgements of the work: no quorum, and the committee
    // is reported split.
    let mut agg = Aggregator::new(net(), Bps(100), 16);
    agg.set_committee(1, committee.clone());
    agg.set_terms(contract, terms(100, 1_000, 1_000));
    for (id, j) in ids
        .iter()
        .zip([(true, true), (true, false), (false, false)])
    {
        assert_eq!(agg.add(judged(id, j, 0)).unwrap(), None);
    }
    assert!(agg.is_deadlocked(&contract));
    // Two of three agree on the work: ⌈2·3/3⌉ = 2 is a quorum; the dissenter
    // is left out of the certificate and of the fees, and the two settle
    // with the lower median of their violations.
    let mut agg = Aggregator::new(net(), Bps(100), 16);
    agg.set_committee(1, committee.clone());
    agg.set_terms(contract, terms(100, 1_000, 1_000));
    assert_eq!(agg.add(judged(&ids[0], (true, false), 0)).unwrap(), None);
    assert_eq!(agg.add(verdict(&ids[1], 1)).unwrap(), None);
    assert!(
        agg.add(verdict(&ids[1], 1)).is_err(),
        "one verdict per oracle"
    );
    let si = agg.add(verdict(&ids[2], 2)).unwrap().unwrap();
    assert_eq!(si.outcome.violations, 1);
    assert_eq!(si.cert.verdicts.len(), 2);
    assert_eq!(si.cert.check(&net(), &committee).unwrap().0, si.outcome);
    assert!(si.payout.fees.iter().all(|(o, _)| *o != ids[0].account()));
    // A stranger's verdict does not count.
    let mut agg = Aggregator::new(net(), Bps(100), 16);
    agg.set_committee(1, committee);
    assert!(agg.add(verdict(&Identity::from_seed(9), 0)).is_err());
}

/// A book of two one-slot offers a day long, by providers 1 and 2 at these
/// prices; the day's end; and a job either can take.
fn two_offers(price1: u64, price2: u64) -> (OrderBook, Timestamp, JobSpec) {
    let far = T0.plus(DurationMs::secs(86_400));
    let mut book = OrderBook::new(BookConfig::default());
    book.insert_verified(T0, oid(1), offer(1, price1, 1, far))
        .unwrap();
    book.insert_verified(T0, oid(2), offer(2, price2, 1, far))
        .unwrap();
    (book, far, job(1_000, 1_000, far))
}

/// A provider that refused a proposal for want of capacity is passed over until
/// the slot it named frees (at most `MAX_HOLD_OFF` ahead), or until a later
/// offer of its own says it has room; its refusal counts as "no capacity".
#[test]
fn a_provider_that_said_it_is_full_is_passed_over_until_its_slot_frees() {
    use protocol::market::book::MAX_HOLD_OFF;
    let (mut book, far, j) = two_offers(100, 900);
    let rep = UniformReputation(0.9);
    let cfg = MatchConfig::default();
    let chosen = |book: &OrderBook, now: Timestamp, seed: u64| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        match book.match_job(now, &j, &rep, &cfg, &[], &mut rng) {
            MatchOutcome::Matched { chosen, .. } => chosen.provider,
            MatchOutcome::NoMatch { .. } => panic!("provider 2 always fits"),
        }
    };
    // The cheap provider wins while it is believed free.
    assert!((0..20).all(|s| chosen(&book, T0, s) == acct(1)));

    let free_at = T0.plus(DurationMs::secs(60));
    book.hold_off(T0, &acct(1), free_at);
    assert!((0..20).all(|s| chosen(&book, T0.plus(DurationMs::secs(59)), s) == acct(2)));
    let MatchOutcome::NoMatch { reasons, .. } =
        book.explain(T0.plus(DurationMs::secs(1)), &j, &rep, &cfg, &[])
    else {
        unreachable!()
    };
    let of1 = reasons.iter().find(|r| r.provider == acct(1)).unwrap();
    assert_eq!(of1.reason, NoMatchReason::NoCapacity);
    assert!((0..20).all(|s| chosen(&book, free_at, s) == acct(1)));

    // A far-off "free at" is capped.
    book.hold_off(T0, &acct(1), far);
    assert!(book.held_off(T0.plus(DurationMs(MAX_HOLD_OFF.0 - 1)), &acct(1)));
    assert!(!book.held_off(T0.plus(MAX_HOLD_OFF), &acct(1)));

    // Its own later offer with a free slot lifts the hold at once; a later
    // offer that says it is still full does not.
    let mut full = offer(1, 100, 1, far);
    full.busy_slots = 1;
    full.issued_at = T0.plus(DurationMs::secs(10));
    full.nonce = 11;
    book.insert_verified(T0.plus(DurationMs::secs(10)), oid(11), full)
        .unwrap();
    assert!(book.held_off(T0.plus(DurationMs::secs(10)), &acct(1)));
    let mut free = offer(1, 100, 1, far);
    free.issued_at = T0.plus(DurationMs::secs(20));
    free.nonce = 12;
    book.insert_verified(T0.plus(DurationMs::secs(20)), oid(12), free)
        .unwrap();
    assert!(!book.held_off(T0.plus(DurationMs::secs(20)), &acct(1)));
    assert!((0..20).all(|s| chosen(&book, T0.plus(DurationMs::secs(20)), s) == acct(1)));
}

/// Reputation that calls some providers young.
struct Youth {
    young: Vec<AccountId>,
}

impl protocol::market::Reputation for Youth {
    fn quality(&self, p: &AccountId) -> f64 {
        if self.young.contains(p) { 0.5 } else { 0.85 }
    }
    fn is_young(&self, p: &AccountId) -> bool {
        self.young.contains(p)
    }
}

/// A young provider, scored far below an established one at the same price,
/// still gets about `explore` of the matches, or, drawn by supply, its share of
/// the offers (one of two: half); with no exploration it gets none, so its only
/// way to a record would be to buy one from itself.
#[test]
fn young_providers_get_their_share_of_matches() {
    let (book, _, j) = two_offers(500, 500);
    let rep = Youth {
        young: vec![acct(2)],
    };
    let share = |explore: u16, explore_by_supply: bool| {
        let cfg = MatchConfig {
            explore: Bps(explore),
            explore_by_supply,
            ..MatchConfig::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let n = 4_000;
        let young = (0..n)
            .filter(|_| {
                matches!(
                    book.match_job(T0, &j, &rep, &cfg, &[], &mut rng),
                    MatchOutcome::Matched { chosen, .. } if chosen.provider == acct(2)
                )
            })
            .count();
        young as f64 / f64::from(n)
    };
    assert_eq!(share(0, false), 0.0);
    let s = share(1_000, false);
    assert!((0.08..0.12).contains(&s), "{s}");
    assert_eq!(book.young_share(T0, &rep), 0.5);
    let s = share(1_000, true);
    assert!((0.46..0.54).contains(&s), "{s}");
    // Nobody young: exploring falls back to the usual pick.
    let old = Youth { young: vec![] };
    let cfg = MatchConfig::default();
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    for _ in 0..100 {
        assert!(matches!(
            book.match_job(T0, &j, &old, &cfg, &[], &mut rng),
            MatchOutcome::Matched { .. }
        ));
    }
}

/// A federated round on data set `id`, spending `epsilon` in all.
fn fed_round(id: &[u8], layers: Vec<u32>, epsilon: f64) -> JobSpec {
    JobSpec {
        kind: common::wine_round(b"federation", 1, layers),
        dataset: BlobRef {
            hash: Hash32::of(id),
            size: 60_000,
        },
        privacy: Some(PrivacyTarget {
            epsilon,
            delta: 1e-5,
        }),
        ..job(1_000, 1_000, T0.plus(DurationMs::secs(600)))
    }
}

/// A federated round goes only to the owner of its data set, whose model
/// fits it and whose budget left covers the job's ε; every other offer is
/// explained, owner by owner.
#[test]
fn a_federated_round_matches_only_the_owner_of_its_data_with_budget_left() {
    let far = T0.plus(DurationMs::secs(3_600));
    let mut book = OrderBook::new(BookConfig::default());
    // 1 holds the data set, 2 holds another, 3 none (and is cheapest), 4
    // holds it with too little budget left.
    let mut owner = offer(1, 500, 2, far);
    owner.datasets = vec![common::wine_data(b"shard-1", 5.0, 20.0)];
    let mut other = offer(2, 500, 2, far);
    other.datasets = vec![common::wine_data(b"shard-2", 5.0, 20.0)];
    let mut spent = offer(4, 500, 2, far);
    spent.datasets = vec![common::wine_data(b"shard-1", 5.0, 0.5)];
    for (i, o) in [
        (1, owner),
        (2, other),
        (3, offer(3, 100, 2, far)),
        (4, spent),
    ] {
        book.insert_verified(T0, oid(i), o).unwrap();
    }
    let rep = UniformReputation(0.9);
    let cfg = MatchConfig::default();
    let j = fed_round(b"shard-1", vec![11, 16, 6], 2.0);
    for seed in 0..20 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        match book.match_job(T0, &j, &rep, &cfg, &[], &mut rng) {
            MatchOutcome::Matched {
                chosen,
                alternatives,
            } => {
                assert_eq!(chosen.provider, acct(1));
                assert!(alternatives.is_empty(), "{alternatives:?}");
            }
            MatchOutcome::NoMatch { reasons, .. } => panic!("{reasons:?}"),
        }
    }
    let why = |j: &JobSpec| {
        let MatchOutcome::NoMatch { reasons, .. } = book.explain(T0, j, &rep, &cfg, &[acct(1)])
        else {
            unreachable!()
        };
        reasons
            .into_iter()
            .map(|r| (r.provider, r.reason))
            .collect::<Vec<_>>()
    };
    let reasons = why(&j);
    assert!(
        reasons.contains(&(acct(2), NoMatchReason::NoData)),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&(acct(3), NoMatchReason::NoData)),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&(
            acct(4),
            NoMatchReason::PrivacyBudget {
                asked_micro: 2_000_000,
                left_micro: 500_000
            }
        )),
        "{reasons:?}"
    );
    // A model that does not fit the data set's features or classes.
    let wrong = fed_round(b"shard-1", vec![12, 16, 6], 2.0);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    assert!(matches!(
        book.match_job(T0, &wrong, &rep, &cfg, &[], &mut rng),
        MatchOutcome::NoMatch { .. }
    ));
    // Any other job never goes to a data set's owner for its data alone.
    let plain = job(1_000, 1_000, T0.plus(DurationMs::secs(600)));
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    assert!(matches!(
        book.match_job(T0, &plain, &rep, &cfg, &[], &mut rng),
        MatchOutcome::Matched { chosen, .. } if chosen.provider == acct(3)
    ));
}
