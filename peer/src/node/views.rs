//! What the control API shows of the core: jobs, offers, balances, the ledger.
//! Views only read; every decision is the core's.

use std::collections::BTreeMap;

use crdt_ledger::{Body, FileStore};
use node_core::{Job, JobState, NodeCore};
use protocol::{AccountId, ComputeUnits, Timestamp};

use crate::control::{
    BalanceView, CheckpointView, CommitteeView, EarningView, EarningsView, EntryView, JobEvent,
    JobView, LedgerView, OfferView, VerdictView, signed_token_string, token_string,
};

pub(super) fn job_view(core: &NodeCore<FileStore>, j: &Job) -> JobView {
    let engine = core.requester();
    let state = j.state(engine);
    let outcome = match &state {
        JobState::Ended(e) => Some(e.to_string()),
        JobState::Failing(why) => Some(format!("failing: {why}; awaiting the refund")),
        _ => None,
    };
    let ok = matches!(&state, JobState::Ended(e) if e.is_ok()) && j.result.is_some();
    let settled = j.settled.as_ref();
    JobView {
        id: j.id.to_string(),
        kind: match &j.spec.kind {
            protocol::JobKind::FedRound { round, rounds, .. } => {
                format!("fed-round {round}/{rounds}")
            }
            k => k.name().into(),
        },
        state: state.name().into(),
        submitted_at_ms: j.submitted.0,
        outcome,
        done: j.done(engine),
        ok,
        provider: j.provider.map(|p| p.to_string()),
        contract: j.contract.map(|c| c.to_string()),
        price_micro_per_cu: j.terms.as_ref().map(|t| t.price.0),
        estimated_cu: j.spec.estimated_units.as_f64(),
        units_used: j.units().map(ComputeUnits::as_f64),
        escrow: j.escrow.map(|a| a.0),
        escrow_tokens: j.escrow.map(|a| a.to_string()),
        paid: settled.map(|s| s.payout.provider.0),
        paid_tokens: settled.map(|s| s.payout.provider.to_string()),
        refund: settled.map(|s| s.payout.refund.0),
        refund_tokens: settled.map(|s| s.payout.refund.to_string()),
        slashed: settled.map(|s| s.slashed.0),
        slashed_tokens: settled.map(|s| s.slashed.to_string()),
        verdict: settled.map(|s| {
            let o = s.outcome;
            VerdictView {
                delivered: o.delivered,
                result_ok: o.result_ok,
                sla_ok: o.sla_ok,
                violations: o.violations,
            }
        }),
        result: j.result.as_ref().map(|r| r.path.clone()),
        metrics: j
            .result
            .as_ref()
            .and_then(|r| serde_json::from_value(r.metrics.clone()).ok()),
        progress: j.progress,
        events: j
            .events
            .iter()
            .map(|(t, w)| JobEvent {
                at_s: t.since(j.submitted).as_secs_f64(),
                what: w.clone(),
            })
            .collect(),
    }
}

/// The job with id (or contract id) starting with `id`.
pub(super) fn find_job(core: &NodeCore<FileStore>, id: &str) -> anyhow::Result<JobView> {
    let found: Vec<&Job> = core
        .jobs()
        .filter(|j| {
            j.id.to_string().starts_with(id)
                || j.contract.is_some_and(|c| c.to_string().starts_with(id))
        })
        .collect();
    match (id.len(), found.as_slice()) {
        (0, _) => anyhow::bail!("give a job id (or a prefix of one)"),
        (_, [j]) => Ok(job_view(core, j)),
        (_, []) => anyhow::bail!("no job {id} on this node; `cloudchain jobs` lists them"),
        (_, many) => anyhow::bail!("{} jobs start with {id}; give more digits", many.len()),
    }
}

pub(super) fn offers(core: &NodeCore<FileStore>, now: Timestamp) -> Vec<OfferView> {
    let mut offers: Vec<&protocol::Offer> = core
        .requester()
        .book()
        .iter()
        .map(|e| &*e.offer)
        .filter(|o| o.expires_at > now)
        .collect();
    offers.sort_by_key(|o| (o.price, o.provider));
    offers
        .into_iter()
        .map(|o| OfferView {
            provider: o.provider.to_string(),
            class: format!("{:?}", o.class),
            device: o.device.clone(),
            speed_cu_per_s: o.speed_milli_cu_per_s as f64 / 1000.0,
            price_micro_per_cu: o.price.0,
            free_slots: o.slots.saturating_sub(o.busy_slots),
            region: o.region.clone(),
            expires_in_s: o.expires_at.since(now).as_secs_f64(),
        })
        .collect()
}

