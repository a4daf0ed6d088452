//! How a simulated world is set up from its scenario: identities, the
//! ledger's genesis, provider configurations, the cheaters, and the jobs
//! requesters submit. Pure functions of the scenario and a seed.

use protocol::market::{PricingConfig, ProviderConfig};
use protocol::*;
use rand::{Rng, RngExt};

use crdt_ledger::{Genesis, GenesisEntry};

use crate::profiles::ProfileParams;
use crate::scenario::{Arrival, AttackKind, Scenario};

/// Virtual time starts here (2026-01-01T00:00:00Z), so timestamps look real.
pub const T0: Timestamp = Timestamp(1_767_225_600_000);
/// Whether engines check the signatures of what they receive. Every message is
/// Tokens every requester starts with.
pub const REQUESTER_GENESIS: Amount = Amount::tokens(1_000_000);
/// What every requester holds bonded at genesis, besides: a requester's
/// final bond backs the escrows it locks before they are final, so that
/// providers start on them at once (a fork of its chain burns a share of
/// it). Without one, every job would wait for its escrow's checkpoint.
pub const REQUESTER_BOND: Amount = Amount::tokens(100_000);
/// The committee's fee: the oracle engines charge it and the ledger's genesis
/// fixes it, so payouts agree.
pub const ORACLE_FEE: Bps = Bps(100);
/// The most a verified CU mints, µ-tokens: half the cost of the cheapest
/// profile's compute (community nodes, 8 µ-tokens/CU), so buying one's own
/// compute to earn the mint loses on every unit, on any profile.
pub const MINT_PER_CU: PricePerCu = PricePerCu(4);

/// A provider's bond in the genesis: a quarter of a token per CU/s of
/// capacity (speed × slots), so a provider's cap on the epoch's mint (its
/// share of all bonds) follows what it can serve. A community GPU (8,000 CU/s,
/// one slot) bonds 2,000 tokens; a hyperscaler node (19,500 CU/s, 8 slots)
/// 39,000.
pub(crate) fn provider_bond(p: &ProfileParams) -> Amount {
    Amount::tokens((p.speed_cu_s * f64::from(p.slots) / 4.0).ceil() as u64)
}

/// Provider `i`'s bond in the genesis: [`provider_bond`], split evenly over
/// the keys of a self-dealing attacker (one provider's bond in all).
pub(crate) fn provider_bond_at(sc: &Scenario, i: usize, p: &ProfileParams) -> Amount {
    let b = provider_bond(p);
    match &sc.attack {
        Some(a) if a.kind == AttackKind::SelfDeal && sc.attack_keys().contains(&i) => {
            Amount(b.0 / u64::from(a.keys.max(1)))
        }
        _ => b,
    }
}

/// A provider of profile `p` in `region`, as both drivers configure it.
pub(crate) fn provider_config(
    p: &ProfileParams,
    region: &str,
    verify_signatures: bool,
) -> ProviderConfig {
    ProviderConfig {
        class: if p.gpu {
            ResourceClass::Gpu
        } else {
            ResourceClass::Cpu
        },
        device: p.label.into(),
        speed_milli_cu_per_s: (p.speed_cu_s * 1000.0) as u64,
        memory_bytes: 80 << 30,
        bandwidth_bytes_per_s: (p.bandwidth_mb_s * 1e6) as u64,
        region: region.to_string(),
        contact: vec![],
        slots: p.slots,
        queue_capacity: usize::from(p.slots) * 2,
        sla: SlaTerms {
            deadline_slack: DurationMs::secs(120),
            availability: Bps(p.availability_bps),
            penalty: Bps(p.penalty_bps),
            exact: true,
        },
        // Offers are re-gossiped only on change, or every 16 hours
        // (two thirds of the longest lifetime an offer may claim).
        offer_ttl: MAX_TTL,
        answer_ttl: DurationMs::secs(30),
        pricing: PricingConfig {
            cost: PricePerCu(p.cost),
            initial: PricePerCu(p.price),
            ceiling: PricePerCu(p.price * 4),
            ..PricingConfig::default()
        },
        replay_capacity: 10_000,
        verify_signatures,
        datasets: Vec::new(),
    }
}

