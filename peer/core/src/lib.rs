//! The node core: one peer's market and oracle engines, its ledger replica, and
//! every decision that ties them together, with no IO.
//!
//! A [`NodeCore`] is what a peer *is*: a requester (always), a provider and an
//! oracle (by role), and its replica of the signed ledger. Its drivers — the
//! `cloudchain` binary on tokio, libp2p and iroh, and the simulator on virtual
//! time — only carry bytes and run work: they turn what the network, the user and
//! the compute backend bring into [`Input`]s, call [`NodeCore::handle`], and turn
//! the [`Output`]s into messages, blob transfers and jobs. Every decision lives
//! here, once:
//!
//! - **dispatch**: which engine a message goes to, decided by what it says, the
//!   same whether it came by gossip or directly ([`dispatch`]);
//! - **the requester's jobs** ([`requester`]): submit, lock the escrow when both
//!   parties signed, choose who gets the job key (the provider and the committee
//!   of the escrow's epoch), fetch the result, learn the settlement from the entry
//!   that settles the contract, indexed by contract id; one [`JobState`] derived
//!   from the engine's deal and the settlement;
//! - **the provider's runs** ([`provider`]): a contract runs once its escrow is in
//!   the ledger *and* its key has arrived, whichever path made it (a proposal
//!   accepted, or an open bid answered); one whose escrow or key never comes
//!   is given up at its deadline, freeing its slot (the committee's "not
//!   delivered" verdict refunds an escrow that did come);
//! - **the committee** ([`oracle`]): the epoch's committee from the ledger, the
//!   re-execution challenge, who writes a settlement and when;
//! - **the ledger** ([`ledger`]): automerge sync with each peer that is up,
//!   checkpoint proposals, signatures and votes.
//!
//! Time and randomness come in as arguments; the core reads no clock, draws no
//! ambient randomness and spawns nothing (its `clippy.toml` bans them).
//!
//! **Order of events.** A driver calls [`NodeCore::handle`] with `Input::Start`
//! once, then with each input as it arrives, and with `Input::Tick` at
//! [`NodeCore::poll_timeout`] (or more often: a tick with nothing due does
//! nothing but refresh the ledger sync). Each call appends its outputs to `out`
//! in the order they are to be carried out. Work that a `Run`, `Check` or
//! `FetchResult` output starts comes back, whenever it is done, as `Ran`,
//! `Checked` or `Fetched`.

pub mod direct;
pub mod dispatch;
pub mod job;
pub mod keys;
pub mod ledger;
pub mod oracle;
pub mod persist;
pub mod provider;
pub mod requester;
pub mod retry;

use std::collections::{BTreeMap, HashMap};

use crdt_ledger::{Ledger, PeerState, Store};
use protocol::market::{
    BookConfig, ProviderConfig, ProviderEngine, RequesterConfig, RequesterEngine,
};
use protocol::oracle::{DeferredChecker, OracleConfig, OracleEngine};
use protocol::{
    AccountId, Amount, Bps, ContractTerms, DurationMs, Hash32, Identity, Message, NetworkId,
    Receipt, Signed, Timestamp,
};
use rand::Rng;

pub use direct::{Direct, DirectError, TrainProgress};
pub use job::{Job, JobEnd, JobState};
pub use keys::{JobKey, KeyError};
pub use persist::{PersistError, Restored};
pub use provider::{RESULT_KEEP, RanJob};
pub use requester::{Fetched, PreparedJob, SubmitError};
pub use retry::WorkError;

