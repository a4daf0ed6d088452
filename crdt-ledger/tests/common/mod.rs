//! Test helpers: a small network, contracts, verdicts, sync and checkpoints.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use crdt_ledger::{Body, Entry, EntryData, Genesis, GenesisEntry, Ledger, Params, Store};
use protocol::settlement::{Outcome, QuorumCert, payout};
use protocol::{
    AccountId, Amount, BlobRef, Bps, ComputeUnits, Contract, ContractTerms, DurationMs, Hash32,
    Identity, JobKind, JobSpec, MultiSigned, PricePerCu, Signed, SlaRequirement, SlaTerms,
    Timestamp, Verdict,
};

pub const T0: Timestamp = Timestamp(1_000_000);

pub struct Net {
    pub ids: Vec<Identity>,
    pub genesis: GenesisEntry,
}

impl Net {
    /// `n` accounts with 1000 tokens each; the first `stakers` also stake 1000.
    pub fn new(n: usize, stakers: usize, committee: u16) -> Net {
        Net::with_params(n, stakers, committee, |_| {})
    }

    /// [`Net::new`] with its parameters changed by `f`.
    pub fn with_params(
        n: usize,
        stakers: usize,
        committee: u16,
        f: impl FnOnce(&mut Params),
    ) -> Net {
        let ids: Vec<Identity> = (0..n as u64)
            .map(|i| Identity::from_seed(1000 + i))
            .collect();
        let params = Params {
            epoch_length: DurationMs(10_000),
            stall_timeout: DurationMs(1_000),
            committee_size: committee,
            min_stake: Amount::tokens(1),
            unbonding_epochs: 2,
            oracle_fee: Bps(100),
            slash: Bps(5_000),
            reward_base: Amount::tokens(100),
            reward_halving_epochs: 2,
            reward_cap: Amount::tokens(250),
            provider_bond: Bps(10_000),
            bond_to_requester: Bps(5_000),
            wrong_result_slash: Bps(10_000),
            // No cap per unit: the tests of the pool and the bond caps.
            mint_per_cu: protocol::PricePerCu(u64::MAX / 1_000_000),
            expire_after: DurationMs::secs(6 * 3_600),
            bond_unbonding_epochs: 2,
            market_shards: 1,
        };
        let mut params = params;
        f(&mut params);
        let genesis = Genesis {
            name: "test".into(),
            genesis_time: T0,
            params,
            balances: ids
                .iter()
                .map(|i| (i.account(), Amount::tokens(1000)))
                .collect(),
            stakes: ids
                .iter()
                .take(stakers)
                .map(|i| (i.account(), Amount::tokens(1000)))
                .collect(),
            bonds: vec![],
        };
        let genesis = GenesisEntry::create(&ids[0], genesis).unwrap();
        Net { ids, genesis }
    }

    pub fn acct(&self, i: usize) -> AccountId {
        self.ids[i].account()
    }

    pub fn ledger(&self, actor: u8) -> Ledger {
        Ledger::new(self.genesis.clone(), &[actor; 16]).unwrap()
    }

    pub fn id_of(&self, a: &AccountId) -> &Identity {
        self.ids.iter().find(|i| i.account() == *a).unwrap()
    }

    /// An entry of account `author` at `seq` after `prev_hash`, created at [`T0`]
    /// and signed by account `signer` (a forger when it is not the author).
    pub fn signed_entry(
        &self,
        signer: usize,
        author: usize,
        seq: u64,
        prev_hash: [u8; 32],
        body: Body,
    ) -> Entry {
        let data = EntryData {
            author: self.acct(author),
            seq,
            prev_hash: Hash32(prev_hash),
            created_at: T0,
            body,
        };
        Entry::sign(&self.ids[signer], &self.genesis.network(), &data).unwrap()
    }

    /// A contract signed by both parties, its escrow locked by the requester
    /// in `l`.
    pub fn locked<S: Store>(
        &self,
        l: &mut Ledger<S>,
        requester: usize,
        provider: usize,
        nonce: u64,
    ) -> Contract {
        let contract = self.contract(requester, provider, nonce);
        let lock = Body::EscrowLock {
            contract: contract.clone(),
        };
        l.append(&self.ids[requester], lock, T0).unwrap();
        contract
    }

    /// A contract signed by both parties.
    pub fn contract(&self, requester: usize, provider: usize, nonce: u64) -> Contract {
        self.contract_with(requester, provider, nonce, |_| {})
    }

    /// A contract signed by both parties, its job as `edit` makes it.
    pub fn contract_with(
        &self,
        requester: usize,
        provider: usize,
        nonce: u64,
        edit: impl Fn(&mut JobSpec),
    ) -> Contract {
        let r = self.acct(requester);
        let mut spec = JobSpec {
            requester: r,
            kind: JobKind::Infer { batch: 1 },
            model: None,
            dataset: BlobRef {
                hash: Hash32([7; 32]),
                size: 10,
            },
            estimated_units: ComputeUnits::from_milli(10_000),
            result_bytes: 1 << 20,
            max_price: PricePerCu(2_000_000),
            deadline: Timestamp(T0.0 + 100_000),
            sla: SlaRequirement {
                min_availability: Bps(9_000),
                min_penalty: Bps(100),
            },
            privacy: None,
            issued_at: T0,
            expires_at: Timestamp(T0.0 + 50_000),
            nonce,
        };
        edit(&mut spec);
        let terms = ContractTerms {
            network: self.genesis.network(),
            job: Hash32([nonce as u8; 32]),
            spec,
            requester: r,
            provider: self.acct(provider),
            price: PricePerCu(1_000_000),
            max_units: ComputeUnits::from_milli(10_000),
            sla: SlaTerms {
                deadline_slack: DurationMs(1000),
                availability: Bps(9_000),
                penalty: Bps(1_000),
                exact: true,
            },
            deadline: Timestamp(T0.0 + 100_000),
            created_at: T0,
        };
        let mut c = MultiSigned::new(&terms).unwrap();
        c.add_signature(&self.ids[requester], &self.genesis.network());
        c.add_signature(&self.ids[provider], &self.genesis.network());
        c
    }

