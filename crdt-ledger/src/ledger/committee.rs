//! The committee: timer, proposals, signatures, double signs.

use super::persist::vote_record;
use super::*;
use crate::entry::Slot;

impl<S: Store> Ledger<S> {
    /// [`Ledger::committee_for_checkpoint`], or why there is none.
    fn checkpoint_committee(&mut self, epoch: u64) -> Result<Vec<AccountId>, LedgerError> {
        self.committee_for_checkpoint(epoch)
            .ok_or_else(|| LedgerError::Epoch {
                epoch,
                reason: "already final, or no committee".into(),
            })
    }

    /// The committee of `epoch`'s checkpoint, if `who` is a member of it.
    fn member_committee(
        &mut self,
        epoch: u64,
        who: AccountId,
    ) -> Result<Vec<AccountId>, LedgerError> {
        let committee = self.checkpoint_committee(epoch)?;
        if !committee.contains(&who) {
            return Err(LedgerError::NotMember { who, epoch });
        }
        Ok(committee)
    }

    // ---------------------------------------------------------- committee

    /// The time the checkpoint of `epoch` is due.
    pub fn epoch_end(&self, epoch: u64) -> Timestamp {
        Timestamp(
            self.genesis
                .genesis()
                .genesis_time
                .0
                .saturating_add(self.params.epoch_length.0.saturating_mul(epoch)),
        )
    }

    /// The latest epoch that has ended at `now`.
    pub fn ended_epoch(&self, now: Timestamp) -> u64 {
        now.0.saturating_sub(self.genesis.genesis().genesis_time.0)
            / self.params.epoch_length.0.max(1)
    }

    /// Which epoch should be checkpointed at `now` and in which round: the one
    /// after the last final checkpoint, or — for each epoch after it that this
    /// replica holds a skip certificate of — the one after that, for the backup
    /// committee. `None` before that epoch has ended.
    pub fn checkpoint_target(&mut self, now: Timestamp) -> Option<(u64, u32)> {
        let epoch = self.skipped_to();
        if now < self.epoch_end(epoch) {
            return None;
        }
        let since = now.0.saturating_sub(self.epoch_end(epoch).0);
        let round = (since / self.params.stall_timeout.0.max(1)).min(u64::from(u32::MAX)) as u32;
        Some((epoch, round))
    }

    /// The first epoch after the last final checkpoint that this replica holds
    /// no skip certificate of.
    fn skipped_to(&mut self) -> u64 {
        self.refresh();
        let mut epoch = self.fin.state.epoch.saturating_add(1);
        while self.skip_cert(epoch).is_some() {
            epoch = epoch.saturating_add(1);
        }
        epoch
    }

    /// The complete skip certificate of `epoch` on the last final checkpoint,
    /// if this replica holds one.
    pub fn skip_cert(&mut self, epoch: u64) -> Option<MultiSigned<SkipBody>> {
        let committee = self.committee_for_checkpoint(epoch)?;
        let prev = self.fin.state.last_checkpoint;
        let s = self.skips.get(&epoch)?;
        let body = s.body_unverified().ok()?;
        (body.prev == prev && held_quorum(&committee, &s.signatures)).then(|| s.clone())
    }

    /// When the committee timer next needs [`Ledger::handle_timeout`]: the
    /// next round, or the time a stalled epoch's members skip it.
    pub fn poll_timeout(&mut self) -> Option<Timestamp> {
        let epoch = self.skipped_to();
        let Some(now) = self.last_now else {
            return Some(self.epoch_end(epoch));
        };
        match self.checkpoint_target(now) {
            None => Some(self.epoch_end(epoch)),
            Some((epoch, round)) => {
                let stall = self.params.stall_timeout.0.max(1);
                let next_round = self
                    .epoch_end(epoch)
                    .0
                    .saturating_add(stall.saturating_mul(u64::from(round) + 1));
                let skip_at = self.epoch_end(epoch.saturating_add(1)).0;
                Some(Timestamp(if skip_at > now.0 {
                    next_round.min(skip_at)
                } else {
                    next_round
                }))
            }
        }
    }

