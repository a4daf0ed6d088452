//! The requester's half of a job: encrypt and store the inputs, submit, lock the
//! escrow when a provider signs, hand the job key to the provider and the
//! committee, fetch and decrypt the result, follow the settlement.

use std::path::PathBuf;

use anyhow::Context;
use crdt_ledger::Body;
use protocol::market::{FailReason, RequesterInput, RequesterOutput};
use protocol::oracle::SettlementInstruction;
use protocol::{
    AccountId, Amount, BlobRef, ComputeUnits, Contract, ContractTerms, Hash32, JobSpec, KeyGrant,
    Message, Outcome, PricePerCu, Signed, Timestamp,
};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{NodeLoop, Work, fetch_result};
use crate::blobs::BlobNode;
pub use crate::control::JobRequest;
use crate::control::{JobEvent, JobView};
use crate::crypto::{self, JobKey};
use crate::net;

/// Where a job stands, for the user.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum JobState {
    Matching,
    Proposed,
    Running,
    Delivered,
    Settled,
    Failed(String),
    Expired,
}

impl JobState {
    fn name(&self) -> &'static str {
        match self {
            JobState::Matching => "matching",
            JobState::Proposed => "proposed",
            JobState::Running => "running",
            JobState::Delivered => "delivered",
            JobState::Settled => "settled",
            JobState::Failed(_) => "failed",
            JobState::Expired => "expired",
        }
    }
}

/// A job this node submitted.
#[derive(Debug)]
pub(super) struct LocalJob {
    pub id: Hash32,
    pub spec: JobSpec,
    pub key: JobKey,
    pub state: JobState,
    pub submitted: Timestamp,
    pub provider: Option<AccountId>,
    pub terms: Option<ContractTerms>,
    pub contract: Option<Hash32>,
    pub escrow: Option<Amount>,
    pub units: Option<ComputeUnits>,
    pub paid: Option<Amount>,
    pub refund: Option<Amount>,
    pub outcome: Option<Outcome>,
    pub result: Option<PathBuf>,
    pub metrics: Option<compute::Metrics>,
    pub events: Vec<(Timestamp, String)>,
    /// Whether the result is fetched (a settled job is done only then, unless the
    /// committee found no valid result to fetch).
    pub fetched: bool,
}

impl LocalJob {
    fn event(&mut self, what: String) {
        info!(job = %self.id.short(), "{what}");
        self.events.push((net::now(), what));
    }

    fn done(&self) -> bool {
        match self.state {
            JobState::Settled => {
                self.fetched || self.outcome.is_none_or(|o| !(o.delivered && o.result_ok))
            }
            JobState::Failed(_) | JobState::Expired => true,
            _ => false,
        }
    }

    pub fn view(&self) -> JobView {
        let ok = self.state == JobState::Settled
            && self
                .outcome
                .is_some_and(|o| o.delivered && o.result_ok && o.sla_ok)
            && self.fetched;
        JobView {
            id: self.id.to_string(),
            kind: self.spec.kind.name().into(),
            state: self.state.name().into(),
            done: self.done(),
            ok,
            provider: self.provider.map(|p| p.to_string()),
            contract: self.contract.map(|c| c.to_string()),
            price_micro_per_cu: self.terms.as_ref().map(|t| t.price.0),
            estimated_cu: self.spec.estimated_units.as_f64(),
            units_used: self.units.map(ComputeUnits::as_f64),
            escrow: self.escrow.map(|a| a.0),
            paid: self.paid.map(|a| a.0),
            refund: self.refund.map(|a| a.0),
            verdict: self.outcome.map(|o| {
                format!(
                    "delivered={} result_ok={} sla_ok={} violations={}",
                    o.delivered, o.result_ok, o.sla_ok, o.violations
                )
            }),
            result: self.result.clone(),
            metrics: self.metrics.clone(),
            events: self
                .events
                .iter()
                .map(|(t, w)| JobEvent {
                    at_s: t.since(self.submitted).as_secs_f64(),
                    what: w.clone(),
                })
                .collect(),
        }
    }
}

/// Inputs encrypted and stored, ready to submit.
#[derive(Debug)]
pub(super) struct Prepared {
    spec: JobSpec,
    key: JobKey,
    submitted: Timestamp,
    note: String,
}

