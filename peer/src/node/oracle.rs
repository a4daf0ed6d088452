//! The oracle's half: follow the epoch's committee from the ledger, probe,
//! re-execute delivered work, sign verdicts, write settlements.

use std::collections::HashMap;

use crdt_ledger::Body;
use protocol::oracle::{OracleInput, OracleOutput, SettlementInstruction};
use protocol::{ContractTerms, Hash32, Receipt, Timestamp};
use tracing::{info, warn};

use super::provider::fetch_inputs;
use super::{NodeLoop, Work, fetch_result};
use crate::net;

/// How long a member that is not first among the signers waits before writing a
/// settlement itself (the first one may have crashed).
const SETTLE_FALLBACK_MS: u64 = 5_000;

#[derive(Debug, Default)]
pub(super) struct State {
    /// Checks waiting for the requester's job key.
    waiting_key: HashMap<Hash32, (Box<ContractTerms>, Box<Receipt>)>,
    /// Settlements to write, with when.
    settle: Vec<(Timestamp, Box<SettlementInstruction>)>,
}

impl NodeLoop {
    pub(super) async fn oracle_handle(&mut self, input: OracleInput) {
        let Some(o) = self.oracle.as_mut() else {
            return;
        };
        let out = o.handle(net::now(), input, &mut self.rng);
        self.on_oracle_out(out).await;
    }

    pub(super) async fn on_oracle_out(&mut self, out: Vec<OracleOutput>) {
        for o in out {
            match o {
                OracleOutput::Send { to, message } => self.send(&to, message).await,
                OracleOutput::Publish(m) => {
                    if let protocol::Message::Verdict(v) = &m
                        && let Ok(b) = v.body_unverified()
                    {
                        info!(
                            contract = %b.contract.short(),
                            delivered = b.delivered,
                            result_ok = b.result_ok,
                            sla_ok = b.sla_ok,
                            "signed a verdict"
                        );
                    }
                    self.publish(m).await;
                }
                OracleOutput::Check {
                    contract,
                    terms,
                    receipt,
                } => {
                    self.orc.waiting_key.insert(contract, (terms, receipt));
                    self.try_check(contract);
                }
                OracleOutput::Settle(si) => {
                    let me = self.identity.account();
                    let first = si
                        .cert
                        .verdicts
                        .iter()
                        .map(|v| v.signer)
                        .min()
                        .is_some_and(|s| s == me);
                    let at = net::now().0 + if first { 0 } else { SETTLE_FALLBACK_MS };
                    self.orc.settle.push((Timestamp(at), si));
                    self.write_settlements();
                }
                OracleOutput::NoQuorum { contract } => {
                    warn!(contract = %contract.short(), "the committee reached no quorum; the escrow stays locked");
                }
                _ => {}
            }
        }
    }

    /// Hand the oracle engine the epoch the ledger is in, when it changes.
    pub(super) async fn oracle_epoch_update(&mut self) {
        if self.oracle.is_none() {
            return;
        }
        let state = self.ledger.state();
        let epoch = state.epoch + 1;
        if self.oracle_epoch == Some(epoch) {
            return;
        }
        let committee = state
            .committee_for(epoch)
            .map(<[_]>::to_vec)
            .unwrap_or_default();
        let beacon = state.last_checkpoint;
        let member = committee.contains(&self.identity.account());
        info!(
            epoch,
            member,
            size = committee.len(),
            "committee of the epoch"
        );
        self.oracle_epoch = Some(epoch);
        self.oracle_handle(OracleInput::Epoch {
            epoch,
            committee,
            beacon,
        })
        .await;
    }

    /// Write the settlements that are due and not in the ledger yet.
    fn write_settlements(&mut self) {
        let now = net::now();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.orc.settle)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.orc.settle = later;
        for (_, si) in due {
            if self.ledger.state().settled.contains(&si.contract) {
                continue;
            }
            let (contract, paid) = (si.contract, si.payout.provider);
            match self.append(Body::Settlement {
                cert: si.cert,
                payout: si.payout,
            }) {
                Ok(()) => info!(contract = %contract.short(), %paid, "settlement written"),
                Err(e) => warn!(contract = %contract.short(), %e, "cannot write the settlement"),
            }
        }
    }

    pub(super) async fn oracle_tick(&mut self) {
        if self.oracle.is_some() {
            self.write_settlements();
        }
    }

    /// Start a check whose job key is here.
    pub(super) fn try_check(&mut self, contract: Hash32) {
        let Some(grant) = self.grants.get(&contract).cloned() else {
            return;
        };
        let Some((terms, receipt)) = self.orc.waiting_key.remove(&contract) else {
            return;
        };
        let contact = self.contact_of(&receipt.provider);
        let blobs = self.blobs.clone();
        let tx = self.work_tx.clone();
        // The segment to re-execute: fixed by the contract and the committee's
        // beacon, which the provider did not know when it committed.
        let beacon = self.ledger.state().last_checkpoint;
        let seed = u64::from_le_bytes(
            *blake3::hash(&[contract.0, beacon.0].concat())
                .as_bytes()
                .first_chunk()
                .unwrap_or(&[0; 8]),
        );
        tokio::spawn(async move {
            let result = async {
                let (data, model) = fetch_inputs(&blobs, &grant, &terms).await?;
                let result = fetch_result(&blobs, &contact, &receipt, grant.key.clone()).await?;
                tokio::task::spawn_blocking(move || {
                    // The reference backend: what every member agrees on.
                    let be = compute::CpuBackend::new();
                    crate::work::check(
                        &be,
                        &terms.spec.kind,
                        &data,
                        model.as_deref(),
                        &result,
                        &receipt,
                        seed,
                    )
                })
                .await?
            }
            .await;
            let _ = tx.send(Work::Checked { contract, result }).await;
        });
    }

    pub(super) async fn on_checked(
        &mut self,
        contract: Hash32,
        result: anyhow::Result<compute::verify::Verdict>,
    ) {
        let correct = match result {
            Ok(v) => {
                info!(contract = %contract.short(), ok = v.ok, reason = %v.reason, "checked the result");
                v.ok
            }
            Err(e) => {
                // A result that cannot be fetched, decrypted or read is not a result.
                warn!(contract = %contract.short(), error = %format!("{e:#}"), "the result does not check");
                false
            }
        };
        self.oracle_handle(OracleInput::CheckDone { contract, correct })
            .await;
    }
}