    /// Drive the committee timer: says when `me` should propose, and when it
    /// should sign (or send again) the skip of an epoch stalled for a whole
    /// further epoch.
    pub fn handle_timeout(&mut self, me: &AccountId, now: Timestamp) -> Vec<Action> {
        self.last_now = Some(now);
        let Some((epoch, round)) = self.checkpoint_target(now) else {
            return Vec::new();
        };
        let Some(committee) = self.committee_for_checkpoint(epoch) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if !committee.is_empty()
            && committee[round as usize % committee.len()] == *me
            && self.proposed.insert((epoch, round))
        {
            out.push(Action::Propose { epoch, round });
        }
        let stalled = now >= self.epoch_end(epoch.saturating_add(1));
        let skip_hash = SkipBody {
            epoch,
            prev: self.fin.state.last_checkpoint,
        };
        let free = match self.signed.get(&(*me, epoch)) {
            None => true,
            Some(v) => {
                MultiSigned::new(&skip_hash).is_ok_and(|m| v.blocks_skip(&m.body_hash()).is_none())
            }
        };
        if stalled && committee.contains(me) && free && self.skip_asked.insert((epoch, round)) {
            out.push(Action::Skip { epoch });
        }
        out
    }

    /// Build, sign and remember this member's checkpoint proposal for `epoch`
    /// in `round`. If this replica holds a body of the epoch with a quorum of
    /// prevotes (the latest such round's: its *valid* body), it proposes that
    /// content again, with the prevotes as its proof; otherwise every pending
    /// entry, the resulting state root, the reward mint and the next
    /// committees. Send it to the committee and vote on it with
    /// [`Ledger::vote`] like any member.
    pub fn propose_checkpoint(
        &mut self,
        identity: &Identity,
        epoch: u64,
        round: u32,
    ) -> Result<Proposal, LedgerError> {
        let me = identity.account();
        self.refresh();
        let committee = self.checkpoint_committee(epoch)?;
        if committee.is_empty() || committee[round as usize % committee.len()] != me {
            return Err(LedgerError::NotProposer {
                who: me,
                epoch,
                round,
            });
        }
        if let Some(h) = self
            .signed
            .get(&(me, epoch))
            .and_then(|v| v.skip.or(v.legacy))
        {
            return Err(LedgerError::AlreadySigned { epoch, signed: h });
        }
        let prev = self.fin.state.last_checkpoint;
        let (body, valid) = match self.valid_body(epoch, &prev, &committee, round) {
            Some((vr, held)) => {
                let body = held.checkpoint.body_unverified()?.in_round(round, me);
                let pol = Pol {
                    round: vr,
                    prevotes: held.prevotes.clone(),
                };
                (body, Some(pol))
            }
            None => (self.build_checkpoint(me, epoch, round, &committee)?, None),
        };
        let checkpoint = MultiSigned::new(&body)?;
        let by = sign_bytes(
            identity,
            PROPOSED_KIND,
            &self.network,
            checkpoint.body_bytes(),
        );
        let p = Proposal {
            checkpoint,
            by,
            prevotes: Vec::new(),
            valid,
        };
        self.track_proposal(&p)?;
        Ok(p)
    }

    /// A new checkpoint body of `epoch` from this replica's view: every
    /// pending entry, the state root, the mint and the next committees.
    fn build_checkpoint(
        &mut self,
        me: AccountId,
        epoch: u64,
        round: u32,
        committee: &[AccountId],
    ) -> Result<CheckpointBody, LedgerError> {
        let mut skipped = Vec::new();
        for x in self.fin.state.epoch.saturating_add(1)..epoch {
            skipped.push(self.skip_cert(x).ok_or_else(|| LedgerError::Epoch {
                epoch,
                reason: format!("no skip certificate of epoch {x}"),
            })?);
        }
        let view = self.view.get_or_insert_with(unreachable_view);
        let frontier: Vec<FrontierItem> = view
            .tips
            .iter()
            .filter(|(a, t)| self.fin.frontier.get(a) != Some(t))
            .map(|(a, (s, h))| FrontierItem {
                author: *a,
                seq: *s,
                hash: *h,
            })
            .collect();
        let cur = &self.fin.state;
        let beacon = match self.fin.chain.last() {
            Some(last) => {
                let signed_by = cur.schedule.get(&cur.epoch).map_or(&[][..], Vec::as_slice);
                Some(
                    Beacon::of(last, signed_by).ok_or_else(|| LedgerError::Epoch {
                        epoch,
                        reason: "the last checkpoint's certificate lacks a quorum here".into(),
                    })?,
                )
            }
            None => None,
        };
        let mut next = view.state.clone();
        let prev = cur.last_checkpoint;
        let seed = Beacon::hash(beacon.as_ref());
        let mint = next
            .close_epoch(epoch, &prev, &seed, committee.to_vec(), self.ctx())
            .map_err(LedgerError::Rejected)?;
        let state_root = next.root();
        let body = CheckpointBody {
            epoch,
            prev,
            prev_epoch: cur.epoch,
            round,
            proposer: me,
            frontier,
            mint,
            state_root,
            next_committee: next.schedule.get(&(epoch + 1)).cloned().unwrap_or_default(),
            backup_committee: next.backup.clone(),
            skipped,
            beacon,
        };
        self.proposed_root = Some((Box::new(next), state_root));
        Ok(body)
    }

