//! The provider's half: offers, accepting, and running a contract's job once the
//! requester's escrow is in the ledger and its job key has arrived.

use std::collections::{HashMap, HashSet};

use anyhow::Context;
use protocol::market::{PricingConfig, ProviderConfig, ProviderInput, ProviderOutput};
use protocol::{
    BlobRef, Bps, ComputeUnits, Contract, ContractTerms, Hash32, KeyGrant, Message, PricePerCu,
    ResourceClass, Signed, SlaTerms, Timestamp,
};
use tracing::{info, warn};

use super::{Grant, NodeLoop, RunOptions, Work, fetch_logged};
use crate::blobs::BlobNode;
use crate::config::DataDir;
use crate::crypto;
use crate::net;

/// The provider's jobs between the engine and the backend.
#[derive(Debug, Default)]
pub(super) struct State {
    /// Contracts heard before the requester's escrow reached our ledger.
    waiting_escrow: HashMap<Hash32, Contract>,
    /// Jobs the engine asked to run whose key has not arrived.
    waiting_key: HashMap<Hash32, Box<ContractTerms>>,
    running: HashSet<Hash32>,
    /// Contracts handed to the engine, awaiting the committee's settlement.
    unsettled: HashMap<Hash32, ContractTerms>,
}

/// A job run and its result stored (encrypted) in the blob store.
#[derive(Debug)]
pub(super) struct RanJob {
    result: BlobRef,
    units: ComputeUnits,
    commitment: Hash32,
    checkpoint_every: u32,
    checkpoints: u32,
    inputs_ready_at: Timestamp,
    started_at: Timestamp,
    secs: f64,
    backend: String,
}

pub(super) fn backend_preference(dir: &DataDir) -> compute::BackendPreference {
    match dir.config.provider.backend.as_str() {
        "cpu" => compute::BackendPreference::Cpu,
        "wgpu" => compute::BackendPreference::Wgpu,
        _ => compute::BackendPreference::Auto,
    }
}

/// Benchmark the device and describe what this provider sells.
pub(super) async fn config(
    dir: &DataDir,
    blobs: &BlobNode,
    opts: &RunOptions,
) -> anyhow::Result<ProviderConfig> {
    let pref = backend_preference(dir);
    let (reason, bench) = tokio::task::spawn_blocking(move || {
        let sel = compute::select_backend(pref)?;
        let bench = compute::bench::device_gflops(&*sel.backend)?;
        Ok::<_, compute::ComputeError>((sel.reason, bench))
    })
    .await
    .context("the benchmark task failed")??;
    info!(%reason, gflops = format!("{:.1}", bench.gflops), "benchmarked the device");
    let gpu = matches!(
        bench.backend.device_type.as_str(),
        "DiscreteGpu" | "IntegratedGpu"
    );
    let floor = dir.config.provider.price_floor.max(1);
    Ok(ProviderConfig {
        class: if gpu {
            ResourceClass::Gpu
        } else {
            ResourceClass::Cpu
        },
        device: bench
            .backend
            .name
            .chars()
            .take(protocol::MAX_TEXT)
            .collect(),
        speed_milli_cu_per_s: (bench.gflops * 1000.0).max(1.0) as u64,
        region: dir.config.provider.region.clone(),
        contact: blobs.contact(),
        slots: dir.config.provider.slots,
        sla: SlaTerms {
            deadline_slack: opts.timing.deadline_slack,
            availability: Bps(9_500),
            penalty: Bps(1_000),
        },
        offer_ttl: opts.timing.offer_ttl,
        pricing: PricingConfig {
            cost: PricePerCu(floor),
            initial: PricePerCu(floor.saturating_mul(2)),
            ..PricingConfig::default()
        },
        ..ProviderConfig::default()
    })
}

impl NodeLoop {
    pub(super) fn provider_handle(&mut self, input: ProviderInput) -> Vec<ProviderOutput> {
        let now = net::now();
        match self.provider.as_mut() {
            Some(p) => p.handle(now, input, &mut self.rng),
            None => Vec::new(),
        }
    }

