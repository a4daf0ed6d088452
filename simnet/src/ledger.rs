//! The ledger participant: one real [`crdt_ledger::Ledger`] (in memory) standing
//! for the converged view every peer's replica reaches once sync has run.
//!
//! Nothing about tokens is kept on the side: the genesis gives requesters their
//! balances and oracles their stakes; a requester's escrow lock is its own
//! `Body::EscrowLock` of the contract both parties signed, written with
//! [`Ledger::append`] (the local-write path, so the spending rule — finalized
//! balance minus pending debits — decides whether the lock goes through); a
//! settlement is the `Body::Settlement` with the committee's quorum certificate
//! and payout, written by the oracle that assembled it; and at the end of every
//! epoch the leader of the ledger's own committee draw proposes the checkpoint,
//! the other members check it against their fold and sign until ⌈2k/3⌉ make it
//! final, and the leader publishes it. The committee the ledger draws is the one
//! the oracle engines serve as, so certificates are checked against it.
//!
//! **One replica for all.** Simulating a replica per peer would repeat the same
//! deterministic fold once per peer; one shared replica gives the same states and
//! checkpoints, and the network model is what delays messages between peers. It
//! stands for the view after sync: a partition delays the engines' messages, not
//! the ledger's entries, and no fork or stalled committee is simulated here
//! (crdt-ledger's own tests cover those).
//! Settlement entries reach the replica at the end of the epoch they were written
//! in (before its checkpoint), as gossip and sync would bring them before the
//! committee closes the epoch: taking each as it comes would refold the whole
//! pending batch at every following local write (a settlement is not a
//! commutative write), which makes the cost quadratic in the entries per epoch.
//! Nothing reads a settlement's credit before the checkpoint finalizes it. They
//! arrive together, as sync would bring them: one batch signature check (strict
//! checks one by one if it fails) and one document change
//! ([`Ledger::receive_entries`]). For the same reason the leader's final
//! checkpoint reaches the replica as a peer's entry (`receive_entry`) rather
//! than through `append`, which would check it once more, as the leader's own
//! replica does before writing it: finality checks it in full either way.
//!
//! **Store.** The replica writes every record to a [`CountingStore`], which
//! counts them: nothing reopens the simulated replica, and keeping them held a
//! second copy of every entry beside the document. It never compacts.
//!
//! **Cost.** The replica checks every signature it folds once (the ledger
//! remembers passes by entry hash): two per escrow lock, the quorum's verdicts
//! per settlement, one per received entry. Every member that signs a proposal
//! checks it, but the one replica folds a given body on a given finalized state
//! once and reuses that fold for the other members and for finality (signatures,
//! proposer and quorum are checked each time). On the shared 2-core machine of
//! issue #7 (`examples/timing.rs`, release, wall / peak RSS; it is shared and
//! noisy, so each pair was measured back to back): `paper-30d` 6.5 s / 17 MB
//! before the ledger, 15.7 s / 236 MB with it, 11.7 s now (18 k jobs);
//! `scale-1k` 67 s / 353 MB before the ledger, 109 s / 1.12 GB with it, 79 s /
//! 0.99 GB after a first round of work, 57–59 s / 1.2 GB now (54 k locks, 54 k
//! settlements, 720 checkpoints), with a second core checking signatures ahead
//! ([`crate::prewarm`]) and taking idle requesters' offers ahead. About a third
//! of what remains is signing every message the engines send and every ledger
//! entry (1.5 M signatures); a fifth the requesters' order books taking offers;
//! the rest the engines, automerge and each checkpoint's state copies and root.
//! Memory is mostly the ledger's document and entry index.
//!
//! **Invariants**, checked against the ledger's state after every checkpoint and
//! at the end: every entry the simulation wrote is valid in the fold (no
//! overspend, so no balance ever went negative; every certificate and payout
//! accepted), and the supply is conserved: liquid + staked + unbonding + escrowed
//! = genesis + minted − burned.

use std::collections::HashMap;

