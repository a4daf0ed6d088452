//! Ledger entries: what an author signs, how it is keyed and hashed.
//!
//! An entry is `{author, seq, prev_hash, created_at, body}` signed by `author` in a
//! [`Signed<EntryData>`] envelope (domain `cloudchain/v1/ledger-entry`, network id
//! included). Each author's entries form a hash chain: entry `seq` carries the hash
//! of the author's entry `seq - 1`; the first entry (`seq = 0`) carries the network
//! id as its `prev_hash`.
//!
//! The genesis is not an entry at a key: it is a [`Signed<Genesis>`] every peer is
//! configured with, signed on the all-zero network, and its envelope hash *is* the
//! [`NetworkId`].

use std::sync::Arc;

use protocol::codec::{self, CodecError, Wire};
use protocol::settlement::{Payout, QuorumCert};
use protocol::signed::{Sig, SignatureError, verify_bytes};
use protocol::{
    AccountId, Amount, Bps, Contract, DurationMs, Hash32, Identity, MultiSigned, NetworkId, Signed,
    Timestamp,
};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{CheckpointBody, SkipBody};

/// The network id that genesis documents are signed on (there is no network yet).
pub const PRE_NETWORK: NetworkId = NetworkId([0u8; 32]);

/// Rules fixed by the genesis for the life of the network.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Params {
    /// Wall-clock length of an epoch; epoch `e ≥ 1` ends at
    /// `genesis_time + e · epoch_length`, when its checkpoint is due.
    pub epoch_length: DurationMs,
    /// How long a proposer may stall before the next member in draw order proposes.
    pub stall_timeout: DurationMs,
    /// k, the committee size.
    pub committee_size: u16,
    /// Smallest stake that makes an account eligible for the committee draw.
    pub min_stake: Amount,
    /// Epochs an unstaked amount stays bonded before it returns to the balance.
    pub unbonding_epochs: u64,
    /// Oracle fee, basis points of the escrow, shared by the quorum.
    pub oracle_fee: Bps,
    /// Share of an offender's stake, bond and unbonding tokens burned per
    /// offence (a fork or a double sign).
    pub slash: Bps,
    /// Reward minted at the checkpoint of epoch 1; halves every
    /// `reward_halving_epochs` epochs.
    pub reward_base: Amount,
    pub reward_halving_epochs: u64,
    /// The most that will ever be minted by rewards (the supply cap is
    /// `genesis supply + reward_cap`).
    pub reward_cap: Amount,
    /// The bond a contract reserves of its provider's, as a share of its
    /// escrow: what a proven wrong result costs the provider on top of its pay.
    /// Requesters match only providers whose free bond covers it.
    pub provider_bond: Bps,
    /// The share of a slashed bond paid to the wronged requester; the rest is
    /// burned.
    pub bond_to_requester: Bps,
    /// The share of its provider's whole bond a proven wrong result slashes
    /// (at least what the contract reserved): one caught cheat costs more than
    /// any run of uncaught ones earned.
    pub wrong_result_slash: Bps,
    /// The most one verified compute unit mints, µ-tokens. Set below what a
    /// unit of compute costs anyone to run, so that buying one's own compute
    /// to earn the mint always costs more than it mints.
    pub mint_per_cu: protocol::PricePerCu,
    /// How long after a contract's deadline its escrow may be expired
    /// (refunded without a certificate, `Body::Expire`) if no committee
    /// settled it: far past any committee's grace.
    pub expire_after: DurationMs,
    /// Epochs an unbonded provider or requester bond stays slashable before
    /// it returns to the balance: longer than any partition a fork should not
    /// outlast (a requester's bond backs escrows before they are final, and
    /// a fork of them is slashed only once the two sides meet).
    pub bond_unbonding_epochs: u64,
    /// How many shards the market is split into
    /// ([`protocol::market::market_shard`]): 1 for a network of up to some
    /// hundreds of providers, about one per few hundred providers beyond.
    /// At most [`protocol::market::MAX_MARKET_SHARDS`].
    pub market_shards: u16,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            epoch_length: DurationMs::secs(600),
            stall_timeout: DurationMs::secs(60),
            committee_size: 7,
            min_stake: Amount::tokens(100),
            unbonding_epochs: 6,
            oracle_fee: Bps(200),
            slash: Bps(5_000),
            reward_base: Amount::tokens(1_000),
            reward_halving_epochs: 4_320,
            reward_cap: Amount::tokens(10_000_000),
            provider_bond: Bps(10_000),
            bond_to_requester: Bps(5_000),
            wrong_result_slash: Bps(10_000),
            // A tenth of a provider's default price floor (1,000 µ-tokens/CU).
            mint_per_cu: protocol::PricePerCu(100),
            expire_after: DurationMs::secs(6 * 3_600),
            // A day of 10-minute epochs.
            bond_unbonding_epochs: 144,
            market_shards: 1,
        }
    }
}