/// The ledger's genesis: requesters hold [`REQUESTER_GENESIS`] each, and
/// bond [`REQUESTER_BOND`]; oracles
/// stake unequally (1, 2 or 3 thousand tokens), so the committee draw's
/// weighting matters; each provider holds a bond in proportion to its
/// capacity ([`provider_bond`]). Epochs are the scenario's.
pub(crate) fn genesis(sc: &Scenario, seed: u64, n_req: usize) -> (GenesisEntry, Vec<Identity>) {
    let requesters: Vec<Identity> = (0..n_req)
        .map(|i| Identity::from_seed(seed_for(seed, 2, i)))
        .collect();
    let oracles: Vec<Identity> = (0..sc.oracles.count as usize)
        .map(|i| Identity::from_seed(seed_for(seed, 3, i)))
        .collect();
    let balances = requesters
        .iter()
        .map(|r| (r.account(), REQUESTER_GENESIS))
        .collect();
    let stakes = oracles
        .iter()
        .enumerate()
        .map(|(i, o)| (o.account(), Amount::tokens(1_000 * (1 + i as u64 % 3))))
        .collect();
    let mut bonds: Vec<(protocol::AccountId, Amount)> = Vec::new();
    for g in &sc.providers {
        let p = g.profile.params();
        for _ in 0..g.count {
            let id = Identity::from_seed(seed_for(seed, 1, bonds.len()));
            bonds.push((id.account(), provider_bond_at(sc, bonds.len(), &p)));
        }
    }
    bonds.extend(requesters.iter().map(|r| (r.account(), REQUESTER_BOND)));
    let params = crdt_ledger::Params {
        epoch_length: DurationMs(sc.epoch_minutes * 60_000),
        committee_size: u16::try_from(sc.oracles.committee).unwrap_or(u16::MAX),
        min_stake: Amount::tokens(100),
        oracle_fee: ORACLE_FEE,
        mint_per_cu: MINT_PER_CU,
        market_shards: sc.network.market_shards,
        ..crdt_ledger::Params::default()
    };
    let founder = Identity::from_seed(seed_for(seed, 0, 0));
    let writers = requesters.into_iter().chain(oracles).collect();
    let genesis = GenesisEntry::create(
        &founder,
        Genesis {
            name: format!("simnet/{}", sc.name),
            genesis_time: T0,
            params,
            balances,
            stakes,
            bonds,
        },
    )
    // Only an absurd scenario (supply past u64 micro-tokens) fails here.
    .expect("the scenario's genesis is valid");
    (genesis, writers)
}

/// Which providers cheat: the scenario's share of them, drawn from every
/// profile alike.
pub(crate) fn draw_cheaters(sc: &Scenario, rng: &mut impl Rng) -> Vec<usize> {
    let n_prov = sc.provider_count() as usize;
    let n_cheat = (sc.faults.cheating_share * n_prov as f64).round() as usize;
    let mut order: Vec<usize> = (0..n_prov).collect();
    for i in (1..order.len()).rev() {
        let j = rng.random_range(0..=i);
        order.swap(i, j);
    }
    order.truncate(n_cheat);
    order
}

/// Exponential gap for a rate per day.
pub(crate) fn next_gap(rng: &mut impl Rng, per_day: f64) -> DurationMs {
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    DurationMs((-u.ln() / per_day * 86_400_000.0) as u64)
}

/// The gap to a requester's next job after `now`.
pub(crate) fn arrival_gap(sc: &Scenario, rng: &mut impl Rng, now: Timestamp) -> DurationMs {
    let rate = sc.requesters.jobs_per_day;
    match sc.requesters.arrival {
        Arrival::Poisson => next_gap(rng, rate),
        Arrival::Diurnal => {
            // Thinning: draw at the peak rate, keep with probability rate(t)/peak.
            let peak = rate * 1.8;
            let mut t = now;
            loop {
                t = t.plus(next_gap(rng, peak));
                let hour = ((t.0 - T0.0) % 86_400_000) as f64 / 3_600_000.0;
                let r = rate * (1.0 + 0.8 * ((hour - 8.0) / 24.0 * std::f64::consts::TAU).sin());
                if rng.random_bool((r / peak).clamp(0.0, 1.0)) {
                    return t.since(now);
                }
            }
        }
    }
}

/// A requester's next job, drawn from the scenario's mix.
pub(crate) struct NewJob {
    pub spec: JobSpec,
    pub kind: String,
    pub dp: bool,
}