    /// The body of `epoch` on `prev` of the latest round before `before` that
    /// this replica holds a quorum of prevotes for, with that round.
    fn valid_body(
        &self,
        epoch: u64,
        prev: &Hash32,
        committee: &[AccountId],
        before: u32,
    ) -> Option<(u32, &Held)> {
        self.votes
            .values()
            .filter(|h| h.epoch == epoch && h.prev == *prev && h.round < before)
            .filter(|h| held_quorum(committee, &h.prevotes))
            .max_by_key(|h| (h.round, std::cmp::Reverse(h.checkpoint.body_hash())))
            .map(|h| (h.round, h))
    }

    /// A checkpoint of `epoch` on the last final one with a quorum of
    /// precommits collected here (not published yet, or this would not be
    /// the epoch to checkpoint): what a round's proposer publishes instead of
    /// proposing.
    pub fn held_final(&mut self, epoch: u64) -> Option<MultiSigned<CheckpointBody>> {
        self.refresh();
        let prev = self.fin.state.last_checkpoint;
        let committee = self.committee_for_checkpoint(epoch)?;
        self.votes
            .values()
            .find(|h| {
                h.epoch == epoch
                    && h.prev == prev
                    && held_quorum(&committee, &h.checkpoint.signatures)
            })
            .map(|h| h.checkpoint.clone())
    }

    /// Check that a proposal's `by` is its named proposer's, the member whose
    /// round it names.
    fn check_proposer(&mut self, p: &Proposal) -> Result<CheckpointBody, LedgerError> {
        let body = p.checkpoint.body_unverified()?;
        let committee = self.checkpoint_committee(body.epoch)?;
        if committee.is_empty() || committee[body.round as usize % committee.len()] != body.proposer
        {
            return Err(LedgerError::WontSign(
                "the proposer is not the member whose round it is".into(),
            ));
        }
        verify_bytes(
            PROPOSED_KIND,
            &self.network,
            &body.proposer,
            p.checkpoint.body_bytes(),
            &p.by,
        )?;
        Ok(body)
    }

    /// Remember a proposal received from its proposer or another member, with
    /// the valid prevotes and precommits it carries from committee members
    /// (members forward what they voted on to the whole committee), and the
    /// proof of lock change of a body proposed again. A proposal whose
    /// precommits reach a quorum here is `Final`, whoever sent it.
    pub fn track_proposal(
        &mut self,
        p: &Proposal,
    ) -> Result<(Hash32, CheckpointStatus), LedgerError> {
        let proposal = &p.checkpoint;
        self.observe_checkpoint_sigs(proposal);
        let body = self.check_proposer(p)?;
        self.absorb_skips(&body);
        let committee = self.checkpoint_committee(body.epoch)?;
        self.prune_votes();
        let h = proposal.body_hash();
        self.hold(&body, proposal, Some(p.by), &p.prevotes, &committee);
        if let Some(pol) = &p.valid
            && pol.round < body.round
        {
            let k = committee.len();
            let earlier = body.in_round(pol.round, committee[pol.round as usize % k]);
            let ms = MultiSigned::new(&earlier)?;
            let eh = ms.body_hash();
            self.hold(&earlier, &ms, None, &pol.prevotes, &committee);
            // Forward the proof only once it holds here.
            let proven = self
                .votes
                .get(&eh)
                .is_some_and(|e| held_quorum(&committee, &e.prevotes));
            if let Some(held) = self.votes.get_mut(&h)
                && held.valid.is_none()
                && proven
            {
                held.valid = Some(pol.clone());
            }
        }
        Ok((h, self.status(&h, &committee)))
    }

    /// Forget the votes of epochs already final, and the signatures seen and
    /// signed in epochs too old to slash.
    fn prune_votes(&mut self) {
        let fin_epoch = self.fin.state.epoch;
        self.votes.retain(|_, h| h.epoch > fin_epoch);
        let keep = |e: u64| e.saturating_add(crate::state::SLASH_EPOCHS) > fin_epoch;
        self.seen_sigs.retain(|(_, e), _| keep(*e));
        self.signed.retain(|(_, e), _| keep(*e));
    }

