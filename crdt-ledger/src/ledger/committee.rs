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
    /// after the last final checkpoint, or — once a whole further epoch has passed
    /// without one (a stalled committee) — the latest ended epoch, for the backup
    /// committee.
    pub fn checkpoint_target(&mut self, now: Timestamp) -> Option<(u64, u32)> {
        let fin_epoch = self.finalized_epoch();
        let ended = self.ended_epoch(now);
        if ended <= fin_epoch {
            return None;
        }
        let epoch = if ended > fin_epoch + 1 {
            ended
        } else {
            fin_epoch + 1
        };
        let since = now.0.saturating_sub(self.epoch_end(epoch).0);
        let round = (since / self.params.stall_timeout.0.max(1)).min(u64::from(u32::MAX)) as u32;
        Some((epoch, round))
    }

    /// When the committee timer next needs [`Ledger::handle_timeout`].
    pub fn poll_timeout(&mut self) -> Option<Timestamp> {
        let fin_epoch = self.finalized_epoch();
        let Some(now) = self.last_now else {
            return Some(self.epoch_end(fin_epoch + 1));
        };
        match self.checkpoint_target(now) {
            None => Some(self.epoch_end(fin_epoch + 1)),
            Some((epoch, round)) => {
                let stall = self.params.stall_timeout.0.max(1);
                let next_round = self
                    .epoch_end(epoch)
                    .0
                    .saturating_add(stall.saturating_mul(u64::from(round) + 1));
                Some(Timestamp(next_round.min(
                    self.epoch_end(epoch + 1).0.max(now.0.saturating_add(1)),
                )))
            }
        }
    }

    /// Drive the committee timer: says when `me` should propose.
    pub fn handle_timeout(&mut self, me: &AccountId, now: Timestamp) -> Vec<Action> {
        self.last_now = Some(now);
        let Some((epoch, round)) = self.checkpoint_target(now) else {
            return Vec::new();
        };
        let Some(committee) = self.committee_for_checkpoint(epoch) else {
            return Vec::new();
        };
        if committee.is_empty() || committee[round as usize % committee.len()] != *me {
            return Vec::new();
        }
        if !self.proposed.insert((epoch, round)) {
            return Vec::new();
        }
        vec![Action::Propose { epoch, round }]
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
    ) -> Result<MultiSigned<CheckpointBody>, LedgerError> {
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
            .close_epoch(epoch, &prev, committee.clone(), &self.params)
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
        };
        self.proposed_root = Some((Box::new(next), state_root));
        let mut ms = MultiSigned::new(&body)?;
        ms.add_signature(identity, &self.network);
        let h = ms.body_hash();
        self.remember_signed(me, epoch, h)?;
        self.observe_checkpoint_sigs(&ms);
        self.votes.insert(h, ms.clone());
        Ok(ms)
    }

    /// As a committee member, check a proposal (proposer, committee, and that this
    /// replica's own fold gives the same state root) and sign it. Never signs two
    /// checkpoints for one epoch.
    pub fn sign_checkpoint(
        &mut self,
        identity: &Identity,
        proposal: &MultiSigned<CheckpointBody>,
        now: Timestamp,
    ) -> Result<(AccountId, Sig), LedgerError> {
        let me = identity.account();
        self.refresh();
        self.observe_checkpoint_sigs(proposal);
        let body = proposal.body_unverified()?;
        // Not before the epoch has ended, nor a round before its proposer's turn;
        // a skip to the backup committee only once a whole further epoch passed.
        match self.checkpoint_target(now) {
            Some((epoch, round)) if body.epoch <= epoch && body.round <= round => {
                if body.epoch > self.fin.state.epoch + 1 && body.epoch != epoch {
                    return Err(LedgerError::WontSign(format!(
                        "a fallback checkpoint must be for epoch {epoch} now"
                    )));
                }
            }
            _ => {
                return Err(LedgerError::WontSign(format!(
                    "epoch {} round {} is not due at {now:?}",
                    body.epoch, body.round
                )));
            }
        }
        self.member_committee(body.epoch, me)?;
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
        let ms = self
            .votes
            .get(proposal)
            .cloned()
            .ok_or_else(|| LedgerError::Epoch {
                epoch: 0,
                reason: format!("unknown proposal {proposal:?}"),
            })?;
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
        self.votes.insert(*proposal, ms.clone());
        if have >= need {
            Ok(CheckpointStatus::Final(Box::new(ms)))
        } else {
            Ok(CheckpointStatus::Collecting { have, need })
        }
    }

    /// Remember a proposal received from another member (so signatures can be
    /// collected on it here too).
    pub fn track_proposal(&mut self, proposal: &MultiSigned<CheckpointBody>) -> Hash32 {
        self.observe_checkpoint_sigs(proposal);
        let h = proposal.body_hash();
        self.votes.entry(h).or_insert_with(|| proposal.clone());
        h
    }

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
