//! Which engine a message goes to.
//!
//! One table, decided by what a message says, not by how it came: a gossiped
//! message and the same message sent directly take the same path, so both
//! drivers (and both ways a message can travel) give the same result. Engines
//! check signatures and everything else; the table only reads who a message is
//! for, so that an engine never sees what belongs to the other role.
//!
//! | message | goes to |
//! |---|---|
//! | `Offer` | the requester's book and the provider's view of competitors' prices, in the offer's market shard; where each provider serves its results (every committee member and every peer of the shard) |
//! | `Bid` | the provider in the bid's market shard (it may answer an open bid with a proposal) |
//! | `Proposal` | the provider when it names us as provider; the requester when its provider signed it (an answer to our open bid) |
//! | `Answer` | the provider when it accepts a proposal of ours for a bid (the requester signed); else the requester |
//! | `Contract` | the provider when we are its provider; the requester when we are its requester and its provider signed last (the open-bid path). Not the oracle: a committee member watches the contracts whose escrow is in the ledger ([`crate::oracle`]), so a contract nobody paid for costs it nothing, and one whose gossip was lost is watched all the same |
//! | `Receipt` | the requester and the oracle |
//! | `Verdict`, `Dispute`, `ProbeReply` | the oracle |
//! | `Probe` | the provider |
//! | `KeyGrant` | the core (a job key for our run or our check) |
//! | `Withdrawal` | the oracle (a not-delivered verdict at once) and the requester's job (its event) |
//!
//! A market of many shards (`Params::market_shards`,
//! [`protocol::market::market_shard`]) keeps offers and bids within theirs:
//! an offer concerns the providers and requesters of its provider's shard, a
//! bid the providers of its requester's; a committee member hears every
//! shard's offers (for where their providers serve results).

use protocol::market::{ProviderInput, RequesterInput, market_shard};
use protocol::oracle::OracleInput;
use protocol::{AccountId, Message, ProposalAnswer};
use rand::Rng;
use tracing::debug;

use crate::{Cx, NodeCore, Via};
use crdt_ledger::Store;

/// What a peer does, for [`concerns`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub provider: bool,
    pub oracle: bool,
    /// It submits jobs (and follows offers).
    pub requester: bool,
}

/// Whether `m` can change anything at peer `me` of `roles`, by the table
/// above: a message that does not concern a peer goes to no engine of its
/// (or to one that has nothing to match it with). A simulator that models
/// gossip delivers a message only where it concerns; a node, which cannot
/// know, hands every message to [`NodeCore::handle`]. `shards` is the
/// network's `market_shards`.
pub fn concerns(m: &Message, me: &AccountId, roles: Roles, shards: u16) -> bool {
    audience(m, shards).includes(me, roles)
}

/// Who a message concerns ([`concerns`]), read once: a simulator gossiping a
/// message to a thousand peers decodes it once instead of at each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audience {
    /// Peers with any of these roles ...
    pub roles: Roles,
    /// ... and, if set, only these accounts (empty: nobody).
    pub accounts: Option<Vec<AccountId>>,
    /// ... and, if set, of the providers and requesters only those in this
    /// market shard (a committee member hears every shard).
    pub shard: Option<u16>,
    /// The network's `market_shards`, which `shard` is one of.
    pub shards: u16,
}

impl Audience {
    fn roles(provider: bool, oracle: bool, requester: bool) -> Audience {
        Audience {
            roles: Roles {
                provider,
                oracle,
                requester,
            },
            accounts: None,
            shard: None,
            shards: 1,
        }
    }

    fn accounts(roles: Roles, accounts: impl IntoIterator<Item = AccountId>) -> Audience {
        Audience {
            roles,
            accounts: Some(accounts.into_iter().collect()),
            shard: None,
            shards: 1,
        }
    }

    /// Only the providers and requesters of `of`'s market shard (and
    /// committee members, as `roles` say).
    fn in_shard_of(mut self, of: Option<AccountId>, shards: u16) -> Audience {
        self.shards = shards.max(1);
        if self.shards > 1 {
            // An undecodable body concerns no shard; the engines reject it.
            self.shard = Some(of.map_or(u16::MAX, |a| market_shard(&a, self.shards)));
        }
        self
    }

    /// Whether the message concerns peer `me` of `roles`.
    pub fn includes(&self, me: &AccountId, roles: Roles) -> bool {
        let market = self
            .shard
            .is_none_or(|k| market_shard(me, self.shards) == k);
        let by_role = (self.roles.provider && roles.provider && market)
            || (self.roles.oracle && roles.oracle)
            || (self.roles.requester && roles.requester && market);
        by_role && self.accounts.as_ref().is_none_or(|a| a.contains(me))
    }
}