/// Draw `requester`'s next job at `now` from the scenario's mix.
pub(crate) fn new_job(
    sc: &Scenario,
    rng: &mut impl Rng,
    requester: AccountId,
    now: Timestamp,
) -> NewJob {
    let mix = &sc.requesters.mix;
    let total: f64 = mix.values().sum();
    let mut x = rng.random_range(0.0..total);
    let mut kind_name = "infer";
    for (k, v) in mix {
        if x < *v {
            kind_name = k;
            break;
        }
        x -= v;
    }
    // Job sizes (CU) log-uniform per kind; data sizes in MB.
    let (lo, hi, data_mb): (f64, f64, f64) = match kind_name {
        "train" => (2e5, 2e7, 200.0),
        "preprocess" => (1e3, 1e5, 100.0),
        _ => (1e4, 1e6, 50.0),
    };
    let cu = (lo * (hi / lo).powf(rng.random_range(0.0..1.0))).round();
    let dp = kind_name == "train" && rng.random_bool(sc.requesters.dp_share);
    let batches = &sc.requesters.train_batches;
    // One batch size draws nothing, so such scenarios keep their streams.
    let batch = match batches.len() {
        0 => 64,
        1 => batches[0],
        n => batches[rng.random_range(0..n)],
    };
    let kind = match kind_name {
        "train" => JobKind::Train {
            layers: TRAIN_LAYERS.to_vec(),
            epochs: 10,
            batch,
            learning_rate: 0.05,
            dp: dp.then_some(DpParams {
                clip_norm: 1.0,
                noise_multiplier: 1.1,
            }),
            seed: rng.random(),
            task: Default::default(),
        },
        "preprocess" => JobKind::Preprocess {
            op: PreprocessOp::Standardize,
            seed: 0,
        },
        _ => JobKind::Infer { batch: 256 },
    };
    // DP-SGD costs more compute (per-example clipping and noise): the
    // overhead measured at this batch size, or the model without a calibration.
    let cu = if dp {
        cu * (1.0 + dp_overhead(sc, batch))
    } else {
        cu
    };
    let units = ComputeUnits::from_milli((cu * 1000.0) as u64);
    // Requesters will pay up to a random markup over the cheapest list price.
    let max_price = PricePerCu(rng.random_range(20..90));
    let slack_h = rng.random_range(1.0..12.0);
    let deadline = now.plus(DurationMs(
        (slack_h * 3_600_000.0) as u64 + (cu / 5_000.0 * 1000.0) as u64,
    ));
    let spec = JobSpec {
        requester,
        kind,
        model: None,
        dataset: BlobRef {
            hash: Hash32::of(&rng.random::<[u8; 32]>()),
            size: (data_mb * 1e6) as u64,
        },
        estimated_units: units,
        result_bytes: 1 << 20,
        max_price,
        deadline,
        sla: SlaRequirement {
            min_availability: Bps(9_000),
            min_penalty: Bps(500),
        },
        privacy: dp.then_some(PrivacyTarget {
            epsilon: 8.0,
            delta: 1e-5,
        }),
        issued_at: now,
        expires_at: now.plus(DurationMs::secs(3_600)),
        nonce: rng.random(),
    };
    NewJob {
        spec,
        kind: kind_name.to_string(),
        dp,
    }
}

/// The MLP every simulated training job trains (and the DP calibration times).
pub const TRAIN_LAYERS: [u32; 3] = [64, 256, 10];

/// DP-SGD's extra compute at `batch`: measured when the scenario carries a
/// calibration, else [`crate::calibration::DP_OVERHEAD_MODEL`].
pub fn dp_overhead(sc: &Scenario, batch: u32) -> f64 {
    sc.calibration
        .as_ref()
        .and_then(|c| c.dp_overhead(batch))
        .unwrap_or(crate::calibration::DP_OVERHEAD_MODEL)
}

pub(crate) fn seed_for(scenario_seed: u64, role: u64, i: usize) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&scenario_seed.to_le_bytes());
    h.update(&role.to_le_bytes());
    h.update(&(i as u64).to_le_bytes());
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap_or([0; 8]))
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    /// A DP training job's units carry the overhead measured at its batch
    /// size when the scenario has a calibration, the model's without.
    #[test]
    fn dp_jobs_carry_the_overhead_of_their_batch_size() {
        use crate::calibration::{Calibration, DpPoint};
        let mut sc = Scenario::load("smoke").unwrap();
        sc.requesters.dp_share = 1.0;
        sc.requesters.mix = [("train".to_string(), 1.0)].into_iter().collect();
        sc.requesters.train_batches = vec![64, 1024];
        let units = |sc: &Scenario| -> Vec<(u32, u64)> {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
            (0..20)
                .map(|_| {
                    let j = new_job(sc, &mut rng, AccountId([1; 32]), T0);
                    let JobKind::Train { batch, .. } = j.spec.kind else {
                        panic!("a training job")
                    };
                    assert!(j.dp);
                    (batch, j.spec.estimated_units.milli)
                })
                .collect()
        };
        let model = units(&sc);
        let point = |batch, dp_s| DpPoint {
            batch,
            layers: vec![64, 256, 10],
            rows: 1024,
            plain_s: 1.0,
            dp_s,
        };
        sc.calibration = Some(Calibration {
            source: "test".into(),
            dp: vec![point(64, 1.2), point(1024, 1.05)],
            storage: vec![],
            storage_epoch_s: 0.0,
        });
        let measured = units(&sc);
        assert!(model.iter().any(|j| j.0 == 64) && model.iter().any(|j| j.0 == 1024));
        for (m, c) in model.iter().zip(&measured) {
            assert_eq!(m.0, c.0, "the same jobs");
            let want = if c.0 == 64 { 1.2 / 1.4 } else { 1.05 / 1.4 };
            let got = c.1 as f64 / m.1 as f64;
            assert!((got - want).abs() < 1e-3, "batch {}: {got} vs {want}", c.0);
        }
    }
}
