//! The oracle's half: follow the epoch's committee from the ledger, hand
//! delivered work to the driver to re-execute, and write settlements, the first
//! signer at once and the others after a fallback delay (in case it crashed).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crdt_ledger::{Body, Store};
use protocol::oracle::{OracleInput, OracleOutput, SettlementInstruction};
use protocol::{
    AccountId, ContractTerms, DurationMs, Hash32, Identity, NetworkId, Receipt, Sig, Timestamp,
};
use rand::Rng;
use tracing::{info, warn};

use crate::WorkError;
use crate::persist::Watched;
use crate::retry::{MAX_ATTEMPTS, Retry};
use crate::{Cx, NodeCore, Output};

#[derive(Debug, Default)]
pub(crate) struct State {
    /// The epoch last handed to the oracle engine.
    epoch: Option<u64>,
    /// Checks waiting for the requester's job key.
    waiting_key: HashMap<Hash32, (Box<ContractTerms>, Box<Receipt>)>,
    /// Checks handed to the driver (kept to try again).
    checking: HashMap<Hash32, (Box<ContractTerms>, Box<Receipt>)>,
    /// Settlements to write, with when.
    settle: Vec<(Timestamp, Box<SettlementInstruction>)>,
    /// The contracts the engine watches, with their receipts: what a restart
    /// resumes.
    pub(crate) watched: BTreeMap<Hash32, Watched>,
    /// Open escrows already handed to the engine.
    taken: HashSet<Hash32>,
    /// Where we stand in the ledger's feed of escrow changes.
    escrows: crdt_ledger::EscrowCursor,
    /// Contracts whose settlement we wrote or failed to write since we last
    /// looked: if the escrow is still open, the settlement did not take.
    wrote: BTreeSet<Hash32>,
    /// The engine's count of ended watches at our last prune.
    pruned_at: u64,
    /// The challenges of the receipts we check, ours included: contract →
    /// member → seed (each checked against our copy of the receipt).
    challenges: HashMap<Hash32, BTreeMap<AccountId, u64>>,
    /// Challenges that came before our check began, not checked yet.
    early: HashMap<Hash32, BTreeMap<AccountId, Sig>>,
    /// Checks that wait for the other members' challenges, until when.
    held: HashMap<Hash32, Timestamp>,
}

impl State {
    pub(crate) fn next_settlement(&self) -> Option<Timestamp> {
        self.settle.iter().map(|(at, _)| *at).min()
    }
    pub(crate) fn next_challenge_wait(&self) -> Option<Timestamp> {
        self.held.values().min().copied()
    }
}

/// How long a member waits for the other members' challenges of a receipt
/// before it checks with those it has.
pub const CHALLENGE_WAIT: DurationMs = DurationMs(10_000);

/// What a member signs to challenge a receipt: the hash of its encoding.
fn challenge_body(receipt: &Receipt) -> [u8; 32] {
    let body = protocol::codec::encode_unbounded("receipt", receipt).unwrap_or_default();
    *blake3::hash(&body).as_bytes()
}

/// A committee member's challenge of a receipt: its ed25519 signature over
/// the receipt (under the `challenge` domain and the network id). The
/// provider commits to everything (result, weight chain, units) in the
/// receipt before any challenge exists; ed25519 signatures are
/// deterministic, so a member cannot grind its challenge, and nobody without
/// the member's key can predict it.
pub fn challenge(member: &Identity, network: &NetworkId, receipt: &Receipt) -> Sig {
    protocol::signed::sign_bytes(member, "challenge", network, &challenge_body(receipt))
}

/// The seed a challenge fixes: which link of a training chain, which rows of
/// an inference job are re-executed.
pub fn seed_of(sig: &Sig) -> u64 {
    let h = blake3::hash(&sig.0);
    u64::from_le_bytes(*h.as_bytes().first_chunk().unwrap_or(&[0; 8]))
}

