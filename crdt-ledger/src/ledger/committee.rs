//! The committee: timer, proposals, signatures, double signs.

use super::persist::signed_record;
use super::*;

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
        (body.prev == prev && s.signatures.len() >= quorum(committee.len())).then(|| s.clone())
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
            Some(h) => MultiSigned::new(&skip_hash).is_ok_and(|m| m.body_hash() == *h),
        };
        if stalled && committee.contains(me) && free && self.skip_asked.insert((epoch, round)) {
            out.push(Action::Skip { epoch });
        }
        out
    }

    /// Build, sign and remember this member's checkpoint proposal for `epoch` in
    /// `round`: every pending entry, the resulting state root, the reward mint and
    /// the next committees. Send it to the committee; collect their signatures
    /// with [`Ledger::apply_checkpoint_signature`].
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
        if let Some(h) = self.signed.get(&(me, epoch)) {
            return Err(LedgerError::AlreadySigned { epoch, signed: *h });
        }
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
        let mut next = view.state.clone();
        let prev = cur.last_checkpoint;
        let mint = next
            .close_epoch(epoch, &prev, committee.clone(), self.ctx())
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
        };
        self.proposed_root = Some((Box::new(next), state_root));
        let checkpoint = MultiSigned::new(&body)?;
        let by = sign_bytes(
            identity,
            PROPOSED_KIND,
            &self.network,
            checkpoint.body_bytes(),
        );
        let p = Proposal { checkpoint, by };
        self.votes.insert(p.hash(), p.clone());
        Ok(p)
    }

    /// The proposal of `epoch` on the last final checkpoint that this replica
    /// holds with the most votes: what a round's proposer sends again instead
    /// of proposing another body that members already bound to one could not
    /// vote for.
    pub fn open_proposal(&mut self, epoch: u64) -> Option<Proposal> {
        self.refresh();
        let prev = self.fin.state.last_checkpoint;
        self.votes
            .values()
            .filter(|p| {
                p.checkpoint
                    .body_unverified()
                    .is_ok_and(|b| b.epoch == epoch && b.prev == prev)
            })
            .max_by_key(|p| (p.checkpoint.signatures.len(), std::cmp::Reverse(p.hash())))
            .cloned()
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

    /// As a committee member, check a proposal (proposer, committee, and that this
    /// replica's own fold gives the same state root) and vote for it. Never votes
    /// for two checkpoints of one epoch. A proposer votes for its own body only
    /// once another member has (or alone, with a quorum of one).
    pub fn sign_checkpoint(
        &mut self,
        identity: &Identity,
        p: &Proposal,
        now: Timestamp,
    ) -> Result<(AccountId, Sig), LedgerError> {
        let me = identity.account();
        self.refresh();
        let proposal = &p.checkpoint;
        self.observe_checkpoint_sigs(proposal);
        let body = self.check_proposer(p)?;
        self.absorb_skips(&body);
        // Not before the epoch has ended, nor a round before its proposer's turn;
        // the backup committee's only on the skip certificates it carries.
        match self.checkpoint_target(now) {
            Some((epoch, round)) if body.epoch == epoch && body.round <= round => {}
            _ => {
                return Err(LedgerError::WontSign(format!(
                    "epoch {} round {} is not due at {now:?}",
                    body.epoch, body.round
                )));
            }
        }
        let committee = self.member_committee(body.epoch, me)?;
        if body.proposer == me
            && quorum(committee.len()) > 1
            && !proposal
                .signatures
                .iter()
                .any(|(s, _)| *s != me && committee.contains(s))
        {
            return Err(LedgerError::WontSign(
                "a proposer votes for its body once another member has".into(),
            ));
        }
        let h = proposal.body_hash();
        if let Some(prev) = self.signed.get(&(me, body.epoch))
            && *prev != h
        {
            return Err(LedgerError::AlreadySigned {
                epoch: body.epoch,
                signed: *prev,
            });
        }
        match self.check_checkpoint(proposal, false) {
            Ok(Checked::Ready) => {}
            Ok(Checked::Waiting) => {
                return Err(LedgerError::WontSign(
                    "it names entries this replica lacks; sync first".into(),
                ));
            }
            Err(r) => return Err(LedgerError::WontSign(r.to_string())),
        }
        let sig = sign_bytes(
            identity,
            <CheckpointBody as Wire>::KIND,
            &self.network,
            proposal.body_bytes(),
        );
        self.remember_signed(me, body.epoch, h)?;
        self.record_sig(me, body.epoch, proposal.body_bytes(), sig);
        Ok((me, sig))
    }

    /// Add a member's signature to a proposal this replica holds (its own, or one
    /// it was sent: pass it once with [`Ledger::track_proposal`]).
    pub fn apply_checkpoint_signature(
        &mut self,
        proposal: &Hash32,
        signer: AccountId,
        sig: Sig,
    ) -> Result<CheckpointStatus, LedgerError> {
        let mut p = self
            .votes
            .get(proposal)
            .cloned()
            .ok_or_else(|| LedgerError::Epoch {
                epoch: 0,
                reason: format!("unknown proposal {proposal:?}"),
            })?;
        let ms = p.checkpoint.clone();
        let body = ms.body_unverified()?;
        verify_bytes(
            <CheckpointBody as Wire>::KIND,
            &self.network,
            &signer,
            ms.body_bytes(),
            &sig,
        )?;
        self.record_sig(signer, body.epoch, ms.body_bytes(), sig);
        let committee = self.member_committee(body.epoch, signer)?;
        let mut ms = ms;
        ms.insert(signer, sig);
        let need = quorum(committee.len());
        let have = ms.signatures.len();
        p.checkpoint = ms.clone();
        self.votes.insert(*proposal, p);
        if have >= need {
            Ok(CheckpointStatus::Final(Box::new(ms)))
        } else {
            Ok(CheckpointStatus::Collecting { have, need })
        }
    }

    /// Remember a proposal received from its proposer or another member (so
    /// votes can be collected on it here too). It may carry members' votes
    /// (members forward what they voted for to the whole committee): valid
    /// ones are kept, and a proposal that reaches its quorum here is `Final`
    /// whoever sent it.
    pub fn track_proposal(
        &mut self,
        p: &Proposal,
    ) -> Result<(Hash32, CheckpointStatus), LedgerError> {
        let proposal = &p.checkpoint;
        self.observe_checkpoint_sigs(proposal);
        let body = self.check_proposer(p)?;
        self.absorb_skips(&body);
        let h = proposal.body_hash();
        let committee = self.checkpoint_committee(body.epoch)?;
        let held = self.votes.get(&h).map(|p| p.checkpoint.clone());
        let (ms, _) = merge_signatures(&self.network, held, proposal, &committee);
        let need = quorum(committee.len());
        let have = ms.signatures.len();
        self.votes.insert(
            h,
            Proposal {
                checkpoint: ms.clone(),
                by: p.by,
            },
        );
        Ok((
            h,
            if have >= need {
                CheckpointStatus::Final(Box::new(ms))
            } else {
                CheckpointStatus::Collecting { have, need }
            },
        ))
    }

    /// The proposal this replica holds under `h`, with every signature it
    /// collected.
    pub fn proposal(&self, h: &Hash32) -> Option<&Proposal> {
        self.votes.get(h)
    }

    /// What `who` signed for `epoch` (a checkpoint body's or a skip's hash).
    pub fn signed_for(&self, who: &AccountId, epoch: u64) -> Option<Hash32> {
        self.signed.get(&(*who, epoch)).copied()
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
        if let Some(prev) = self.signed.get(&(me, epoch))
            && *prev != h
        {
            return Err(LedgerError::AlreadySigned {
                epoch,
                signed: *prev,
            });
        }
        ms.add_signature(identity, &self.network);
        self.remember_signed(me, epoch, h)?;
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
        let held = self.skips.get(&body.epoch).cloned();
        let (have, added) = merge_signatures(&self.network, held, skip, &committee);
        for (signer, sig) in added {
            self.record_sig(signer, body.epoch, skip.body_bytes(), sig);
        }
        let complete = have.signatures.len() >= quorum(committee.len());
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
                self.record_sig(signer, body.epoch, ms.body_bytes(), sig);
            }
        }
        let kind = <SkipBody as Wire>::KIND;
        for s in &body.skipped {
            let Ok(sb) = s.body_unverified() else {
                continue;
            };
            for (signer, sig) in &s.signatures {
                if verify_bytes(kind, &self.network, signer, s.body_bytes(), sig).is_ok() {
                    self.record_sig(*signer, sb.epoch, s.body_bytes(), *sig);
                }
            }
        }
    }

    /// Remember a (verified) checkpoint signature; a second body for the same
    /// signer and epoch is a double sign.
    pub(super) fn record_sig(&mut self, signer: AccountId, epoch: u64, body: &[u8], sig: Sig) {
        let seen = self.seen_sigs.entry((signer, epoch)).or_default();
        if seen.iter().any(|(b, _)| b == body) {
            return;
        }
        if let Some((a, sig_a)) = seen.first() {
            self.double_signs.push(SlashProof::DoubleSign {
                signer,
                a: a.clone(),
                sig_a: *sig_a,
                b: body.to_vec(),
                sig_b: sig,
            });
        }
        seen.push((body.to_vec(), sig));
    }

    /// Durably remember that `who` signed checkpoint `h` for `epoch` before the
    /// signature leaves, so a restarted member never signs a second one.
    pub(super) fn remember_signed(
        &mut self,
        who: AccountId,
        epoch: u64,
        h: Hash32,
    ) -> Result<(), LedgerError> {
        if self.signed.get(&(who, epoch)) != Some(&h) {
            self.store.append(&signed_record(who, epoch, h)?)?;
            self.signed.insert((who, epoch), h);
        }
        Ok(())
    }
}

/// Add to what this replica holds of a multi-signed statement (or a bare copy
/// of `incoming`) the valid signatures `incoming` carries from `committee`
/// members it lacks; gives the result and the signatures added.
fn merge_signatures<T: Wire>(
    network: &NetworkId,
    held: Option<MultiSigned<T>>,
    incoming: &MultiSigned<T>,
    committee: &[AccountId],
) -> (MultiSigned<T>, Vec<(AccountId, Sig)>) {
    let mut have = held.unwrap_or_else(|| {
        let mut bare = incoming.clone();
        bare.signatures.clear();
        bare
    });
    let mut added = Vec::new();
    for (signer, sig) in &incoming.signatures {
        if committee.contains(signer)
            && !have.signatures.iter().any(|(s, _)| s == signer)
            && verify_bytes(T::KIND, network, signer, incoming.body_bytes(), sig).is_ok()
        {
            have.insert(*signer, *sig);
            added.push((*signer, *sig));
        }
    }
    (have, added)
}