use crdt_ledger::store::MAX_RECORD;
use crdt_ledger::{
    Action, Body, Entry, EntryData, Genesis, GenesisEntry, InvalidReason, Ledger, LedgerError,
    Loaded, Params, State, Store, StoreError,
};
use protocol::oracle::SettlementInstruction;
use protocol::{AccountId, Amount, Contract, Hash32, Identity, NetworkId, Timestamp};

use crate::prewarm::Prewarm;

/// Why an escrow lock did not go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockRefused {
    /// The requester's spendable balance does not cover it.
    Funds,
    /// The ledger refused it for another reason (an invariant violation in the sim).
    Other(String),
}

/// The store of a replica that nothing reopens (this driver's, and the node
/// cores' shared replica): every record is appended (and refused if too
/// large) as in a node, but only counted. Keeping the records, as `MemStore`
/// does, held a second copy of every entry besides the document. Its size
/// stays 0, so the ledger never compacts it: a compaction only saves the
/// whole document for a reload that never comes (at 1,000 providers over 30
/// days those saves took about 340 MB at their peak).
#[derive(Debug, Default)]
pub struct CountingStore {
    pub records: u64,
    pub bytes: u64,
}

impl Store for CountingStore {
    fn append(&mut self, record: &[u8]) -> Result<(), StoreError> {
        if record.len() > MAX_RECORD {
            return Err(StoreError::TooLarge(record.len()));
        }
        self.records += 1;
        self.bytes += record.len() as u64;
        Ok(())
    }
    fn load(&mut self) -> Result<Loaded, StoreError> {
        Ok(Loaded::default())
    }
    fn compact(&mut self, _snapshot: &[u8], _log: &[Vec<u8>]) -> Result<(), StoreError> {
        Ok(())
    }
    fn size(&self) -> u64 {
        0
    }
}

/// The ledger as the simulation drives it.
pub struct SimLedger {
    ledger: Ledger<CountingStore>,
    network: NetworkId,
    /// The keys of every account that writes entries (requesters and oracles).
    keys: HashMap<AccountId, Identity>,
    /// Settlements written, on their way to the replica: (author, written at, body).
    in_flight: Vec<(AccountId, Timestamp, Body)>,
    /// Checks the verdicts and contract signatures this ledger will fold, ahead.
    prewarm: Prewarm,
    invalid_seen: usize,
    pub violations: Vec<String>,
    pub checkpoints: u64,
    pub entries_written: u64,
    /// Micro-tokens the final checkpoints minted to each account.
    pub minted_to: HashMap<AccountId, u64>,
}

impl std::fmt::Debug for SimLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SimLedger({} checkpoints, {} entries)",
            self.checkpoints, self.entries_written
        )
    }
}

/// Final figures read from the ledger.
#[derive(Debug, Clone, Default)]
pub struct LedgerTotals {
    /// Every liquid balance, in account order.
    pub balances: Vec<u64>,
    pub open_escrows: u64,
    /// The deadline of each escrow still open, by contract.
    pub open_deadlines: Vec<(Hash32, Timestamp)>,
    pub minted: u64,
    pub burned: u64,
    /// Each account's provider bond at the end.
    pub bonds: HashMap<AccountId, u64>,
}

