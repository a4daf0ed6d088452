//! Aggregating the committee's verdicts into a settlement instruction.
//!
//! Each verdict is checked on arrival (signature, signer is the oracle it names,
//! committee member, right epoch, first verdict of that oracle on that contract).
//! Once ⌈2k/3⌉ members of the epoch's committee of `k` agree on one
//! [`Outcome`], the matching verdicts form a [`QuorumCert`] and the escrow split is
//! computed by [`crate::settlement::payout`]: the provider gets `P·C − λ·R` (if
//! the result was delivered and correct), the oracles in the quorum share the fee,
//! and the requester is refunded the rest. One instruction per contract.
//!
//! **Same certificate everywhere.** A member that has a quorum but not yet every
//! member's verdict waits (the engine's `quorum_wait`) for the rest, so that, when
//! no verdict is lost, every member builds the very same certificate (all matching
//! verdicts, sorted by oracle) and the same fee split; [`Aggregator::settle_now`]
//! settles with the quorum at hand once the wait is over. The ledger keeps the
//! first valid settlement of a contract.
//!
//! **Verdicts nobody claims.** Gossip brings every verdict to every oracle,
//! also on contracts this one does not watch and will never learn the terms
//! of. They are kept, in case the terms come (a member that watches the
//! contract late), but only for [`EPOCHS_KEPT`] epochs after the first of
//! them came, and they give way first when the aggregator is full. Without
//! that they would pile up until the aggregator refused every new contract,
//! its own included, and escrows would stay locked.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::identity::AccountId;
use crate::messages::{ContractTerms, Verdict};
use crate::settlement::{Outcome, Payout, QuorumCert, members, payout, quorum, seats};
use crate::signed::Signed;
use crate::types::{Bps, Hash32, NetworkId};

/// What the committee decided about one contract: the ledger writes it as a
/// settlement entry (it re-checks the certificate and the split).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SettlementInstruction {
    pub contract: Hash32,
    pub terms: ContractTerms,
    pub cert: QuorumCert,
    pub outcome: Outcome,
    pub payout: Payout,
}

/// Why a verdict was not counted.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
#[non_exhaustive]
pub enum VerdictError {
    #[error("bad signature or signer")]
    BadSignature,
    #[error("verdict for epoch {got}, committee is of epoch {expected}")]
    WrongEpoch { got: u64, expected: u64 },
    /// The committee of that epoch was never learnt, or was dropped because no
    /// contract refers to it any more (see [`Aggregator::set_committee`]).
    #[error("verdict for epoch {0}, whose committee is not known")]
    UnknownEpoch(u64),
    #[error("oracle {0:?} is not on the committee")]
    NotMember(AccountId),
    #[error("oracle {0:?} already gave a verdict on this contract")]
    Duplicate(AccountId),
    #[error("contract already settled")]
    Settled,
    #[error("too many contracts awaiting verdicts")]
    Full,
}

#[derive(Debug, Default)]
struct Pending {
    terms: Option<ContractTerms>,
    /// The epoch whose committee judges this contract: the one its watch was
    /// bound to ([`Aggregator::bind`]), else that of its first verdict.
    epoch: Option<u64>,
    verdicts: Vec<(Verdict, Signed<Verdict>)>,
    /// Verdicts for other epochs (members that judged the contract under
    /// another epoch before its lock was final): they count if the contract
    /// is bound to theirs. At most `OTHER_VERDICTS`.
    other: Vec<(Verdict, Signed<Verdict>)>,
    /// The aggregator's epoch when this entry was made.
    since: u64,
}

/// Verdicts kept per contract for epochs other than its own.
const OTHER_VERDICTS: usize = 32;

/// Committees of the latest epochs kept whether or not a contract refers to them,
/// so verdicts on contracts this node does not watch still count for a while.
/// Older committees are kept only while a contract refers to them.
pub const EPOCHS_KEPT: u64 = 16;