/// Timing of the market and the committee. The defaults suit a real network; a
/// demo or a test shortens them.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long after a deadline a receipt is still awaited.
    pub grace: DurationMs,
    /// How long after a receipt the committee waits for a dispute.
    pub dispute_window: DurationMs,
    /// How often oracles probe a provider while it works.
    pub probe_every: DurationMs,
    /// How long an offer lives before the provider refreshes it.
    pub offer_ttl: DurationMs,
    /// The margin a provider adds to its estimated finish time (its SLA term).
    pub deadline_slack: DurationMs,
    /// How long a committee member that is not first among a certificate's
    /// signers waits before writing the settlement itself (the first may have
    /// crashed).
    pub settle_fallback: DurationMs,
    /// How long a checkpoint proposal that names entries this member lacks is
    /// retried while sync catches up.
    pub sign_retry: DurationMs,
    /// How long past its deadline a provider keeps a contract's receipt for a
    /// requester that comes back: as long as the driver keeps the result
    /// ([`RESULT_KEEP`]), since without it the receipt fetches nothing.
    pub result_keep: DurationMs,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            grace: DurationMs::secs(60),
            dispute_window: DurationMs::secs(10),
            probe_every: DurationMs::secs(30),
            offer_ttl: DurationMs::secs(600),
            deadline_slack: DurationMs::secs(30),
            settle_fallback: DurationMs::secs(5),
            sign_retry: DurationMs::secs(20),
            result_keep: RESULT_KEEP,
        }
    }
}

impl Timing {
    /// Short timeouts for local testbeds and tests.
    pub fn quick() -> Self {
        Timing {
            grace: DurationMs::secs(5),
            dispute_window: DurationMs::secs(1),
            probe_every: DurationMs::secs(2),
            offer_ttl: DurationMs::secs(120),
            deadline_slack: DurationMs::secs(2),
            result_keep: DurationMs::secs(60),
            ..Timing::default()
        }
    }
}

/// What a peer does besides buying compute, and how.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Sell compute with this configuration (from the driver's benchmark).
    pub provider: Option<ProviderConfig>,
    /// Serve on the committee when drawn.
    pub oracle: bool,
    /// As a provider, keep this much bonded (from the balance): requesters
    /// match only providers whose free bond covers a contract's escrow
    /// share, and a proven wrong result slashes it.
    pub bond: Amount,
    /// Where this peer serves blobs (handed to the readers of its jobs' keys).
    pub contact: Vec<String>,
    pub timing: Timing,
    /// The requester's order book. A capacity of 0 keeps no offers: every job
    /// is posted as an open bid for providers to answer (a light requester that
    /// does not follow the offer stream).
    pub book: BookConfig,
    /// Hand out [`Output::Persist`] whenever what must survive a restart
    /// changed (off in a simulation that never restarts a peer).
    pub persist: bool,
    /// This peer submits jobs (a node always may). A peer that neither
    /// submits nor serves on committees never fetches a result, so it keeps
    /// no providers' contacts (simnet's providers: a thousand of them each
    /// kept the contacts of all the others).
    pub submits: bool,
}

/// Most providers' contacts a peer keeps. When full, contacts not refreshed
/// by an offer for [`CONTACT_STALE`] go first; a new provider's contact is
/// not taken while none is stale (a flood of offers from made-up providers
/// cannot grow the map without bound).
pub const MAX_CONTACTS: usize = 100_000;
/// A contact not refreshed by an offer for this long may make way.
pub const CONTACT_STALE: DurationMs = DurationMs(3_600_000);
/// How often a full contact map is pruned of stale entries, at most.
const CONTACTS_PRUNE_EVERY: DurationMs = DurationMs(60_000);

/// How a message reached this peer. It changes nothing in where the message goes
/// (see [`dispatch`]); drivers and logs tell the two apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Gossip,
    Direct,
}