impl Params {
    /// The bond a contract with escrow `escrow` reserves of its provider's.
    pub fn contract_bond(&self, escrow: Amount) -> Amount {
        self.provider_bond.of(escrow)
    }

    /// What a settled contract's outcome slashes of its provider's bond,
    /// which holds `bond` now and of which the contract reserved `reserved`:
    /// for a delivered result the committee found wrong (a proof of cheating),
    /// `wrong_result_slash` of the whole bond or the reservation, whichever is
    /// more, as far as the bond goes; nothing otherwise (a crash proves
    /// nothing).
    pub fn slashed(
        &self,
        reserved: Amount,
        bond: Amount,
        outcome: &protocol::settlement::Outcome,
    ) -> Amount {
        if outcome.delivered && !outcome.result_ok {
            reserved.max(self.wrong_result_slash.of(bond)).min(bond)
        } else {
            Amount::ZERO
        }
    }

    /// The scheduled mint of `epoch` before the cap: `reward_base >> (epoch / halving)`.
    pub fn scheduled_reward(&self, epoch: u64) -> Amount {
        let halvings = epoch.saturating_sub(1) / self.reward_halving_epochs.max(1);
        if halvings >= 64 {
            Amount::ZERO
        } else {
            Amount(self.reward_base.0 >> halvings)
        }
    }
}

/// The genesis document: it fixes the network.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Genesis {
    pub name: String,
    pub genesis_time: Timestamp,
    pub params: Params,
    /// Initial liquid balances, sorted by account, unique.
    pub balances: Vec<(AccountId, Amount)>,
    /// Initial stakes, sorted by account, unique: the draw for epoch 1.
    pub stakes: Vec<(AccountId, Amount)>,
    /// Initial provider bonds, sorted by account, unique.
    pub bonds: Vec<(AccountId, Amount)>,
}

impl Wire for Genesis {
    const KIND: &'static str = "ledger-genesis";
    const MAX_SIZE: usize = 4 * 1024 * 1024;
}

/// A signed genesis and the network id it defines.
#[derive(Clone, Debug)]
pub struct GenesisEntry {
    signed: Signed<Genesis>,
    genesis: Genesis,
    network: NetworkId,
}

impl GenesisEntry {
    /// Sign a genesis. Balances and stakes are sorted and must be unique.
    pub fn create(identity: &Identity, mut genesis: Genesis) -> Result<Self, crate::LedgerError> {
        genesis.balances.sort_by_key(|(a, _)| *a);
        genesis.stakes.sort_by_key(|(a, _)| *a);
        genesis.bonds.sort_by_key(|(a, _)| *a);
        let signed = Signed::sign(identity, &PRE_NETWORK, &genesis)
            .map_err(|e| crate::LedgerError::Genesis(e.to_string()))?;
        Self::from_signed(signed)
    }

