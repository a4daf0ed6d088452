//! The ledger state and the deterministic fold that produces it.
//!
//! The state is never stored as CRDT values: it is recomputed from the signed
//! entries. Entries are applied in **batches**: first each final checkpoint's batch
//! in checkpoint order, then the pending batch (entries no final checkpoint covers
//! yet). Within a batch the order is canonical: by phase (0: transfers, stakes,
//! unstakes, escrow locks, SLA records, checkpoints; 1: settlements; 2: slashes),
//! then by `(author, seq)`.
//!
//! **Spending rule.** A debit (transfer, stake, escrow lock) is valid only if the
//! author's balance at the *start of the batch* — for the pending batch, its
//! finalized balance — covers it together with the author's own earlier debits in
//! the batch. Credits received in a batch become spendable in the next one. Since
//! an author's chain is linear this check involves only the author's own entries,
//! so the result does not depend on which other entries a replica has seen yet,
//! and no balance can go negative.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use protocol::settlement::{Outcome, payout};
use protocol::{AccountId, Amount, ContractTerms, Hash32, NetworkId};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{CheckpointBody, committee_seed, draw_committee};
use crate::entry::{Body, GenesisEntry, Offence, Params, SlaRecord, Ve};
use crate::error::{Invalid, InvalidReason};

/// How many SLA events are kept per provider.
pub const SLA_HISTORY: usize = 32;
/// The most probes one SLA record may count (a member probes a provider a few
/// times an epoch; more is a griefer's number).
pub const MAX_RECORD_PROBES: u32 = 256;
/// How many epochs back an SLA record may speak of (older ones are refused,
/// and the one-record-per-epoch index forgets them).
pub const SLA_RECORD_EPOCHS: u64 = 16;
/// How many epochs after the epoch it names a double sign may be slashed
/// (older proofs are refused, and the record of what was slashed forgets
/// them). Unstaked stake leaves after `unbonding_epochs`; this is longer.
pub const SLASH_EPOCHS: u64 = 64;

/// A contract may be locked only while its deadline is at most this many
/// epoch lengths before the start of the epoch the lock joins (a lock written
/// in time but just missing its epoch's checkpoint still joins the next; a
/// skipped epoch does not move the start)...
pub const LOCK_GRACE_EPOCHS: u64 = 2;
/// ...and only if its deadline is at most this far after that start. So a
/// settled contract can never be locked again once its deadline is
/// `LOCK_GRACE_EPOCHS` past, and the record of it is pruned then.
pub const MAX_CONTRACT_SPAN: protocol::DurationMs = protocol::DurationMs(30 * 24 * 3_600_000);

/// An open escrow, locked for a contract (removed when settled).
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Escrow {
    pub requester: AccountId,
    pub provider: AccountId,
    pub amount: Amount,
    pub terms: ContractTerms,
    /// The epoch it was locked in (the one after the last final checkpoint
    /// when it was folded): its committee watches and settles it.
    pub epoch: u64,
    /// The hash of the lock entry (which holds the contract both signed).
    pub lock: Hash32,
    /// The provider's bond this contract reserves (`provider_bond` of the
    /// escrow): slashed if the committee proves the result wrong.
    pub bond: Amount,
}

/// One SLA event in a provider's history.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum SlaEvent {
    /// A settled contract, and what it slashed of the provider's bond.
    Settled {
        contract: Hash32,
        epoch: u64,
        outcome: Outcome,
        slashed: Amount,
    },
    /// A committee member's probe summary.
    Probes(SlaRecord),
}

impl SlaEvent {
    /// Where the event sorts in a provider's history: by epoch, settlements
    /// before probe summaries, then by contract or by the counts (equal keys
    /// are equal events).
    pub fn sort_key(&self) -> (u64, u8, [u8; 32], [u32; 3]) {
        match self {
            SlaEvent::Settled {
                contract, epoch, ..
            } => (*epoch, 0, contract.0, [0; 3]),
            SlaEvent::Probes(r) => (
                r.epoch,
                1,
                [0; 32],
                [r.probes, r.answered, r.mean_latency_ms],
            ),
        }
    }
}

/// A provider's record, the input of the market's quality score.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug, Serialize, Deserialize)]
pub struct Reputation {
    pub jobs: u64,
    pub jobs_ok: u64,
    pub violations: u64,
    pub units_milli: u64,
    pub probes: u64,
    pub answered: u64,
}

/// The job share past which a longer history earns nothing more: five good
/// jobs in a row reach it. Past a few good jobs the bond, not the history,
/// insures the requester; and a self-dealer that buys itself a long record of
/// good jobs gains no edge over an honest provider with a short one.
pub const TRUSTED_SCORE_BPS: u64 = 8_500;

/// Jobs on record below which a provider is young: its score says little yet,
/// and requesters give young providers a share of their matches (see
/// `protocol::market::MatchConfig::explore`), so that an honest newcomer earns
/// its record in the market rather than by buying it from itself.
pub const ESTABLISHED_JOBS: u64 = 5;

impl Reputation {
    /// Fewer than [`ESTABLISHED_JOBS`] jobs on record.
    pub fn is_young(&self) -> bool {
        self.jobs < ESTABLISHED_JOBS
    }

    /// A score in basis points: the share of good jobs, through a prior of one
    /// good and one bad job and at most [`TRUSTED_SCORE_BPS`], times the share
    /// of answered probes. A new account starts at 5 000, below any provider
    /// with a few good jobs and more than one failure in ten: a key thrown
    /// away after a failure buys nothing.
    pub fn score_bps(&self) -> u16 {
        let jobs = self
            .jobs_ok
            .saturating_add(1)
            .saturating_mul(10_000)
            .checked_div(self.jobs.saturating_add(2))
            .unwrap_or(5_000)
            .min(TRUSTED_SCORE_BPS);
        let probes = self
            .answered
            .min(self.probes)
            .saturating_mul(10_000)
            .checked_div(self.probes)
            .unwrap_or(10_000);
        (jobs.saturating_mul(probes) / 10_000).min(10_000) as u16
    }
}