/// A fetched, decrypted result.
#[derive(Debug)]
pub(super) struct Fetched {
    path: PathBuf,
    bytes: u64,
    metrics: compute::Metrics,
}

/// The additional data of the job's inputs: the requester's account.
fn input_aad(requester: &AccountId) -> Hash32 {
    Hash32(requester.0)
}

/// Read, encrypt and store a job's inputs; price it with the FLOP model.
async fn prepare(
    blobs: BlobNode,
    me: AccountId,
    req: JobRequest,
    submitted: Timestamp,
) -> anyhow::Result<Prepared> {
    let data = tokio::fs::read(&req.dataset)
        .await
        .with_context(|| format!("cannot read the data set {}", req.dataset.display()))?;
    let model = match &req.model {
        Some(p) => Some(
            tokio::fs::read(p)
                .await
                .with_context(|| format!("cannot read the model {}", p.display()))?,
        ),
        None => None,
    };
    let kind = req.kind.clone();
    let (cu, data, model) = tokio::task::spawn_blocking(move || {
        let cu = crate::work::estimate_units(&kind, &data, model.as_deref());
        (cu, data, model)
    })
    .await?;
    // The estimate also checks that the data fits the model: do it even when the
    // user gives the compute units.
    let cu = req
        .estimated_cu
        .unwrap_or(cu.context("the job does not fit its data")?);
    let key = JobKey::random();
    let aad = input_aad(&me);
    let store = |label: &'static str, plain: Vec<u8>| {
        let blobs = blobs.clone();
        let key = key.clone();
        async move {
            let ct =
                tokio::task::spawn_blocking(move || crypto::encrypt(&key, label, &aad, &plain))
                    .await?;
            let size = ct.len() as u64;
            let hash = blobs.add_bytes(ct).await?;
            anyhow::Ok(BlobRef { hash, size })
        }
    };
    let data_len = data.len();
    let dataset = store("dataset", data).await?;
    let model = match model {
        Some(m) => Some(store("model", m).await?),
        None => None,
    };
    let deadline = Timestamp(
        submitted
            .0
            .saturating_add(req.deadline_secs.saturating_mul(1000)),
    );
    let spec = JobSpec {
        requester: me,
        kind: req.kind,
        model,
        dataset,
        estimated_units: ComputeUnits {
            milli: (cu * 1000.0).ceil().max(1.0) as u64,
        },
        max_price: PricePerCu(req.max_price),
        deadline,
        sla: req.sla,
        privacy: req.privacy,
        issued_at: submitted,
        expires_at: deadline,
        nonce: {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b)
                .map_err(|e| anyhow::anyhow!("OS random number generator: {e}"))?;
            u64::from_le_bytes(b)
        },
    };
    Ok(Prepared {
        spec,
        key,
        submitted,
        note: format!(
            "inputs encrypted and stored ({data_len} bytes of data); estimated {cu:.3} CU"
        ),
    })
}

impl NodeLoop {
    pub(super) fn reputation(&mut self) -> LedgerReputation {
        LedgerReputation(
            self.ledger
                .state()
                .reputation
                .iter()
                .map(|(a, r)| (*a, f64::from(r.score_bps()) / 10_000.0))
                .collect(),
        )
    }

    pub(super) async fn requester_handle(&mut self, input: RequesterInput) {
        let rep = self.reputation();
        let out = self
            .requester
            .handle(net::now(), input, &rep, &mut self.rng);
        self.on_requester_out(out).await;
    }

    pub(super) fn submit(
        &mut self,
        req: JobRequest,
        reply: oneshot::Sender<anyhow::Result<JobView>>,
    ) {
        let (blobs, me, tx) = (
            self.blobs.clone(),
            self.identity.account(),
            self.work_tx.clone(),
        );
        tokio::spawn(async move {
            let result = prepare(blobs, me, req, net::now()).await;
            let _ = tx.send(Work::Prepared { result, reply }).await;
        });
    }