/// Collects verdicts per contract until a quorum settles it.
#[derive(Debug)]
pub struct Aggregator {
    network: NetworkId,
    epoch: u64,
    committee: Vec<AccountId>,
    committees: BTreeMap<u64, Vec<AccountId>>,
    /// Per epoch, how many contracts still refer to its committee: pinned ones
    /// (watched by the engine) plus pending ones holding verdicts of that epoch.
    refs: BTreeMap<u64, usize>,
    fee: Bps,
    capacity: usize,
    pending: HashMap<Hash32, Pending>,
    /// The pending contracts without terms (nobody here claims them), by the
    /// epoch they came in: the first to go (see the module docs).
    unclaimed: BTreeSet<(u64, Hash32)>,
    settled: HashSet<Hash32>,
    settled_order: VecDeque<Hash32>,
    verify: bool,
}

impl Aggregator {
    /// `capacity` bounds the contracts awaiting a quorum and the settled ids kept.
    pub fn new(network: NetworkId, fee: Bps, capacity: usize) -> Self {
        Aggregator {
            network,
            epoch: 0,
            committee: Vec::new(),
            committees: BTreeMap::new(),
            refs: BTreeMap::new(),
            fee,
            capacity: capacity.max(1),
            pending: HashMap::new(),
            unclaimed: BTreeSet::new(),
            settled: HashSet::new(),
            settled_order: VecDeque::new(),
            verify: true,
        }
    }

    /// A new epoch and its committee. A contract stays with the committee of the
    /// epoch its verdicts were given in, however long it runs: a committee is
    /// kept while it is one of the last [`EPOCHS_KEPT`], or while a contract
    /// refers to it (pinned with [`Aggregator::pin_epoch`], or pending here with
    /// verdicts of that epoch). Other committees are dropped.
    pub fn set_committee(&mut self, epoch: u64, committee: Vec<AccountId>) {
        self.committees.insert(epoch, committee.clone());
        if epoch >= self.epoch {
            self.epoch = epoch;
            self.committee = committee;
        }
        let latest = self.epoch;
        // Unclaimed verdicts go first: they may unpin committees.
        while let Some(&(since, id)) = self.unclaimed.first() {
            if recent(since, latest) {
                break;
            }
            self.remove_pending(&id);
        }
        let refs = &self.refs;
        self.committees
            .retain(|e, _| recent(*e, latest) || refs.contains_key(e));
    }

    /// Learn `epoch`'s committee if it is not known, leaving the current epoch
    /// and committee as they are: a member takes up again after a restart a
    /// contract of an earlier epoch. Unless it is recent, pin it
    /// ([`Aggregator::pin_epoch`]) before the next [`Aggregator::set_committee`],
    /// which drops it otherwise.
    pub fn learn_committee(&mut self, epoch: u64, committee: Vec<AccountId>) {
        self.committees.entry(epoch).or_insert(committee);
    }

    /// The committee of `epoch`, if known.
    pub fn committee_at(&self, epoch: u64) -> Option<&[AccountId]> {
        self.committees.get(&epoch).map(Vec::as_slice)
    }

    /// Keep `epoch`'s committee until a matching [`Aggregator::unpin_epoch`]:
    /// a contract of that epoch is being watched, and its verdicts are to come.
    pub fn pin_epoch(&mut self, epoch: u64) {
        *self.refs.entry(epoch).or_default() += 1;
    }