    pub(super) async fn on_provider_out(&mut self, out: Vec<ProviderOutput>) {
        for o in out {
            match o {
                ProviderOutput::Publish(m) => {
                    if let Message::Offer(s) = &m {
                        self.last_offer = Some(s.clone());
                        if let Ok(o) = s.body_unverified() {
                            self.contacts.insert(o.provider, o.contact.clone());
                        }
                        // Our own offer goes into our own book too.
                        self.requester_handle(protocol::market::RequesterInput::Offer(s.clone()))
                            .await;
                    }
                    self.publish(m).await;
                }
                ProviderOutput::Send { to, message } => self.send(&to, message).await,
                ProviderOutput::Rejected { requester, reason } => {
                    info!(requester = %requester.short(), ?reason, "refused a proposal");
                }
                ProviderOutput::PriceChanged { price } => info!(price = price.0, "price changed"),
                ProviderOutput::Run { contract, terms } => {
                    info!(contract = %contract.short(), "contract accepted; waiting for the job key");
                    self.prov.waiting_key.insert(contract, terms);
                    self.try_run(contract);
                }
                _ => {}
            }
        }
    }

    /// A contract heard on the oracle topic: ours to run once its escrow is locked.
    pub(super) async fn provider_saw_contract(&mut self, c: Contract) {
        let Some(p) = &self.provider else {
            return;
        };
        let Ok(terms) = c.body_unverified() else {
            return;
        };
        if terms.provider != p.account() {
            return;
        }
        self.prov.waiting_escrow.insert(c.body_hash(), c);
        self.provider_contracts_ready().await;
    }

    /// Hand the engine the contracts whose escrow the ledger now holds.
    pub(super) async fn provider_contracts_ready(&mut self) {
        let ready: Vec<Hash32> = {
            let escrows = &self.ledger.state().escrows;
            self.prov
                .waiting_escrow
                .keys()
                .filter(|c| escrows.contains_key(c))
                .copied()
                .collect()
        };
        for id in ready {
            let Some(c) = self.prov.waiting_escrow.remove(&id) else {
                continue;
            };
            if let Ok(t) = c.body_unverified() {
                self.prov.unsettled.insert(id, t);
            }
            info!(contract = %id.short(), "escrow seen in the ledger");
            let out = self.provider_handle(ProviderInput::Contract(c));
            self.on_provider_out(out).await;
        }
        let settled: Vec<(Hash32, ContractTerms)> = self
            .prov
            .unsettled
            .iter()
            .map(|(c, t)| (*c, t.clone()))
            .collect();
        for (c, terms) in settled {
            if let Some(si) = self.find_settlement(&c, &terms) {
                self.prov.unsettled.remove(&c);
                info!(contract = %c.short(), paid = %si.payout.provider, "settled");
                let out = self.provider_handle(ProviderInput::Settlement(Box::new(si)));
                self.on_provider_out(out).await;
            }
        }
    }

    /// A job key from a requester, for us as provider or committee member.
    pub(super) async fn on_grant(&mut self, g: Signed<KeyGrant>, _now: Timestamp) {
        let me = self.identity.account();
        let grant = match g.verify(&self.network) {
            Ok(b) if b.requester == g.signer && b.reader == me => b,
            Ok(_) => return warn!("a key grant for someone else"),
            Err(e) => return warn!(%e, "a key grant with a bad signature"),
        };
        if let Err(e) = grant.validate() {
            return warn!(%e, "a malformed key grant");
        }
        match crypto::open_job_key(
            &self.identity,
            &grant.requester,
            &grant.contract,
            &grant.sealed,
        ) {
            Ok(key) => {
                self.grants.insert(
                    grant.contract,
                    Grant {
                        key,
                        requester: grant.requester,
                        contact: grant.contact,
                    },
                );
                self.try_run(grant.contract);
                self.try_check(grant.contract);
            }
            Err(e) => warn!(%e, "cannot open a job key"),
        }
    }