    /// Merge a body's votes into what this replica holds of it.
    fn hold(
        &mut self,
        body: &CheckpointBody,
        ms: &MultiSigned<CheckpointBody>,
        by: Option<Sig>,
        prevotes: &[(AccountId, Sig)],
        committee: &[AccountId],
    ) {
        let h = ms.body_hash();
        let mut held = self.votes.remove(&h).unwrap_or_else(|| Held::new(body, ms));
        if held.by.is_none() {
            held.by = by;
        }
        let kind = <CheckpointBody as Wire>::KIND;
        let (pc, _) = merge_signatures(kind, &self.network, held.checkpoint, ms, committee);
        held.checkpoint = pc;
        let mut have = held.checkpoint.clone();
        have.signatures = std::mem::take(&mut held.prevotes);
        let mut incoming = ms.clone();
        incoming.signatures = prevotes.to_vec();
        let (pv, added) = merge_signatures(PREVOTE_KIND, &self.network, have, &incoming, committee);
        for (signer, sig) in added {
            let slot = Slot::Prevote(body.round);
            self.record_sig(signer, body.epoch, slot, ms.body_bytes(), sig);
        }
        held.prevotes = pv.signatures;
        self.votes.insert(h, held);
    }

    fn status(&self, h: &Hash32, committee: &[AccountId]) -> CheckpointStatus {
        let need = quorum(committee.len());
        match self.votes.get(h) {
            Some(held) if held_quorum(committee, &held.checkpoint.signatures) => {
                CheckpointStatus::Final(Box::new(held.checkpoint.clone()))
            }
            Some(held) => CheckpointStatus::Collecting {
                have: protocol::seats(committee, held.checkpoint.signatures.iter().map(|(a, _)| a)),
                need,
            },
            None => CheckpointStatus::Collecting { have: 0, need },
        }
    }

    /// As a committee member, take a proposal and vote on it: prevote its body
    /// if this replica's fold gives the same state and the member's lock
    /// allows it, then precommit it if a quorum prevoted it. Gives what was
    /// signed, the proposal with every vote this replica holds (forward it to
    /// the committee when something was signed) and whether it is final.
    pub fn vote(
        &mut self,
        identity: &Identity,
        p: &Proposal,
        now: Timestamp,
    ) -> Result<Voted, LedgerError> {
        let (h, _) = self.track_proposal(p)?;
        let mut refused = None;
        let prevoted = match self.prevote(identity, &h, now) {
            Ok(new) => new,
            Err(e) => {
                refused = Some(e);
                false
            }
        };
        let precommitted = match self.precommit(identity, &h, now) {
            Ok(new) => new,
            Err(LedgerError::WontSign(why)) if why.starts_with(NO_POL) => false,
            Err(e) => {
                refused = refused.or(Some(e));
                false
            }
        };
        let committee = self
            .checkpoint_committee(p.checkpoint.body_unverified()?.epoch)
            .unwrap_or_default();
        Ok(Voted {
            hash: h,
            prevoted,
            precommitted,
            refused,
            proposal: self.proposal(&h),
            status: self.status(&h, &committee),
        })
    }

    /// Let local `members` vote on `p` until it is final or none of them
    /// signs anything more: what a replica that holds several members' keys
    /// does in place of the round trips between them (the simulator, tests,
    /// benches). Gives the final checkpoint, if any.
    pub fn vote_all(
        &mut self,
        members: &[&Identity],
        p: &Proposal,
        now: Timestamp,
    ) -> Result<Option<MultiSigned<CheckpointBody>>, LedgerError> {
        let mut current = p.clone();
        loop {
            let mut signed = false;
            for m in members {
                let v = self.vote(m, &current, now)?;
                signed |= v.prevoted || v.precommitted;
                if let CheckpointStatus::Final(ms) = v.status {
                    return Ok(Some(*ms));
                }
                if let Some(p) = v.proposal {
                    current = p;
                }
            }
            if !signed {
                return Ok(None);
            }
        }
    }