    /// A settlement body from `voters` (committee members) agreeing on an outcome.
    pub fn settlement(
        &self,
        contract: &Contract,
        epoch: u64,
        voters: &[AccountId],
        outcome: Outcome,
        params: &Params,
    ) -> Body {
        let id = contract.body_hash();
        let verdicts: Vec<Signed<Verdict>> = voters
            .iter()
            .map(|v| {
                let verdict = Verdict {
                    contract: id,
                    epoch,
                    oracle: *v,
                    sla_ok: outcome.sla_ok,
                    violations: outcome.violations,
                    result_ok: outcome.result_ok,
                    units: outcome.units,
                    delivered: outcome.delivered,
                };
                Signed::sign(self.id_of(v), &self.genesis.network(), &verdict).unwrap()
            })
            .collect();
        let cert = QuorumCert {
            contract: id,
            epoch,
            verdicts,
        };
        let terms: ContractTerms = contract.body_unverified().unwrap();
        let mut oracles: Vec<AccountId> = voters.to_vec();
        oracles.sort();
        let p = payout(&terms, &outcome, params.oracle_fee, &oracles).unwrap();
        Body::Settlement { cert, payout: p }
    }
}

pub fn good_outcome(units: u64) -> Outcome {
    Outcome {
        delivered: true,
        result_ok: true,
        sla_ok: true,
        violations: 0,
        units: ComputeUnits::from_milli(units),
    }
}

/// Sync two replicas until neither has anything to say.
pub fn sync<A: Store, B: Store>(a: &mut Ledger<A>, b: &mut Ledger<B>) {
    a.merge_with(b).unwrap();
}

/// Run the committee protocol for `epoch` on one replica (which signs for every
/// member) and publish the final checkpoint. Returns the proposer.
pub fn finalize<S: Store>(net: &Net, l: &mut Ledger<S>, epoch: u64, round: u32) -> AccountId {
    try_finalize(net, l, epoch, round, true).expect("finalized")
}

/// [`finalize`] that gives up (`None`) when a member of this replica already
/// signed another checkpoint for the epoch (possible in the property tests, where
/// one replica signs for everyone and a competing checkpoint can win later).
pub fn try_finalize<S: Store>(
    net: &Net,
    l: &mut Ledger<S>,
    epoch: u64,
    round: u32,
    strict: bool,
) -> Option<AccountId> {
    let committee = l.committee_for_checkpoint(epoch).unwrap();
    let proposer = committee[round as usize % committee.len()];
    let proposal = match l.propose_checkpoint(net.id_of(&proposer), epoch, round) {
        Ok(p) => p,
        Err(e) if !strict => {
            let _ = e;
            return None;
        }
        Err(e) => panic!("propose: {e}"),
    };
    let due = Timestamp(l.epoch_end(epoch).0 + u64::from(round) * l.params().stall_timeout.0);
    let members: Vec<&Identity> = committee.iter().map(|m| net.id_of(m)).collect();
    let fin = match l.vote_all(&members, &proposal, due) {
        Ok(Some(f)) => Box::new(f),
        _ if !strict => return None,
        Ok(None) => panic!("no quorum"),
        Err(e) => panic!("vote: {e}"),
    };
    let now = Timestamp(l.epoch_end(epoch).0 + 1);
    // Anyone may publish it: the proposer, or another account if the proposer's
    // chain is blocked by its own fork.
    let mut published = false;
    let order = std::iter::once(net.id_of(&proposer)).chain(net.ids.iter());
    for id in order {
        if l.append(id, Body::Checkpoint(fin.clone()), now).is_ok() {
            published = true;
            break;
        }
    }
    assert!(published, "someone could publish the checkpoint");
    assert_eq!(l.finalized_epoch(), epoch, "checkpoint {epoch} final");
    Some(proposer)
}

pub fn transfer(to: AccountId, tokens: u64) -> Body {
    Body::Transfer {
        to,
        amount: Amount::tokens(tokens),
    }
}

pub fn conserved<S: Store>(l: &mut Ledger<S>) {
    let st = l.state();
    assert_eq!(st.total_supply(), st.supply.expected(), "{:?}", st.supply);
    let st = l.finalized_state();
    assert_eq!(st.total_supply(), st.supply.expected(), "{:?}", st.supply);
}

/// Append `body` as `author`, expecting the ledger to refuse it; the reason.
pub fn refused<S: Store>(
    l: &mut Ledger<S>,
    author: &Identity,
    body: Body,
) -> crdt_ledger::InvalidReason {
    match l.append(author, body, protocol::Timestamp(0)) {
        Err(crdt_ledger::LedgerError::Rejected(r)) => r,
        Err(e) => panic!("refused for another cause: {e}"),
        Ok(id) => panic!("accepted {id:?}, expected a refusal"),
    }
}

/// Every member of the committee of `epoch` that signed none of its
/// checkpoints signs its skip at `now` on one replica, until the certificate
/// is complete. Says whether it is.
pub fn skip_epoch<S: Store>(net: &Net, l: &mut Ledger<S>, epoch: u64, now: Timestamp) -> bool {
    let committee = l.committee_for_checkpoint(epoch).unwrap();
    for m in &committee {
        if let Ok(s) = l.sign_skip(net.id_of(m), epoch, now)
            && l.apply_skip(&s).unwrap()
        {
            return true;
        }
    }
    false
}