    /// Start a job whose terms and key are both here.
    fn try_run(&mut self, contract: Hash32) {
        let Some(grant) = self.grants.get(&contract).cloned() else {
            return;
        };
        let Some(terms) = self.prov.waiting_key.remove(&contract) else {
            return;
        };
        if grant.requester != terms.requester || !self.prov.running.insert(contract) {
            return;
        }
        let blobs = self.blobs.clone();
        let tx = self.work_tx.clone();
        let pref = backend_preference(&self.dir);
        let faulty = self.opts.faulty;
        tokio::spawn(async move {
            let result = run_job(blobs, grant, *terms, contract, pref, faulty).await;
            let _ = tx.send(Work::Ran { contract, result }).await;
        });
    }

    pub(super) async fn on_ran(&mut self, contract: Hash32, result: anyhow::Result<RanJob>) {
        self.prov.running.remove(&contract);
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
                warn!(contract = %contract.short(), error = %format!("{e:#}"), "job failed");
                ProviderInput::Aborted {
                    contract,
                    reason: format!("{e:#}").chars().take(protocol::MAX_TEXT).collect(),
                }
            }
        };
        let out = self.provider_handle(input);
        self.on_provider_out(out).await;
    }
}

/// Fetch a job's encrypted inputs from its requester and decrypt them.
pub(super) async fn fetch_inputs(
    blobs: &BlobNode,
    grant: &Grant,
    terms: &ContractTerms,
) -> anyhow::Result<(Vec<u8>, Option<Vec<u8>>)> {
    let from = BlobNode::peer_addr(&grant.requester, &grant.contact)?;
    let aad = Hash32(grant.requester.0);
    let get = async |r: &BlobRef, label: &'static str| -> anyhow::Result<Vec<u8>> {
        fetch_logged(blobs, from.clone(), &r.hash).await?;
        let ct = blobs.get_bytes(&r.hash).await?;
        let key = grant.key.clone();
        Ok(tokio::task::spawn_blocking(move || crypto::decrypt(&key, label, &aad, &ct)).await??)
    };
    let data = get(&terms.spec.dataset, "dataset")
        .await
        .context("the data set")?;
    let model = match &terms.spec.model {
        Some(m) => Some(get(m, "model").await.context("the model")?),
        None => None,
    };
    Ok((data, model))
}

async fn run_job(
    blobs: BlobNode,
    grant: Grant,
    terms: ContractTerms,
    contract: Hash32,
    pref: compute::BackendPreference,
    faulty: bool,
) -> anyhow::Result<RanJob> {
    let (data, model) = fetch_inputs(&blobs, &grant, &terms).await?;
    let inputs_ready_at = net::now();
    let kind = terms.spec.kind.clone();
    let key = grant.key.clone();
    let (ran, ct) = tokio::task::spawn_blocking(move || {
        let sel = compute::select_backend(pref)?;
        let ran = crate::work::run(&*sel.backend, &kind, &data, model.as_deref(), faulty)?;
        let ct = crypto::encrypt(&key, "result", &contract, &ran.result.to_bytes()?);
        anyhow::Ok((ran, ct))
    })
    .await??;
    if ran.units > terms.max_units {
        warn!(
            used = ran.units.milli,
            max = terms.max_units.milli,
            "the job took more compute units than the contract pays for"
        );
    }
    let size = ct.len() as u64;
    let hash = blobs.add_bytes(ct).await?;
    let started_at = Timestamp(
        inputs_ready_at
            .0
            .max(net::now().0.saturating_sub((ran.elapsed_s * 1000.0) as u64)),
    );
    Ok(RanJob {
        result: BlobRef { hash, size },
        units: ran.units.min(terms.max_units),
        commitment: ran.commitment,
        checkpoint_every: ran.checkpoint_every,
        checkpoints: ran.checkpoints,
        inputs_ready_at,
        started_at,
        secs: ran.elapsed_s,
        backend: ran.backend,
    })
}