/// What a driver hands the core.
#[derive(Debug)]
#[non_exhaustive]
pub enum Input {
    /// Once, before anything else: offers, stake, first sync.
    Start,
    /// A protocol message (gossip already validated by the transport, or sent
    /// directly by `from`).
    Message {
        from: Option<AccountId>,
        via: Via,
        msg: Message,
    },
    /// A ledger sync message from a peer.
    Sync { from: AccountId, bytes: Vec<u8> },
    /// A committee leader's checkpoint proposal.
    Proposal {
        from: AccountId,
        proposal: Box<crdt_ledger::Proposal>,
    },
    /// A member's skip of a stalled epoch (see [`Direct::Skip`]).
    Skip(Box<protocol::MultiSigned<crdt_ledger::SkipBody>>),
    /// A committee member's challenge of a receipt (see [`Direct::Challenge`]).
    Challenge {
        contract: Hash32,
        member: AccountId,
        sig: protocol::Sig,
    },
    /// A connection to `peer` is up (a fresh sync state starts).
    PeerUp(AccountId),
    /// The last connection to `peer` closed.
    PeerDown(AccountId),
    /// Providers found in the DHT: talk to them (which connects us).
    Discovered(Vec<AccountId>),
    /// Timers due ([`NodeCore::poll_timeout`]) and housekeeping.
    Tick,
    /// The ledger replica changed outside this core: a driver that lends one
    /// replica to many cores in turn ([`NodeCore::lend_ledger`]) says so to
    /// the cores a new entry concerns. (A replica of its own changes only
    /// through the core, which notices by itself.)
    LedgerChanged,
    /// How many bytes the node's store has for new jobs (`None`: no limit);
    /// a provider refuses jobs that would not fit (see
    /// [`protocol::market::ProviderInput::StoreRoom`]).
    StoreRoom(Option<u64>),
    /// The driver's run of a contract's training job finished an epoch: the
    /// provider tells the requester.
    RunProgress {
        contract: Hash32,
        progress: TrainProgress,
    },
    /// A provider's progress report (see [`Direct::Progress`]).
    Progress {
        from: AccountId,
        contract: Hash32,
        progress: TrainProgress,
    },
    /// A contract's job ran (or could not run; see [`WorkError`] for a peer
    /// that could not be reached).
    Ran {
        contract: Hash32,
        result: Result<RanJob, WorkError>,
    },
    /// A committee member's check of a delivered result: `Ok(reason)` when the
    /// result is correct; an error when it is not, or could not be decrypted or
    /// read (which is no result either), or — with `retry` — could not be
    /// fetched just now.
    Checked {
        contract: Hash32,
        result: Result<String, WorkError>,
    },
    /// A requester's result fetched and decrypted (or not).
    Fetched {
        job: Hash32,
        result: Result<Fetched, WorkError>,
    },
}

impl Input {
    /// A gossiped message from `from` (the transport validated its frame):
    /// the one mapping both drivers use.
    pub fn gossip(from: Option<AccountId>, msg: Message) -> Input {
        Input::Message {
            from,
            via: Via::Gossip,
            msg,
        }
    }

    /// A direct message from `from` as it came off the wire (the node's
    /// request bytes).
    pub fn from_direct_bytes(
        from: AccountId,
        bytes: &[u8],
        network: &NetworkId,
    ) -> Result<Input, DirectError> {
        Direct::from_bytes(bytes, network).map(|d| Input::direct(from, d))
    }

    /// What a direct message from `from` is to the core: the one mapping both
    /// drivers use.
    pub fn direct(from: AccountId, d: Direct) -> Input {
        match d {
            Direct::Frame(f) => Input::Message {
                from: Some(from),
                via: Via::Direct,
                msg: f.message,
            },
            Direct::LedgerSync(bytes) => Input::Sync { from, bytes },
            Direct::Proposal(proposal) => Input::Proposal { from, proposal },
            Direct::Skip(skip) => Input::Skip(skip),
            Direct::Challenge {
                contract,
                member,
                sig,
            } => Input::Challenge {
                contract,
                member,
                sig,
            },
            Direct::Progress { contract, progress } => Input::Progress {
                from,
                contract,
                progress,
            },
        }
    }
}

/// A job key handed to this node (as provider or committee member), with where
/// its requester serves the inputs.
#[derive(Debug, Clone)]
pub struct Grant {
    pub key: JobKey,
    pub requester: AccountId,
    pub contact: Vec<String>,
}