    /// Check a genesis received from elsewhere.
    pub fn from_signed(signed: Signed<Genesis>) -> Result<Self, crate::LedgerError> {
        let genesis = signed
            .verify(&PRE_NETWORK)
            .map_err(|e| crate::LedgerError::Genesis(e.to_string()))?;
        let unique = |v: &[(AccountId, Amount)]| v.windows(2).all(|w| w[0].0 < w[1].0);
        if !unique(&genesis.balances) || !unique(&genesis.stakes) || !unique(&genesis.bonds) {
            return Err(crate::LedgerError::Genesis(
                "balances, stakes and bonds must be sorted by account and unique".into(),
            ));
        }
        if genesis.params.committee_size == 0 || genesis.params.epoch_length.0 == 0 {
            return Err(crate::LedgerError::Genesis(
                "committee size and epoch length must be positive".into(),
            ));
        }
        let shards = genesis.params.market_shards;
        if shards == 0 || shards > protocol::market::MAX_MARKET_SHARDS {
            return Err(crate::LedgerError::Genesis(format!(
                "market_shards is {shards}: it must be 1 to {}",
                protocol::market::MAX_MARKET_SHARDS
            )));
        }
        let network = NetworkId(signed.id().0);
        Ok(GenesisEntry {
            signed,
            genesis,
            network,
        })
    }

    pub fn network(&self) -> NetworkId {
        self.network
    }
    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }
    pub fn signed(&self) -> &Signed<Genesis> {
        &self.signed
    }
    /// The genesis supply: every initial balance and stake.
    pub fn supply(&self) -> Option<Amount> {
        self.genesis
            .balances
            .iter()
            .chain(&self.genesis.stakes)
            .chain(&self.genesis.bonds)
            .try_fold(Amount::ZERO, |t, (_, a)| t.checked_add(*a))
    }
}

/// What an SLA record says about a provider over one epoch (written by a member of
/// that epoch's committee from its probes).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SlaRecord {
    pub provider: AccountId,
    pub epoch: u64,
    pub probes: u32,
    pub answered: u32,
    pub mean_latency_ms: u32,
}

/// Evidence that an account broke a rule that costs its stake.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum SlashProof {
    /// Two different entries by one author at one `seq` (a forked chain).
    Fork { a: Entry, b: Entry },
    /// Two conflicting statements for one epoch signed by one committee
    /// member: two bodies prevoted or precommitted in one round, or a
    /// precommit and a skip of its epoch (see [`Slot::conflicts`]).
    DoubleSign {
        signer: AccountId,
        a: Vec<u8>,
        sig_a: Sig,
        b: Vec<u8>,
        sig_b: Sig,
    },
}

impl SlashProof {
    /// Check the proof and name the offender and the offence (used to slash each
    /// offence once).
    pub fn check(&self, network: &NetworkId) -> Result<(AccountId, Offence), String> {
        match self {
            SlashProof::Fork { a, b } => {
                let da = a
                    .signed
                    .verify(network)
                    .map_err(|e| format!("entry a: {e}"))?;
                let db = b
                    .signed
                    .verify(network)
                    .map_err(|e| format!("entry b: {e}"))?;
                if a.signed.signer != da.author || b.signed.signer != db.author {
                    return Err("entry signed by someone other than its author".into());
                }
                if da.author != db.author || da.seq != db.seq {
                    return Err("entries are at different author/seq".into());
                }
                if a.signed.body_bytes() == b.signed.body_bytes() {
                    return Err("entries have the same body".into());
                }
                Ok((da.author, Offence::Fork(da.seq)))
            }
            SlashProof::DoubleSign {
                signer,
                a,
                sig_a,
                b,
                sig_b,
            } => {
                let (ea, sa) =
                    statement_slot(network, signer, a, sig_a).map_err(|e| format!("a: {e}"))?;
                let (eb, sb) =
                    statement_slot(network, signer, b, sig_b).map_err(|e| format!("b: {e}"))?;
                if ea != eb {
                    return Err("statements are for different epochs".into());
                }
                if a == b {
                    return Err("the same statement twice".into());
                }
                if !sa.conflicts(sb) {
                    return Err(format!(
                        "a {sa:?} and a {sb:?} of one epoch may both be signed"
                    ));
                }
                Ok((*signer, Offence::DoubleSign(ea)))
            }
        }
    }
}

