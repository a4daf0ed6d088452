//! The ledger in the node: local writes, automerge sync with every connected
//! peer over request-response, and the committee's epoch checkpoints.

use crdt_ledger::{Action, Body, CheckpointBody, CheckpointStatus, LedgerError};
use libp2p::PeerId;
use protocol::{AccountId, Hash32, MultiSigned, Sig, Timestamp};
use tracing::{debug, info, warn};

use super::NodeLoop;
use crate::control::{BalanceView, EntryView, LedgerView};
use crate::direct::Direct;
use crate::net;

/// How long a proposal this member could not sign yet (it lacked entries) is
/// retried while sync catches up.
const SIGN_RETRY_MS: u64 = 20_000;

#[derive(Debug, Default)]
pub(super) struct CommitteeState {
    /// Proposals to sign once sync brings what they name: (from, proposal, first seen).
    to_sign: Vec<(PeerId, MultiSigned<CheckpointBody>, Timestamp)>,
}

impl NodeLoop {
    /// Write an entry (durable when this returns); peers get it on the next sync.
    pub(super) fn append(&mut self, body: Body) -> Result<(), LedgerError> {
        self.ledger.append(&self.identity, body, net::now())?;
        self.ledger_dirty = true;
        Ok(())
    }

    /// Send `peer` what it lacks, if anything.
    pub(super) fn sync_with(&mut self, peer: PeerId) {
        let Some(ps) = self.sync.get_mut(&peer) else {
            return;
        };
        if let Some(msg) = self.ledger.generate_sync_message(ps) {
            self.send_direct(peer, Direct::LedgerSync(msg));
        }
    }

    pub(super) async fn sync_all(&mut self) {
        let peers: Vec<PeerId> = self.sync.keys().copied().collect();
        for p in peers {
            self.sync_with(p);
        }
    }

    pub(super) async fn on_sync(&mut self, from: PeerId, bytes: &[u8]) {
        let ps = self.sync.entry(from).or_default();
        match self.ledger.receive_sync_message(ps, bytes) {
            Ok(r) => {
                if r.new_entries > 0 {
                    debug!(%from, entries = r.new_entries, "ledger entries from sync");
                    self.ledger_dirty = true;
                }
            }
            Err(e) => debug!(%from, %e, "ledger sync message refused"),
        }
        self.sync_with(from);
    }

    /// The committee's timer: propose when it is our turn, retry signatures.
    pub(super) async fn checkpoint_tick(&mut self) {
        let now = net::now();
        let me = self.identity.account();
        for action in self.ledger.handle_timeout(&me, now) {
            let Action::Propose { epoch, round } = action else {
                continue;
            };
            match self.ledger.propose_checkpoint(&self.identity, epoch, round) {
                Ok(p) => {
                    info!(epoch, round, "proposing the checkpoint");
                    let committee = self
                        .ledger
                        .committee_for_checkpoint(epoch)
                        .unwrap_or_default();
                    if protocol::quorum(committee.len()) <= 1 {
                        self.publish_checkpoint(p);
                        continue;
                    }
                    for m in committee.iter().filter(|m| **m != me) {
                        if let Ok(peer) = m.peer_id() {
                            self.send_direct(peer, Direct::Proposal(Box::new(p.clone())));
                        }
                    }
                }
                Err(e) => debug!(epoch, round, %e, "no checkpoint proposal"),
            }
        }
        let pending = std::mem::take(&mut self.ckpt.to_sign);
        for (from, p, since) in pending {
            if now.0.saturating_sub(since.0) < SIGN_RETRY_MS {
                self.sign_proposal(from, p, since);
            }
        }
    }

    pub(super) async fn on_proposal(&mut self, from: PeerId, p: MultiSigned<CheckpointBody>) {
        self.sign_proposal(from, p, net::now());
    }