/// Where tokens came from: total supply = genesis + minted − burned.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug, Serialize, Deserialize)]
pub struct Supply {
    pub genesis: Amount,
    pub minted: Amount,
    pub burned: Amount,
}

impl Supply {
    pub fn expected(&self) -> Option<Amount> {
        self.genesis
            .checked_add(self.minted)?
            .checked_sub(self.burned)
    }
}

/// What federated jobs spent of one owner's data sets: per (data set,
/// federated job), the requester, the ε in millionths and the rounds served.
pub type OwnerSpends = BTreeMap<(Hash32, Hash32), (AccountId, u64, BTreeSet<u32>)>;

/// Balances, stakes, escrows, SLA history, reputation and the committee schedule.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct State {
    /// The last finalized epoch (0 before the first checkpoint).
    pub epoch: u64,
    /// The hash of the last final checkpoint's body (the network id at first).
    pub last_checkpoint: Hash32,
    pub balances: BTreeMap<AccountId, Amount>,
    pub stakes: BTreeMap<AccountId, Amount>,
    /// Unbonding stake: (epoch at whose checkpoint it is released, amount).
    pub unbonding: BTreeMap<AccountId, Vec<(u64, Amount)>>,
    /// Open escrows by contract id.
    pub escrows: BTreeMap<Hash32, Escrow>,
    /// Contracts already settled (never locked or settled again), each with the
    /// hash of the settlement entry that settled it. Pruned once the contract's
    /// deadline is [`LOCK_GRACE_EPOCHS`] past (no lock of it is valid any more).
    pub settled: BTreeMap<Hash32, Hash32>,
    /// The settled contracts by deadline, for pruning `settled`.
    pub settled_by_deadline: BTreeSet<(protocol::Timestamp, Hash32)>,
    pub sla: BTreeMap<AccountId, Vec<SlaEvent>>,
    pub reputation: BTreeMap<AccountId, Reputation>,
    /// Committees by epoch (the next epoch's included). Kept for the last
    /// [`SLA_RECORD_EPOCHS`] epochs (SLA records name them) and around the lock
    /// epoch of each open escrow (whose settlement they certify).
    pub schedule: BTreeMap<u64, Vec<AccountId>>,
    /// The fallback committee for epochs after a stall.
    pub backup: Vec<AccountId>,
    /// The stakes the next draw weighs: those at the last checkpoint, frozen
    /// before the signatures that seed the draw existed (see
    /// [`crate::checkpoint::Beacon`]); each counts at most the stake its
    /// account still has at the draw.
    pub drawn_stakes: BTreeMap<AccountId, Amount>,
    /// Verified compute units per provider settled since the last checkpoint.
    pub epoch_units: BTreeMap<AccountId, u64>,
    pub supply: Supply,
    pub slashed: BTreeSet<(AccountId, Offence)>,
    /// Provider bonds.
    pub bonds: BTreeMap<AccountId, Amount>,
    /// What proven wrong results have slashed of each provider's bond, in all.
    pub bond_slashed: BTreeMap<AccountId, Amount>,
    /// The part of each provider's bond its open escrows reserve.
    pub bond_reserved: BTreeMap<AccountId, Amount>,
    /// The SLA records of the last [`SLA_RECORD_EPOCHS`] epochs, as
    /// (epoch, member, provider): one each.
    pub sla_records: BTreeSet<(u64, AccountId, AccountId)>,
    /// What federated jobs spent of each data owner's private data sets:
    /// per owner, per (data set, federated job), the requester, the ε
    /// (in millionths) the job stated and the rounds served, written when a
    /// round's update was delivered. A job's rounds count once. Never pruned: a budget is for
    /// good.
    #[serde(default)]
    pub privacy_spent: BTreeMap<AccountId, OwnerSpends>,
}

impl State {
    /// What the ledger records as spent of `owner`'s data sets' privacy
    /// budgets (see [`State::privacy_spent`]).
    pub fn privacy_spends(&self, owner: &AccountId) -> Vec<protocol::market::PrivacySpend> {
        self.privacy_spent.get(owner).map_or_else(Vec::new, |m| {
            m.iter()
                .map(|(&(dataset, federation), (requester, micro, rounds))| {
                    protocol::market::PrivacySpend {
                        dataset,
                        federation,
                        requester: *requester,
                        epsilon: *micro as f64 / 1e6,
                        rounds: rounds.iter().copied().collect(),
                    }
                })
                .collect()
        })
    }
}

/// What the fold needs besides the state.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FoldCtx<'a> {
    pub(crate) network: &'a NetworkId,
    pub(crate) params: &'a Params,
    pub(crate) checked: &'a Mutex<SigMemo>,
    /// When epoch 0 ended (epoch `e` ends `e · epoch_length` later).
    pub(crate) genesis_time: protocol::Timestamp,
}

impl FoldCtx<'_> {
    /// When `epoch` ends (and `epoch + 1` starts).
    pub(crate) fn epoch_end(&self, epoch: u64) -> protocol::Timestamp {
        protocol::Timestamp(
            self.genesis_time
                .0
                .saturating_add(self.params.epoch_length.0.saturating_mul(epoch)),
        )
    }

    /// How long after its deadline a contract may still be locked, ms.
    pub(crate) fn lock_grace(&self) -> u64 {
        self.params.epoch_length.0.saturating_mul(LOCK_GRACE_EPOCHS)
    }
}

/// Signature checks a replica has already passed, by entry hash. An entry's bytes
/// never change, so the two contract signatures of an escrow lock, and a
/// settlement certificate's verdicts against a given committee, need checking
/// once per replica rather than at every refold of the pending batch (every new
/// settlement invalidates it) and at every check of a checkpoint proposal. Only
/// passes are remembered; a failing entry is checked again, and fails again.
#[derive(Debug, Default)]
pub(crate) struct SigMemo {
    locks: HashSet<Hash32>,
    /// Entry hash → (the committee it was checked against, what `check` returned).
    certs: HashMap<Hash32, (Vec<AccountId>, Outcome, Vec<AccountId>)>,
}