    /// Undo one [`Aggregator::pin_epoch`]; the committee is dropped once nothing
    /// refers to it and it is not recent.
    pub fn unpin_epoch(&mut self, epoch: u64) {
        let Some(n) = self.refs.get_mut(&epoch) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            self.refs.remove(&epoch);
            if !recent(epoch, self.epoch) {
                self.committees.remove(&epoch);
            }
        }
    }

    fn committee_of(&self, contract: &Hash32) -> &[AccountId] {
        self.pending
            .get(contract)
            .and_then(|p| p.epoch)
            .and_then(|e| self.committees.get(&e))
            .map_or(&self.committee[..], |c| &c[..])
    }

    /// Check verdict signatures (on by default; off only in simulation).
    pub fn set_verify_signatures(&mut self, verify: bool) {
        self.verify = verify;
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }
    pub fn committee(&self) -> &[AccountId] {
        &self.committee
    }
    pub fn is_settled(&self, contract: &Hash32) -> bool {
        self.settled.contains(contract)
    }

    /// Forget that `contract` settled here (its settlement did not take in
    /// the ledger: it is judged again).
    pub fn unsettle(&mut self, contract: &Hash32) {
        if self.settled.remove(contract) {
            self.settled_order.retain(|c| c != contract);
        }
        self.remove_pending(contract);
    }

    /// Forget what is pending on `contract`, releasing its epoch's committee.
    fn remove_pending(&mut self, contract: &Hash32) {
        if let Some(p) = self.pending.remove(contract) {
            self.unclaimed.remove(&(p.since, *contract));
            if let Some(e) = p.epoch {
                self.unpin_epoch(e);
            }
        }
    }

    /// Make an entry pending on `contract` unless there is one; false if
    /// there is no room: when the aggregator is full, the oldest unclaimed
    /// contract makes way, and without one there is no room.
    fn make_pending(&mut self, contract: Hash32) -> bool {
        if !self.pending.contains_key(&contract) {
            if self.pending.len() >= self.capacity {
                let Some(&(_, oldest)) = self.unclaimed.first() else {
                    return false;
                };
                self.remove_pending(&oldest);
            }
            let since = self.epoch;
            self.unclaimed.insert((since, contract));
            self.pending.insert(
                contract,
                Pending {
                    since,
                    ..Pending::default()
                },
            );
        }
        true
    }

    /// The terms of a contract (needed to split its escrow).
    pub fn set_terms(
        &mut self,
        contract: Hash32,
        terms: ContractTerms,
    ) -> Option<SettlementInstruction> {
        if self.settled.contains(&contract) {
            return None;
        }
        if !self.make_pending(contract) {
            return None;
        }
        let p = self.pending.get_mut(&contract)?;
        let claimed = (p.since, contract);
        p.terms = Some(terms);
        self.unclaimed.remove(&claimed);
        self.try_settle(contract, false)
    }

    /// Count one verdict; a settlement instruction when it completes a quorum.
    pub fn add(
        &mut self,
        sv: Signed<Verdict>,
    ) -> Result<Option<SettlementInstruction>, VerdictError> {
        let v = crate::market::open(&sv, &self.network, self.verify)
            .map_err(|_| VerdictError::BadSignature)?;
        self.add_verified(v, sv)
    }

    /// [`Aggregator::add`] for a verdict whose signature the caller checked.
    pub fn add_verified(
        &mut self,
        v: Verdict,
        sv: Signed<Verdict>,
    ) -> Result<Option<SettlementInstruction>, VerdictError> {
        if v.oracle != sv.signer {
            return Err(VerdictError::BadSignature);
        }
        // Before the epoch: a straggler on a settled contract whose committee was
        // dropped since is no unknown epoch.
        if self.settled.contains(&v.contract) {
            return Err(VerdictError::Settled);
        }
        let Some(committee) = self.committees.get(&v.epoch) else {
            return Err(VerdictError::UnknownEpoch(v.epoch));
        };
        if !committee.contains(&v.oracle) {
            return Err(VerdictError::NotMember(v.oracle));
        }
        if let Some(p) = self.pending.get_mut(&v.contract)
            && let Some(e) = p.epoch
            && e != v.epoch
        {
            // Kept in case the contract turns out to be that epoch's.
            let seen = p
                .other
                .iter()
                .any(|(x, _)| x.oracle == v.oracle && x.epoch == v.epoch);
            if seen || p.other.len() >= OTHER_VERDICTS {
                return Err(VerdictError::WrongEpoch {
                    got: v.epoch,
                    expected: e,
                });
            }
            p.other.push((v, sv));
            return Ok(None);
        }
        if !self.make_pending(v.contract) {
            return Err(VerdictError::Full);
        }
        let Some(p) = self.pending.get_mut(&v.contract) else {
            return Err(VerdictError::Full);
        };
        if p.epoch.is_none() {
            p.epoch = Some(v.epoch);
            // Unpinned when the contract settles.
            *self.refs.entry(v.epoch).or_default() += 1;
        }
        if p.verdicts.iter().any(|(x, _)| x.oracle == v.oracle) {
            return Err(VerdictError::Duplicate(v.oracle));
        }
        let contract = v.contract;
        p.verdicts.push((v, sv));
        Ok(self.try_settle(contract, false))
    }

    /// Judge `contract` by the committee of `epoch` (the epoch its escrow's
    /// lock is final in): verdicts kept for that epoch count from now on, and
    /// those for another are set aside. A settlement instruction if that
    /// completes a quorum.
    pub fn bind(&mut self, contract: Hash32, epoch: u64) -> Option<SettlementInstruction> {
        if self.settled.contains(&contract) {
            return None;
        }
        if !self.make_pending(contract) {
            return None;
        }
        let p = self.pending.get_mut(&contract)?;
        if p.epoch == Some(epoch) {
            return None;
        }
        let old = p.epoch.replace(epoch);
        let mut all = std::mem::take(&mut p.verdicts);
        all.append(&mut p.other);
        let (mine, rest): (Vec<_>, Vec<_>) = all.into_iter().partition(|(v, _)| v.epoch == epoch);
        p.verdicts = mine;
        p.other = rest;
        p.other.truncate(OTHER_VERDICTS);
        *self.refs.entry(epoch).or_default() += 1;
        if let Some(e) = old {
            self.unpin_epoch(e);
        }
        self.try_settle(contract, false)
    }

    /// Whether a quorum of matching verdicts is in for `contract` (settled or not).
    pub fn has_quorum(&self, contract: &Hash32) -> bool {
        let committee = self.committee_of(contract);
        let need = quorum(committee.len());
        self.pending.get(contract).is_some_and(|p| {
            p.verdicts
                .iter()
                .map(|(v, _)| {
                    let key = Outcome::of(v).key();
                    let who = p
                        .verdicts
                        .iter()
                        .filter(|(x, _)| Outcome::of(x).key() == key)
                        .map(|(x, _)| &x.oracle);
                    seats(committee, who)
                })
                .max()
                .is_some_and(|n| n >= need && need > 0)
        })
    }

    /// Every member has judged `contract` and no outcome has a quorum: the
    /// committee disagrees (e.g. on probe-based violations near a threshold) and
    /// cannot settle it alone.
    pub fn is_deadlocked(&self, contract: &Hash32) -> bool {
        self.pending.get(contract).is_some_and(|p| {
            p.verdicts.len() >= members(self.committee_of(contract)).len()
                && !self.has_quorum(contract)
        })
    }

    /// Settle with the quorum at hand, without waiting for the remaining members.
    pub fn settle_now(&mut self, contract: Hash32) -> Option<SettlementInstruction> {
        self.try_settle(contract, true)
    }

    fn try_settle(&mut self, contract: Hash32, force: bool) -> Option<SettlementInstruction> {
        let committee = self.committee_of(&contract);
        let need = quorum(committee.len());
        let p = self.pending.get(&contract)?;
        let epoch = p.epoch.unwrap_or(self.epoch);
        if !force && p.verdicts.len() < members(committee).len() {
            return None;
        }
        let terms = p.terms.as_ref()?;
        let mut tally: Vec<((bool, bool, crate::types::ComputeUnits), usize)> = Vec::new();
        for (v, _) in &p.verdicts {
            let key = Outcome::of(v).key();
            let n = seats(committee, [&v.oracle]);
            match tally.iter_mut().find(|(x, _)| *x == key) {
                Some((_, t)) => *t += n,
                None => tally.push((key, n)),
            }
        }
        let (key, n) = tally.into_iter().max_by_key(|(_, n)| *n)?;
        if n < need || need == 0 {
            return None;
        }
        let mut verdicts: Vec<(Verdict, Signed<Verdict>)> = p
            .verdicts
            .iter()
            .filter(|(v, _)| Outcome::of(v).key() == key)
            .cloned()
            .collect();
        let outcomes: Vec<Outcome> = verdicts.iter().map(|(v, _)| Outcome::of(v)).collect();
        let outcome = Outcome::combine(&outcomes)?;
        verdicts.sort_by_key(|(v, _)| v.oracle);
        let oracles: Vec<AccountId> = verdicts.iter().map(|(v, _)| v.oracle).collect();
        let split = payout(terms, &outcome, self.fee, &oracles)?;
        let instruction = SettlementInstruction {
            contract,
            terms: terms.clone(),
            cert: QuorumCert {
                contract,
                epoch,
                verdicts: verdicts.into_iter().map(|(_, s)| s).collect(),
            },
            outcome,
            payout: split,
        };
        self.remove_pending(&contract);
        if self.settled_order.len() >= self.capacity
            && let Some(old) = self.settled_order.pop_front()
        {
            self.settled.remove(&old);
        }
        self.settled.insert(contract);
        self.settled_order.push_back(contract);
        Some(instruction)
    }
}