    /// Whether `me` may sign for the held body `h` now, and the body: due (its epoch is the one to checkpoint and its round has
    /// come), a member, nothing signed in a later round, and not the skip.
    fn may_sign(
        &mut self,
        me: AccountId,
        h: &Hash32,
        now: Timestamp,
    ) -> Result<(Held, MyVotes), LedgerError> {
        let held = self
            .votes
            .get(h)
            .cloned()
            .ok_or_else(|| LedgerError::WontSign(format!("unknown proposal {h:?}")))?;
        match self.checkpoint_target(now) {
            Some((epoch, round)) if held.epoch == epoch && held.round <= round => {}
            _ => {
                return Err(LedgerError::WontSign(format!(
                    "epoch {} round {} is not due at {now:?}",
                    held.epoch, held.round
                )));
            }
        }
        self.member_committee(held.epoch, me)?;
        let mine = self
            .signed
            .get(&(me, held.epoch))
            .cloned()
            .unwrap_or_default();
        if let Some(s) = mine.skip.or(mine.legacy) {
            return Err(LedgerError::AlreadySigned {
                epoch: held.epoch,
                signed: s,
            });
        }
        if let Some(top) = mine.top_round()
            && top > held.round
        {
            return Err(LedgerError::WontSign(format!(
                "signed in round {top} already, after round {}",
                held.round
            )));
        }
        Ok((held, mine))
    }

    /// Check the held body `h` against this replica's fold.
    fn check_held(&mut self, h: &Hash32) -> Result<(), LedgerError> {
        let ms = match self.votes.get(h) {
            Some(held) => held.checkpoint.clone(),
            None => return Err(LedgerError::WontSign(format!("unknown proposal {h:?}"))),
        };
        match self.check_checkpoint(&ms, false) {
            Ok(Checked::Ready) => Ok(()),
            Ok(Checked::Waiting) => Err(LedgerError::WontSign(
                "it names entries this replica lacks; sync first".into(),
            )),
            Err(r) => Err(LedgerError::WontSign(r.to_string())),
        }
    }

    /// Prevote the held body `h` (true), or say it is already prevoted
    /// (false). One prevote per round; a member locked on another content
    /// prevotes only with a quorum of prevotes for this content in a round
    /// since its lock.
    pub fn prevote(
        &mut self,
        identity: &Identity,
        h: &Hash32,
        now: Timestamp,
    ) -> Result<bool, LedgerError> {
        let me = identity.account();
        self.refresh();
        let (held, mine) = self.may_sign(me, h, now)?;
        if signed_in_round(mine.prevotes.get(&held.round), h, held.epoch)? {
            return Ok(false);
        }
        if let Some((lr, lc)) = mine.lock()
            && lc != held.content
        {
            let committee = self.checkpoint_committee(held.epoch)?;
            let justified = self.votes.values().any(|o| {
                o.epoch == held.epoch
                    && o.prev == held.prev
                    && o.content == held.content
                    && (lr..held.round).contains(&o.round)
                    && held_quorum(&committee, &o.prevotes)
            });
            if !justified {
                return Err(LedgerError::WontSign(format!(
                    "locked on another body since round {lr}"
                )));
            }
        }
        self.check_held(h)?;
        let sig = sign_bytes(
            identity,
            PREVOTE_KIND,
            &self.network,
            held.checkpoint.body_bytes(),
        );
        let note = VoteNote::Prevote {
            round: held.round,
            body: *h,
        };
        self.remember_signed(me, held.epoch, note)?;
        self.record_sig(
            me,
            held.epoch,
            Slot::Prevote(held.round),
            held.checkpoint.body_bytes(),
            sig,
        );
        if let Some(x) = self.votes.get_mut(h) {
            insert_sorted(&mut x.prevotes, me, sig);
        }
        Ok(true)
    }

    /// Precommit the held body `h` (true), or say it is already precommitted
    /// (false): only with a quorum of its prevotes held here, one per round.
    /// The member is then locked on its content.
    pub fn precommit(
        &mut self,
        identity: &Identity,
        h: &Hash32,
        now: Timestamp,
    ) -> Result<bool, LedgerError> {
        let me = identity.account();
        self.refresh();
        let (held, mine) = self.may_sign(me, h, now)?;
        let precommitted = mine.precommits.get(&held.round).map(|(b, _)| b);
        if signed_in_round(precommitted, h, held.epoch)? {
            return Ok(false);
        }
        let committee = self.checkpoint_committee(held.epoch)?;
        if !held_quorum(&committee, &held.prevotes) {
            return Err(LedgerError::WontSign(format!(
                "{NO_POL}: {} of {} seats",
                protocol::seats(&committee, held.prevotes.iter().map(|(a, _)| a)),
                quorum(committee.len())
            )));
        }
        self.check_held(h)?;
        let bytes = held.checkpoint.body_bytes();
        let sig = sign_bytes(
            identity,
            <CheckpointBody as Wire>::KIND,
            &self.network,
            bytes,
        );
        let note = VoteNote::Precommit {
            round: held.round,
            body: *h,
            content: held.content,
        };
        self.remember_signed(me, held.epoch, note)?;
        self.record_sig(me, held.epoch, Slot::Precommit(held.round), bytes, sig);
        if let Some(x) = self.votes.get_mut(h) {
            x.checkpoint.insert(me, sig);
        }
        Ok(true)
    }

