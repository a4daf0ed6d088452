//! The ledger in the core: local writes, automerge sync with each peer that is
//! up, the committee's checkpoints, and settlements found by contract id.

use std::collections::BTreeMap;

use crdt_ledger::{
    Action, Body, CheckpointBody, CheckpointStatus, LedgerError, Offence, Proposal, Store,
};
use protocol::oracle::SettlementInstruction;
use protocol::{AccountId, Amount, ContractTerms, Hash32, MultiSigned, Timestamp};
use rand::Rng;
use tracing::{debug, info, warn};

use crate::{Cx, Direct, NodeCore, Output};

#[derive(Debug, Default)]
pub(crate) struct CommitteeState {
    /// Proposals to sign once sync brings what they name: (from, proposal, first seen).
    to_sign: Vec<(AccountId, Proposal, Timestamp)>,
    /// A final checkpoint someone else proposed, and when to publish it if its
    /// proposer has not by then (see `publish_final`).
    to_publish: Option<(MultiSigned<CheckpointBody>, Timestamp)>,
    /// Offences proven to this replica and not slashed yet, with when to
    /// publish their slash if nobody has by then (see `publish_slashes`).
    slash_due: BTreeMap<(AccountId, Offence), Timestamp>,
}

impl CommitteeState {
    pub(crate) fn next_publish(&self) -> Option<Timestamp> {
        [
            self.to_publish.as_ref().map(|(_, at)| *at),
            self.slash_due.values().min().copied(),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

impl<S: Store> NodeCore<S> {
    /// Write an entry (durable when this returns); peers get it on the next sync.
    pub(crate) fn append(&mut self, now: Timestamp, body: Body) -> Result<Hash32, LedgerError> {
        let id = self.ledger.append(&self.identity, body, now)?;
        self.ledger_dirty = true;
        Ok(id.hash)
    }

    /// The settlement the ledger holds for `contract`, found by its id, with the
    /// outcome its certificate's quorum agreed on (as the ledger's rule reads it).
    pub(crate) fn settlement_of(
        &mut self,
        contract: &Hash32,
        terms: &ContractTerms,
    ) -> Option<SettlementInstruction> {
        let (cert, payout) = self.ledger.settlement(contract)?;
        let committee = self.ledger.state().committee_for(cert.epoch)?.to_vec();
        let (outcome, _) = cert.check(&self.network, &committee).ok()?;
        Some(SettlementInstruction {
            contract: *contract,
            terms: terms.clone(),
            cert,
            outcome,
            payout,
        })
    }

    /// The committee that judges `contract`: the one of the epoch its escrow
    /// was locked in, as this replica has folded it (empty before the lock).
    pub(crate) fn judges_of(&mut self, contract: &Hash32) -> Vec<AccountId> {
        let state = self.ledger.state();
        state
            .escrows
            .get(contract)
            .and_then(|e| state.committee_for(e.epoch))
            .map(<[AccountId]>::to_vec)
            .unwrap_or_default()
    }

    /// Whether the finalized epoch moved since the last call: the moment to
    /// hand again what the committee may have lost (a receipt, a key), since
    /// a message sent directly or gossiped once can be lost.
    pub(crate) fn new_epoch_to_nudge(&mut self) -> bool {
        let epoch = self.ledger.state().epoch;
        let new = epoch > self.nudged_epoch;
        self.nudged_epoch = epoch;
        new
    }

    /// Send `peer` what it lacks, if anything.
    pub(crate) fn sync_with<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>, peer: AccountId) {
        let Some(ps) = self.peers.get_mut(&peer) else {
            return;
        };
        if let Some(msg) = self.ledger.generate_sync_message(ps) {
            cx.out.push(Output::Send {
                to: peer,
                msg: Direct::LedgerSync(msg),
            });
        }
    }

    pub(crate) fn sync_all<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>) {
        if self.ledger.recoveries() != self.ledger_reloads {
            // The replica went back to what its store holds: peers may think
            // it has what it lost, so every sync starts afresh.
            self.ledger_reloads = self.ledger.recoveries();
            for ps in self.peers.values_mut() {
                *ps = crdt_ledger::PeerState::new();
            }
        }
        let peers: Vec<AccountId> = self.peers.keys().copied().collect();
        for p in peers {
            self.sync_with(cx, p);
        }
    }

    pub(crate) fn on_sync<R: Rng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        from: AccountId,
        bytes: &[u8],
    ) {
        let ps = self.peers.entry(from).or_default();
        match self.ledger.receive_sync_message(ps, bytes) {
            Ok(r) => {
                if r.new_entries > 0 {
                    debug!(from = %from.short(), entries = r.new_entries, "ledger entries from sync");
                    self.ledger_dirty = true;
                }
            }
            Err(e) => debug!(from = %from.short(), %e, "ledger sync message refused"),
        }
        self.sync_with(cx, from);
    }