/// Per-author debits made in the batch being applied.
#[derive(Clone, Default, Debug)]
pub(crate) struct BatchDebits {
    pub(crate) balance: HashMap<AccountId, Amount>,
    pub(crate) stake: HashMap<AccountId, Amount>,
}

impl State {
    /// The state of a fresh network.
    pub fn genesis(g: &GenesisEntry) -> Result<State, crate::LedgerError> {
        let network = g.network();
        let gd = g.genesis();
        let supply = g
            .supply()
            .ok_or_else(|| crate::LedgerError::Genesis("genesis supply overflows".into()))?;
        if supply.checked_add(gd.params.reward_cap).is_none() {
            return Err(crate::LedgerError::Genesis(
                "genesis supply plus reward cap overflows".into(),
            ));
        }
        let balances: BTreeMap<_, _> = gd.balances.iter().copied().collect();
        let stakes: BTreeMap<_, _> = gd.stakes.iter().copied().collect();
        let bonds: BTreeMap<_, _> = gd.bonds.iter().copied().collect();
        let start = Hash32(network.0);
        let k = usize::from(gd.params.committee_size);
        let none = crate::checkpoint::Beacon::hash(None);
        let first = draw_committee(
            &committee_seed("next", &start, 0, &none),
            &stakes,
            gd.params.min_stake,
            k,
        );
        let backup = draw_committee(
            &committee_seed("backup", &start, 0, &none),
            &stakes,
            gd.params.min_stake,
            k,
        );
        Ok(State {
            epoch: 0,
            last_checkpoint: start,
            balances,
            drawn_stakes: stakes.clone(),
            stakes,
            unbonding: BTreeMap::new(),
            escrows: BTreeMap::new(),
            settled: BTreeMap::new(),
            settled_by_deadline: BTreeSet::new(),
            sla: BTreeMap::new(),
            reputation: BTreeMap::new(),
            schedule: BTreeMap::from([(1, first)]),
            backup,
            epoch_units: BTreeMap::new(),
            supply: Supply {
                genesis: supply,
                ..Supply::default()
            },
            slashed: BTreeSet::new(),
            bonds,
            bond_slashed: BTreeMap::new(),
            bond_reserved: BTreeMap::new(),
            sla_records: BTreeSet::new(),
            privacy_spent: BTreeMap::new(),
        })
    }

    pub fn balance(&self, a: &AccountId) -> Amount {
        self.balances.get(a).copied().unwrap_or_default()
    }
    /// What a fork or a double sign by `a` burns a share of: its stake, bond
    /// and unbonding tokens.
    pub fn slashable(&self, a: &AccountId) -> Amount {
        self.stake(a)
            .saturating_add_amount(self.bonds.get(a).copied().unwrap_or_default())
            .saturating_add_amount(self.unbonding(a))
    }
    /// A provider's bond not reserved by its open escrows: what a new
    /// contract may reserve.
    pub fn free_bond(&self, a: &AccountId) -> Amount {
        let bond = self.bonds.get(a).copied().unwrap_or_default();
        bond.saturating_sub(self.bond_reserved.get(a).copied().unwrap_or_default())
    }
    /// What the settlement of `contract` slashed of `provider`'s bond, while
    /// the provider's recent SLA history still holds it.
    pub fn slash_of(&self, provider: &AccountId, contract: &Hash32) -> Option<Amount> {
        self.sla.get(provider)?.iter().rev().find_map(|e| match e {
            SlaEvent::Settled {
                contract: c,
                slashed,
                ..
            } if c == contract => Some(*slashed),
            _ => None,
        })
    }
    pub fn stake(&self, a: &AccountId) -> Amount {
        self.stakes.get(a).copied().unwrap_or_default()
    }
    pub fn unbonding(&self, a: &AccountId) -> Amount {
        self.unbonding
            .get(a)
            .map(|v| Amount(v.iter().map(|(_, x)| x.0).sum()))
            .unwrap_or_default()
    }

    /// The committee of `epoch`: from the schedule, or the backup committee for an
    /// epoch after a stall.
    pub fn committee_for(&self, epoch: u64) -> Option<&[AccountId]> {
        if let Some(c) = self.schedule.get(&epoch) {
            return Some(c);
        }
        (epoch > self.epoch + 1).then_some(self.backup.as_slice())
    }

    /// The hash that a checkpoint's `state_root` names.
    pub fn root(&self) -> Hash32 {
        // Encoding a state cannot fail (no size limit, only plain data).
        protocol::codec::hash_unbounded("ledger-state", self)
            .map_or_else(|_| Hash32(*blake3::hash(&[]).as_bytes()), Hash32)
    }

    /// Every token accounted for: liquid, staked, bonded, unbonding and in open
    /// escrows.
    pub fn total_supply(&self) -> Option<Amount> {
        let mut t = Amount::ZERO;
        for a in self
            .balances
            .values()
            .chain(self.stakes.values())
            .chain(self.bonds.values())
        {
            t = t.checked_add(*a)?;
        }
        for v in self.unbonding.values() {
            for (_, a) in v {
                t = t.checked_add(*a)?;
            }
        }
        for e in self.escrows.values() {
            t = t.checked_add(e.amount)?;
        }
        Some(t)
    }

    fn credit(&mut self, to: AccountId, amount: Amount) -> Result<(), InvalidReason> {
        let b = self.balances.entry(to).or_default();
        *b = b.checked_add(amount).ok_or(InvalidReason::Overflow)?;
        Ok(())
    }

    fn debit(
        &mut self,
        base: &State,
        debits: &mut BatchDebits,
        who: AccountId,
        amount: Amount,
    ) -> Result<(), InvalidReason> {
        if amount == Amount::ZERO {
            return Err(InvalidReason::ZeroAmount);
        }
        let spent = debits.balance.get(&who).copied().unwrap_or_default();
        let spendable = base.balance(&who).saturating_sub(spent);
        if amount > spendable {
            return Err(InvalidReason::Overspend { amount, spendable });
        }
        let b = self.balances.entry(who).or_default();
        *b = b.checked_sub(amount).ok_or(InvalidReason::Overspend {
            amount,
            spendable: *b,
        })?;
        debits
            .balance
            .insert(who, spent.saturating_add_amount(amount));
        Ok(())
    }