/// Samples each member's challenge names: with three members, nine samples
/// in all, so a provider that fakes a share f of its work is caught with
/// probability 1 − (1 − f)⁹ (61 % at f = 10 %; see the README's "Trust and
/// incentives").
pub const SAMPLES_PER_MEMBER: usize = 3;

/// The samples one challenge seed names: the seed itself, then seeds derived
/// from it (as unpredictable as it, and as fixed).
pub fn samples(seed: u64) -> [u64; SAMPLES_PER_MEMBER] {
    std::array::from_fn(|i| {
        if i == 0 {
            return seed;
        }
        let mut h = blake3::Hasher::new();
        h.update(b"cloudchain/sample");
        h.update(&seed.to_le_bytes());
        h.update(&(i as u64).to_le_bytes());
        u64::from_le_bytes(*h.finalize().as_bytes().first_chunk().unwrap_or(&[0; 8]))
    })
}

/// The seed of `member`'s own challenge of `receipt`.
pub fn challenge_seed(member: &Identity, network: &NetworkId, receipt: &Receipt) -> u64 {
    seed_of(&challenge(member, network, receipt))
}

/// The seed of another member's challenge, if its signature holds for our
/// copy of the receipt.
pub fn verify_challenge(
    network: &NetworkId,
    member: &AccountId,
    receipt: &Receipt,
    sig: &Sig,
) -> Option<u64> {
    protocol::signed::verify_bytes("challenge", network, member, &challenge_body(receipt), sig)
        .ok()
        .map(|()| seed_of(sig))
}