    /// The committee's timer: propose when it is our turn, skip an epoch
    /// stalled for a whole further epoch, retry signatures.
    pub(crate) fn checkpoint_tick<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>) {
        let me = self.account();
        for action in self.ledger.handle_timeout(&me, cx.now) {
            match action {
                Action::Propose { epoch, round } => self.propose(cx, epoch, round),
                Action::Skip { epoch } => self.skip(cx, epoch),
                _ => {}
            }
        }
        if self.ckpt.next_publish().is_some_and(|at| at <= cx.now)
            && let Some((ms, _)) = self.ckpt.to_publish.take()
        {
            self.publish_checkpoint(cx, ms);
        }
        let retry = self.timing.sign_retry.0;
        let pending = std::mem::take(&mut self.ckpt.to_sign);
        for (from, p, since) in pending {
            if cx.now.0.saturating_sub(since.0) < retry {
                self.sign_proposal(cx, from, p, since);
            }
        }
    }

    /// Our round: publish the epoch's checkpoint if we hold its quorum, else
    /// propose it (the epoch's body with the newest quorum of prevotes again,
    /// if the ledger holds one, else a new body) and vote on it like any
    /// member.
    fn propose<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>, epoch: u64, round: u32) {
        if let Some(ms) = self.ledger.held_final(epoch) {
            // Final already (its proposer withholds it, or has not published
            // yet): publish it rather than vote again.
            return self.publish_checkpoint(cx, ms);
        }
        let p = match self.ledger.propose_checkpoint(&self.identity, epoch, round) {
            Ok(p) => {
                let again = p.valid.as_ref().map(|v| v.round);
                info!(epoch, round, proposed_again_from = ?again, "proposing the checkpoint");
                p
            }
            Err(e) => return debug!(epoch, round, %e, "no checkpoint proposal"),
        };
        self.send_to_committee(cx, epoch, &p);
        let (me, now) = (self.account(), cx.now);
        self.sign_proposal(cx, me, p, now);
    }

    /// Send a proposal (with the votes it carries) to every other member of
    /// its epoch's committee.
    fn send_to_committee<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>, epoch: u64, p: &Proposal) {
        let me = self.account();
        let committee = self
            .ledger
            .committee_for_checkpoint(epoch)
            .unwrap_or_default();
        for m in protocol::members(&committee)
            .into_iter()
            .filter(|m| *m != me)
        {
            cx.out.push(Output::Send {
                to: m,
                msg: Direct::Proposal(Box::new(p.clone())),
            });
        }
    }

    /// Sign the skip of a stalled epoch and send it, with the signatures we
    /// hold, to its committee and to the backup committee that may then
    /// checkpoint the next epoch.
    fn skip<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>, epoch: u64) {
        let me = self.account();
        let skip = match self.ledger.sign_skip(&self.identity, epoch, cx.now) {
            Ok(s) => s,
            Err(e) => return debug!(epoch, %e, "not skipping the epoch"),
        };
        warn!(epoch, "the epoch's committee stalled: signed its skip");
        let mut to: Vec<AccountId> = self
            .ledger
            .committee_for_checkpoint(epoch)
            .unwrap_or_default();
        to.extend(
            self.ledger
                .committee_for_checkpoint(epoch.saturating_add(1))
                .unwrap_or_default(),
        );
        to.sort();
        to.dedup();
        for m in to.into_iter().filter(|m| *m != me) {
            cx.out.push(Output::Send {
                to: m,
                msg: Direct::Skip(Box::new(skip.clone())),
            });
        }
        if self.ledger.skip_cert(epoch).is_some() {
            self.checkpoint_tick(cx);
        }
    }

    pub(crate) fn on_skip<R: Rng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        skip: &MultiSigned<crdt_ledger::SkipBody>,
    ) {
        match self.ledger.apply_skip(skip) {
            Ok(true) => {
                info!("a stalled epoch's skip certificate is complete");
                self.checkpoint_tick(cx);
            }
            Ok(false) => {}
            Err(e) => debug!(%e, "skip refused"),
        }
    }

    pub(crate) fn on_proposal<R: Rng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        from: AccountId,
        p: Proposal,
    ) {
        let now = cx.now;
        self.sign_proposal(cx, from, p, now);
    }

    /// Take a proposal with the votes it carries and vote on it (a prevote,
    /// and a precommit once a quorum prevoted). Whenever we sign, send it with
    /// every vote we hold to the whole committee, so that any member can
    /// finish it and a leader that withholds it changes nothing.
    fn sign_proposal<R: Rng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        from: AccountId,
        p: Proposal,
        since: Timestamp,
    ) {
        let Ok(body) = p.checkpoint.body_unverified() else {
            return;
        };
        let v = match self.ledger.vote(&self.identity, &p, cx.now) {
            Ok(v) => v,
            Err(e) => return debug!(epoch = body.epoch, %e, "checkpoint proposal refused"),
        };
        if v.prevoted || v.precommitted {
            info!(
                epoch = body.epoch,
                round = body.round,
                proposer = %body.proposer.short(),
                step = if v.precommitted { "precommit" } else { "prevote" },
                "voted on the checkpoint"
            );
            if let Some(all) = &v.proposal {
                self.send_to_committee(cx, body.epoch, all);
            }
        }
        match v.refused {
            Some(LedgerError::WontSign(why)) if why.contains("sync") || why.contains("not due") => {
                // Entries we lack (sync brings them), or a round our clock
                // has not reached yet.
                debug!(epoch = body.epoch, %why, "retrying the vote");
                let h = p.hash();
                self.ckpt.to_sign.retain(|(_, q, _)| q.hash() != h);
                self.ckpt.to_sign.push((from, p, since));
            }
            Some(e) => {
                debug!(epoch = body.epoch, round = body.round, %e, "not voting on the checkpoint")
            }
            None => {}
        }
        if let CheckpointStatus::Final(ms) = v.status {
            self.publish_final(cx, *ms);
        }
    }

    /// A checkpoint with its quorum: its proposer publishes it at once; any
    /// other member that holds the quorum publishes it a round later if it is
    /// not final here by then (a proposer that withholds it delays finality by
    /// a round, and a live one is not echoed by every member).
    fn publish_final<R: Rng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        ms: MultiSigned<CheckpointBody>,
    ) {
        let Ok(body) = ms.body_unverified() else {
            return;
        };
        if body.proposer == self.account() {
            return self.publish_checkpoint(cx, ms);
        }
        let waiting = self.ckpt.to_publish.as_ref().is_some_and(|(old, _)| {
            old.body_unverified()
                .is_ok_and(|o: CheckpointBody| o.epoch >= body.epoch)
        });
        if self.ledger.finalized_epoch() >= body.epoch || waiting {
            return;
        }
        let at = cx.now.plus(self.ledger.params().stall_timeout);
        self.ckpt.to_publish = Some((ms, at));
    }

    fn publish_checkpoint<R: Rng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        ms: MultiSigned<CheckpointBody>,
    ) {
        let epoch = ms.body_unverified().map(|b| b.epoch).unwrap_or_default();
        if self.ledger.finalized_epoch() >= epoch {
            return; // another member published it first
        }
        match self.append(cx.now, Body::Checkpoint(Box::new(ms))) {
            Ok(_) => info!(epoch, "checkpoint final and published"),
            Err(e) => warn!(epoch, %e, "cannot publish the checkpoint"),
        }
    }

    /// Publish a `Slash` for each offence proven to this replica (a forked
    /// chain, a double sign) that the ledger has not slashed: any peer may,
    /// and one that sees the proof does. So that not every peer writes the
    /// same slash (all but the first would be refused), the members of the
    /// next committee go first, one `stall_timeout` apart in draw order, and
    /// any other peer a turn after the last of them; each waits for its turn
    /// and writes only if the offence is still unslashed then.
    pub(crate) fn publish_slashes<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>) {
        let me = self.account();
        let net = self.network;
        let proofs: Vec<_> = self
            .ledger
            .slash_proofs()
            .into_iter()
            .filter_map(|p| p.check(&net).ok().map(|key| (key, p)))
            .filter(|((who, _), _)| *who != me)
            .collect();
        let open: std::collections::BTreeSet<_> = proofs.iter().map(|(k, _)| *k).collect();
        self.ckpt.slash_due.retain(|k, _| open.contains(k));
        if proofs.is_empty() {
            return;
        }
        let next = self.ledger.finalized_epoch().saturating_add(1);
        let committee = self
            .ledger
            .committee_for_checkpoint(next)
            .unwrap_or_default();
        let rank = committee
            .iter()
            .position(|m| *m == me)
            .unwrap_or(committee.len());
        let turn = self
            .ledger
            .params()
            .stall_timeout
            .0
            .saturating_mul(rank as u64);
        for (key, proof) in proofs {
            let due = *self
                .ckpt
                .slash_due
                .entry(key)
                .or_insert(cx.now.plus(protocol::DurationMs(turn)));
            if due > cx.now {
                continue;
            }
            self.ckpt.slash_due.remove(&key);
            let (offender, offence) = key;
            match self.append(cx.now, Body::Slash(Box::new(proof))) {
                Ok(_) => {
                    warn!(offender = %offender.short(), ?offence, "published the slash of a proven offence")
                }
                Err(e) => debug!(offender = %offender.short(), ?offence, %e, "slash not written"),
            }
        }
    }

    /// A transfer asked for by the user; the entry's hash once it is durable
    /// (peers hear of it in the sync messages appended to `out`).
    pub fn transfer<R: Rng + ?Sized>(
        &mut self,
        now: Timestamp,
        to: AccountId,
        amount: protocol::Amount,
        rng: &mut R,
        out: &mut Vec<Output>,
    ) -> Result<Hash32, LedgerError> {
        let hash = self.append(now, Body::Transfer { to, amount })?;
        self.settle_ledger(&mut Cx { now, rng, out });
        Ok(hash)
    }

    /// A provider tops its bond up to the configured amount, as far as its
    /// spendable balance goes (at start, and at each new epoch: a balance can
    /// grow, and a slash takes bond away). A requester with jobs does too,
    /// when its balance is at least four times that: its final bond backs
    /// the escrows it locks, so that providers start on them before they are
    /// final (see `escrow_ready`); without one, its jobs wait for the
    /// checkpoint that makes their escrow final.
    pub(crate) fn bond_for_contracts<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>) {
        if self.bond == Amount::ZERO {
            return;
        }
        let me = self.account();
        if self.provider.is_none() {
            let rich = self.ledger.spendable(&me).0 >= self.bond.0.saturating_mul(4);
            if self.jobs.is_empty() || !rich {
                return;
            }
        }
        let has = self
            .ledger
            .state()
            .bonds
            .get(&me)
            .copied()
            .unwrap_or_default();
        let want = self.bond.saturating_sub(has);
        let amount = want.min(self.ledger.spendable(&me));
        if amount == Amount::ZERO {
            if has == Amount::ZERO {
                warn!(want = %self.bond, "a provider needs a bond to be matched; this account has no tokens to bond");
            }
            return;
        }
        match self.append(cx.now, Body::Bond { amount }) {
            Ok(_) => info!(%amount, had = %has, "bonded as a provider"),
            Err(e) => warn!(%e, "cannot bond"),
        }
    }

    /// An oracle bonds the minimum stake if it has none, so that it enters the
    /// committee draw from the next checkpoint.
    pub(crate) fn stake_for_committee<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>) {
        let me = self.account();
        let min = self.ledger.params().min_stake;
        let stake = self.ledger.state().stake(&me);
        if stake >= min {
            return;
        }
        if self.ledger.spendable(&me) < min {
            return warn!(
                need = %min,
                "an oracle needs a stake of {min} tokens to be drawn; this account cannot pay it"
            );
        }
        match self.append(cx.now, Body::Stake { amount: min }) {
            Ok(_) => info!(%min, "staked to serve on the committee"),
            Err(e) => warn!(%e, "cannot stake"),
        }
    }
}