    /// Apply a batch of structurally valid entries on top of `base` (which `self`
    /// starts as a copy of) in canonical order. Invalid entries are skipped and
    /// reported; the debits made are returned for the spending rule.
    pub(crate) fn apply_batch(
        &mut self,
        base: &State,
        entries: &[Ve],
        ctx: FoldCtx<'_>,
        invalid: &mut Vec<Invalid>,
        mut late: Option<&mut LateEntries>,
    ) -> BatchDebits {
        let mut order: Vec<&Ve> = entries.iter().collect();
        order.sort_by_key(|e| canonical_key(e));
        let mut debits = BatchDebits::default();
        for e in order {
            if let Some(late) = late.as_deref_mut()
                && let Some(f) = self.footprint(e)
            {
                late.insert(canonical_key(e), f);
            }
            if let Err(reason) = self.apply_prepared(base, &mut debits, e, ctx) {
                invalid.push(Invalid { id: e.id(), reason });
            }
        }
        debits
    }

    /// The contract whose escrow entry `body` may open or close (a lock, a
    /// settlement or an expiry), for the feed of escrow changes.
    pub(crate) fn escrow_touched(body: &Body) -> Option<Hash32> {
        match body {
            Body::EscrowLock { contract } => Some(contract.body_hash()),
            Body::Settlement { cert, .. } => Some(cert.contract),
            Body::Expire { contract } => Some(*contract),
            _ => None,
        }
    }

    /// What entry `e` would touch if applied to this state next, if it is a
    /// settlement, an expiry, an SLA record, an unbond or a slash (`None` for
    /// the other phase-0 entries: transfers, stakes, unstakes and locks
    /// commute with all but an unbond or a slash; bonds and checkpoints are
    /// never applied on top).
    pub(crate) fn footprint(&self, e: &Ve) -> Option<Footprint> {
        let (contract, slashes) = match &e.data.body {
            // The certified outcome is one of the verdicts': a settlement
            // slashes only if one of them says delivered and wrong.
            Body::Settlement { cert, .. } => (
                cert.contract,
                cert.verdicts.iter().any(|v| {
                    v.body_unverified()
                        .map_or(true, |v| v.delivered && !v.result_ok)
                }),
            ),
            Body::Expire { contract } => (*contract, false),
            Body::SlaRecord(rec) => {
                return Some(Footprint::Sla {
                    provider: rec.provider,
                    author: e.data.author,
                });
            }
            // It reads the free bond, which locks of other authors reserve.
            Body::Unbond { .. } => return Some(Footprint::Any),
            b if phase(b) == 0 => return None,
            _ => return Some(Footprint::Any),
        };
        let escrow = self.escrows.get(&contract);
        // A privacy spend records its requester once per data set: it does
        // not commute with another spend on the same provider.
        let spends =
            escrow.is_some_and(|x| protocol::market::PrivacySpend::of(&x.terms.spec).is_some());
        Some(Footprint::Settles {
            contract,
            provider: escrow.map(|x| x.provider),
            exclusive: slashes || spends,
        })
    }

