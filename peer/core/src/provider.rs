//! The provider's half: offers, and running a contract's job once three things
//! are in: the engine accepted the contract (a proposal of the requester's, or
//! our answer to its open bid), the requester's escrow is in the ledger, and its
//! job key has arrived. A contract whose escrow or key never comes is given up
//! at its deadline, so it holds no slot for good; the committee's "not
//! delivered" verdict refunds an escrow that did come. A contract given up
//! (its key never came, or its run failed for good) is withdrawn: a signed
//! [`protocol::Withdrawal`] to its committee and requester has the committee
//! judge it not delivered at once, so the escrow comes back then rather than
//! at the deadline.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crdt_ledger::Store;
use protocol::market::{ProviderInput, ProviderOutput, RequesterInput};
use protocol::{
    AccountId, BlobRef, ComputeUnits, Contract, ContractTerms, Hash32, KeyGrant, Message, Signed,
    Timestamp,
};
use rand::Rng;
use tracing::{debug, info, warn};

use crate::retry::Retry;
use crate::{Cx, Grant, NodeCore, Output, WorkError, keys};

/// The provider's contracts between the engine and the backend.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Accepted by the engine, waiting for their escrow and key.
    waiting: HashMap<Hash32, Box<ContractTerms>>,
    /// Running on the backend, with their terms (to wait again if the inputs
    /// could not be fetched).
    running: HashMap<Hash32, Box<ContractTerms>>,
    /// Contracts handed to the engine, awaiting the committee's settlement.
    unsettled: HashMap<Hash32, ContractTerms>,
    /// Accepted contracts not run to their end yet, signed by both: what a
    /// restart resumes.
    pub(crate) accepted: BTreeMap<Hash32, Contract>,
    /// Our latest receipts (at most [`KEPT_RECEIPTS`]) with their requesters
    /// and their contracts' deadlines, handed again to a requester that comes
    /// back up: it may have missed the gossip while down, and needs the
    /// receipt to fetch its result. Kept while the contract is unsettled or
    /// its result is kept (`Timing::result_keep` past the deadline), no longer.
    receipts: VecDeque<(AccountId, Hash32, Timestamp, Signed<protocol::Receipt>)>,
    /// Open escrows for us already handed to the engine.
    taken: std::collections::HashSet<Hash32>,
    /// What the ledger last said our data sets' budgets spent.
    spends: Vec<protocol::market::PrivacySpend>,
}

/// Receipts a provider keeps to hand again to requesters that come back.
pub const KEPT_RECEIPTS: usize = 256;

/// How long past its deadline a provider keeps a job's result (its blobs
/// are then collected), and so the receipt a requester needs to fetch it:
/// past the escrow's bound (`protocol::escrow_bound`: the deadline, the
/// committee's grace and five minutes), by then settled or refunded.
pub const RESULT_KEEP: protocol::DurationMs = protocol::DurationMs::secs(2 * 3600);

impl State {
    pub(crate) fn receipts_kept(&self) -> usize {
        self.receipts.len()
    }

    /// The earliest deadline of a contract still waiting for its escrow or key.
    pub(crate) fn next_release(&self) -> Option<Timestamp> {
        self.waiting.values().map(|t| t.deadline).min()
    }
}

/// A job run and its (encrypted) result stored, as the driver reports it.
#[derive(Debug, Clone)]
pub struct RanJob {
    pub result: BlobRef,
    pub units: ComputeUnits,
    pub commitment: Hash32,
    pub checkpoint_every: u32,
    pub checkpoints: u32,
    pub inputs_ready_at: Timestamp,
    pub started_at: Timestamp,
    /// For the log: how long it ran, on which backend.
    pub secs: f64,
    pub backend: String,
}