/// Which of a member's statements for an epoch a signature is: a prevote or a
/// precommit in a round, or the epoch's skip.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Slot {
    Prevote(u32),
    Precommit(u32),
    Skip,
}

impl Slot {
    /// Whether an honest member never signs two different statements in
    /// these slots: two in one slot (two bodies prevoted or precommitted in
    /// one round, two skips), or a precommit and a skip of one epoch (a final
    /// checkpoint and a skip certificate would share an honest signer).
    /// Precommits of different rounds are allowed: a member locked on a body
    /// moves only on a newer quorum of prevotes.
    pub fn conflicts(self, other: Slot) -> bool {
        self == other
            || matches!(
                (self, other),
                (Slot::Precommit(_), Slot::Skip) | (Slot::Skip, Slot::Precommit(_))
            )
    }
}

/// The epoch and slot of a committee statement `signer` signed: a checkpoint
/// body's precommit or prevote, or a skip ("epoch e abandoned"). The
/// signature's domain says which it is.
pub fn statement_slot(
    network: &NetworkId,
    signer: &AccountId,
    bytes: &[u8],
    sig: &Sig,
) -> Result<(u64, Slot), String> {
    for (kind, precommit) in [
        (<CheckpointBody as Wire>::KIND, true),
        (crate::checkpoint::PREVOTE_KIND, false),
    ] {
        if verify_bytes(kind, network, signer, bytes, sig).is_ok() {
            let c: CheckpointBody = codec::decode(bytes).map_err(|e| e.to_string())?;
            let slot = if precommit {
                Slot::Precommit(c.round)
            } else {
                Slot::Prevote(c.round)
            };
            return Ok((c.epoch, slot));
        }
    }
    let skip = <SkipBody as Wire>::KIND;
    verify_bytes(skip, network, signer, bytes, sig).map_err(|e| e.to_string())?;
    let s: SkipBody = codec::decode(bytes).map_err(|e| e.to_string())?;
    Ok((s.epoch, Slot::Skip))
}

/// One slashable offence (each is punished once).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum Offence {
    /// Forked its chain at this seq.
    Fork(u64),
    /// Signed two conflicting statements for this epoch (two bodies in one
    /// round, or a precommit and a skip).
    DoubleSign(u64),
}

/// What an entry does.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Body {
    /// Move liquid tokens to another account.
    Transfer { to: AccountId, amount: Amount },
    /// Bond liquid tokens as stake (eligible for the committee at the next checkpoint).
    Stake { amount: Amount },
    /// Start unbonding stake; it returns to the balance `unbonding_epochs` later.
    Unstake { amount: Amount },
    /// Lock the escrow of a contract signed by both parties (written by the requester).
    EscrowLock { contract: Contract },
    /// Pay out an escrow as a quorum certificate of the committee's verdicts says.
    /// `payout` must equal `protocol::payout` of the certified outcome exactly.
    Settlement { cert: QuorumCert, payout: Payout },
    /// An SLA observation by a committee member.
    SlaRecord(SlaRecord),
    /// A final checkpoint (with its quorum of signatures), published by anyone.
    Checkpoint(Box<MultiSigned<CheckpointBody>>),
    /// Slash an offender; carries the proof.
    Slash(Box<SlashProof>),
    /// Bond liquid tokens as a provider (what contracts reserve and a proven
    /// wrong result slashes).
    Bond { amount: Amount },
    /// Start unbonding free bond; it returns to the balance `unbonding_epochs`
    /// later (slashable until then).
    Unbond { amount: Amount },
    /// Refund an escrow that no committee settled long after its deadline (a
    /// committee whose verdicts split three ways, or one that lost its
    /// members): valid once the last final epoch ended
    /// `Params::expire_after` after the contract's deadline. Anyone
    /// may write it; the whole escrow goes back to the requester and the
    /// provider's bond is released.
    Expire { contract: Hash32 },
}