impl<S: Store> NodeCore<S> {
    pub(crate) fn oracle_handle<R: Rng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        input: OracleInput,
    ) {
        let Some(o) = self.oracle.as_mut() else {
            return;
        };
        let o = o.handle(cx.now, input, cx.rng);
        self.on_oracle_out(cx, o);
    }

    pub(crate) fn on_oracle_out<R: Rng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        out: Vec<OracleOutput>,
    ) {
        for o in out {
            match o {
                OracleOutput::Send { to, message } => self.send(cx, to, message),
                OracleOutput::Publish(m) => {
                    if let protocol::Message::Verdict(v) = &m
                        && let Ok(b) = v.body_unverified()
                    {
                        if let Some(w) = self.orc.watched.get_mut(&b.contract)
                            && b.oracle == self.identity.account()
                        {
                            w.verdict = Some(v.clone());
                            self.state_dirty = true;
                        }
                        info!(
                            contract = %b.contract.short(),
                            delivered = b.delivered,
                            result_ok = b.result_ok,
                            sla_ok = b.sla_ok,
                            "signed a verdict"
                        );
                    }
                    cx.out.push(Output::Publish(m));
                }
                OracleOutput::Check {
                    contract,
                    terms,
                    receipt,
                } => {
                    self.challenge_receipt(cx, contract, &receipt);
                    self.orc.waiting_key.insert(contract, (terms, receipt));
                    self.try_check(cx, contract);
                }
                OracleOutput::Settle(si) => {
                    let me = self.account();
                    let first = si
                        .cert
                        .verdicts
                        .iter()
                        .map(|v| v.signer)
                        .min()
                        .is_some_and(|s| s == me);
                    let delay = if first {
                        0
                    } else {
                        self.timing.settle_fallback.0
                    };
                    self.orc.settle.push((Timestamp(cx.now.0 + delay), si));
                    self.write_settlements(cx);
                }
                OracleOutput::NoQuorum { contract } => {
                    warn!(contract = %contract.short(), "the committee split on the work and reached no quorum; the requester's node expires the escrow once the genesis's expire_after has passed its deadline");
                }
                _ => {}
            }
        }
    }

    /// Remember a contract the engine now watches (to resume it after a
    /// restart), or the receipt of one it watches.
    pub(crate) fn note_watch(&mut self, now: Timestamp, m: &protocol::Message) {
        let Some(o) = &self.oracle else {
            return;
        };
        match m {
            protocol::Message::Contract(c) => {
                let id = c.body_hash();
                if self.orc.watched.contains_key(&id) {
                    return;
                }
                let Some(epoch) = o.watch_epoch(&id) else {
                    return;
                };
                let committee = self
                    .ledger
                    .state()
                    .committee_for(epoch)
                    .map(<[_]>::to_vec)
                    .unwrap_or_default();
                self.state_dirty = true;
                self.orc.watched.insert(
                    id,
                    Watched {
                        contract: c.clone(),
                        epoch,
                        committee,
                        receipt: None,
                        verdict: None,
                    },
                );
            }
            protocol::Message::Receipt(r) => {
                if let Ok(b) = r.body_unverified()
                    && let Some(w) = self.orc.watched.get_mut(&b.contract)
                    && w.receipt.is_none()
                    && r.signer == b.provider
                    && o.watch_epoch(&b.contract).is_some()
                {
                    w.receipt = Some((r.clone(), now));
                    self.state_dirty = true;
                }
            }
            _ => {}
        }
    }

    /// Forget the watches the engine ended (settled).
    pub(crate) fn prune_watches(&mut self) {
        if let Some(o) = &self.oracle {
            if o.watches_ended() == self.orc.pruned_at {
                return;
            }
            self.orc.pruned_at = o.watches_ended();
            let before = self.orc.watched.len();
            self.orc.watched.retain(|id, _| o.watch_epoch(id).is_some());
            self.state_dirty |= self.orc.watched.len() != before;
            let watched = &self.orc.watched;
            self.orc.early.retain(|id, _| watched.contains_key(id));
        }
    }

    /// The members that judge a contract we watch.
    fn committee_of(&self, contract: &Hash32) -> &[AccountId] {
        self.orc
            .watched
            .get(contract)
            .map(|w| w.committee.as_slice())
            .unwrap_or_default()
    }

    /// Commit, then challenge: the receipt is here, so draw our challenge
    /// from it, reveal it to the other members (each then checks our sample
    /// as well as its own), and take the challenges that came before.
    fn challenge_receipt<R: Rng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        contract: Hash32,
        receipt: &Receipt,
    ) {
        let sig = challenge(&self.identity, &self.network, receipt);
        let mut seeds = BTreeMap::from([(self.account(), seed_of(&sig))]);
        for (member, sig) in self.orc.early.remove(&contract).unwrap_or_default() {
            if let Some(seed) = verify_challenge(&self.network, &member, receipt, &sig) {
                seeds.insert(member, seed);
            }
        }
        self.orc.challenges.insert(contract, seeds);
        self.orc
            .held
            .insert(contract, Timestamp(cx.now.0 + CHALLENGE_WAIT.0));
        self.reveal_challenge(cx, contract, sig);
    }

    fn reveal_challenge<R: Rng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        contract: Hash32,
        sig: Sig,
    ) {
        let member = self.account();
        for to in protocol::members(self.committee_of(&contract)) {
            if to != member {
                cx.out.push(Output::Send {
                    to,
                    msg: crate::Direct::Challenge {
                        contract,
                        member,
                        sig,
                    },
                });
            }
        }
    }

    /// A new finalized epoch `epoch`: write what our probes found since the
    /// last one into SLA records, one per provider, if we sat on that epoch's
    /// committee (the ledger takes records only from it, one per member,
    /// provider and epoch, of at most `MAX_RECORD_PROBES` probes). Probes made
    /// for another committee's contracts are dropped.
    pub(crate) fn write_sla_records<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>, epoch: u64) {
        let Some(o) = self.oracle.as_mut() else {
            return;
        };
        let tally = o.take_probe_tally();
        let me = self.identity.account();
        let member = self
            .ledger
            .state()
            .committee_for(epoch)
            .is_some_and(|c| c.contains(&me));
        if !member || epoch == 0 {
            return;
        }
        for (provider, t) in tally {
            let probes = t.sent.min(crdt_ledger::state::MAX_RECORD_PROBES);
            if probes == 0 {
                continue;
            }
            let answered = t.answered.min(probes);
            let mean = t
                .latency_ms_sum
                .checked_div(u64::from(t.answered))
                .unwrap_or(0);
            let rec = crdt_ledger::SlaRecord {
                provider,
                epoch,
                probes,
                answered,
                mean_latency_ms: u32::try_from(mean).unwrap_or(u32::MAX),
            };
            if let Err(e) = self.append(cx.now, Body::SlaRecord(rec)) {
                warn!(provider = %provider.short(), %e, "cannot write an SLA record");
            }
        }
    }

    /// A new finalized epoch: reveal our challenges of the checks still
    /// waiting once more (a direct message can be lost).
    pub(crate) fn nudge_challenges<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>) {
        let open: Vec<(Hash32, Receipt)> = self
            .orc
            .held
            .keys()
            .filter_map(|c| {
                let (_, r) = self.orc.checking.get(c).or(self.orc.waiting_key.get(c))?;
                Some((*c, (**r).clone()))
            })
            .collect();
        for (c, r) in open {
            let sig = challenge(&self.identity, &self.network, &r);
            self.reveal_challenge(cx, c, sig);
        }
    }

    /// Another member's challenge of a receipt we check (or will).
    pub(crate) fn on_challenge<R: Rng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        contract: Hash32,
        member: AccountId,
        sig: Sig,
    ) {
        if member == self.account() || !self.committee_of(&contract).contains(&member) {
            return;
        }
        let receipt = self
            .orc
            .checking
            .get(&contract)
            .or(self.orc.waiting_key.get(&contract))
            .map(|(_, r)| r.clone());
        let Some(receipt) = receipt else {
            // Our check has not begun: keep it (one per member of a watched
            // contract, so bounded by what we watch).
            self.orc
                .early
                .entry(contract)
                .or_default()
                .insert(member, sig);
            return;
        };
        let Some(seed) = verify_challenge(&self.network, &member, &receipt, &sig) else {
            warn!(contract = %contract.short(), member = %member.short(), "a challenge that does not match the receipt");
            return;
        };
        let Some(seeds) = self.orc.challenges.get_mut(&contract) else {
            return; // checked already: a late challenge changes nothing
        };
        seeds.insert(member, seed);
        if self.orc.held.contains_key(&contract) && self.orc.checking.contains_key(&contract) {
            self.recheck(cx, contract);
        }
    }

    /// Checks whose wait for challenges is over go ahead with the challenges
    /// in hand (those still waiting for their job key, once it comes).
    pub(crate) fn release_held<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>) {
        let now = cx.now;
        let due: Vec<Hash32> = self
            .orc
            .held
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(c, _)| *c)
            .collect();
        for c in due {
            self.orc.held.remove(&c);
            self.recheck(cx, c);
        }
    }

    /// Watch the escrows the ledger holds that this member's committee judges:
    /// those locked in an epoch whose committee it is on. The contract comes
    /// from the lock entry, so a contract whose gossip was lost (a partition)
    /// is watched all the same, and one that nobody escrowed is never watched.
    pub(crate) fn watch_escrows<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>) {
        let Some(o) = &self.oracle else {
            return;
        };
        let me = self.identity.account();
        let changes = self.ledger.escrow_changes(&mut self.orc.escrows);
        // A lock that stayed pending across a checkpoint was watched under
        // the epoch it was expected in; once final, judge it for its own.
        // Only a checkpoint (or a refold of finality) changes that, and the
        // committees: look at every open escrow then, else only at those
        // that opened or closed since we last looked.
        let changed = if changes.finality_moved {
            None
        } else {
            changes.changed
        };
        let mut moved = Vec::new();
        if changes.finality_moved {
            for (id, e) in &self.ledger.finalized_state().escrows {
                if let Some(w) = o.watch_epoch(id)
                    && w != e.epoch
                {
                    moved.push((*id, e.epoch));
                }
            }
        }
        let moved: Vec<_> = moved
            .into_iter()
            .filter_map(|(id, epoch)| {
                let committee = self.ledger.finalized_state().committee_for(epoch)?.to_vec();
                Some((id, epoch, committee))
            })
            .collect();
        for (contract, epoch, committee) in moved {
            self.oracle_handle(
                cx,
                OracleInput::Rebind {
                    contract,
                    epoch,
                    committee,
                },
            );
        }
        // A settlement this member's aggregator made that the ledger does not
        // hold (refused, or invalid once the lock was final in another epoch)
        // and that is not waiting to be written: judge the contract again.
        // Such an escrow is one we wrote a settlement for since we last
        // looked, or one that opened again (a refold dropped its settlement).
        let wrote = std::mem::take(&mut self.orc.wrote);
        let queued: BTreeSet<Hash32> = self.orc.settle.iter().map(|(_, si)| si.contract).collect();
        let stale: Vec<Hash32> = {
            let Some(o) = &self.oracle else {
                return;
            };
            let open = &self.ledger.state().escrows;
            let is_stale = |id: &Hash32| {
                self.orc.taken.contains(id)
                    && open.contains_key(id)
                    && o.is_settled(id)
                    && !queued.contains(id)
            };
            match &changed {
                Some(ids) => ids
                    .iter()
                    .chain(wrote.iter())
                    .filter(|id| is_stale(id))
                    .copied()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                None => self
                    .orc
                    .taken
                    .iter()
                    .filter(|id| is_stale(id))
                    .copied()
                    .collect(),
            }
        };
        for id in stale {
            tracing::info!(contract = %id.short(), "a settlement did not take: judging the contract again");
            if let Some(o) = self.oracle.as_mut() {
                o.unsettle(&id);
            }
            self.orc.taken.remove(&id);
        }
        let Some(o) = &self.oracle else {
            return;
        };
        let state = self.ledger.state();
        let mut todo = Vec::new();
        let candidates: Vec<(&Hash32, &crdt_ledger::Escrow)> = match &changed {
            Some(ids) => ids
                .iter()
                .filter_map(|id| state.escrows.get_key_value(id))
                .collect(),
            None => state.escrows.iter().collect(),
        };
        for (id, e) in candidates {
            if self.orc.taken.contains(id) || o.watch_epoch(id).is_some() {
                continue;
            }
            let Some(committee) = state.committee_for(e.epoch) else {
                continue;
            };
            if committee.contains(&me) {
                todo.push((*id, e.epoch, e.lock, committee.to_vec()));
            }
        }
        // Forget what left the ledger's open escrows (settled).
        let open = &state.escrows;
        match &changed {
            Some(ids) => {
                for id in ids.iter().filter(|id| !open.contains_key(*id)) {
                    self.orc.taken.remove(id);
                }
            }
            None => self.orc.taken.retain(|id| open.contains_key(id)),
        }
        for (id, epoch, lock, committee) in todo {
            self.orc.taken.insert(id);
            let contract = match self.ledger.entry(&lock).as_deref().map(|e| &e.data.body) {
                Some(Body::EscrowLock { contract }) => contract.clone(),
                _ => continue,
            };
            self.oracle_handle(
                cx,
                OracleInput::Watch {
                    contract: contract.clone(),
                    epoch,
                    committee,
                    receipt: None,
                    verdict: None,
                },
            );
            self.note_watch(cx.now, &protocol::Message::Contract(contract));
        }
    }

    /// Hand the oracle engine the epoch the ledger is in, when it changes.
    pub(crate) fn oracle_epoch_update<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>) {
        if self.oracle.is_none() {
            return;
        }
        let state = self.ledger.state();
        let epoch = state.epoch + 1;
        if self.orc.epoch == Some(epoch) {
            return;
        }
        let committee = state
            .committee_for(epoch)
            .map(<[_]>::to_vec)
            .unwrap_or_default();
        let beacon = state.last_checkpoint;
        let member = committee.contains(&self.account());
        info!(
            epoch,
            member,
            size = committee.len(),
            "committee of the epoch"
        );
        self.orc.epoch = Some(epoch);
        self.oracle_handle(
            cx,
            OracleInput::Epoch {
                epoch,
                committee,
                beacon,
            },
        );
    }

    /// Write the settlements that are due and not in the ledger yet.
    pub(crate) fn write_settlements<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>) {
        let now = cx.now;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.orc.settle)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.orc.settle = later;
        for (_, si) in due {
            if self.ledger.state().settled.contains_key(&si.contract) {
                continue;
            }
            let (contract, paid) = (si.contract, si.payout.provider);
            self.orc.wrote.insert(contract);
            match self.append(
                now,
                Body::Settlement {
                    cert: si.cert,
                    payout: si.payout,
                },
            ) {
                Ok(_) => info!(contract = %contract.short(), %paid, "settlement written"),
                Err(e) => warn!(contract = %contract.short(), %e, "cannot write the settlement"),
            }
        }
    }

    /// Start a check whose job key is here.
    pub(crate) fn try_check<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>, contract: Hash32) {
        if !self.grants.contains_key(&contract) {
            return;
        }
        let Some(check) = self.orc.waiting_key.remove(&contract) else {
            return;
        };
        self.orc.checking.insert(contract, check);
        self.recheck(cx, contract);
    }

    /// The contracts of `provider` whose check is under way.
    pub(crate) fn checks_of(&self, provider: &protocol::AccountId) -> Vec<Hash32> {
        self.orc
            .checking
            .iter()
            .filter(|(_, (_, r))| r.provider == *provider)
            .map(|(c, _)| *c)
            .collect()
    }

    /// Hand the driver a check (again), with the provider's latest address and
    /// every challenge in hand, once each member's challenge is in or the
    /// wait for them is over.
    pub(crate) fn recheck<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>, contract: Hash32) {
        let (Some(grant), Some((terms, receipt))) = (
            self.grants.get(&contract).cloned(),
            self.orc.checking.get(&contract).cloned(),
        ) else {
            return;
        };
        let seeds = self
            .orc
            .challenges
            .get(&contract)
            .cloned()
            .unwrap_or_default();
        if let Some(until) = self.orc.held.get(&contract) {
            let all_in = self
                .committee_of(&contract)
                .iter()
                .all(|m| seeds.contains_key(m));
            if !all_in && cx.now < *until {
                return;
            }
            self.orc.held.remove(&contract);
        }
        let seeds = if seeds.is_empty() {
            vec![challenge_seed(&self.identity, &self.network, &receipt)]
        } else {
            seeds.into_values().collect()
        };
        let seeds: Vec<u64> = seeds.into_iter().flat_map(samples).collect();
        let provider_contact = self.contact_of(&receipt.provider);
        cx.out.push(Output::Check {
            contract,
            terms,
            receipt,
            grant,
            provider_contact,
            seeds,
        });
    }

    pub(crate) fn on_checked<R: Rng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        contract: Hash32,
        result: Result<String, WorkError>,
    ) {
        if !self.orc.checking.contains_key(&contract) {
            return;
        }
        let correct = match result {
            Ok(reason) => {
                info!(contract = %contract.short(), ok = true, %reason, "checked the result");
                true
            }
            Err(e)
                if e.retry
                    && self
                        .retries
                        .schedule(cx.now, Retry::Check(contract), MAX_ATTEMPTS) =>
            {
                warn!(contract = %contract.short(), error = %e, "cannot fetch what the check needs yet; trying again");
                return;
            }
            Err(e) => {
                warn!(contract = %contract.short(), reason = %e, "the result does not check");
                false
            }
        };
        self.orc.checking.remove(&contract);
        self.orc.challenges.remove(&contract);
        self.orc.held.remove(&contract);
        self.retries.done(Retry::Check(contract));
        self.oracle_handle(cx, OracleInput::CheckDone { contract, correct });
    }
}