    /// Apply one entry with the batch's debits so far (used by `apply_batch`, and
    /// by `Ledger::append` to try a local entry before writing it).
    pub(crate) fn apply_prepared(
        &mut self,
        base: &State,
        debits: &mut BatchDebits,
        e: &Ve,
        ctx: FoldCtx<'_>,
    ) -> Result<(), InvalidReason> {
        let author = e.data.author;
        match &e.data.body {
            Body::Transfer { to, amount } => {
                // Check the credit first so a failure leaves nothing half-done.
                self.balance(to)
                    .checked_add(*amount)
                    .ok_or(InvalidReason::Overflow)?;
                self.debit(base, debits, author, *amount)?;
                self.credit(*to, *amount)
            }
            // Committee stake and provider bond alike: liquid tokens locked up.
            Body::Stake { amount } | Body::Bond { amount } => {
                self.debit(base, debits, author, *amount)?;
                let pool = if matches!(e.data.body, Body::Stake { .. }) {
                    &mut self.stakes
                } else {
                    &mut self.bonds
                };
                let s = pool.entry(author).or_default();
                *s = s.checked_add(*amount).ok_or(InvalidReason::Overflow)?;
                Ok(())
            }
            Body::Unstake { amount } => {
                if *amount == Amount::ZERO {
                    return Err(InvalidReason::ZeroAmount);
                }
                let done = debits.stake.get(&author).copied().unwrap_or_default();
                let bonded = base
                    .stake(&author)
                    .saturating_sub(done)
                    .min(self.stake(&author));
                if *amount > bonded {
                    return Err(InvalidReason::InsufficientStake {
                        amount: *amount,
                        bonded,
                    });
                }
                let release = self.release_epoch(ctx.params);
                start_unbonding(
                    &mut self.stakes,
                    &mut self.unbonding,
                    author,
                    *amount,
                    release,
                );
                debits
                    .stake
                    .insert(author, done.saturating_add_amount(*amount));
                Ok(())
            }
            Body::EscrowLock { contract } => {
                let terms = contract
                    .body_unverified()
                    .map_err(|e| InvalidReason::BadContract(e.to_string()))?;
                if !memo(ctx).locks.contains(&e.hash) {
                    contract
                        .verify_signers(ctx.network, &[terms.requester, terms.provider])
                        .map_err(|e| InvalidReason::BadContract(e.to_string()))?;
                    memo(ctx).locks.insert(e.hash);
                }
                if terms.network != *ctx.network {
                    return Err(InvalidReason::BadContract("for another network".into()));
                }
                if terms.requester != author {
                    return Err(InvalidReason::BadContract(format!(
                        "locked by {:?}, the requester is {:?}",
                        author, terms.requester
                    )));
                }
                if terms.requester == terms.provider {
                    return Err(InvalidReason::BadContract(
                        "requester and provider are the same account".into(),
                    ));
                }
                let id = contract.body_hash();
                if self.escrows.contains_key(&id) || self.settled.contains_key(&id) {
                    return Err(InvalidReason::AlreadyLocked(id));
                }
                // The lock joins epoch `self.epoch + 1`: its deadline must not
                // lie long before that epoch's start (a settled contract's
                // record is pruned then) nor too far after it.
                let start = ctx.epoch_end(self.epoch);
                let deadline = terms.deadline;
                if deadline.0.saturating_add(ctx.lock_grace()) < start.0 {
                    return Err(InvalidReason::ContractDeadline {
                        contract: id,
                        deadline,
                        what: "past",
                    });
                }
                if deadline.0 > start.0.saturating_add(MAX_CONTRACT_SPAN.0) {
                    return Err(InvalidReason::ContractDeadline {
                        contract: id,
                        deadline,
                        what: "more than 30 days ahead",
                    });
                }
                let amount = terms.escrow().ok_or(InvalidReason::Overflow)?;
                self.debit(base, debits, author, amount)?;
                // The lock reserves the provider's bond whatever is free: the
                // rule must commute with other requesters' locks. Requesters
                // match only providers whose free bond covers a contract, and a
                // slash takes at most what is there.
                let bond = ctx.params.contract_bond(amount);
                let r = self.bond_reserved.entry(terms.provider).or_default();
                *r = r.saturating_add_amount(bond);
                self.escrows.insert(
                    id,
                    Escrow {
                        requester: terms.requester,
                        provider: terms.provider,
                        amount,
                        terms,
                        epoch: self.epoch + 1,
                        lock: e.hash,
                        bond,
                    },
                );
                Ok(())
            }
            Body::Expire { contract } => {
                let Some(escrow) = self.escrows.get(contract) else {
                    return Err(if self.settled.contains_key(contract) {
                        InvalidReason::AlreadySettled(*contract)
                    } else {
                        InvalidReason::UnknownContract(*contract)
                    });
                };
                let due = escrow.terms.deadline.plus(ctx.params.expire_after);
                if ctx.epoch_end(self.epoch) < due {
                    return Err(InvalidReason::Malformed(format!(
                        "the escrow may be expired from {due:?} on (the deadline + {} s), \
                         and the last final epoch ended at {:?}",
                        ctx.params.expire_after.0 / 1000,
                        ctx.epoch_end(self.epoch)
                    )));
                }
                let (requester, provider, bond, amount, deadline) = (
                    escrow.requester,
                    escrow.provider,
                    escrow.bond,
                    escrow.amount,
                    escrow.terms.deadline,
                );
                self.release_bond(provider, bond);
                self.credit(requester, amount)?;
                self.escrows.remove(contract);
                self.settled.insert(*contract, e.hash);
                self.settled_by_deadline.insert((deadline, *contract));
                Ok(())
            }
            Body::Settlement {
                cert,
                payout: claimed,
            } => {
                let Some(escrow) = self.escrows.get(&cert.contract) else {
                    return Err(if self.settled.contains_key(&cert.contract) {
                        InvalidReason::AlreadySettled(cert.contract)
                    } else {
                        InvalidReason::UnknownContract(cert.contract)
                    });
                };
                // Only the committee of the epoch the escrow was locked in, of
                // the next (a contract that met a rotation), or of the one
                // before settles it. A lock written late in an epoch whose
                // checkpoint did not include it folds into the next epoch once
                // final, while the members that saw it pending watched it under
                // the epoch they saw then.
                if cert.epoch.saturating_add(1) < escrow.epoch || cert.epoch > escrow.epoch + 1 {
                    return Err(InvalidReason::CertEpoch {
                        cert: cert.epoch,
                        lock: escrow.epoch,
                    });
                }
                let committee = self
                    .committee_for(cert.epoch)
                    .ok_or(InvalidReason::NoCommittee(cert.epoch))?;
                let known = memo(ctx)
                    .certs
                    .get(&e.hash)
                    .filter(|(c, _, _)| c.as_slice() == committee)
                    .map(|(_, o, w)| (*o, w.clone()));
                let (outcome, oracles) = match known {
                    Some(k) => k,
                    None => {
                        let (o, w) = cert
                            .check(ctx.network, committee)
                            .map_err(|e| InvalidReason::NoQuorum(e.to_string()))?;
                        memo(ctx)
                            .certs
                            .insert(e.hash, (committee.to_vec(), o, w.clone()));
                        (o, w)
                    }
                };
                let computed = payout(&escrow.terms, &outcome, ctx.params.oracle_fee, &oracles)
                    .ok_or(InvalidReason::Overflow)?;
                if &computed != claimed {
                    return Err(InvalidReason::PayoutMismatch);
                }
                if computed.total() != Some(escrow.amount) {
                    return Err(InvalidReason::PayoutMismatch);
                }
                let (requester, provider, max_units, bond, deadline) = (
                    escrow.requester,
                    escrow.provider,
                    escrow.terms.max_units.milli,
                    escrow.bond,
                    escrow.terms.deadline,
                );
                let spend = protocol::market::PrivacySpend::of(&escrow.terms.spec);
                self.release_bond(provider, bond);
                // A proven wrong result: the bond is slashed (all of it in the
                // default rules), part to the wronged requester, the rest
                // burned.
                let held = self.bonds.get(&provider).copied().unwrap_or_default();
                let slashed = ctx.params.slashed(bond, held, &outcome);
                if slashed > Amount::ZERO {
                    self.slash_bond(provider, requester, slashed, ctx.params.bond_to_requester)?;
                }
                self.credit(provider, computed.provider)?;
                self.credit(requester, computed.refund)?;
                for (o, fee) in &computed.fees {
                    self.credit(*o, *fee)?;
                }
                self.escrows.remove(&cert.contract);
                self.settled.insert(cert.contract, e.hash);
                self.settled_by_deadline.insert((deadline, cert.contract));
                let good = outcome.delivered && outcome.result_ok;
                let units = outcome.units.milli.min(max_units);
                let rep = self.reputation.entry(provider).or_default();
                rep.jobs += 1;
                if good && outcome.sla_ok {
                    rep.jobs_ok += 1;
                }
                rep.violations = rep.violations.saturating_add(u64::from(outcome.violations));
                if good {
                    rep.units_milli = rep.units_milli.saturating_add(units);
                    let u = self.epoch_units.entry(provider).or_default();
                    *u = u.saturating_add(units);
                }
                if outcome.delivered
                    && let Some(spend) = spend
                {
                    let micro = (spend.epsilon * 1e6).ceil() as u64;
                    let e = self
                        .privacy_spent
                        .entry(provider)
                        .or_default()
                        .entry((spend.dataset, spend.federation))
                        .or_insert((spend.requester, 0, BTreeSet::new()));
                    e.1 = e.1.max(micro);
                    e.2.extend(spend.rounds);
                }
                push_sla(
                    &mut self.sla,
                    provider,
                    SlaEvent::Settled {
                        contract: cert.contract,
                        epoch: cert.epoch,
                        outcome,
                        slashed,
                    },
                );
                Ok(())
            }
            Body::SlaRecord(rec) => {
                let committee = self
                    .committee_for(rec.epoch)
                    .ok_or(InvalidReason::NoCommittee(rec.epoch))?;
                if !committee.contains(&author) {
                    return Err(InvalidReason::NotCommitteeMember(rec.epoch));
                }
                if rec.answered > rec.probes {
                    return Err(InvalidReason::Malformed(
                        "more probes answered than sent".into(),
                    ));
                }
                if rec.probes > MAX_RECORD_PROBES {
                    return Err(InvalidReason::Malformed(format!(
                        "{} probes in one record (at most {MAX_RECORD_PROBES})",
                        rec.probes
                    )));
                }
                if rec.epoch.saturating_add(SLA_RECORD_EPOCHS) <= self.epoch {
                    return Err(InvalidReason::Malformed(format!(
                        "an SLA record of epoch {}, more than {SLA_RECORD_EPOCHS} epochs ago",
                        rec.epoch
                    )));
                }
                if !self.sla_records.insert((rec.epoch, author, rec.provider)) {
                    return Err(InvalidReason::Malformed(format!(
                        "a second SLA record of epoch {} for this provider",
                        rec.epoch
                    )));
                }
                let rep = self.reputation.entry(rec.provider).or_default();
                rep.probes = rep.probes.saturating_add(u64::from(rec.probes));
                rep.answered = rep.answered.saturating_add(u64::from(rec.answered));
                push_sla(&mut self.sla, rec.provider, SlaEvent::Probes(*rec));
                Ok(())
            }
            // Finality is decided outside the fold (see `Ledger`); in a batch a
            // checkpoint entry changes nothing.
            Body::Checkpoint(_) => Ok(()),
            Body::Unbond { amount } => {
                if *amount == Amount::ZERO {
                    return Err(InvalidReason::ZeroAmount);
                }
                let free = self.free_bond(&author);
                if *amount > free {
                    return Err(InvalidReason::InsufficientBond {
                        amount: *amount,
                        free,
                    });
                }
                let release = self
                    .epoch
                    .saturating_add(1)
                    .saturating_add(ctx.params.bond_unbonding_epochs);
                start_unbonding(
                    &mut self.bonds,
                    &mut self.unbonding,
                    author,
                    *amount,
                    release,
                );
                Ok(())
            }
            Body::Slash(proof) => {
                let (offender, offence) =
                    proof.check(ctx.network).map_err(InvalidReason::BadProof)?;
                if let Offence::DoubleSign(epoch) = offence
                    && epoch.saturating_add(SLASH_EPOCHS) <= self.epoch
                {
                    return Err(InvalidReason::StaleProof(epoch));
                }
                if self.slashable(&offender) == Amount::ZERO {
                    // Nothing to take: recording it would let a stakeless
                    // key grow the record of offences for free.
                    return Err(InvalidReason::NothingToSlash);
                }
                if !self.slashed.insert((offender, offence)) {
                    return Err(InvalidReason::AlreadySlashed);
                }
                self.burn_stake(offender, ctx.params.slash);
                Ok(())
            }
        }
    }