pub(super) fn balance(
    core: &mut NodeCore<FileStore>,
    account: Option<String>,
) -> anyhow::Result<BalanceView> {
    let a = parse_account(core, account)?;
    let ledger = core.ledger();
    let spendable = ledger.spendable(&a).0;
    let finalized_epoch = ledger.finalized_epoch();
    let st = ledger.state();
    let (balance, stake) = (st.balance(&a).0, st.stake(&a).0);
    let bond = st.bonds.get(&a).map_or(0, |b| b.0);
    Ok(BalanceView {
        account: a.to_string(),
        balance,
        balance_tokens: token_string(balance),
        spendable,
        spendable_tokens: token_string(spendable),
        stake,
        stake_tokens: token_string(stake),
        bond,
        bond_tokens: token_string(bond),
        finalized_epoch,
    })
}

fn parse_account(core: &NodeCore<FileStore>, account: Option<String>) -> anyhow::Result<AccountId> {
    match account {
        Some(s) => s
            .parse()
            .map_err(|e| anyhow::anyhow!("{s:?} is not an account id: {e}")),
        None => Ok(core.account()),
    }
}

/// `account`'s earnings from the entries this replica holds: settlements that
/// paid it as provider (and what they slashed of its bond), its oracle fees,
/// and the reward mints of the final checkpoints. A settlement counts once
/// (the one the state took, else the earliest valid one).
pub(super) fn earnings(
    core: &mut NodeCore<FileStore>,
    account: Option<String>,
) -> anyhow::Result<EarningsView> {
    let me = parse_account(core, account)?;
    let mut history: Vec<EarningView> = Vec::new();
    let point = |at_ms, epoch, kind: &str, amount: u64, contract: Option<String>| EarningView {
        at_ms,
        epoch,
        kind: kind.into(),
        amount,
        amount_tokens: token_string(amount),
        contract,
        total: 0,
    };
    let mints: Vec<(u64, u64)> = core
        .ledger()
        .checkpoints()
        .iter()
        .filter_map(|c| c.body_unverified().ok())
        .filter_map(|b| {
            let m = b.mint.iter().find(|(a, _)| *a == me)?;
            Some((b.epoch, m.1.0))
        })
        .collect();
    let ledger = core.ledger();
    for (epoch, amount) in mints {
        let at = ledger.epoch_end(epoch).0;
        history.push(point(at, Some(epoch), "minted", amount, None));
    }
    let invalid: std::collections::HashSet<protocol::Hash32> =
        ledger.invalid().iter().map(|i| i.id.hash).collect();
    let taken = ledger.state().settled.clone();
    let mut providers = std::collections::HashMap::new();
    let mut settlements = std::collections::BTreeMap::new();
    for e in ledger.entries() {
        match &e.data.body {
            Body::EscrowLock { contract } => {
                if let Ok(t) = contract.body_unverified() {
                    providers.insert(contract.body_hash(), t.provider);
                }
            }
            Body::Settlement { cert, payout } if !invalid.contains(&e.hash) => {
                let chosen = taken.get(&cert.contract) == Some(&e.hash);
                let key = (cert.contract, !chosen, e.data.created_at.0);
                settlements.insert(key, (e.data.created_at.0, cert.epoch, payout.clone()));
            }
            _ => {}
        }
    }
    let st = ledger.state();
    let mut seen = std::collections::HashSet::new();
    for ((contract, _, _), (at, epoch, payout)) in settlements {
        if !seen.insert(contract) {
            continue;
        }
        let c = Some(contract.to_string());
        if providers.get(&contract) == Some(&me) {
            if payout.provider.0 > 0 {
                history.push(point(at, Some(epoch), "paid", payout.provider.0, c.clone()));
            }
            if let Some(s) = st.slash_of(&me, &contract).filter(|s| s.0 > 0) {
                history.push(point(at, Some(epoch), "slashed", s.0, c.clone()));
            }
        }
        for (o, fee) in &payout.fees {
            if *o == me && fee.0 > 0 {
                history.push(point(at, Some(epoch), "fee", fee.0, c.clone()));
            }
        }
    }
    history.sort_by_key(|p| p.at_ms);
    let (mut paid, mut minted, mut fees, mut slashed, mut net) = (0u64, 0u64, 0u64, 0u64, 0i64);
    for p in &mut history {
        let signed = i64::try_from(p.amount).unwrap_or(i64::MAX);
        match p.kind.as_str() {
            "paid" => paid = paid.saturating_add(p.amount),
            "minted" => minted = minted.saturating_add(p.amount),
            "fee" => fees = fees.saturating_add(p.amount),
            _ => slashed = slashed.saturating_add(p.amount),
        }
        net = if p.kind == "slashed" {
            net.saturating_sub(signed)
        } else {
            net.saturating_add(signed)
        };
        p.total = net;
    }
    Ok(EarningsView {
        account: me.to_string(),
        paid,
        paid_tokens: token_string(paid),
        minted,
        minted_tokens: token_string(minted),
        fees,
        fees_tokens: token_string(fees),
        slashed,
        slashed_tokens: token_string(slashed),
        net,
        net_tokens: signed_token_string(net),
        history,
    })
}