/// What the core asks its driver to do.
#[derive(Debug)]
#[non_exhaustive]
pub enum Output {
    /// Gossip a message on the network's topic.
    Publish(Message),
    /// Send a message to one peer.
    Send { to: AccountId, msg: Direct },
    /// Run a contract's job: fetch and decrypt the inputs from the requester
    /// (`grant`), compute, store the encrypted result, then `Input::Ran`.
    Run {
        contract: Hash32,
        terms: Box<ContractTerms>,
        grant: Grant,
    },
    /// Re-execute a delivered job's challenged parts on the reference backend
    /// and compare, then `Input::Checked`. Each of `seeds` (this member's and
    /// those the other members revealed) fixes one sample; the result is
    /// correct only if every sample checks.
    Check {
        contract: Hash32,
        terms: Box<ContractTerms>,
        receipt: Box<Receipt>,
        grant: Grant,
        provider_contact: Vec<String>,
        seeds: Vec<u64>,
    },
    /// Fetch and decrypt a delivered result for the requester, then
    /// `Input::Fetched`.
    FetchResult {
        job: Hash32,
        receipt: Box<Receipt>,
        key: JobKey,
        provider_contact: Vec<String>,
    },
    /// Save this state durably, replacing the last one (see [`persist`]); give
    /// it back to [`NodeCore::restore`] after a restart.
    Persist(Vec<u8>),
}

/// One peer; see the crate docs.
#[derive(Debug)]
pub struct NodeCore<S: Store> {
    identity: Identity,
    network: NetworkId,
    timing: Timing,
    /// Where this peer serves blobs.
    contact: Vec<String>,
    ledger: Ledger<S>,
    requester: RequesterEngine,
    provider: Option<ProviderEngine>,
    oracle: Option<OracleEngine<DeferredChecker>>,
    /// Automerge sync state per peer that is up (or that we are reaching).
    peers: BTreeMap<AccountId, PeerState>,
    /// Where each provider serves blobs (from its offers), and when its last
    /// offer came; at most [`MAX_CONTACTS`], none unless `keeps_contacts`.
    contacts: HashMap<AccountId, (Vec<String>, Timestamp)>,
    /// When full `contacts` were last pruned (a scan of them all: at most
    /// once a minute, or a flood of fresh keys would scan for every offer).
    contacts_pruned: Timestamp,
    keeps_contacts: bool,
    /// The provider's latest signed offer, handed to each peer that comes up so
    /// a late joiner need not wait for the next refresh.
    last_offer: Option<Signed<protocol::Offer>>,
    /// Keys handed to us, by contract.
    grants: HashMap<Hash32, Grant>,
    jobs: requester::Jobs,
    prov: provider::State,
    orc: oracle::State,
    ckpt: ledger::CommitteeState,
    /// The ledger changed since the engines last looked.
    ledger_dirty: bool,
    /// Work to try again once a peer may be reachable.
    retries: retry::Retries,
    persist: bool,
    /// Keys, accepted contracts or watches changed since the state was last
    /// persisted (jobs keep their own flag).
    state_dirty: bool,
    /// The hash of the state last handed out to persist.
    persisted: Option<[u8; 32]>,
    /// The finalized epoch at which receipts and keys were last handed again.
    nudged_epoch: u64,
    /// Contracts whose escrow expiry this node wrote (see
    /// `expire_unsettled`), so it writes each once.
    expiring: std::collections::HashSet<Hash32>,
    /// Proposals we sent, to whom, until they expire (see `keep_proposal`).
    proposals_out: Vec<(AccountId, Message, Timestamp)>,
    /// The ledger's store reloads seen (each one restarts every peer's sync).
    ledger_reloads: u64,
    /// The bond to keep, as a provider.
    bond: Amount,
}