    /// The epoch at whose checkpoint what starts unbonding now is released.
    fn release_epoch(&self, params: &Params) -> u64 {
        self.epoch
            .saturating_add(1)
            .saturating_add(params.unbonding_epochs)
    }

    fn release_bond(&mut self, provider: AccountId, bond: Amount) {
        if let Some(r) = self.bond_reserved.get_mut(&provider) {
            *r = r.saturating_sub(bond);
            if *r == Amount::ZERO {
                self.bond_reserved.remove(&provider);
            }
        }
    }

    /// Take up to `amount` of `provider`'s bond: `to_requester` of it to the
    /// requester, the rest burned.
    fn slash_bond(
        &mut self,
        provider: AccountId,
        requester: AccountId,
        amount: Amount,
        to_requester: protocol::Bps,
    ) -> Result<(), InvalidReason> {
        let Some(b) = self.bonds.get_mut(&provider) else {
            return Ok(());
        };
        let taken = amount.min(*b);
        *b = b.saturating_sub(taken);
        if *b == Amount::ZERO {
            self.bonds.remove(&provider);
        }
        let s = self.bond_slashed.entry(provider).or_default();
        *s = s.saturating_add_amount(taken);
        let paid = to_requester.of(taken);
        self.credit(requester, paid)?;
        self.supply.burned = self
            .supply
            .burned
            .saturating_add_amount(taken.saturating_sub(paid));
        Ok(())
    }

    /// Burn a share of an account's stake, bond and unbonding tokens (what a
    /// fork or a double sign costs: a requester's bond is what backs the
    /// escrows it locks before they are final).
    fn burn_stake(&mut self, who: AccountId, share: protocol::Bps) {
        let mut burned = Amount::ZERO;
        for pool in [&mut self.stakes, &mut self.bonds] {
            if let Some(s) = pool.get_mut(&who) {
                let b = share.of(*s);
                *s = s.saturating_sub(b);
                burned = burned.saturating_add_amount(b);
                if *s == Amount::ZERO {
                    pool.remove(&who);
                }
            }
        }
        if let Some(v) = self.unbonding.get_mut(&who) {
            for (_, a) in v.iter_mut() {
                let b = share.of(*a);
                *a = a.saturating_sub(b);
                burned = burned.saturating_add_amount(b);
            }
            v.retain(|(_, a)| *a > Amount::ZERO);
            if v.is_empty() {
                self.unbonding.remove(&who);
            }
        }
        self.supply.burned = self.supply.burned.saturating_add_amount(burned);
    }