    /// The proposal this replica holds under `h`, with every vote it
    /// collected (`None` for a body known only from a proof of lock change).
    pub fn proposal(&self, h: &Hash32) -> Option<Proposal> {
        let held = self.votes.get(h)?;
        Some(Proposal {
            checkpoint: held.checkpoint.clone(),
            by: held.by?,
            prevotes: held.prevotes.clone(),
            valid: held.valid.clone(),
        })
    }

    /// What `who` committed to for `epoch`: the body of its latest precommit,
    /// or its skip.
    pub fn signed_for(&self, who: &AccountId, epoch: u64) -> Option<Hash32> {
        let v = self.signed.get(&(*who, epoch))?;
        v.precommits
            .values()
            .next_back()
            .map(|(h, _)| *h)
            .or(v.skip)
            .or(v.legacy)
    }

    // --------------------------------------------------------------- skips

    /// As a member of a committee whose epoch has had no final checkpoint for a
    /// whole further epoch, sign that it is abandoned: only if this member
    /// signed no checkpoint of it (and then it never will). Gives the statement
    /// with every signature this replica holds; send it to that committee and
    /// to the backup committee. Signing again gives the same statement.
    pub fn sign_skip(
        &mut self,
        identity: &Identity,
        epoch: u64,
        now: Timestamp,
    ) -> Result<MultiSigned<SkipBody>, LedgerError> {
        let me = identity.account();
        self.refresh();
        match self.checkpoint_target(now) {
            Some((e, _)) if e == epoch && now >= self.epoch_end(epoch.saturating_add(1)) => {}
            _ => {
                return Err(LedgerError::WontSign(format!(
                    "epoch {epoch} is not the stalled one at {now:?}"
                )));
            }
        }
        self.member_committee(epoch, me)?;
        let body = SkipBody {
            epoch,
            prev: self.fin.state.last_checkpoint,
        };
        let mut ms = MultiSigned::new(&body)?;
        let h = ms.body_hash();
        if let Some(prev) = self
            .signed
            .get(&(me, epoch))
            .and_then(|v| v.blocks_skip(&h))
        {
            return Err(LedgerError::AlreadySigned {
                epoch,
                signed: prev,
            });
        }
        ms.add_signature(identity, &self.network);
        self.remember_signed(me, epoch, VoteNote::Skip { body: h })?;
        self.apply_skip(&ms)?;
        Ok(self.skips.get(&epoch).cloned().unwrap_or(ms))
    }

    /// Take the valid signatures of a skip statement from a member (or carried
    /// by a backup checkpoint): each must be by a member of the skipped epoch's
    /// committee, on the last final checkpoint. Says whether this replica now
    /// holds its certificate.
    pub fn apply_skip(&mut self, skip: &MultiSigned<SkipBody>) -> Result<bool, LedgerError> {
        self.refresh();
        let body = skip.body_unverified()?;
        let prev = self.fin.state.last_checkpoint;
        if body.prev != prev {
            return Err(LedgerError::Epoch {
                epoch: body.epoch,
                reason: "a skip on another checkpoint than the last final one".into(),
            });
        }
        let committee = self.checkpoint_committee(body.epoch)?;
        self.skips
            .retain(|_, s| s.body_unverified().is_ok_and(|b: SkipBody| b.prev == prev));
        let held = match self.skips.get(&body.epoch) {
            Some(s) => s.clone(),
            None => bare(skip),
        };
        let kind = <SkipBody as Wire>::KIND;
        let (have, added) = merge_signatures(kind, &self.network, held, skip, &committee);
        for (signer, sig) in added {
            self.record_sig(signer, body.epoch, Slot::Skip, skip.body_bytes(), sig);
        }
        let complete = held_quorum(&committee, &have.signatures);
        self.skips.insert(body.epoch, have);
        Ok(complete)
    }

    /// Take the skip certificates a checkpoint proposal carries.
    fn absorb_skips(&mut self, body: &CheckpointBody) {
        for s in &body.skipped {
            let _ = self.apply_skip(s);
        }
    }