impl<S: Store> NodeCore<S> {
    /// A peer around its (loaded) ledger replica.
    pub fn new(identity: Identity, ledger: Ledger<S>, cfg: CoreConfig) -> Self {
        let CoreConfig {
            provider,
            oracle,
            bond,
            contact,
            timing,
            book,
            persist,
            submits,
        } = cfg;
        let network = ledger.network();
        let provider_engine =
            provider.map(|cfg| ProviderEngine::new(identity.clone(), network, cfg));
        let oracle = oracle.then(|| {
            let cfg = OracleConfig {
                // Every receipt is re-checked: one link of a chain or a sample of
                // rows costs little next to the job, and a node has few contracts.
                verify_share: Bps(10_000),
                // The ledger checks settlements against the genesis fee.
                fee: ledger.params().oracle_fee,
                grace: timing.grace,
                dispute_window: timing.dispute_window,
                probe_every: timing.probe_every,
                delivery_tolerance: DurationMs::secs(5),
                quorum_wait: DurationMs::secs(2),
                ..OracleConfig::default()
            };
            OracleEngine::new(identity.clone(), network, cfg, DeferredChecker)
        });
        let keeps_contacts = submits || oracle.is_some();
        let requester = RequesterEngine::new(
            identity.clone(),
            network,
            RequesterConfig {
                grace: timing.grace,
                book,
                ..RequesterConfig::default()
            },
        );
        NodeCore {
            identity,
            network,
            timing,
            contact,
            ledger,
            requester,
            provider: provider_engine,
            oracle,
            peers: BTreeMap::new(),
            contacts: HashMap::new(),
            contacts_pruned: Timestamp(0),
            keeps_contacts,
            last_offer: None,
            grants: HashMap::new(),
            jobs: requester::Jobs::default(),
            prov: provider::State::default(),
            orc: oracle::State::default(),
            ckpt: ledger::CommitteeState::default(),
            ledger_dirty: false,
            retries: retry::Retries::default(),
            persist,
            state_dirty: false,
            persisted: None,
            nudged_epoch: 0,
            expiring: std::collections::HashSet::new(),
            proposals_out: Vec::new(),
            ledger_reloads: 0,
            bond,
        }
    }

    /// Handle one input at `now`; outputs are appended to `out`.
    pub fn handle<R: Rng + ?Sized>(
        &mut self,
        now: Timestamp,
        input: Input,
        rng: &mut R,
        out: &mut Vec<Output>,
    ) {
        let mut cx = Cx { now, rng, out };
        match input {
            Input::Start => self.start(&mut cx),
            Input::Message { from, via, msg } => self.on_message(&mut cx, from, via, msg),
            Input::Sync { from, bytes } => self.on_sync(&mut cx, from, &bytes),
            // A vote or a skip may prove a double sign.
            Input::Proposal { from, proposal } => {
                self.on_proposal(&mut cx, from, *proposal);
                self.publish_slashes(&mut cx);
            }
            Input::Skip(skip) => {
                self.on_skip(&mut cx, &skip);
                self.publish_slashes(&mut cx);
            }
            Input::Challenge {
                contract,
                member,
                sig,
            } => self.on_challenge(&mut cx, contract, member, sig),
            Input::PeerUp(peer) => self.peer_up(&mut cx, peer),
            Input::PeerDown(peer) => {
                self.peers.remove(&peer);
            }
            Input::Discovered(peers) => {
                // Talking to a provider connects us, and a provider hands its
                // offer to every peer that comes up.
                for p in peers {
                    if p != self.account() && !self.peers.contains_key(&p) {
                        self.peers.insert(p, PeerState::new());
                        self.sync_with(&mut cx, p);
                    }
                }
            }
            Input::Tick => self.on_tick(&mut cx),
            Input::LedgerChanged => self.ledger_dirty = true,
            Input::StoreRoom(room) => {
                self.provider_handle(&mut cx, protocol::market::ProviderInput::StoreRoom(room));
            }
            Input::RunProgress { contract, progress } => {
                self.on_run_progress(&mut cx, contract, progress)
            }
            Input::Progress {
                from,
                contract,
                progress,
            } => self.on_progress(cx.now, from, contract, progress),
            Input::Ran { contract, result } => self.on_ran(&mut cx, contract, result),
            Input::Checked { contract, result } => self.on_checked(&mut cx, contract, result),
            Input::Fetched { job, result } => self.on_fetched(&mut cx, job, result),
        }
        self.settle_ledger(&mut cx);
    }