    /// The reward mint of `epoch`: the scheduled amount (capped by what the cap
    /// leaves), split over providers in proportion to their verified units,
    /// each share capped by the provider's share of all provider bonds and by
    /// `mint_per_cu` for each of its units. A second key, or a self-dealing
    /// pair, earns no more per token of bond than an honest provider with the
    /// same bond; an account with no bond earns no mint; and since a unit
    /// mints less than it costs to compute, buying one's own compute to earn
    /// the mint loses money. What the caps hold back is not minted (it stays
    /// under `reward_cap`); nor is the dust of the integer split.
    pub fn reward_mint(&self, epoch: u64, params: &Params) -> Vec<(AccountId, Amount)> {
        let left = params.reward_cap.saturating_sub(self.supply.minted);
        let pool = u128::from(params.scheduled_reward(epoch).min(left).0);
        let total: u128 = self.epoch_units.values().map(|u| u128::from(*u)).sum();
        // The bonds of providers: accounts that have had a contract settled
        // (every account with units this epoch has). A requester's bond
        // backs its escrows and has no part in the mint.
        let bonded: u128 = self
            .bonds
            .iter()
            .filter(|(a, _)| self.reputation.get(*a).is_some_and(|r| r.jobs > 0))
            .map(|(_, b)| u128::from(b.0))
            .sum();
        if pool == 0 || total == 0 || bonded == 0 {
            return Vec::new();
        }
        self.epoch_units
            .iter()
            .filter(|(_, u)| **u > 0)
            .map(|(a, u)| {
                let by_units = pool * u128::from(*u) / total;
                let bond = u128::from(self.bonds.get(a).map_or(0, |b| b.0));
                let cap = pool * bond / bonded;
                // Units are milli-CU; the rate is µ-tokens per CU.
                let per_unit = u128::from(*u) * u128::from(params.mint_per_cu.0) / 1_000;
                (*a, Amount(by_units.min(cap).min(per_unit) as u64))
            })
            .filter(|(_, x)| *x > Amount::ZERO)
            .collect()
    }

    /// Close `epoch` after its batch: mint the reward, release matured unbonding,
    /// draw the next and backup committees (seeded by `prev`, the previous final
    /// checkpoint), and record the committee that signed.
    pub(crate) fn close_epoch(
        &mut self,
        epoch: u64,
        prev: &Hash32,
        beacon: &Hash32,
        signing_committee: Vec<AccountId>,
        ctx: FoldCtx<'_>,
    ) -> Result<Vec<(AccountId, Amount)>, InvalidReason> {
        let params = ctx.params;
        let mint = self.reward_mint(epoch, params);
        for (a, x) in &mint {
            self.credit(*a, *x)?;
            self.supply.minted = self
                .supply
                .minted
                .checked_add(*x)
                .ok_or(InvalidReason::Overflow)?;
        }
        self.epoch_units.clear();
        let oldest = epoch.saturating_add(1).saturating_sub(SLA_RECORD_EPOCHS);
        self.sla_records.retain(|(e, ..)| *e >= oldest);
        let mut released: Vec<(AccountId, Amount)> = Vec::new();
        for (a, v) in self.unbonding.iter_mut() {
            let mut sum = Amount::ZERO;
            v.retain(|(at, x)| {
                if *at <= epoch {
                    sum = sum.saturating_add_amount(*x);
                    false
                } else {
                    true
                }
            });
            if sum > Amount::ZERO {
                released.push((*a, sum));
            }
        }
        self.unbonding.retain(|_, v| !v.is_empty());
        for (a, x) in released {
            self.credit(a, x)?;
        }
        self.schedule.insert(epoch, signing_committee);
        let k = usize::from(params.committee_size);
        // The stakes frozen at the last checkpoint, each at most what is
        // left of it now (stake added since counts from the next draw on;
        // stake slashed or unbonded since counts no more).
        let weights: BTreeMap<AccountId, Amount> = self
            .drawn_stakes
            .iter()
            .map(|(a, x)| (*a, (*x).min(self.stake(a))))
            .collect();
        let next = draw_committee(
            &committee_seed("next", prev, epoch, beacon),
            &weights,
            params.min_stake,
            k,
        );
        let backup = draw_committee(
            &committee_seed("backup", prev, epoch, beacon),
            &weights,
            params.min_stake,
            k,
        );
        self.schedule.insert(epoch + 1, next);
        self.backup = backup;
        self.drawn_stakes = self.stakes.clone();
        self.epoch = epoch;
        self.prune(ctx);
        Ok(mint)
    }

    /// Forget what no rule can read again once `self.epoch` is final: the
    /// committees of old epochs that no open escrow or SLA record names, the
    /// settled contracts that can no longer be locked, and the double signs
    /// too old to slash. The state root covers what is kept, so every replica
    /// prunes the same.
    fn prune(&mut self, ctx: FoldCtx<'_>) {
        let epoch = self.epoch;
        let mut keep: BTreeSet<u64> = BTreeSet::new();
        for e in self.escrows.values() {
            keep.extend([
                e.epoch.saturating_sub(1),
                e.epoch,
                e.epoch.saturating_add(1),
            ]);
        }
        self.schedule
            .retain(|e, _| e.saturating_add(SLA_RECORD_EPOCHS) > epoch || keep.contains(e));
        let start = ctx.epoch_end(epoch);
        while let Some(&(deadline, contract)) = self.settled_by_deadline.first() {
            if deadline.0.saturating_add(ctx.lock_grace()) >= start.0 {
                break;
            }
            self.settled_by_deadline.pop_first();
            self.settled.remove(&contract);
        }
        self.slashed.retain(|(_, o)| match o {
            Offence::DoubleSign(e) => e.saturating_add(SLASH_EPOCHS) > epoch,
            Offence::Fork(_) => true,
        });
    }