    /// Remember every valid signature of a checkpoint, and of the skip
    /// certificates it carries, for double signs: a member that signed the
    /// checkpoint of an epoch and its skip is caught like one that signed two.
    pub(super) fn observe_checkpoint_sigs(&mut self, ms: &MultiSigned<CheckpointBody>) {
        let Ok(body) = ms.body_unverified() else {
            return;
        };
        let kind = <CheckpointBody as Wire>::KIND;
        for (signer, sig) in ms.signatures.clone() {
            if verify_bytes(kind, &self.network, &signer, ms.body_bytes(), &sig).is_ok() {
                let slot = Slot::Precommit(body.round);
                self.record_sig(signer, body.epoch, slot, ms.body_bytes(), sig);
            }
        }
        let kind = <SkipBody as Wire>::KIND;
        for s in &body.skipped {
            let Ok(sb) = s.body_unverified() else {
                continue;
            };
            for (signer, sig) in &s.signatures {
                if verify_bytes(kind, &self.network, signer, s.body_bytes(), sig).is_ok() {
                    self.record_sig(*signer, sb.epoch, Slot::Skip, s.body_bytes(), *sig);
                }
            }
        }
    }

    /// Remember a (verified) committee signature; one that conflicts with a
    /// statement the signer made for the same epoch (see [`Slot::conflicts`])
    /// is a double sign.
    pub(super) fn record_sig(
        &mut self,
        signer: AccountId,
        epoch: u64,
        slot: Slot,
        body: &[u8],
        sig: Sig,
    ) {
        let seen = self.seen_sigs.entry((signer, epoch)).or_default();
        if seen.iter().any(|(s, b, _)| *s == slot && b == body) {
            return;
        }
        if let Some((_, a, sig_a)) = seen.iter().find(|(s, b, _)| s.conflicts(slot) && b != body) {
            self.double_signs.push(SlashProof::DoubleSign {
                signer,
                a: a.clone(),
                sig_a: *sig_a,
                b: body.to_vec(),
                sig_b: sig,
            });
        }
        seen.push((slot, body.to_vec(), sig));
    }

    /// Durably note what `who` signed for `epoch` before the signature
    /// leaves, so a restarted member never signs against it.
    pub(super) fn remember_signed(
        &mut self,
        who: AccountId,
        epoch: u64,
        note: VoteNote,
    ) -> Result<(), LedgerError> {
        let mine = self.signed.entry((who, epoch)).or_default();
        if mine.has(note) {
            return Ok(());
        }
        self.store.append(&vote_record(who, epoch, note)?)?;
        self.signed.entry((who, epoch)).or_default().apply(note);
        Ok(())
    }
}

/// Why a precommit waits (not a refusal).
const NO_POL: &str = "no quorum of prevotes yet";

/// What [`Ledger::vote`] did with a proposal.
#[derive(Debug)]
pub struct Voted {
    /// The body's hash.
    pub hash: Hash32,
    /// Whether this member prevoted or precommitted it just now (then send
    /// `proposal` to the committee).
    pub prevoted: bool,
    pub precommitted: bool,
    /// Why it did not prevote (or precommit, with a quorum of prevotes).
    pub refused: Option<LedgerError>,
    /// The proposal with every vote this replica holds on it.
    pub proposal: Option<Proposal>,
    pub status: CheckpointStatus,
}

/// A checkpoint body this replica collects votes on.
#[derive(Clone, Debug)]
pub(crate) struct Held {
    pub(crate) epoch: u64,
    pub(crate) prev: Hash32,
    pub(crate) round: u32,
    pub(crate) content: Hash32,
    /// The body with its precommits.
    pub(crate) checkpoint: MultiSigned<CheckpointBody>,
    /// Its proposer's signature (none for a body known only from a proof of
    /// lock change).
    pub(crate) by: Option<Sig>,
    pub(crate) prevotes: Vec<(AccountId, Sig)>,
    /// The proof of lock change it was proposed with, to forward with it.
    pub(crate) valid: Option<Pol>,
}

impl Held {
    fn new(body: &CheckpointBody, ms: &MultiSigned<CheckpointBody>) -> Held {
        Held {
            epoch: body.epoch,
            prev: body.prev,
            round: body.round,
            content: body.content_hash(),
            checkpoint: bare(ms),
            by: None,
            prevotes: Vec::new(),
            valid: None,
        }
    }
}

/// A durable note of one statement a local member signed.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub(crate) enum VoteNote {
    Prevote {
        round: u32,
        body: Hash32,
    },
    Precommit {
        round: u32,
        body: Hash32,
        content: Hash32,
    },
    Skip {
        body: Hash32,
    },
}

/// What a local member signed for one epoch.
#[derive(Clone, Debug, Default)]
pub(crate) struct MyVotes {
    pub(crate) prevotes: BTreeMap<u32, Hash32>,
    /// Round → (body, content).
    pub(crate) precommits: BTreeMap<u32, (Hash32, Hash32)>,
    pub(crate) skip: Option<Hash32>,
    /// A note from before rounds had two steps: nothing more is signed for
    /// the epoch.
    pub(crate) legacy: Option<Hash32>,
}

