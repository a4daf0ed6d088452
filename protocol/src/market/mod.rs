//! The market engines: order book, matching, the provider side, pricing and the
//! contract lifecycle. Sans-IO: every engine is a plain struct fed with
//! `handle(now, input, rng)` and `handle_timeout(now, rng)`, returning the actions
//! its driver (the node's event loop or the simulator) must carry out; timers leave
//! as `ScheduleTimer` outputs and are also reported by `poll_timeout()`.
//!
//! ## Order of events (DESIGN.md §3)
//!
//! 1. A [`ProviderEngine`] publishes its signed [`Offer`](crate::Offer) and refreshes
//!    it before it expires. Every [`RequesterEngine`] keeps the offers it hears in an
//!    [`OrderBook`].
//! 2. A requester submits a [`JobSpec`](crate::JobSpec). Its engine ranks the
//!    feasible offers by utility and proposes to one of the near-best
//!    ([`OrderBook::match_job`]). If nothing fits it reports why, offer by offer
//!    ([`MatchOutcome::NoMatch`]), and publishes the job as an open bid, which stays
//!    open (and is retried as offers arrive) until filled or expired. Providers
//!    may answer an open bid with a priced proposal.
//! 3. The provider accepts (signing the [`ContractTerms`](crate::ContractTerms)) if
//!    price, capacity, queue and deadline allow, or rejects with a reason. The
//!    proposer adds its signature: that is the contract. The requester locks the
//!    escrow and hands the contract to the oracle committee.
//! 4. The provider runs the job (its driver does, on `compute`), and publishes a
//!    signed receipt. The oracles judge it ([`crate::oracle`]) and a quorum of their
//!    verdicts settles the escrow by [`crate::settlement::payout`].
//!
//! ## The requester's model: utility `U = Q − P`
//!
//! For a job of estimated units `C` and maximum price `P_max`, its value to the
//! requester is `V = P_max · C` (what it declared it would pay). An offer at price
//! `p` from a provider of quality `q ∈ [0, 1]` (SLA history and reputation, from
//! the ledger through [`Reputation`]) gives
//!
//! ```text
//! Q = q · V,   P = p · C,   U = Q − P.
//! ```
//!
//! An offer is **feasible** when it has not expired, has a free slot, asks at most
//! `P_max`, promises at least the required availability and penalty (and the
//! provider's quality is at least the matcher's floor), and can deliver by the
//! deadline: `now + T_r + T_c + slack ≤ deadline`, where `T_r = S / B_r` is the time
//! to move the inputs the provider does not hold yet (size `S` over its advertised
//! bandwidth `B_r`; a provider that already holds the model blob is faster),
//! `T_c = C / speed` its benchmarked compute time, and `slack` its own declared
//! deadline slack.
//!
//! ## Fairness
//!
//! The requester does not herd on the single best offer: it draws one among the
//! near-best (utility within [`MatchConfig::near_best`] of the best, a share of `V`),
//! with probability proportional to `free slots × (1 + relative utility)`. Equal
//! providers thus share work equally, and work tracks free capacity. See
//! [`book`] for the cost model of the scan.
//!
//! ## Market shards
//!
//! A network of thousands of providers splits its market into
//! `market_shards` shards (a genesis parameter; 1 by default), by account
//! ([`market_shard`]). An offer is gossiped in its provider's shard and a bid
//! in its requester's; a requester books, and a provider prices against, the
//! offers of its own shard only. Each shard is a market of about
//! `providers / shards` sellers and `requesters / shards` buyers, so what a
//! peer hears and keeps does not grow with the network, and requesters and
//! providers land in shards alike (by their keys), which keeps the ratio of
//! demand to supply the same in every shard. A key can be ground to pick a
//! shard: that picks a market, as choosing where to trade does, and wins
//! nothing another shard's peers could not also have. Committee members hear
//! every shard (they fetch results from any provider).
//!
//! ## The provider's model: a Stackelberg leader
//!
//! See [`pricing`].
//!
//! ## Memory and cost
//!
//! The order book holds at most [`BookConfig::capacity`] offers (eviction rule in
//! [`book`]), a match costs at most [`MatchConfig::max_scan`] feasibility checks,
//! open bids are capped by [`RequesterConfig::max_open_bids`], a provider's work by
//! its slots and queue, and an oracle's watch list by its `max_contracts`. Deals
//! stay in an engine until settled (a provider drops them then; a requester hands
//! them back through [`RequesterEngine::drain_finished`]). Offers advertise free
//! slots; a provider's queue absorbs proposals made on an older offer and its own
//! answers to open bids. The cost of a job through every engine is dominated by
//! ed25519; each engine config has `verify_signatures` (on by default) so that the
//! simulator can skip the checks (its peers cannot forge) without changing any
//! decision.

pub mod book;
pub mod lifecycle;
pub mod pricing;
pub mod privacy;
pub mod provider;
pub mod requester;

use std::collections::HashMap;

use crate::Amount;
use crate::codec::Wire;
use crate::identity::AccountId;
use crate::messages::{Contract, ContractTerms};
use crate::signed::{MultiSigned, SignatureError, Signed};
use crate::types::NetworkId;

/// Decode a signed body, checking its signature unless `verify` is off.
///
/// Every engine config has `verify_signatures` (on by default). The simulator may
/// turn it off: its peers cannot forge, and ed25519 dominates the cost of a job
/// (see the `market` bench). Signer fields are still checked either way.
pub(crate) fn open<T: Wire>(
    s: &Signed<T>,
    network: &NetworkId,
    verify: bool,
) -> Result<T, SignatureError> {
    if verify {
        s.verify(network)
    } else {
        Ok(s.body_unverified()?)
    }
}

