//! What every gossiped frame must pass before the node sees it or the swarm
//! forwards it.

use protocol::{Frame, Message, NetworkId, ReplayGuard, Timestamp};

/// What our validator says of a gossiped frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validation {
    /// Valid: deliver and forward.
    Accept,
    /// Invalid (bad bytes, bad signature, wrong network): drop, and the sender's
    /// score drops.
    Reject(String),
    /// Not harmful but not useful (expired, replayed, duplicate): drop quietly.
    Ignore(String),
}

/// Decides what to do with a gossiped frame. The node plugs the engines in here.
pub trait Validator: Send + 'static {
    fn validate(&mut self, now: Timestamp, frame: &Frame) -> Validation;
}

/// Checks what every gossiped message must pass: the signature of its kind, its
/// fields and lifetime, and freshness against a bounded replay guard.
#[derive(Debug)]
pub struct BasicValidator {
    network: NetworkId,
    replay: ReplayGuard,
}

impl BasicValidator {
    pub fn new(network: NetworkId) -> Self {
        BasicValidator {
            network,
            replay: ReplayGuard::new(100_000),
        }
    }
}

impl Validator for BasicValidator {
    fn validate(&mut self, now: Timestamp, frame: &Frame) -> Validation {
        let net = &self.network;
        let (signer, nonce, expires_at, checked) = match &frame.message {
            Message::Offer(s) => match s.verify(net) {
                Ok(o) if o.provider != s.signer => {
                    return Validation::Reject("offer signed by someone else".into());
                }
                Ok(o) => (s.signer, o.nonce, o.expires_at, o.validate(now)),
                Err(e) => return Validation::Reject(e.to_string()),
            },
            Message::Bid(s) => match s.verify(net) {
                Ok(j) if j.requester != s.signer => {
                    return Validation::Reject("bid signed by someone else".into());
                }
                Ok(j) => (s.signer, j.nonce, j.expires_at, j.validate(now)),
                Err(e) => return Validation::Reject(e.to_string()),
            },
            Message::Receipt(s) => {
                return match s.verify(net) {
                    Ok(r) if r.provider == s.signer => Validation::Accept,
                    Ok(_) => Validation::Reject("receipt signed by someone else".into()),
                    Err(e) => Validation::Reject(e.to_string()),
                };
            }
            Message::Verdict(s) => {
                return match s.verify(net) {
                    Ok(v) if v.oracle == s.signer => Validation::Accept,
                    Ok(_) => Validation::Reject("verdict signed by someone else".into()),
                    Err(e) => Validation::Reject(e.to_string()),
                };
            }
            Message::Contract(c) => {
                return match c.body_unverified() {
                    Ok(t) if &t.network == net => {
                        match c.verify_signers(net, &[t.requester, t.provider]) {
                            Ok(_) => Validation::Accept,
                            Err(e) => Validation::Reject(e.to_string()),
                        }
                    }
                    Ok(_) => Validation::Reject("contract for another network".into()),
                    Err(e) => Validation::Reject(e.to_string()),
                };
            }
            Message::Dispute(s) => {
                return match s.verify(net) {
                    Ok(d) if d.by == s.signer => Validation::Accept,
                    Ok(_) => Validation::Reject("dispute signed by someone else".into()),
                    Err(e) => Validation::Reject(e.to_string()),
                };
            }
            other => {
                return Validation::Reject(format!("{} is not a gossip message", other.kind()));
            }
        };
        if let Err(e) = checked {
            return Validation::Ignore(e.to_string());
        }
        match self.replay.check(now, signer, nonce, expires_at) {
            Ok(()) => Validation::Accept,
            Err(e) => Validation::Ignore(e.to_string()),
        }
    }
}