impl MyVotes {
    pub(crate) fn apply(&mut self, note: VoteNote) {
        match note {
            VoteNote::Prevote { round, body } => {
                self.prevotes.insert(round, body);
            }
            VoteNote::Precommit {
                round,
                body,
                content,
            } => {
                self.precommits.insert(round, (body, content));
            }
            VoteNote::Skip { body } => self.skip = Some(body),
        }
    }

    fn has(&self, note: VoteNote) -> bool {
        match note {
            VoteNote::Prevote { round, body } => self.prevotes.get(&round) == Some(&body),
            VoteNote::Precommit { round, body, .. } => {
                self.precommits.get(&round).map(|(b, _)| *b) == Some(body)
            }
            VoteNote::Skip { body } => self.skip == Some(body),
        }
    }

    pub(crate) fn notes(&self) -> Vec<VoteNote> {
        let mut out: Vec<VoteNote> = self
            .prevotes
            .iter()
            .map(|(round, body)| VoteNote::Prevote {
                round: *round,
                body: *body,
            })
            .collect();
        out.extend(
            self.precommits
                .iter()
                .map(|(round, (body, content))| VoteNote::Precommit {
                    round: *round,
                    body: *body,
                    content: *content,
                }),
        );
        out.extend(self.skip.map(|body| VoteNote::Skip { body }));
        out
    }

    /// The latest round this member signed in.
    fn top_round(&self) -> Option<u32> {
        let a = self.prevotes.keys().next_back();
        let b = self.precommits.keys().next_back();
        a.max(b).copied()
    }

    /// The member's lock: its latest precommit's round and content.
    fn lock(&self) -> Option<(u32, Hash32)> {
        self.precommits
            .iter()
            .next_back()
            .map(|(r, (_, content))| (*r, *content))
    }

    /// What keeps this member from signing the skip `h`: a precommit, or
    /// another statement of the epoch's before rounds had two steps.
    pub(crate) fn blocks_skip(&self, h: &Hash32) -> Option<Hash32> {
        if let Some((b, _)) = self.precommits.values().next_back() {
            return Some(*b);
        }
        self.legacy
            .filter(|l| l != h)
            .or(self.skip.filter(|s| s != h))
    }
}

/// What a member signed in a round's slot, against `h`: nothing (false, sign
/// it), `h` itself (true, signed already), or another body (refused).
fn signed_in_round(prev: Option<&Hash32>, h: &Hash32, epoch: u64) -> Result<bool, LedgerError> {
    match prev {
        None => Ok(false),
        Some(p) if p == h => Ok(true),
        Some(p) => Err(LedgerError::AlreadySigned { epoch, signed: *p }),
    }
}

/// Whether `sigs` hold a quorum of `committee`'s seats.
pub(crate) fn held_quorum(committee: &[AccountId], sigs: &[(AccountId, Sig)]) -> bool {
    protocol::has_quorum(committee, sigs.iter().map(|(a, _)| a))
}

/// `ms` without its signatures.
fn bare<T>(ms: &MultiSigned<T>) -> MultiSigned<T> {
    let mut b = ms.clone();
    b.signatures.clear();
    b
}

/// Add a signature to a list sorted by signer (at most one per signer).
fn insert_sorted(list: &mut Vec<(AccountId, Sig)>, signer: AccountId, sig: Sig) {
    if let Err(i) = list.binary_search_by(|(s, _)| s.cmp(&signer)) {
        list.insert(i, (signer, sig));
    }
}

/// Add to what this replica holds of a multi-signed statement the valid
/// signatures (in domain `kind`) `incoming` carries from `committee` members
/// it lacks; gives the result and the signatures added.
fn merge_signatures<T: Wire>(
    kind: &'static str,
    network: &NetworkId,
    mut have: MultiSigned<T>,
    incoming: &MultiSigned<T>,
    committee: &[AccountId],
) -> (MultiSigned<T>, Vec<(AccountId, Sig)>) {
    let mut added = Vec::new();
    for (signer, sig) in &incoming.signatures {
        if committee.contains(signer)
            && !have.signatures.iter().any(|(s, _)| s == signer)
            && verify_bytes(kind, network, signer, incoming.body_bytes(), sig).is_ok()
        {
            have.insert(*signer, *sig);
            added.push((*signer, *sig));
        }
    }
    (have, added)
}