    /// Check a proposed checkpoint body's derived fields against this state (the
    /// state after the batch and `close_epoch`).
    /// Whether `body` names this state (whose root is `root`) and `mint`.
    pub(crate) fn matches(
        &self,
        body: &CheckpointBody,
        mint: &[(AccountId, Amount)],
        root: Hash32,
    ) -> bool {
        body.mint == mint
            && self.schedule.get(&(body.epoch + 1)) == Some(&body.next_committee)
            && self.backup == body.backup_committee
            && root == body.state_root
    }
}

fn memo<'a>(ctx: FoldCtx<'a>) -> std::sync::MutexGuard<'a, SigMemo> {
    // The memo holds plain sets: a panic elsewhere cannot leave it inconsistent.
    ctx.checked
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Move `amount` of `who`'s stake or bond (`pool`) to its unbonding queue,
/// released at `release`.
fn start_unbonding(
    pool: &mut BTreeMap<AccountId, Amount>,
    unbonding: &mut BTreeMap<AccountId, Vec<(u64, Amount)>>,
    who: AccountId,
    amount: Amount,
    release: u64,
) {
    let left = pool
        .get(&who)
        .copied()
        .unwrap_or_default()
        .saturating_sub(amount);
    if left == Amount::ZERO {
        pool.remove(&who);
    } else {
        pool.insert(who, left);
    }
    unbonding.entry(who).or_default().push((release, amount));
}

/// Add `ev` to `who`'s SLA history, which keeps the [`SLA_HISTORY`] events
/// that sort last (by epoch, see [`SlaEvent::sort_key`]): the same events in
/// any order give the same history, so settlements and SLA records of one
/// provider commute.
fn push_sla(sla: &mut BTreeMap<AccountId, Vec<SlaEvent>>, who: AccountId, ev: SlaEvent) {
    let v = sla.entry(who).or_default();
    let key = ev.sort_key();
    let at = v.partition_point(|e| e.sort_key() <= key);
    v.insert(at, ev);
    if v.len() > SLA_HISTORY {
        v.remove(0);
    }
}

/// Where an entry falls in a batch's canonical order.
pub(crate) type CanonicalKey = (u8, AccountId, u64);

pub(crate) fn canonical_key(e: &Ve) -> CanonicalKey {
    (phase(&e.data.body), e.data.author, e.data.seq)
}

/// What a settlement, an expiry, an SLA record, an unbond or a slash
/// touches, for telling whether applying a new entry on top of a fold gives
/// what a refold in canonical order would (see [`State::footprint`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Footprint {
    /// A settlement or an expiry of `contract`, whose escrow (if it had one
    /// when tried) was with `provider`; `exclusive` if it may slash the
    /// provider's bond (a settlement with a verdict of a wrong result) or
    /// spends a data set's privacy budget.
    Settles {
        contract: Hash32,
        provider: Option<AccountId>,
        exclusive: bool,
    },
    /// An SLA record of `provider` by `author`.
    Sla {
        provider: AccountId,
        author: AccountId,
    },
    /// Anything else (an unbond, a slash): assumed to touch everything.
    Any,
}

impl Footprint {
    /// Whether entry `body` with footprint `mine` (from [`State::footprint`])
    /// may be applied on top of a fold that already applied `later`, the
    /// footprints of the entries that sort after it.
    pub(crate) fn on_top<'a>(
        mine: Option<&Footprint>,
        body: &Body,
        mut later: impl Iterator<Item = &'a Footprint>,
    ) -> bool {
        match mine {
            Some(f) => later.all(|l| f.commutes(l)),
            None => {
                matches!(
                    body,
                    Body::Transfer { .. }
                        | Body::Stake { .. }
                        | Body::Unstake { .. }
                        | Body::EscrowLock { .. }
                ) && later.all(|l| *l != Footprint::Any)
            }
        }
    }

    /// Whether applying `self` and `other` in either order gives the same
    /// state and the same validity to both. A settlement reads and writes
    /// its escrow and its contract's settled record; what it writes of its
    /// provider adds up in any order (the reserved bond it releases, the
    /// reputation counts, the units, the privacy spends, the SLA history,
    /// which keeps the events that sort last whatever the order they came
    /// in), except a slash, which reads the bond that another slash takes,
    /// and a privacy spend, whose record names the first requester.
    /// An SLA record reads and writes its author's record of the epoch and
    /// adds to its provider's counts and history. What else they write are
    /// credits, which add (they cannot overflow: the supply is bounded).
    pub(crate) fn commutes(&self, other: &Footprint) -> bool {
        use Footprint::{Settles, Sla};
        match (self, other) {
            (
                Settles {
                    contract: a,
                    provider: p,
                    exclusive: x,
                },
                Settles {
                    contract: b,
                    provider: q,
                    exclusive: y,
                },
            ) => a != b && p.is_some() && (p != q || !(*x || *y)),
            // Neither reads what the other writes: a record's validity is
            // its committee's and its author's, a settlement's its escrow's,
            // and a slash reads the bond, which a record does not touch.
            (Settles { .. }, Sla { .. }) | (Sla { .. }, Settles { .. }) => true,
            (
                Sla {
                    provider: p,
                    author: a,
                },
                Sla {
                    provider: q,
                    author: b,
                },
            ) => p != q || a != b,
            _ => false,
        }
    }
}

/// The entries with a footprint a fold applied (or tried), by canonical key.
pub(crate) type LateEntries = BTreeMap<CanonicalKey, Footprint>;

fn phase(b: &Body) -> u8 {
    match b {
        Body::Settlement { .. } | Body::Expire { .. } => 1,
        Body::Slash(_) => 2,
        _ => 0,
    }
}

trait SatAdd {
    fn saturating_add_amount(self, o: Amount) -> Amount;
}
impl SatAdd for Amount {
    fn saturating_add_amount(self, o: Amount) -> Amount {
        Amount(self.0.saturating_add(o.0))
    }
}