impl<S: Store> NodeCore<S> {
    pub(crate) fn provider_handle<R: Rng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        input: ProviderInput,
    ) {
        let Some(p) = self.provider.as_mut() else {
            return;
        };
        let o = p.handle(cx.now, input, cx.rng);
        self.on_provider_out(cx, o);
    }

    pub(crate) fn on_provider_out<R: Rng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        out: Vec<ProviderOutput>,
    ) {
        for o in out {
            match o {
                ProviderOutput::Publish(m) => {
                    if let Message::Receipt(r) = &m
                        && let Ok(b) = r.body_unverified()
                        && let Some(t) = self.prov.unsettled.get(&b.contract)
                    {
                        if self.prov.receipts.len() >= KEPT_RECEIPTS {
                            self.prov.receipts.pop_front();
                        }
                        self.prov.receipts.push_back((
                            t.requester,
                            b.contract,
                            t.deadline,
                            r.clone(),
                        ));
                        // The committee needs it to judge: directly too, not
                        // only by gossip.
                        let contract = b.contract;
                        self.send_to_judges(cx, &contract, m.clone());
                    }
                    if let Message::Offer(s) = &m {
                        self.last_offer = Some(s.clone());
                        if let Ok(o) = s.body_unverified() {
                            self.note_contact(cx.now, o.provider, &o.contact);
                        }
                        // Our own offer goes into our own book too.
                        self.requester_handle(cx, RequesterInput::Offer(s.clone()));
                    }
                    cx.out.push(Output::Publish(m));
                }
                ProviderOutput::Send { to, message } => self.send(cx, to, message),
                ProviderOutput::Rejected { requester, reason } => {
                    info!(requester = %requester.short(), ?reason, "refused a proposal");
                }
                ProviderOutput::PriceChanged { price } => info!(price = price.0, "price changed"),
                ProviderOutput::Run { contract, terms } => {
                    info!(contract = %contract.short(), "contract accepted; waiting for its escrow and job key");
                    self.prov.unsettled.insert(contract, (*terms).clone());
                    if let Some(c) = self
                        .provider
                        .as_ref()
                        .and_then(|p| p.deal(&contract))
                        .and_then(|d| d.contract())
                    {
                        self.prov.accepted.insert(contract, c.clone());
                        self.state_dirty = true;
                    }
                    self.prov.waiting.insert(contract, terms);
                    self.try_run(cx, contract);
                }
                _ => {}
            }
        }
    }

    /// Start a job whose terms, escrow and key are all here.
    pub(crate) fn try_run<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>, contract: Hash32) {
        if self.retries.waiting(Retry::Run(contract)) {
            return; // backing off: the requester was not reachable
        }
        let Some(grant) = self.grants.get(&contract).cloned() else {
            return;
        };
        let Some(terms) = self.prov.waiting.get(&contract) else {
            return;
        };
        if grant.requester != terms.requester || !self.escrow_ready(&contract) {
            return;
        }
        let Some(terms) = self.prov.waiting.remove(&contract) else {
            return;
        };
        if let std::collections::hash_map::Entry::Vacant(e) = self.prov.running.entry(contract) {
            info!(contract = %contract.short(), "escrow locked and key in: running the job");
            e.insert(terms.clone());
            cx.out.push(Output::Run {
                contract,
                terms,
                grant,
            });
        }
    }

    /// Whether the escrow of `contract` may be worked on: final, or backed
    /// by its requester's bond (see [`crdt_ledger::Ledger::escrow_ready`]).
    fn escrow_ready(&mut self, contract: &Hash32) -> bool {
        let ready = self.ledger.escrow_ready(contract);
        if !ready && self.ledger.state().escrows.contains_key(contract) {
            debug!(
                contract = %contract.short(),
                "escrow pending and not backed by its requester's bond: waiting for its checkpoint"
            );
        }
        ready
    }

    /// Tell the provider engine how long a job of `spec`'s requester would
    /// wait for its escrow to become final before it may start: nothing when
    /// the requester's bond backs its escrow (what it has pending plus this
    /// job's most), else [`crdt_ledger::Ledger::unbacked_wait`].
    pub(crate) fn note_start_delay(&mut self, spec: &protocol::JobSpec) {
        if self.provider.is_none() {
            return;
        }
        let escrow = spec
            .max_price
            .cost(spec.estimated_units)
            .unwrap_or(protocol::Amount(u64::MAX));
        let delay = if self.ledger.backs(&spec.requester, escrow) {
            protocol::DurationMs(0)
        } else {
            self.ledger.unbacked_wait()
        };
        if let Some(engine) = self.provider.as_mut() {
            engine.set_start_delay(spec.requester, delay);
        }
    }

    /// Run what the ledger now escrows; hand the engine the settlements of our
    /// contracts, each found by its contract id.
    pub(crate) fn provider_ledger_changed<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>) {
        if self.provider.is_none() {
            return;
        }
        self.take_escrowed(cx);
        self.privacy_spent(cx);
        let waiting: Vec<Hash32> = self.prov.waiting.keys().copied().collect();
        for c in waiting {
            self.try_run(cx, c);
        }
        let unsettled: Vec<(Hash32, ContractTerms)> = self
            .prov
            .unsettled
            .iter()
            .map(|(c, t)| (*c, t.clone()))
            .collect();
        for (c, terms) in unsettled {
            if self.ledger.expired(&c) {
                self.prov.unsettled.remove(&c);
                warn!(contract = %c.short(), "no committee settled the contract: its escrow expired, refunded to the requester");
                continue;
            }
            if let Some(si) = self.settlement_of(&c, &terms) {
                self.prov.unsettled.remove(&c);
                info!(contract = %c.short(), paid = %si.payout.provider, "settled");
                self.provider_handle(cx, ProviderInput::Settlement(Box::new(si)));
            }
        }
    }

    /// Hand the engine what the ledger says our data sets' privacy budgets
    /// spent, when it changed (a provider with no data set skips this).
    fn privacy_spent<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>) {
        if self
            .provider
            .as_ref()
            .is_none_or(|p| p.config().datasets.is_empty())
        {
            return;
        }
        let me = self.account();
        let spends = self.ledger.state().privacy_spends(&me);
        if spends != self.prov.spends {
            self.prov.spends = spends.clone();
            self.provider_handle(cx, ProviderInput::PrivacySpent(spends));
        }
    }

    /// A peer came up: hand it our latest receipts of its contracts, and those
    /// of every contract not settled yet (a committee member that comes back
    /// may have lost the receipt in a crash).
    pub(crate) fn resend_receipts<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>, peer: AccountId) {
        let mine: Vec<Signed<protocol::Receipt>> = self
            .prov
            .receipts
            .iter()
            .filter(|(requester, c, ..)| *requester == peer || self.prov.unsettled.contains_key(c))
            .map(|(.., r)| r.clone())
            .collect();
        for r in mine {
            self.send(cx, peer, Message::Receipt(r));
        }
    }

    /// Give an escrowed contract up before delivering: tell its committee and
    /// its requester, signed, so that the escrow is refunded now. (Without an
    /// escrow there is nothing to refund and nobody to tell.)
    fn withdraw<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>, contract: Hash32, why: &str) {
        let Some(requester) = self
            .ledger
            .state()
            .escrows
            .get(&contract)
            .map(|e| e.requester)
        else {
            return;
        };
        let reason: String = why
            .chars()
            .filter(|c| !c.is_control())
            .scan(0, |len, c| {
                *len += c.len_utf8();
                (*len <= protocol::MAX_TEXT).then_some(c)
            })
            .collect();
        let w = protocol::Withdrawal {
            contract,
            provider: self.account(),
            reason,
            at: cx.now,
        };
        let Ok(s) = Signed::sign(&self.identity, &self.network, &w) else {
            return;
        };
        let m = Message::Withdrawal(s);
        self.send_to_judges(cx, &contract, m.clone());
        self.send(cx, requester, m);
    }

    /// A new finalized epoch: hand the receipts of our unsettled contracts
    /// directly to the committee that judges each (gossip, or a direct send,
    /// may have been lost; a member that never gets the receipt can only
    /// find the job undelivered).
    /// Receipts whose results are gone (and settled) are dropped first.
    pub(crate) fn nudge_receipts<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>) {
        let now = cx.now;
        let keep = self.timing.result_keep;
        let unsettled = &self.prov.unsettled;
        self.prov
            .receipts
            .retain(|(_, c, deadline, _)| unsettled.contains_key(c) || deadline.plus(keep) > now);
        let open: Vec<(Hash32, Signed<protocol::Receipt>)> = self
            .prov
            .receipts
            .iter()
            .filter(|(_, c, ..)| self.prov.unsettled.contains_key(c))
            .map(|(_, c, _, r)| (*c, r.clone()))
            .collect();
        for (c, r) in open {
            self.send_to_judges(cx, &c, Message::Receipt(r));
        }
    }

    fn send_to_judges<R: Rng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        contract: &Hash32,
        m: Message,
    ) {
        for member in self.judges_of(contract) {
            self.send(cx, member, m.clone());
        }
    }

    /// Escrows the ledger holds for contracts with us that the engine does not
    /// know: the requester's contract never reached us (we were down, or its
    /// gossip was lost), or a crash came before our state was saved. The lock
    /// entry holds the contract both signed, so we take it up from there.
    fn take_escrowed<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>) {
        let me = self.account();
        let mine = self.ledger.open_escrows_of(&me);
        let state = self.ledger.state();
        let new: Vec<(Hash32, Hash32)> = mine
            .iter()
            .filter(|id| !self.prov.taken.contains(*id) && !self.prov.unsettled.contains_key(*id))
            .filter_map(|id| state.escrows.get(id).map(|e| (*id, e.lock)))
            .collect();
        self.prov.taken.retain(|id| mine.binary_search(id).is_ok());
        for (id, lock) in new {
            self.prov.taken.insert(id);
            if let Some(crdt_ledger::Body::EscrowLock { contract }) =
                self.ledger.entry(&lock).map(|e| e.data.body.clone())
            {
                info!(contract = %id.short(), "an escrow for us in the ledger: taking the contract up");
                self.provider_handle(cx, ProviderInput::Resume(contract));
            }
        }
    }

    /// Contracts whose escrow or key did not come by their deadline: give them
    /// up, freeing the slot.
    pub(crate) fn release_unescrowed<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>) {
        let due: Vec<Hash32> = self
            .prov
            .waiting
            .iter()
            .filter(|(_, t)| t.deadline <= cx.now)
            .map(|(c, _)| *c)
            .collect();
        for contract in due {
            self.prov.waiting.remove(&contract);
            self.state_dirty |= self.prov.accepted.remove(&contract).is_some();
            self.retries.done(Retry::Run(contract));
            let escrowed = self.ledger.state().escrows.contains_key(&contract);
            let reason = if escrowed {
                "the requester's job key never came"
            } else {
                "the requester's escrow never reached the ledger"
            };
            warn!(contract = %contract.short(), reason, "giving the contract up");
            self.withdraw(cx, contract, reason);
            self.provider_handle(
                cx,
                ProviderInput::Aborted {
                    contract,
                    reason: reason.into(),
                },
            );
        }
    }

    /// A job key from a requester, for us as provider or committee member.
    pub(crate) fn on_grant<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>, g: Signed<KeyGrant>) {
        let me = self.account();
        let grant = match g.verify(&self.network) {
            Ok(b) if b.requester == g.signer && b.reader == me => b,
            Ok(_) => return warn!("a key grant for someone else"),
            Err(e) => return warn!(%e, "a key grant with a bad signature"),
        };
        if let Err(e) = grant.validate() {
            return warn!(%e, "a malformed key grant");
        }
        // A key handed again (each new epoch until settlement) is the key we
        // hold: only its contact is news, and opening it costs a DH.
        let opened = match self.grants.get(&grant.contract) {
            Some(held) if held.requester == grant.requester => Ok(held.key.clone()),
            _ => keys::open_job_key(
                &self.identity,
                &grant.requester,
                &grant.contract,
                &grant.sealed,
            ),
        };
        match opened {
            Ok(key) => {
                self.state_dirty = true;
                self.grants.insert(
                    grant.contract,
                    Grant {
                        key,
                        requester: grant.requester,
                        contact: grant.contact,
                    },
                );
                // A key handed again comes with the requester's latest address:
                // work that waited for it goes at once.
                let c = grant.contract;
                self.retries.done(Retry::Run(c));
                self.try_run(cx, c);
                if self.retries.waiting(Retry::Check(c)) {
                    self.retries.done(Retry::Check(c));
                    self.recheck(cx, c);
                }
                self.try_check(cx, c);
            }
            Err(e) => warn!(%e, "cannot open a job key"),
        }
    }

    /// Tell a running contract's requester how far its training is.
    pub(crate) fn on_run_progress<R: Rng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        contract: Hash32,
        progress: crate::TrainProgress,
    ) {
        let Some(terms) = self.prov.running.get(&contract) else {
            return;
        };
        info!(
            contract = %contract.short(),
            epoch = progress.epoch,
            epochs = progress.epochs,
            loss = format!("{:.4}", progress.loss),
            "training"
        );
        cx.out.push(Output::Send {
            to: terms.spec.requester,
            msg: crate::Direct::Progress { contract, progress },
        });
    }

    pub(crate) fn on_ran<R: Rng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        contract: Hash32,
        result: Result<RanJob, WorkError>,
    ) {
        let Some(terms) = self.prov.running.remove(&contract) else {
            return;
        };
        if let Err(e) = &result
            && e.retry
        {
            // The requester's inputs could not be fetched: wait for it (its
            // keys come again, with its address, when it comes back up), until
            // the contract's deadline.
            warn!(contract = %contract.short(), error = %e, "cannot fetch the inputs yet; trying again");
            self.prov.waiting.insert(contract, terms);
            self.retries
                .schedule(cx.now, Retry::Run(contract), u32::MAX);
            return;
        }
        self.retries.done(Retry::Run(contract));
        self.state_dirty |= self.prov.accepted.remove(&contract).is_some();
        let input = match result {
            Ok(r) => {
                info!(
                    contract = %contract.short(),
                    secs = format!("{:.2}", r.secs),
                    backend = %r.backend,
                    cu = r.units.as_f64(),
                    "job done; publishing the receipt"
                );
                ProviderInput::Finished {
                    contract,
                    result: r.result,
                    units_used: r.units,
                    commitment: r.commitment,
                    checkpoint_every: r.checkpoint_every,
                    checkpoints: r.checkpoints,
                    inputs_ready_at: r.inputs_ready_at,
                    started_at: r.started_at,
                }
            }
            Err(e) => {
                warn!(contract = %contract.short(), error = %e, "job failed");
                self.withdraw(cx, contract, &e.reason);
                ProviderInput::Aborted {
                    contract,
                    reason: e.reason.chars().take(protocol::MAX_TEXT).collect(),
                }
            }
        };
        self.provider_handle(cx, input);
    }
}