    /// What the input wrote or synced into the ledger may settle or finalize
    /// something; acting on it may write again (bounded), then peers hear of it.
    fn settle_ledger<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>) {
        let mut wrote = false;
        for _ in 0..8 {
            if !std::mem::take(&mut self.ledger_dirty) {
                break;
            }
            wrote = true;
            self.on_ledger_changed(cx);
        }
        if wrote {
            self.sync_all(cx);
        }
        self.persist_if_changed(cx);
    }

    /// Whether an offer arriving now could make this core act, rather than
    /// only file it (its order book, the provider's contact, the competitor's
    /// price): a job of its waits for offers, or a check or a result fetch
    /// waits for its next try (a provider that moved is tried again at once).
    /// While it is false, a driver may hold offers back and hand them over,
    /// each at its arrival time and in order, just before the core's next
    /// input: the core files the same offers at the same times, and nothing
    /// else reached it meanwhile. (simnet does this, so that a thousand idle
    /// cores do not each wake for every offer.)
    pub fn acts_on_offers(&self) -> bool {
        self.requester.awaits_offers() || self.retries.any_check_or_fetch()
    }

    /// When the core next needs an `Input::Tick` (engine timers, the committee's
    /// checkpoint timer, settlements due); `None` if nothing is scheduled.
    pub fn poll_timeout(&mut self) -> Option<Timestamp> {
        [
            self.requester.poll_timeout(),
            self.provider
                .as_ref()
                .and_then(ProviderEngine::poll_timeout),
            self.oracle.as_ref().and_then(OracleEngine::poll_timeout),
            self.oracle.as_ref().and(self.ledger.poll_timeout()),
            self.orc.next_settlement(),
            self.orc.next_challenge_wait(),
            self.ckpt.next_publish(),
            self.prov.next_release(),
            self.retries.next(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn start<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>) {
        if let Some(p) = self.provider.as_mut() {
            let o = p.handle(cx.now, protocol::market::ProviderInput::Start, cx.rng);
            self.on_provider_out(cx, o);
        }
        if self.oracle.is_some() {
            self.stake_for_committee(cx);
        }
        self.bond_for_contracts(cx);
        self.ledger_dirty = true;
    }

    fn on_tick<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>) {
        if let Some(p) = self.provider.as_mut() {
            let o = p.handle_timeout(cx.now, cx.rng);
            self.on_provider_out(cx, o);
        }
        if let Some(o) = self.oracle.as_mut() {
            let o = o.handle_timeout(cx.now, cx.rng);
            self.on_oracle_out(cx, o);
        }
        self.requester_timeout(cx);
        self.release_unescrowed(cx);
        for what in self.retries.pop_due(cx.now) {
            match what {
                retry::Retry::Run(c) => self.try_run(cx, c),
                retry::Retry::Check(c) => self.recheck(cx, c),
                retry::Retry::Fetch(j) => self.refetch(cx, j),
            }
        }
        if self.oracle.is_some() {
            self.release_held(cx);
            self.checkpoint_tick(cx);
            self.write_settlements(cx);
        }
        self.publish_slashes(cx);
        self.sync_all(cx);
    }

    fn peer_up<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>, peer: AccountId) {
        if peer == self.account() {
            return;
        }
        if let Some(offer) = self.last_offer.clone() {
            self.send(cx, peer, Message::Offer(offer));
        }
        self.resend_receipts(cx, peer);
        self.resend_grants(cx, peer);
        self.resend_proposals(cx, peer);
        // A fresh sync state: a peer that comes back may have lost what it had.
        self.peers.insert(peer, PeerState::new());
        self.sync_with(cx, peer);
    }

    /// Something new in the ledger (our write, or a peer's through sync): hand
    /// what it settles or finalizes to the engines.
    fn on_ledger_changed<R: Rng + ?Sized>(&mut self, cx: &mut Cx<'_, R>) {
        self.oracle_epoch_update(cx);
        self.watch_escrows(cx);
        self.prune_watches();
        self.provider_ledger_changed(cx);
        self.requester_ledger_changed(cx);
        self.publish_slashes(cx);
        let nudge = self.new_epoch_to_nudge();
        self.grant_judges(cx, nudge);
        if nudge {
            // A checkpoint may have made a provider's bond final: an open bid
            // that no bonded offer fitted may fit now, without waiting for
            // the provider's next offer.
            if self.requester.open_jobs() > 0 {
                self.requester_handle(cx, protocol::market::RequesterInput::Rematch);
            }
            self.prune_grants();
            self.nudge_receipts(cx);
            self.nudge_challenges(cx);
            self.bond_for_contracts(cx);
            let epoch = self.nudged_epoch;
            self.write_sla_records(cx, epoch);
        }
    }

    /// Forget the job keys of contracts whose settlement or expiry is final:
    /// nobody runs or checks those jobs again (a settlement still pending
    /// may be dropped by a refold, and its contract judged again). Without
    /// this a provider or a committee member kept, and saved, every key it
    /// was ever handed.
    fn prune_grants(&mut self) {
        if self.grants.is_empty() {
            return;
        }
        let before = self.grants.len();
        let settled = &self.ledger.finalized_state().settled;
        self.grants.retain(|c, _| !settled.contains_key(c));
        self.state_dirty |= self.grants.len() != before;
    }

    fn send<R: Rng + ?Sized>(&self, cx: &mut Cx<'_, R>, to: AccountId, message: Message) {
        if to == self.account() {
            return;
        }
        cx.out.push(Output::Send {
            to,
            msg: Direct::Frame(protocol::Frame::new(self.network, message)),
        });
    }

    // ------------------------------------------------------------- reading

    pub fn account(&self) -> AccountId {
        self.identity.account()
    }
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
    pub fn network(&self) -> NetworkId {
        self.network
    }
    pub fn timing(&self) -> &Timing {
        &self.timing
    }
    /// The network's rules (from its genesis).
    pub fn params(&self) -> &crdt_ledger::Params {
        self.ledger.params()
    }
    /// Stop: the ledger replica, to reopen its store (what a crash leaves).
    pub fn into_ledger(self) -> Ledger<S> {
        self.ledger
    }
    /// Swap this core's ledger replica with `ledger`: a simulator that keeps
    /// one converged replica for many cores lends it to each core for the
    /// duration of a call and takes it back after, leaving the core its
    /// placeholder meanwhile. Every call that may read the ledger
    /// (`handle`, `submit`, `restore`, `poll_timeout`) must run lent.
    pub fn lend_ledger(&mut self, ledger: &mut Ledger<S>) {
        std::mem::swap(&mut self.ledger, ledger);
    }
    /// The ledger replica (mutable: its views fold lazily).
    pub fn ledger(&mut self) -> &mut Ledger<S> {
        &mut self.ledger
    }
    /// The job keys this core holds (as a provider or a committee member).
    pub fn grants_held(&self) -> usize {
        self.grants.len()
    }
    /// Receipts this provider keeps to hand again to requesters that come back.
    pub fn receipts_kept(&self) -> usize {
        self.prov.receipts_kept()
    }
    pub fn requester(&self) -> &RequesterEngine {
        &self.requester
    }
    pub fn provider(&self) -> Option<&ProviderEngine> {
        self.provider.as_ref()
    }
    pub fn oracle(&self) -> Option<&OracleEngine<DeferredChecker>> {
        self.oracle.as_ref()
    }
    /// Peers with a sync state (up, or being reached).
    pub fn peers(&self) -> impl Iterator<Item = &AccountId> {
        self.peers.keys()
    }
    /// Where `provider` serves blobs, from its offers.
    pub fn contact_of(&self, provider: &AccountId) -> Vec<String> {
        self.contacts
            .get(provider)
            .map(|(c, _)| c.clone())
            .unwrap_or_default()
    }

    /// Note `provider`'s contact from an offer of it at `now`; whether it
    /// changed (the provider moved).
    pub(crate) fn note_contact(
        &mut self,
        now: Timestamp,
        provider: AccountId,
        contact: &[String],
    ) -> bool {
        let mine = provider == self.account();
        if !self.keeps_contacts && !mine {
            return false;
        }
        if let Some((c, seen)) = self.contacts.get_mut(&provider) {
            *seen = now;
            if c.as_slice() == contact {
                return false;
            }
            *c = contact.to_vec();
            return true;
        }
        if self.contacts.len() >= MAX_CONTACTS {
            if now.since(self.contacts_pruned) >= CONTACTS_PRUNE_EVERY {
                self.contacts_pruned = now;
                self.contacts
                    .retain(|_, (_, seen)| now.since(*seen) < CONTACT_STALE);
            }
            if self.contacts.len() >= MAX_CONTACTS && !mine {
                return false;
            }
        }
        self.contacts.insert(provider, (contact.to_vec(), now));
        true
    }
}