/// The committee of the next checkpoint, the epochs and the last checkpoints.
pub(super) fn committee_view(core: &mut NodeCore<FileStore>, now: Timestamp) -> CommitteeView {
    let me = core.account();
    let ledger = core.ledger();
    // The epoch running now (its checkpoint comes at its end).
    let epoch = ledger.ended_epoch(now) + 1;
    let finalized_epoch = ledger.finalized_epoch();
    let epoch_length_s = ledger.params().epoch_length.0 as f64 / 1000.0;
    let committee = ledger
        .committee_for_checkpoint(finalized_epoch + 1)
        .unwrap_or_default();
    let backup = ledger.finalized_state().backup.clone();
    let recent: Vec<CheckpointView> = ledger
        .checkpoints()
        .iter()
        .rev()
        .take(20)
        .filter_map(|ms| {
            let b = ms.body_unverified().ok()?;
            let minted = b.mint.iter().map(|(_, a)| a.0).sum();
            Some(CheckpointView {
                epoch: b.epoch,
                round: b.round,
                proposer: b.proposer.to_string(),
                signatures: ms.signatures.len(),
                authors: b.frontier.len(),
                minted,
                minted_tokens: token_string(minted),
                at_ms: 0,
            })
        })
        .collect();
    let mut checkpoints = recent;
    for c in &mut checkpoints {
        c.at_ms = ledger.epoch_end(c.epoch).0;
    }
    CommitteeView {
        epoch,
        finalized_epoch,
        finality_lag: (epoch - 1).saturating_sub(finalized_epoch),
        epoch_length_s,
        epoch_ends_at_ms: ledger.epoch_end(epoch).0,
        leader: committee.first().map(|a| a.to_string()),
        member: committee.contains(&me),
        committee: committee.iter().map(|a| a.to_string()).collect(),
        backup: backup.iter().map(|a| a.to_string()).collect(),
        checkpoints,
    }
}

pub(super) fn ledger_view(core: &mut NodeCore<FileStore>, tail: usize) -> LedgerView {
    let network = core.network().to_string();
    let ledger = core.ledger();
    let finalized_epoch = ledger.finalized_epoch();
    let invalid = ledger.invalid().len();
    let total_supply = ledger
        .state()
        .total_supply()
        .map(|a| a.0)
        .unwrap_or_default();
    let mut all: Vec<EntryView> = ledger
        .entries()
        .map(|e| EntryView {
            author: e.data.author.to_string(),
            seq: e.data.seq,
            kind: e.data.body.name().into(),
            created_at_ms: e.data.created_at.0,
            hash: e.hash.to_string(),
            detail: describe(&e.data.body),
        })
        .collect();
    all.sort_by_key(|e| (e.created_at_ms, e.author.clone(), e.seq));
    let entries = all.len();
    let tail = all.split_off(entries.saturating_sub(tail));
    LedgerView {
        network,
        entries,
        finalized_epoch,
        invalid,
        total_supply,
        tail,
    }
}