/// [`open`] for a body signed by several: each of `required` must have signed.
pub(crate) fn open_multi<T: Wire>(
    m: &MultiSigned<T>,
    network: &NetworkId,
    required: &[AccountId],
    verify: bool,
) -> Result<T, SignatureError> {
    if verify {
        return m.verify_signers(network, required);
    }
    for r in required {
        if !m.signatures.iter().any(|(a, _)| a == r) {
            return Err(SignatureError::MissingSignature {
                kind: T::KIND,
                signer: *r,
            });
        }
    }
    Ok(m.body_unverified()?)
}

/// Whether contract `c`, whose body is `terms`, carries the signatures of both
/// its requester and its provider (checked unless `verify` is off, as in [`open`]).
pub(crate) fn signed_by_both(
    c: &Contract,
    terms: &ContractTerms,
    network: &NetworkId,
    verify: bool,
) -> bool {
    open_multi(c, network, &[terms.requester, terms.provider], verify).is_ok()
}

pub use book::{
    BookConfig, BookStats, Candidate, DropReason, Explanation, MatchConfig, MatchOutcome,
    NoMatchReason, OrderBook,
};
pub use lifecycle::{
    AnyDeal, Deal, DealEvent, FailReason, IllegalTransition, LifecycleError, Phase,
};
pub use pricing::{PricingConfig, PricingPolicy};
pub use privacy::{PrivacyBudgets, PrivacySpend};
pub use provider::{ProviderConfig, ProviderEngine, ProviderInput, ProviderOutput, ProviderStats};
pub use requester::{RequesterConfig, RequesterEngine, RequesterInput, RequesterOutput};

/// The most market shards a network may have.
pub const MAX_MARKET_SHARDS: u16 = 4_096;

/// The market shard of `account` when the network has `shards` of them
/// (see [Market shards](self#market-shards)): its first eight bytes, read
/// little-endian, modulo `shards`. One shard (or zero, read as one) puts
/// every account in shard 0.
pub fn market_shard(account: &AccountId, shards: u16) -> u16 {
    if shards <= 1 {
        return 0;
    }
    let mut first = [0u8; 8];
    first.copy_from_slice(&account.0[..8]);
    (u64::from_le_bytes(first) % u64::from(shards)) as u16
}

/// A provider's quality as the ledger sees it: its SLA history and reputation
/// folded into one number in `[0, 1]`. The node and the simulator plug their ledger
/// view in here; an unknown provider should get a neutral prior, not 0.
pub trait Reputation {
    /// The provider's quality in `[0, 1]`.
    fn quality(&self, provider: &AccountId) -> f64;
    /// An upper bound on every `quality` this source returns. Matching scans offers
    /// by ascending price and stops early once no dearer offer can be near-best;
    /// a tight bound makes that stop sooner.
    fn max_quality(&self) -> f64 {
        1.0
    }
    /// Whether the provider's free bond covers a contract whose escrow is
    /// `escrow`: a proven wrong result slashes it, so a requester matches only
    /// providers with something to lose. Sources with no ledger say yes.
    fn bonded(&self, _provider: &AccountId, _escrow: Amount) -> bool {
        true
    }
    /// Whether the provider's record is still too short to say much (see
    /// [`MatchConfig::explore`]). Sources with no records say no.
    fn is_young(&self, _provider: &AccountId) -> bool {
        false
    }
}

/// The same quality for everyone.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UniformReputation(pub f64);

impl Reputation for UniformReputation {
    fn quality(&self, _: &AccountId) -> f64 {
        self.0
    }
    fn max_quality(&self) -> f64 {
        self.0
    }
}

/// Qualities from a table, with a prior for providers not in it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TableReputation {
    pub prior: f64,
    pub table: HashMap<AccountId, f64>,
}

impl Reputation for TableReputation {
    fn quality(&self, provider: &AccountId) -> f64 {
        self.table.get(provider).copied().unwrap_or(self.prior)
    }
}

impl<R: Reputation + ?Sized> Reputation for &R {
    fn quality(&self, provider: &AccountId) -> f64 {
        (**self).quality(provider)
    }
    fn max_quality(&self) -> f64 {
        (**self).max_quality()
    }
    fn bonded(&self, provider: &AccountId, escrow: Amount) -> bool {
        (**self).bonded(provider, escrow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shard_holds_everyone_and_many_split_accounts_evenly() {
        let a = AccountId([0xAB; 32]);
        assert_eq!(market_shard(&a, 0), 0);
        assert_eq!(market_shard(&a, 1), 0);
        // The first eight bytes, little-endian, modulo the count.
        let mut b = [0u8; 32];
        b[0] = 7;
        b[8] = 0xFF; // bytes past the eighth do not count
        assert_eq!(market_shard(&AccountId(b), 5), 2);
        // Real keys spread evenly over the shards.
        let shards = 16u16;
        let mut counts = [0u32; 16];
        for i in 0..4_000u64 {
            let id = crate::Identity::from_seed(i);
            counts[market_shard(&id.account(), shards) as usize] += 1;
        }
        // 250 expected in each; a binomial σ of about 15.
        assert!(
            counts.iter().all(|&c| (175..=325).contains(&c)),
            "{counts:?}"
        );
    }
}