    pub(super) async fn on_prepared(
        &mut self,
        result: anyhow::Result<Prepared>,
        reply: oneshot::Sender<anyhow::Result<JobView>>,
    ) {
        let p = match result {
            Ok(p) => p,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        if let Err(e) = p.spec.validate(net::now()) {
            let _ = reply.send(Err(anyhow::anyhow!("the job is not valid: {e}")));
            return;
        }
        // Signing is deterministic: the engine's signature gives the same id.
        let id = match Signed::sign(&self.identity, &self.network, &p.spec) {
            Ok(s) => s.id(),
            Err(e) => {
                let _ = reply.send(Err(e.into()));
                return;
            }
        };
        let mut job = LocalJob {
            id,
            spec: p.spec.clone(),
            key: p.key,
            state: JobState::Matching,
            submitted: p.submitted,
            provider: None,
            terms: None,
            contract: None,
            escrow: None,
            units: None,
            paid: None,
            refund: None,
            outcome: None,
            result: None,
            metrics: None,
            events: Vec::new(),
            fetched: false,
        };
        job.event(p.note);
        let offers = self.requester.book().iter().count();
        job.event(format!("submitted; {offers} offers in the book"));
        let view = job.view();
        self.jobs.insert(id, job);
        self.requester_handle(RequesterInput::Submit(Box::new(p.spec)))
            .await;
        let _ = reply.send(Ok(self.jobs.get(&id).map(LocalJob::view).unwrap_or(view)));
    }

    pub(super) fn job_view(&self, id: &str) -> anyhow::Result<JobView> {
        let found: Vec<&LocalJob> = self
            .jobs
            .values()
            .filter(|j| {
                let h = j.id.to_string();
                h.starts_with(id) || j.contract.is_some_and(|c| c.to_string().starts_with(id))
            })
            .collect();
        match (id.len(), found.as_slice()) {
            (0, _) => anyhow::bail!("give a job id (or a prefix of one)"),
            (_, [j]) => Ok(j.view()),
            (_, []) => anyhow::bail!("no job {id} on this node; `cloudchain jobs` lists them"),
            (_, many) => anyhow::bail!("{} jobs start with {id}; give more digits", many.len()),
        }
    }

    fn job_mut(&mut self, contract_or_job: &Hash32) -> Option<&mut LocalJob> {
        let id = self
            .job_of
            .get(contract_or_job)
            .copied()
            .unwrap_or(*contract_or_job);
        self.jobs.get_mut(&id)
    }

    pub(super) async fn on_requester_out(&mut self, out: Vec<RequesterOutput>) {
        for o in out {
            match o {
                RequesterOutput::Publish(m) => self.publish(m).await,
                RequesterOutput::Send { to, message } => self.send(&to, message).await,
                RequesterOutput::NoMatch {
                    job,
                    reasons,
                    examined,
                } => {
                    if let Some(j) = self.jobs.get_mut(&job) {
                        let why: Vec<String> = reasons
                            .iter()
                            .take(3)
                            .map(|e| format!("{}: {:?}", e.provider.short(), e.reason))
                            .collect();
                        j.event(format!(
                            "no offer fits yet ({examined} examined{}{}); the bid stays open",
                            if why.is_empty() { "" } else { ": " },
                            why.join("; ")
                        ));
                    }
                }
                RequesterOutput::Proposed { job, provider } => {
                    let book = self.requester.book();
                    let offer = book
                        .iter()
                        .find(|e| e.offer.provider == provider)
                        .map(|e| (e.offer.price.0, e.offer.device.clone()));
                    let n = book.iter().count();
                    if let Some(j) = self.jobs.get_mut(&job) {
                        j.provider = Some(provider);
                        j.state = JobState::Proposed;
                        let (price, device) = offer.unwrap_or_default();
                        j.event(format!(
                            "proposed to {} ({device}, {price} µ-tokens/CU): best utility Q − P of {n} offers",
                            provider.short()
                        ));
                    }
                }
                RequesterOutput::LockEscrow { contract, amount } => {
                    self.lock_escrow(*contract, amount).await;
                }
                RequesterOutput::Delivered { contract, receipt } => {
                    self.on_delivered(contract, *receipt);
                }
                RequesterOutput::Failed { contract, reason } => {
                    if let Some(j) = self.job_mut(&contract) {
                        let why = match reason {
                            FailReason::ProviderVanished => {
                                "no receipt by the deadline: the provider vanished".to_string()
                            }
                            FailReason::Aborted(r) => format!("the provider aborted: {r}"),
                            FailReason::EscrowFailed => "the escrow could not be locked".into(),
                            other => format!("{other:?}"),
                        };
                        j.event(format!("{why}; the committee will refund the escrow"));
                        if j.escrow.is_none() {
                            j.state = JobState::Failed(why);
                        }
                    }
                }
                RequesterOutput::Settled { contract, .. } => {
                    if let Some(j) = self.job_mut(&contract) {
                        j.state = JobState::Settled;
                    }
                }
                RequesterOutput::BidExpired { job } => {
                    if let Some(j) = self.jobs.get_mut(&job) {
                        j.state = JobState::Expired;
                        j.event("the bid expired unfilled".into());
                    }
                }
                _ => {}
            }
        }
    }

    async fn lock_escrow(&mut self, contract: Contract, amount: Amount) {
        let id = contract.body_hash();
        let Ok(terms) = contract.body_unverified() else {
            return;
        };
        let job_id = terms.job;
        let now = net::now();
        if let Err(e) = self.append(crdt_ledger::Body::EscrowLock {
            contract: contract.clone(),
        }) {
            warn!(%e, "cannot lock the escrow");
            if let Some(j) = self.jobs.get_mut(&job_id) {
                j.event(format!("cannot lock the escrow: {e}"));
            }
            // Boxed: the engine's answer comes back through `on_requester_out`.
            Box::pin(self.requester_handle(RequesterInput::EscrowFailed { contract: id })).await;
            return;
        }
        self.job_of.insert(id, job_id);
        let Some(j) = self.jobs.get_mut(&job_id) else {
            return;
        };
        j.contract = Some(id);
        j.escrow = Some(amount);
        j.state = JobState::Running;
        j.event(format!(
            "contract {} signed by both: {} µ-tokens/CU for at most {:.3} CU; escrow of {amount} tokens locked in the ledger",
            id.short(),
            terms.price.0,
            terms.max_units.as_f64()
        ));
        j.terms = Some(terms.clone());
        let key = j.key.clone();
        // The engine gossips the contract; the provider starts once it sees the
        // escrow in its ledger replica.
        // The provider reads the inputs; the committee reads them to re-execute.
        let state = self.ledger.state();
        let committee: Vec<AccountId> = state
            .committee_for(state.epoch + 1)
            .map(<[AccountId]>::to_vec)
            .unwrap_or_default();
        let me = self.identity.account();
        let mut readers = vec![terms.provider];
        readers.extend(
            committee
                .into_iter()
                .filter(|a| *a != me && *a != terms.provider),
        );
        for reader in readers {
            let sealed = match crypto::seal_job_key(&self.identity, &reader, &id, &key) {
                Ok(s) => s,
                Err(e) => {
                    warn!(%e, reader = %reader.short(), "cannot seal the job key");
                    continue;
                }
            };
            let grant = KeyGrant {
                contract: id,
                requester: me,
                reader,
                sealed,
                contact: self.blobs.contact(),
                issued_at: now,
            };
            match Signed::sign(&self.identity, &self.network, &grant) {
                Ok(s) => self.send(&reader, Message::KeyGrant(s)).await,
                Err(e) => warn!(%e, "cannot sign a key grant"),
            }
        }
    }

    fn on_delivered(&mut self, contract: Hash32, receipt: protocol::Receipt) {
        let contact = self.contact_of(&receipt.provider);
        let blobs = self.blobs.clone();
        let tx = self.work_tx.clone();
        let results = self.dir.path.join("results");
        let Some(j) = self.job_mut(&contract) else {
            return;
        };
        j.units = Some(receipt.units_used);
        j.state = JobState::Delivered;
        let t = receipt.timings;
        j.event(format!(
            "receipt: {:.3} CU used, ran {:.2} s (inputs fetched in {:.2} s); result {} ({} bytes)",
            receipt.units_used.as_f64(),
            t.finished_at.since(t.started_at).as_secs_f64(),
            t.inputs_ready_at.since(t.accepted_at).as_secs_f64(),
            receipt.result.hash.short(),
            receipt.result.size
        ));
        let (job, key) = (j.id, j.key.clone());
        tokio::spawn(async move {
            let result = async {
                let r = fetch_result(&blobs, &contact, &receipt, key).await?;
                tokio::fs::create_dir_all(&results).await?;
                let path = results.join(format!("{}.safetensors", job.short()));
                tokio::fs::write(&path, &r.output)
                    .await
                    .with_context(|| format!("cannot write {}", path.display()))?;
                anyhow::Ok(Fetched {
                    path,
                    bytes: r.output.len() as u64,
                    metrics: r.metrics,
                })
            }
            .await;
            let _ = tx.send(Work::Fetched { job, result }).await;
        });
    }

    pub(super) fn on_fetched(&mut self, job: Hash32, result: anyhow::Result<Fetched>) {
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        match result {
            Ok(f) => {
                let acc = f
                    .metrics
                    .test_accuracy
                    .or(f.metrics.train_accuracy)
                    .map(|a| format!(", accuracy {:.1}%", a * 100.0))
                    .unwrap_or_default();
                j.event(format!(
                    "result fetched over iroh and decrypted: {} bytes in {}{acc}",
                    f.bytes,
                    f.path.display()
                ));
                j.result = Some(f.path);
                j.metrics = Some(f.metrics);
                j.fetched = true;
            }
            Err(e) => j.event(format!("cannot fetch the result: {e:#}")),
        }
    }

    /// Settlements in the ledger for contracts we are party to.
    pub(super) async fn settlements_seen(&mut self) {
        let open: Vec<(Hash32, ContractTerms)> = self
            .jobs
            .values()
            .filter(|j| j.state != JobState::Settled)
            .filter_map(|j| Some((j.contract?, j.terms.clone()?)))
            .collect();
        for (c, terms) in open {
            if let Some(si) = self.find_settlement(&c, &terms) {
                if let Some(j) = self.jobs.get_mut(&terms.job) {
                    j.outcome = Some(si.outcome);
                    let fees = si.payout.fees.iter().map(|(_, a)| a.0).sum::<u64>();
                    j.paid = Some(si.payout.provider);
                    j.refund = Some(si.payout.refund);
                    j.event(format!(
                        "committee verdict (quorum of {} in epoch {}): delivered={} result_ok={} sla_ok={}",
                        si.cert.verdicts.len(),
                        si.cert.epoch,
                        si.outcome.delivered,
                        si.outcome.result_ok,
                        si.outcome.sla_ok
                    ));
                    j.event(format!(
                        "settled in the ledger: provider paid {} tokens (penalty {}), committee fee {}, requester refunded {}",
                        si.payout.provider,
                        si.payout.penalty,
                        Amount(fees),
                        si.payout.refund
                    ));
                }
                self.requester_handle(RequesterInput::Settlement(Box::new(si)))
                    .await;
                if let Some(j) = self.jobs.get_mut(&terms.job)
                    && j.state != JobState::Settled
                {
                    // The engine had given up on the deal already; the ledger rules.
                    j.state = JobState::Settled;
                }
            }
        }
    }

    /// The settlement entry of `contract`, if the ledger holds one.
    pub(super) fn find_settlement(
        &mut self,
        contract: &Hash32,
        terms: &ContractTerms,
    ) -> Option<SettlementInstruction> {
        if !self.ledger.state().settled.contains(contract) {
            return None;
        }
        self.ledger.entries().find_map(|e| match &e.data.body {
            Body::Settlement { cert, payout } if cert.contract == *contract => {
                let outcome = Outcome::of(&cert.verdicts.first()?.body_unverified().ok()?);
                Some(SettlementInstruction {
                    contract: *contract,
                    terms: terms.clone(),
                    cert: cert.clone(),
                    outcome,
                    payout: payout.clone(),
                })
            }
            _ => None,
        })
    }
}

/// Providers' quality from their SLA record in the ledger (new ones score 1).
#[derive(Debug)]
pub(super) struct LedgerReputation(std::collections::HashMap<AccountId, f64>);

impl protocol::market::Reputation for LedgerReputation {
    fn quality(&self, provider: &AccountId) -> f64 {
        self.0.get(provider).copied().unwrap_or(1.0)
    }
}