/// One call's context: its time, randomness and outputs.
struct Cx<'a, R: ?Sized> {
    now: Timestamp,
    rng: &'a mut R,
    out: &'a mut Vec<Output>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(submits: bool) -> NodeCore<crdt_ledger::MemStore> {
        let founder = Identity::from_seed(1);
        let genesis = crdt_ledger::GenesisEntry::create(
            &founder,
            crdt_ledger::Genesis {
                name: "contacts".into(),
                genesis_time: Timestamp(0),
                params: crdt_ledger::Params::default(),
                balances: vec![],
                stakes: vec![(founder.account(), Amount::tokens(1_000))],
                bonds: vec![],
            },
        )
        .unwrap();
        let ledger = Ledger::new(genesis, b"contacts").unwrap();
        let cfg = CoreConfig {
            provider: None,
            oracle: false,
            bond: Amount::ZERO,
            contact: vec![],
            timing: Timing::default(),
            book: Default::default(),
            persist: false,
            submits,
        };
        NodeCore::new(Identity::from_seed(2), ledger, cfg)
    }

    fn provider(i: u32) -> AccountId {
        let mut a = [0u8; 32];
        a[..4].copy_from_slice(&i.to_le_bytes());
        AccountId(a)
    }

    /// A peer that never fetches a result keeps no contacts; one that does
    /// keeps at most `MAX_CONTACTS`: a flood of offers from made-up providers
    /// fills the map but cannot grow it, and makes way once it goes stale.
    #[test]
    fn contacts_are_kept_by_peers_that_fetch_and_stay_bounded() {
        let at = |ms: u64| Timestamp(1_000 + ms);
        let mut idle = core(false);
        assert!(!idle.note_contact(at(0), provider(1), &["a".into()]));
        assert!(idle.contact_of(&provider(1)).is_empty());

        let mut c = core(true);
        for i in 0..MAX_CONTACTS as u32 {
            assert!(c.note_contact(at(0), provider(i), &["flood".into()]));
        }
        let newcomer = provider(u32::MAX);
        assert!(!c.note_contact(at(1), newcomer, &["x".into()]));
        assert!(c.contact_of(&newcomer).is_empty());
        assert_eq!(c.contacts.len(), MAX_CONTACTS);
        // A known provider that moves is still followed.
        assert!(c.note_contact(at(2), provider(7), &["moved".into()]));
        assert!(!c.note_contact(at(3), provider(7), &["moved".into()]));
        // Once the flood is stale, it makes way (the one refreshed stays).
        let later = at(1).plus(CONTACT_STALE);
        assert!(c.note_contact(later, newcomer, &["x".into()]));
        assert_eq!(c.contact_of(&newcomer), vec!["x".to_string()]);
        assert_eq!(c.contacts.len(), 2);
    }
}