    fn sign_proposal(&mut self, from: PeerId, p: MultiSigned<CheckpointBody>, since: Timestamp) {
        let Ok(body) = p.body_unverified() else {
            return;
        };
        match self.ledger.sign_checkpoint(&self.identity, &p, net::now()) {
            Ok((signer, sig)) => {
                info!(epoch = body.epoch, proposer = %body.proposer.short(), "signed the checkpoint");
                if let Ok(peer) = body.proposer.peer_id() {
                    self.send_direct(
                        peer,
                        Direct::Vote {
                            proposal: p.body_hash(),
                            signer,
                            sig,
                        },
                    );
                }
            }
            Err(LedgerError::WontSign(why)) if why.contains("sync") => {
                debug!(
                    epoch = body.epoch,
                    "checkpoint names entries we lack; retrying"
                );
                self.ckpt.to_sign.push((from, p, since));
            }
            Err(e) => debug!(epoch = body.epoch, %e, "not signing the checkpoint"),
        }
    }

    pub(super) async fn on_vote(&mut self, proposal: Hash32, signer: AccountId, sig: Sig) {
        match self
            .ledger
            .apply_checkpoint_signature(&proposal, signer, sig)
        {
            Ok(CheckpointStatus::Final(ms)) => self.publish_checkpoint(*ms),
            Ok(CheckpointStatus::Collecting { have, need }) => {
                debug!(have, need, "checkpoint signatures");
            }
            Err(e) => debug!(%e, "checkpoint signature refused"),
        }
    }

    fn publish_checkpoint(&mut self, ms: MultiSigned<CheckpointBody>) {
        let epoch = ms.body_unverified().map(|b| b.epoch).unwrap_or_default();
        match self.append(Body::Checkpoint(Box::new(ms))) {
            Ok(()) => info!(epoch, "checkpoint final and published"),
            Err(e) => warn!(epoch, %e, "cannot publish the checkpoint"),
        }
    }

    pub(super) fn transfer(
        &mut self,
        t: crate::control::TransferBody,
    ) -> anyhow::Result<EntryView> {
        let to: AccountId =
            t.to.parse()
                .map_err(|e| anyhow::anyhow!("{:?} is not an account id: {e}", t.to))?;
        if t.amount == 0 {
            anyhow::bail!("transfer a positive amount");
        }
        let body = Body::Transfer {
            to,
            amount: protocol::Amount(t.amount),
        };
        let detail = describe(&body);
        let id = self.ledger.append(&self.identity, body, net::now())?;
        self.ledger_dirty = true;
        Ok(EntryView {
            author: self.identity.account().to_string(),
            seq: id.seq,
            kind: "transfer".into(),
            created_at_ms: net::now().0,
            hash: id.hash.to_string(),
            detail,
        })
    }

    /// An oracle bonds the minimum stake if it has none, so that it enters the
    /// committee draw from the next checkpoint.
    pub(super) fn stake_for_committee(&mut self) {
        let me = self.identity.account();
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
        match self.append(Body::Stake { amount: min }) {
            Ok(()) => info!(%min, "staked to serve on the committee"),
            Err(e) => warn!(%e, "cannot stake"),
        }
    }

    pub(super) fn balance(&mut self, account: Option<String>) -> anyhow::Result<BalanceView> {
        let a: AccountId = match account {
            Some(s) => s
                .parse()
                .map_err(|e| anyhow::anyhow!("{s:?} is not an account id: {e}"))?,
            None => self.identity.account(),
        };
        let spendable = self.ledger.spendable(&a).0;
        let finalized_epoch = self.ledger.finalized_epoch();
        let st = self.ledger.state();
        Ok(BalanceView {
            account: a.to_string(),
            balance: st.balance(&a).0,
            spendable,
            stake: st.stake(&a).0,
            finalized_epoch,
        })
    }

    pub(super) fn ledger_view(&mut self, tail: usize) -> LedgerView {
        let finalized_epoch = self.ledger.finalized_epoch();
        let invalid = self.ledger.invalid().len();
        let total_supply = self
            .ledger
            .state()
            .total_supply()
            .map(|a| a.0)
            .unwrap_or_default();
        let mut all: Vec<EntryView> = self
            .ledger
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
            network: self.network.to_string(),
            entries,
            finalized_epoch,
            invalid,
            total_supply,
            tail,
        }
    }
}

fn describe(b: &Body) -> String {
    match b {
        Body::Transfer { to, amount } => format!("{amount} to {}", to.short()),
        Body::Stake { amount } | Body::Unstake { amount } => amount.to_string(),
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