impl Body {
    pub fn name(&self) -> &'static str {
        match self {
            Body::Transfer { .. } => "transfer",
            Body::Stake { .. } => "stake",
            Body::Unstake { .. } => "unstake",
            Body::EscrowLock { .. } => "escrow-lock",
            Body::Settlement { .. } => "settlement",
            Body::SlaRecord(_) => "sla-record",
            Body::Checkpoint(_) => "checkpoint",
            Body::Slash(_) => "slash",
            Body::Bond { .. } => "bond",
            Body::Unbond { .. } => "unbond",
            Body::Expire { .. } => "expire",
        }
    }
}

/// The signed content of an entry.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct EntryData {
    pub author: AccountId,
    pub seq: u64,
    pub prev_hash: Hash32,
    pub created_at: Timestamp,
    pub body: Body,
}

impl Wire for EntryData {
    const KIND: &'static str = "ledger-entry";
    const MAX_SIZE: usize = 1024 * 1024;
}

/// A signed entry, as stored in the document and carried by sync.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub signed: Signed<EntryData>,
}

impl Wire for Entry {
    const KIND: &'static str = "ledger-entry-envelope";
    const MAX_SIZE: usize = EntryData::MAX_SIZE + 256;
}

impl Entry {
    /// Sign an entry.
    pub fn sign(
        identity: &Identity,
        network: &NetworkId,
        data: &EntryData,
    ) -> Result<Self, CodecError> {
        Ok(Entry {
            signed: Signed::sign(identity, network, data)?,
        })
    }

    /// The entry hash: what the next entry's `prev_hash` and checkpoints name.
    pub fn hash(&self) -> Hash32 {
        self.signed.id()
    }

    /// The stored bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode(self)
    }

    /// Decode stored or received bytes (no signature check).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode(bytes)
    }

    /// Check the signature and that the signer is the author.
    pub fn verify(&self, network: &NetworkId) -> Result<EntryData, SignatureError> {
        let data = self.signed.verify(network)?;
        check_author(self, &data)?;
        Ok(data)
    }
}

pub(crate) fn check_author(entry: &Entry, data: &EntryData) -> Result<(), SignatureError> {
    if entry.signed.signer != data.author {
        return Err(SignatureError::WrongSigner {
            kind: EntryData::KIND,
            got: entry.signed.signer,
            expected: data.author,
        });
    }
    Ok(())
}

/// An entry whose signature has been checked, with its decoded data and hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedEntry {
    pub hash: Hash32,
    pub data: EntryData,
    pub entry: Entry,
}

pub(crate) type Ve = Arc<VerifiedEntry>;

/// Where an entry lives in the document: `author_hex/seq`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct EntryKey {
    pub author: AccountId,
    pub seq: u64,
}

impl EntryKey {
    /// The document key text.
    pub fn to_key(&self) -> String {
        format!("{}/{}", hex::encode(self.author.0), self.seq)
    }

    /// Parse a document key strictly (the one canonical spelling only).
    pub fn parse(s: &str) -> Option<EntryKey> {
        let (a, n) = s.split_once('/')?;
        if a.len() != 64 || a.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let mut author = [0u8; 32];
        hex::decode_to_slice(a, &mut author).ok()?;
        if n.is_empty() || n.len() > 20 || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if n.len() > 1 && n.starts_with('0') {
            return None;
        }
        let seq = n.parse().ok()?;
        Some(EntryKey {
            author: AccountId(author),
            seq,
        })
    }
}

/// The id of an entry: its key and hash.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct EntryId {
    pub author: AccountId,
    pub seq: u64,
    pub hash: Hash32,
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}#{}",
            self.author.short(),
            self.seq,
            self.hash.short()
        )
    }
}

impl VerifiedEntry {
    pub fn id(&self) -> EntryId {
        EntryId {
            author: self.data.author,
            seq: self.data.seq,
            hash: self.hash,
        }
    }
    pub fn key(&self) -> EntryKey {
        EntryKey {
            author: self.data.author,
            seq: self.data.seq,
        }
    }
}

/// The `prev_hash` of an author's first entry.
pub fn chain_start(network: &NetworkId) -> Hash32 {
    Hash32(network.0)
}