/// Whether `epoch` is among the last [`EPOCHS_KEPT`] up to `latest`.
fn recent(epoch: u64, latest: u64) -> bool {
    epoch.saturating_add(EPOCHS_KEPT) > latest
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::messages::BlobRef;
    use crate::messages::{JobSpec, SlaTerms};
    use crate::types::{ComputeUnits, DurationMs, PricePerCu, Timestamp};

    fn terms(req: &Identity, prov: &Identity) -> ContractTerms {
        let now = Timestamp(1_000);
        let spec = JobSpec {
            expires_at: now.plus(DurationMs::secs(60)),
            ..JobSpec::inference(
                req.account(),
                BlobRef {
                    hash: Hash32::of(b"d"),
                    size: 1,
                },
                ComputeUnits::from_milli(1_000),
                PricePerCu(10),
                now,
                Timestamp(100_000),
                1,
            )
        };
        ContractTerms {
            network: NetworkId::named("agg"),
            job: Hash32::of(b"j"),
            spec,
            requester: req.account(),
            provider: prov.account(),
            price: PricePerCu(10),
            max_units: ComputeUnits::from_milli(1_000),
            sla: SlaTerms {
                deadline_slack: DurationMs(0),
                availability: Bps(0),
                penalty: Bps(0),
                exact: true,
            },
            deadline: Timestamp(100_000),
            created_at: now,
        }
    }

    /// An aggregator with epoch 1's committee `old`, and the members `new` of a
    /// later one.
    fn rotating_committees() -> (NetworkId, Vec<Identity>, Vec<Identity>, Aggregator) {
        let net = NetworkId::named("agg");
        let old: Vec<Identity> = (0..3).map(|i| Identity::from_seed(500 + i)).collect();
        let new: Vec<Identity> = (0..3).map(|i| Identity::from_seed(600 + i)).collect();
        let mut agg = Aggregator::new(net, Bps(100), 100);
        agg.set_committee(1, old.iter().map(Identity::account).collect());
        (net, old, new, agg)
    }

    /// `o`'s verdict on contract `id` for `epoch`: delivered, ok, 1 CU.
    fn good_verdict(net: NetworkId, id: Hash32, o: &Identity, epoch: u64) -> Signed<Verdict> {
        let v = Verdict {
            contract: id,
            epoch,
            oracle: o.account(),
            sla_ok: true,
            violations: 0,
            result_ok: true,
            units: ComputeUnits::from_milli(1_000),
            delivered: true,
        };
        Signed::sign(o, &net, &v).unwrap()
    }

    /// A contract judged by epoch 1's committee still settles after the committee
    /// rotates, and only that committee's verdicts count for it.
    #[test]
    fn contracts_stay_with_the_committee_that_watched_them() {
        let (net, old, new, mut agg) = rotating_committees();
        let t = terms(&Identity::from_seed(1), &Identity::from_seed(2));
        let id = Hash32::of(b"contract");
        assert!(agg.set_terms(id, t).is_none());
        agg.set_committee(2, new.iter().map(Identity::account).collect());
        let verdict = |o: &Identity, epoch| good_verdict(net, id, o, epoch);
        assert!(agg.add(verdict(&old[0], 1)).unwrap().is_none());
        // A new-committee member cannot vote on an epoch-1 contract, in either epoch.
        assert_eq!(
            agg.add(verdict(&new[0], 1)),
            Err(VerdictError::NotMember(new[0].account()))
        );
        // One for epoch 2 is set aside (it counts only if the contract turns
        // out to be epoch 2's), once.
        assert!(agg.add(verdict(&new[0], 2)).unwrap().is_none());
        assert!(matches!(
            agg.add(verdict(&new[0], 2)),
            Err(VerdictError::WrongEpoch {
                got: 2,
                expected: 1
            })
        ));
        assert!(agg.add(verdict(&old[1], 1)).unwrap().is_none());
        let si = agg.add(verdict(&old[2], 1)).unwrap().expect("settled");
        assert_eq!(si.cert.epoch, 1);
        let committee: Vec<AccountId> = old.iter().map(Identity::account).collect();
        assert!(si.cert.check(&net, &committee).is_ok());
        assert!(
            si.cert
                .check(&net, &new.iter().map(Identity::account).collect::<Vec<_>>())
                .is_err()
        );
    }

    /// Members that agree on delivery, result and units but count the SLA
    /// violations differently (a receipt that reached them at different
    /// times around the deadline) settle with the median count; before, no
    /// outcome had a quorum and the escrow stayed locked for good. The
    /// certificate checks to the same outcome, and one that splits on the
    /// result still has no quorum.
    #[test]
    fn a_committee_split_on_violations_settles_with_their_median() {
        let (net, old, _, mut agg) = rotating_committees();
        let t = terms(&Identity::from_seed(1), &Identity::from_seed(2));
        let id = Hash32::of(b"contract");
        assert!(agg.set_terms(id, t.clone()).is_none());
        let late = |o: &Identity, violations: u32, result_ok: bool| {
            let v = Verdict {
                sla_ok: violations == 0,
                violations,
                result_ok,
                ..good_verdict(net, id, o, 1).body_unverified().unwrap()
            };
            Signed::sign(o, &net, &v).unwrap()
        };
        assert!(agg.add(late(&old[0], 0, true)).unwrap().is_none());
        assert!(agg.add(late(&old[1], 5, true)).unwrap().is_none());
        let si = agg.add(late(&old[2], 2, true)).unwrap().expect("settled");
        assert_eq!((si.outcome.violations, si.outcome.sla_ok), (2, false));
        let committee: Vec<AccountId> = old.iter().map(Identity::account).collect();
        let (checked, who) = si.cert.check(&net, &committee).unwrap();
        assert_eq!(checked, si.outcome);
        assert_eq!(who.len(), 3);
        // Two of three that disagree on the result: no quorum, no settlement.
        let other = Hash32::of(b"other");
        assert!(agg.set_terms(other, t).is_none());
        let wrong = |o: &Identity, ok: bool| {
            let v = Verdict {
                contract: other,
                result_ok: ok,
                ..good_verdict(net, other, o, 1).body_unverified().unwrap()
            };
            Signed::sign(o, &net, &v).unwrap()
        };
        assert!(agg.add(wrong(&old[0], true)).unwrap().is_none());
        assert!(agg.add(wrong(&old[1], false)).unwrap().is_none());
        assert!(!agg.has_quorum(&other));
    }

    /// A contract whose lock turned out final in a later epoch than the one it
    /// was first judged under: verdicts for that epoch that came early count
    /// once it is bound to it, and the others are set aside.
    #[test]
    fn a_contract_bound_to_its_locks_epoch_counts_the_verdicts_kept_for_it() {
        let (net, old, new, mut agg) = rotating_committees();
        agg.set_committee(3, new.iter().map(Identity::account).collect());
        let t = terms(&Identity::from_seed(1), &Identity::from_seed(2));
        let id = Hash32::of(b"contract");
        assert!(agg.set_terms(id, t).is_none());
        let verdict = |o: &Identity, epoch| good_verdict(net, id, o, epoch);
        assert!(agg.add(verdict(&old[0], 1)).unwrap().is_none());
        assert!(agg.add(verdict(&new[0], 3)).unwrap().is_none());
        assert!(agg.add(verdict(&new[1], 3)).unwrap().is_none());
        // The lock is final in epoch 3: the two kept verdicts count now...
        assert!(agg.bind(id, 3).is_none(), "two of three, and not forced");
        // ...and the third completes it.
        let si = agg.add(verdict(&new[2], 3)).unwrap().expect("settled");
        assert_eq!(si.cert.epoch, 3);
        let committee: Vec<AccountId> = new.iter().map(Identity::account).collect();
        assert!(si.cert.check(&net, &committee).is_ok());
    }

    /// Old committees are kept only while something refers to them: a pin, or a
    /// pending contract with verdicts of that epoch.
    #[test]
    fn old_committees_are_kept_only_while_referred_to() {
        let net = NetworkId::named("agg");
        let members: Vec<Identity> = (0..3).map(|i| Identity::from_seed(700 + i)).collect();
        let committee: Vec<AccountId> = members.iter().map(Identity::account).collect();
        let mut agg = Aggregator::new(net, Bps(100), 100);
        let verdict = |o: &Identity, contract: &[u8], epoch| {
            let v = Verdict {
                contract: Hash32::of(contract),
                epoch,
                oracle: o.account(),
                sla_ok: false,
                violations: 0,
                result_ok: false,
                units: ComputeUnits::default(),
                delivered: false,
            };
            Signed::sign(o, &net, &v).unwrap()
        };
        agg.set_committee(1, committee.clone());
        agg.pin_epoch(1);
        agg.set_committee(2, committee.clone());
        agg.set_committee(3, committee.clone());
        // Epoch 3's committee is held by a pending contract with one verdict,
        // which came in epoch 10 (and is kept until epoch 10 + EPOCHS_KEPT:
        // see `unclaimed_verdicts_are_forgotten_after_epochs_kept`).
        for e in 4..=3 + EPOCHS_KEPT {
            agg.set_committee(e, committee.clone());
            if e == 10 {
                assert_eq!(agg.add(verdict(&members[0], b"c3", 3)), Ok(None));
            }
        }
        assert_eq!(agg.committees.len(), EPOCHS_KEPT as usize + 2);
        assert_eq!(
            agg.add(verdict(&members[0], b"c2", 2)),
            Err(VerdictError::UnknownEpoch(2))
        );
        assert_eq!(agg.add(verdict(&members[1], b"c3", 3)), Ok(None));
        assert_eq!(agg.add(verdict(&members[0], b"c1", 1)), Ok(None));
        agg.unpin_epoch(1);
        // Still held by the pending contract `c1`, until it is settled.
        assert!(agg.committees.contains_key(&1));
        agg.set_terms(Hash32::of(b"c1"), terms(&members[0], &members[1]));
        assert!(agg.settle_now(Hash32::of(b"c1")).is_none());
        assert_eq!(agg.add(verdict(&members[1], b"c1", 1)), Ok(None));
        assert!(agg.settle_now(Hash32::of(b"c1")).is_some());
        assert!(!agg.committees.contains_key(&1));
        assert_eq!(
            agg.add(verdict(&members[2], b"other", 1)),
            Err(VerdictError::UnknownEpoch(1))
        );
        assert!(agg.committees.contains_key(&3));
    }

    /// Verdicts on contracts nobody here claims (no terms) are kept for
    /// `EPOCHS_KEPT` epochs, then forgotten with the committee they pinned;
    /// a claimed contract stays, and still settles when its verdicts come.
    /// Before, they were kept for good: an oracle's memory grew with every
    /// contract of the network.
    #[test]
    fn unclaimed_verdicts_are_forgotten_after_epochs_kept() {
        let (net, old, new, mut agg) = rotating_committees();
        for i in 0..10u8 {
            let id = Hash32::of(&[i]);
            assert!(
                agg.add(good_verdict(net, id, &old[0], 1))
                    .unwrap()
                    .is_none()
            );
        }
        let mine = Hash32::of(b"mine");
        let t = terms(&Identity::from_seed(1), &Identity::from_seed(2));
        assert!(agg.set_terms(mine, t).is_none());
        assert!(
            agg.add(good_verdict(net, mine, &old[0], 1))
                .unwrap()
                .is_none()
        );
        assert_eq!((agg.pending.len(), agg.unclaimed.len()), (11, 10));
        let members: Vec<AccountId> = new.iter().map(Identity::account).collect();
        agg.set_committee(EPOCHS_KEPT, members.clone());
        assert_eq!(agg.pending.len(), 11, "still recent");
        agg.set_committee(1 + EPOCHS_KEPT, members);
        assert_eq!((agg.pending.len(), agg.unclaimed.len()), (1, 0));
        // The claimed contract still pins epoch 1's committee, and settles.
        assert!(agg.committee_at(1).is_some());
        assert!(
            agg.add(good_verdict(net, mine, &old[1], 1))
                .unwrap()
                .is_none()
        );
        assert!(
            agg.add(good_verdict(net, mine, &old[2], 1))
                .unwrap()
                .is_some()
        );
        assert!(agg.pending.is_empty());
        assert!(
            agg.committee_at(1).is_none(),
            "released with the last contract"
        );
    }

    /// The attacker: one committee member signs verdicts on made-up contracts
    /// to fill every oracle's aggregator. Before, a full aggregator refused
    /// every new contract, so real escrows stayed locked; now the unclaimed
    /// make way, and only claimed contracts can fill it.
    #[test]
    fn a_flood_of_unclaimed_verdicts_cannot_crowd_out_a_real_contract() {
        let net = NetworkId::named("agg");
        let members: Vec<Identity> = (0..3).map(|i| Identity::from_seed(500 + i)).collect();
        let mut agg = Aggregator::new(net, Bps(100), 8);
        agg.set_committee(1, members.iter().map(Identity::account).collect());
        for i in 0..50u8 {
            let fake = Hash32::of(&[b'f', i]);
            assert!(agg.add(good_verdict(net, fake, &members[0], 1)).is_ok());
        }
        assert_eq!(agg.pending.len(), 8, "bounded");
        let real = Hash32::of(b"real");
        let t = terms(&Identity::from_seed(1), &Identity::from_seed(2));
        assert!(agg.set_terms(real, t.clone()).is_none());
        for m in &members[..2] {
            assert!(agg.add(good_verdict(net, real, m, 1)).unwrap().is_none());
        }
        assert!(
            agg.add(good_verdict(net, real, &members[2], 1))
                .unwrap()
                .is_some()
        );
        // Claimed contracts are never pushed out: with 8 of them pending, an
        // unclaimed verdict finds no room.
        for i in 0..8u8 {
            assert!(agg.set_terms(Hash32::of(&[b'c', i]), t.clone()).is_none());
        }
        assert_eq!(agg.unclaimed.len(), 0);
        assert_eq!(
            agg.add(good_verdict(net, Hash32::of(b"late"), &members[0], 1)),
            Err(VerdictError::Full)
        );
    }
}