impl SimLedger {
    /// A network whose genesis gives `balances`, `stakes` and provider
    /// `bonds`, signed by `founder`; `writers` are the keys of the accounts
    /// that will write entries.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        founder: &Identity,
        name: &str,
        params: Params,
        genesis_time: Timestamp,
        balances: Vec<(AccountId, Amount)>,
        stakes: Vec<(AccountId, Amount)>,
        bonds: Vec<(AccountId, Amount)>,
        writers: Vec<Identity>,
    ) -> Result<SimLedger, LedgerError> {
        let genesis = GenesisEntry::create(
            founder,
            Genesis {
                name: name.to_string(),
                genesis_time,
                params,
                balances,
                stakes,
                bonds,
            },
        )?;
        Self::from_genesis(genesis, writers)
    }

    /// A network from its signed genesis; `writers` are the keys of the
    /// accounts that will write entries.
    pub fn from_genesis(
        genesis: GenesisEntry,
        writers: Vec<Identity>,
    ) -> Result<SimLedger, LedgerError> {
        let network = genesis.network();
        let (ledger, _) = Ledger::open(genesis, b"simnet-converged", CountingStore::default())?;
        Ok(SimLedger {
            ledger,
            network,
            keys: writers.into_iter().map(|k| (k.account(), k)).collect(),
            in_flight: Vec::new(),
            prewarm: Prewarm::start(),
            invalid_seen: 0,
            violations: Vec::new(),
            checkpoints: 0,
            entries_written: 0,
            minted_to: HashMap::new(),
        })
    }

    /// The network id (the genesis hash) every signed thing carries.
    pub fn network(&self) -> NetworkId {
        self.network
    }

    /// The committee of `epoch` as the ledger drew it (in draw order: the first
    /// leads), and the beacon the oracles seed their sampling with (the last final
    /// checkpoint's hash).
    pub fn committee(&mut self, epoch: u64) -> (Vec<AccountId>, Hash32) {
        let st = self.ledger.finalized_state();
        let members = st
            .committee_for(epoch)
            .map(<[AccountId]>::to_vec)
            .unwrap_or_default();
        (members, st.last_checkpoint)
    }

    /// The requester locks the escrow of `contract` (its own entry).
    pub fn lock_escrow(&mut self, contract: &Contract, now: Timestamp) -> Result<(), LockRefused> {
        let requester = match contract.body_unverified() {
            Ok(t) => t.requester,
            Err(e) => return Err(LockRefused::Other(e.to_string())),
        };
        let Some(key) = self.keys.get(&requester) else {
            return Err(LockRefused::Other(format!("no key for {requester:?}")));
        };
        let body = Body::EscrowLock {
            contract: contract.clone(),
        };
        match self.ledger.append(key, body, now) {
            Ok(_) => {
                self.entries_written += 1;
                Ok(())
            }
            Err(LedgerError::Rejected(InvalidReason::Overspend { .. })) => Err(LockRefused::Funds),
            Err(e) => Err(LockRefused::Other(e.to_string())),
        }
    }

    /// A provider signed `contract` (the requester will sign and lock it next):
    /// have its signatures checked ahead.
    pub fn expect_lock(&mut self, contract: &Contract) {
        self.prewarm.submit(contract.sig_checks(&self.network));
    }

    /// The amount locked for `contract`, if its escrow is open.
    pub fn escrow(&mut self, contract: &Hash32) -> Option<Amount> {
        self.ledger.state().escrows.get(contract).map(|e| e.amount)
    }

    /// `oracle` writes the settlement of `si`; it reaches the replica before the
    /// epoch's checkpoint.
    pub fn settle(&mut self, oracle: AccountId, now: Timestamp, si: &SettlementInstruction) {
        let checks = si
            .cert
            .verdicts
            .iter()
            .map(|v| v.sig_check(&self.network))
            .collect();
        self.prewarm.submit_later(checks);
        let body = Body::Settlement {
            cert: si.cert.clone(),
            payout: si.payout.clone(),
        };
        self.in_flight.push((oracle, now, body));
    }

    /// Sign the settlements in flight as their authors' next entries and hand them
    /// to the replica together (one batch signature check, one document change,
    /// as when sync brings them).
    fn deliver_in_flight(&mut self) {
        if self.in_flight.is_empty() {
            return;
        }
        let in_flight = std::mem::take(&mut self.in_flight);
        // Read every author's tip before the first entry arrives (each arrival
        // invalidates the pending fold, which a read would recompute).
        let start = crdt_ledger::entry::chain_start(&self.network);
        let mut tips: HashMap<AccountId, (u64, Hash32)> = HashMap::new();
        for (a, _, _) in &in_flight {
            if !tips.contains_key(a) {
                let next = match self.ledger.tip(a) {
                    Some((s, h)) => (s + 1, h),
                    None => (0, start),
                };
                tips.insert(*a, next);
            }
        }
        // Each entry extends its author's chain by the one before it: if one
        // were not taken, the author's later ones would not link either, and
        // each is reported.
        let mut entries = Vec::with_capacity(in_flight.len());
        let mut names = Vec::with_capacity(in_flight.len());
        for (author, at, body) in in_flight {
            let Some(key) = self.keys.get(&author) else {
                self.violations.push(format!("no key for {author:?}"));
                continue;
            };
            let Some(tip) = tips.get_mut(&author) else {
                continue;
            };
            let data = EntryData {
                author,
                seq: tip.0,
                prev_hash: tip.1,
                created_at: at,
                body,
            };
            match Entry::sign(key, &self.network, &data) {
                Ok(e) => {
                    *tip = (tip.0 + 1, e.hash());
                    names.push((author, data.seq));
                    entries.push(e);
                }
                Err(e) => self.violations.push(format!("signing an entry: {e}")),
            }
        }
        let results = match self.ledger.receive_entries(entries) {
            Ok(r) => r,
            Err(e) => {
                self.violations
                    .push(format!("settlement entries refused: {e}"));
                return;
            }
        };
        for ((author, seq), r) in names.into_iter().zip(results) {
            match r {
                Ok(true) => self.entries_written += 1,
                Ok(false) => self
                    .violations
                    .push(format!("settlement entry {author:?}/{seq} not taken")),
                Err(e) => self
                    .violations
                    .push(format!("settlement entry refused: {e}")),
            }
        }
    }

    /// Close `epoch` at `now` (its end): the leader proposes, members sign until
    /// the checkpoint is final, the leader publishes it; then check invariants.
    pub fn checkpoint(&mut self, epoch: u64, now: Timestamp) {
        self.prewarm.flush();
        self.deliver_in_flight();
        if let Err(e) = self.run_committee(epoch, now) {
            self.violations
                .push(format!("checkpoint of epoch {epoch}: {e}"));
        }
        self.check_invariants(&format!("after epoch {epoch}"));
    }

    fn run_committee(&mut self, epoch: u64, now: Timestamp) -> Result<(), String> {
        let committee = self
            .ledger
            .committee_for_checkpoint(epoch)
            .ok_or("no committee")?;
        // The committee timer: the member of the round is told to propose.
        let mut proposal = None;
        for m in &committee {
            for action in self.ledger.handle_timeout(m, now) {
                let Action::Propose { epoch: e, round } = action else {
                    continue;
                };
                let key = self.keys.get(m).ok_or("no key for the proposer")?;
                let p = self
                    .ledger
                    .propose_checkpoint(key, e, round)
                    .map_err(|e| e.to_string())?;
                proposal = Some((*m, p));
            }
        }
        let (leader, proposal) = proposal.ok_or("nobody's turn to propose")?;
        let members = protocol::members(&committee)
            .iter()
            .map(|m| self.keys.get(m).ok_or("no key for a member"))
            .collect::<Result<Vec<_>, _>>()?;
        let fin = self
            .ledger
            .vote_all(&members, &proposal, now)
            .map_err(|e| e.to_string())?
            .map(Box::new)
            .ok_or("no quorum")?;
        if let Ok(body) = fin.body_unverified() {
            for (a, x) in &body.mint {
                *self.minted_to.entry(*a).or_default() += x.0;
            }
        }
        // The leader publishes it as its next entry. It reaches the converged
        // replica as any peer's entry does (`receive_entry`), and finality checks
        // it in full: `append` would check it once more first, as the leader's own
        // replica does before writing, and a check is a whole refold.
        let key = self.keys.get(&leader).ok_or("no key for the proposer")?;
        let (seq, prev_hash) = match self.ledger.tip(&leader) {
            Some((s, h)) => (s + 1, h),
            None => (0, crdt_ledger::entry::chain_start(&self.network)),
        };
        let data = EntryData {
            author: leader,
            seq,
            prev_hash,
            created_at: now,
            body: Body::Checkpoint(fin),
        };
        let entry = Entry::sign(key, &self.network, &data).map_err(|e| e.to_string())?;
        if !self
            .ledger
            .receive_entry(entry)
            .map_err(|e| e.to_string())?
        {
            return Err("the checkpoint entry was not taken".into());
        }
        self.entries_written += 1;
        self.checkpoints += 1;
        if self.ledger.finalized_epoch() != epoch {
            return Err("published but not final".into());
        }
        Ok(())
    }

    fn check_invariants(&mut self, when: &str) {
        let invalid = self.ledger.invalid();
        for inv in invalid.iter().skip(self.invalid_seen) {
            self.violations
                .push(format!("{when}: entry {} invalid: {}", inv.id, inv.reason));
        }
        self.invalid_seen = invalid.len();
        let st: &State = self.ledger.state();
        let (held, expected) = (st.total_supply(), st.supply.expected());
        if held.is_none() || held != expected {
            self.violations.push(format!(
                "{when}: supply not conserved: held {held:?}, genesis + minted − burned = {expected:?}"
            ));
        }
    }

    /// Deliver what is in flight, check the invariants on the final state and
    /// read the totals.
    pub fn finish(&mut self) -> LedgerTotals {
        self.deliver_in_flight();
        self.check_invariants("at the end");
        let st = self.ledger.state();
        LedgerTotals {
            balances: st.balances.values().map(|a| a.0).collect(),
            open_escrows: st.escrows.len() as u64,
            open_deadlines: st
                .escrows
                .iter()
                .map(|(c, e)| (*c, e.terms.deadline))
                .collect(),
            minted: st.supply.minted.0,
            burned: st.supply.burned.0,
            bonds: st.bonds.iter().map(|(a, b)| (*a, b.0)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::settlement::{Outcome, QuorumCert, payout};
    use protocol::{
        BlobRef, Bps, ComputeUnits, ContractTerms, DurationMs, JobKind, JobSpec, MultiSigned,
        PricePerCu, Signed, SlaRequirement, SlaTerms, Verdict,
    };

    const T0: Timestamp = Timestamp(1_000_000);
    const EPOCH: u64 = 60_000;

    struct Net {
        requester: AccountId,
        provider: Identity,
        oracles: Vec<AccountId>,
        ledger: SimLedger,
        keys: Vec<Identity>,
    }

    fn net() -> Net {
        let requester = Identity::from_seed(1);
        let provider = Identity::from_seed(2);
        let oracles: Vec<Identity> = (10..13).map(Identity::from_seed).collect();
        let params = Params {
            epoch_length: DurationMs(EPOCH),
            committee_size: 3,
            min_stake: Amount::tokens(1),
            oracle_fee: Bps(100),
            ..Params::default()
        };
        let ledger = SimLedger::new(
            &Identity::from_seed(0),
            "simnet/test",
            params,
            T0,
            vec![(requester.account(), Amount::tokens(1_000))],
            oracles
                .iter()
                .map(|o| (o.account(), Amount::tokens(100)))
                .collect(),
            vec![(provider.account(), Amount::tokens(100))],
            std::iter::once(Identity::from_seed(1))
                .chain((10..13).map(Identity::from_seed))
                .collect(),
        )
        .unwrap();
        Net {
            requester: requester.account(),
            oracles: oracles.iter().map(Identity::account).collect(),
            keys: std::iter::once(requester).chain(oracles).collect(),
            provider,
            ledger,
        }
    }

    impl Net {
        fn key(&self, a: &AccountId) -> &Identity {
            self.keys.iter().find(|k| k.account() == *a).unwrap()
        }

        /// A contract of `cu` compute units at one token each, signed by both.
        fn contract(&self, nonce: u64, cu: u64) -> (Contract, ContractTerms) {
            let units = ComputeUnits::from_milli(cu * 1000);
            let deadline = Timestamp(T0.0 + 10 * EPOCH);
            let spec = JobSpec {
                requester: self.requester,
                kind: JobKind::Infer { batch: 1 },
                model: None,
                dataset: BlobRef {
                    hash: Hash32([7; 32]),
                    size: 10,
                },
                estimated_units: units,
                max_price: PricePerCu(1_000_000),
                deadline,
                sla: SlaRequirement {
                    min_availability: Bps(9_000),
                    min_penalty: Bps(100),
                },
                privacy: None,
                issued_at: T0,
                expires_at: deadline,
                nonce,
            };
            let terms = ContractTerms {
                network: self.ledger.network(),
                job: Hash32([nonce as u8; 32]),
                spec,
                requester: self.requester,
                provider: self.provider.account(),
                price: PricePerCu(1_000_000),
                max_units: units,
                sla: SlaTerms {
                    deadline_slack: DurationMs(1000),
                    availability: Bps(9_000),
                    penalty: Bps(1_000),
                },
                deadline,
                created_at: T0,
            };
            let mut c = MultiSigned::new(&terms).unwrap();
            c.add_signature(self.key(&self.requester), &self.ledger.network());
            c.add_signature(&self.provider, &self.ledger.network());
            (c, terms)
        }

        /// What the committee of `epoch` would settle: every member agrees the
        /// job was done.
        fn settlement(
            &mut self,
            c: &Contract,
            terms: ContractTerms,
            epoch: u64,
        ) -> SettlementInstruction {
            let (mut members, _) = self.ledger.committee(epoch);
            members.sort();
            let outcome = Outcome {
                delivered: true,
                result_ok: true,
                sla_ok: true,
                violations: 0,
                units: terms.max_units,
            };
            let verdicts = members
                .iter()
                .map(|m| {
                    let v = Verdict {
                        contract: c.body_hash(),
                        epoch,
                        oracle: *m,
                        sla_ok: true,
                        violations: 0,
                        result_ok: true,
                        units: terms.max_units,
                        delivered: true,
                    };
                    Signed::sign(self.key(m), &self.ledger.network(), &v).unwrap()
                })
                .collect();
            let payout = payout(&terms, &outcome, Bps(100), &members).unwrap();
            SettlementInstruction {
                contract: c.body_hash(),
                terms,
                cert: QuorumCert {
                    contract: c.body_hash(),
                    epoch,
                    verdicts,
                },
                outcome,
                payout,
            }
        }
    }

    #[test]
    fn escrow_settlement_and_checkpoints_keep_the_books() {
        let mut n = net();
        let (c, terms) = n.contract(1, 10);
        n.ledger.lock_escrow(&c, Timestamp(T0.0 + 1)).unwrap();
        assert_eq!(n.ledger.escrow(&c.body_hash()), Some(Amount::tokens(10)));
        // More than the requester holds: the spending rule refuses it.
        let (big, _) = n.contract(2, 5_000);
        assert_eq!(
            n.ledger.lock_escrow(&big, Timestamp(T0.0 + 2)),
            Err(LockRefused::Funds)
        );
        let si = n.settlement(&c, terms, 1);
        n.ledger.settle(n.oracles[0], Timestamp(T0.0 + 3), &si);
        n.ledger.checkpoint(1, Timestamp(T0.0 + EPOCH));
        n.ledger.checkpoint(2, Timestamp(T0.0 + 2 * EPOCH));
        assert_eq!(n.ledger.checkpoints, 2);
        let totals = n.ledger.finish();
        assert!(n.ledger.violations.is_empty(), "{:?}", n.ledger.violations);
        assert_eq!(totals.open_escrows, 0);
        assert!(
            totals.minted > 0,
            "the bonded provider's verified units earn the reward"
        );
    }

    #[test]
    fn a_settlement_the_fold_refuses_is_reported() {
        let mut n = net();
        let (c, terms) = n.contract(1, 10);
        n.ledger.lock_escrow(&c, Timestamp(T0.0 + 1)).unwrap();
        let mut si = n.settlement(&c, terms, 1);
        // Move a micro-token from the refund to the provider: the total still
        // matches the escrow, but not what the certified outcome pays.
        si.payout.provider = Amount(si.payout.provider.0 + 1);
        si.payout.refund = Amount(si.payout.refund.0.saturating_sub(1));
        n.ledger.settle(n.oracles[0], Timestamp(T0.0 + 3), &si);
        n.ledger.checkpoint(1, Timestamp(T0.0 + EPOCH));
        assert!(
            n.ledger.violations.iter().any(|v| v.contains("invalid")),
            "{:?}",
            n.ledger.violations
        );
    }
}