pub(super) fn describe(b: &Body) -> String {
    match b {
        Body::Transfer { to, amount } => format!("{amount} to {}", to.short()),
        Body::Stake { amount }
        | Body::Unstake { amount }
        | Body::Bond { amount }
        | Body::Unbond { amount } => amount.to_string(),
        Body::Expire { contract } => {
            format!("contract {} expired: escrow refunded", contract.short())
        }
        Body::EscrowLock { contract } => match contract.body_unverified() {
            Ok(t) => format!(
                "contract {} between {} and {}, escrow {}",
                contract.body_hash().short(),
                t.requester.short(),
                t.provider.short(),
                t.escrow().unwrap_or_default()
            ),
            Err(_) => "unreadable contract".into(),
        },
        Body::Settlement { cert, payout } => format!(
            "contract {} epoch {}: provider {}, refund {}, {} verdicts",
            cert.contract.short(),
            cert.epoch,
            payout.provider,
            payout.refund,
            cert.verdicts.len()
        ),
        Body::Checkpoint(ms) => match ms.body_unverified() {
            Ok(c) => format!(
                "epoch {} by {}, {} signatures, minted to {} providers",
                c.epoch,
                c.proposer.short(),
                ms.signatures.len(),
                c.mint.len()
            ),
            Err(_) => "unreadable checkpoint".into(),
        },
        other => other.name().into(),
    }
}

/// How an ended job ended, for metrics: ok, failed, expired or refused.
fn end_label(view: &JobView) -> &'static str {
    match view.state.as_str() {
        _ if view.ok => "ok",
        "expired" => "expired",
        "refused" => "refused",
        _ => "failed",
    }
}

/// What `/metrics` reports of the node, read at the scrape.
pub(super) fn metrics_snapshot(
    core: &mut NodeCore<FileStore>,
    now: Timestamp,
    info: &crate::net::NetInfo,
    blobs: &crate::blobs::BlobNode,
) -> crate::metrics::Snapshot {
    let mut s = crate::metrics::Snapshot::default();
    {
        let engine = core.requester();
        for j in core.jobs() {
            *s.jobs
                .entry(j.state(engine).name().to_string())
                .or_default() += 1;
            if j.done(engine) {
                let v = job_view(core, j);
                *s.jobs_ended.entry(end_label(&v)).or_default() += 1;
                let end = j.events.last().map_or(j.submitted, |(t, _)| *t);
                s.ended_after
                    .push((v.id, end.since(j.submitted).as_secs_f64()));
            }
        }
    }
    if let Some(o) = core.oracle() {
        let st = o.stats();
        (s.verdicts_signed, s.checks, s.wrong_results_found) =
            (st.verdicts, st.checks, st.wrong_results);
    }
    let tokens = |micro: u64| micro as f64 / 1e6;
    if let Ok(e) = earnings(core, None) {
        s.earned = BTreeMap::from([
            ("paid", tokens(e.paid)),
            ("minted", tokens(e.minted)),
            ("fees", tokens(e.fees)),
            ("slashed", tokens(e.slashed)),
        ]);
    }
    let me = core.account();
    let ledger = core.ledger();
    s.ledger_entries = ledger.entry_count() as i64;
    s.ledger_invalid = ledger.invalid().len() as i64;
    s.finalized_epoch = ledger.finalized_epoch() as i64;
    s.epoch = ledger.ended_epoch(now) as i64 + 1;
    s.committee_member = ledger
        .committee_for_checkpoint(s.finalized_epoch as u64 + 1)
        .is_some_and(|c| c.contains(&me));
    let st = ledger.state();
    s.balance = tokens(st.balance(&me).0);
    s.stake = tokens(st.stake(&me).0);
    s.bond = tokens(st.bonds.get(&me).map_or(0, |b| b.0));
    for p in &info.peers {
        let kind = if p.direct > 0 { "direct" } else { "relayed" };
        *s.peers.entry(kind).or_default() += 1;
    }
    s.hole_punches = info.hole_punches as i64;
    s.relay_slots = info.reservations.len() as i64;
    for f in blobs.recent_fetches() {
        *s.recent_fetch_bytes.entry(f.path.clone()).or_default() += f.bytes as i64;
    }
    (s.blob_bytes_in, s.blob_bytes_out) = blobs.traffic();
    s
}