/// Who `m` concerns, by the table above, in a network of `shards` market shards.
pub fn audience(m: &Message, shards: u16) -> Audience {
    const ANY: Roles = Roles {
        provider: true,
        oracle: true,
        requester: true,
    };
    match m {
        // A committee member keeps where each provider serves its results.
        Message::Offer(o) => Audience::roles(true, true, true)
            .in_shard_of(o.body_unverified().ok().map(|o| o.provider), shards),
        Message::Bid(b) => Audience::roles(true, false, false)
            .in_shard_of(b.body_unverified().ok().map(|j| j.requester), shards),
        Message::Proposal(p) => Audience::accounts(
            ANY,
            p.body_unverified().ok().into_iter().flat_map(|b| {
                let requester = b.job.body_unverified().ok().map(|j| j.requester);
                std::iter::once(b.provider).chain(requester)
            }),
        ),
        Message::Answer(_) => Audience::roles(true, false, true),
        Message::Contract(c) => Audience::accounts(
            ANY,
            c.body_unverified()
                .ok()
                .into_iter()
                .flat_map(|t| [t.provider, t.requester]),
        ),
        Message::Receipt(_) | Message::Withdrawal(_) => Audience::roles(false, true, true),
        Message::Verdict(_) | Message::Dispute(_) | Message::ProbeReply(_) => {
            Audience::roles(false, true, false)
        }
        Message::Probe(p) => Audience::accounts(
            Roles {
                provider: true,
                oracle: false,
                requester: false,
            },
            p.body_unverified().ok().map(|p| p.provider),
        ),
        Message::KeyGrant(g) => Audience::accounts(ANY, g.body_unverified().ok().map(|g| g.reader)),
    }
}

impl<S: Store> NodeCore<S> {
    pub(crate) fn on_message<R: Rng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        from: Option<AccountId>,
        via: Via,
        m: Message,
    ) {
        let me = self.account();
        let shards = self.params().market_shards;
        let my_market = |of: &AccountId| market_shard(of, shards) == market_shard(&me, shards);
        match m {
            Message::Offer(s) => {
                if let Ok(o) = s.body_unverified() {
                    let moved = self.note_contact(cx.now, o.provider, &o.contact);
                    if moved {
                        self.provider_moved(cx, o.provider);
                    }
                    if !my_market(&o.provider) {
                        return; // another shard's: only where it serves results
                    }
                    let input = ProviderInput::CompetitorPrice {
                        provider: o.provider,
                        class: o.class,
                        price: o.price,
                    };
                    self.provider_handle(cx, input);
                }
                self.requester_handle(cx, RequesterInput::Offer(s));
            }
            Message::Bid(b) => {
                if let Ok(spec) = b.body_unverified() {
                    if !my_market(&spec.requester) {
                        return;
                    }
                    self.note_start_delay(&spec);
                }
                self.provider_handle(cx, ProviderInput::Bid(b));
            }
            Message::Proposal(p) => {
                let Ok(body) = p.body_unverified() else {
                    return;
                };
                if body.provider == me && p.signer != me {
                    if let Ok(spec) = body.job.body_unverified() {
                        self.note_start_delay(&spec);
                    }
                    self.provider_handle(cx, ProviderInput::Proposal(p));
                } else if body.provider == p.signer {
                    self.requester_handle(cx, RequesterInput::Proposal(p));
                }
            }
            Message::Answer(a) => {
                let for_provider = matches!(
                    a.body_unverified(),
                    Ok(ProposalAnswer::Accept(ms))
                        if ms.body_unverified().is_ok_and(|t| t.provider == me && t.requester == a.signer)
                );
                if for_provider {
                    self.provider_handle(cx, ProviderInput::Answer(a));
                } else {
                    self.requester_handle(cx, RequesterInput::Answer(a));
                }
            }
            Message::Contract(c) => {
                if let Ok(t) = c.body_unverified() {
                    if t.provider == me {
                        self.provider_handle(cx, ProviderInput::Contract(c.clone()));
                    }
                    if t.requester == me {
                        self.requester_handle(cx, RequesterInput::Contract(c.clone()));
                    }
                }
            }
            Message::Receipt(r) => {
                self.requester_handle(cx, RequesterInput::Receipt(r.clone()));
                self.late_receipt(cx, &r);
                self.oracle_handle(cx, OracleInput::Receipt(r.clone()));
                self.note_watch(cx.now, &Message::Receipt(r));
            }
            Message::Verdict(v) => self.oracle_handle(cx, OracleInput::Verdict(v)),
            Message::Dispute(d) => self.oracle_handle(cx, OracleInput::Dispute(d)),
            Message::ProbeReply(r) => self.oracle_handle(cx, OracleInput::ProbeReply(r)),
            Message::Probe(p) => self.provider_handle(cx, ProviderInput::Probe(p)),
            Message::KeyGrant(g) => self.on_grant(cx, g),
            Message::Withdrawal(w) => {
                self.withdrawn(cx, &w);
                self.oracle_handle(cx, OracleInput::Withdrawal(w));
            }
        }
        debug!(?via, ?from, "message dispatched");
    }
}
