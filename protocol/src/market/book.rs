//! The order book: the offers a peer has heard, and matching a job against them.
//!
//! ## What is kept
//!
//! At most one offer per `(provider, resource class)`: a newer offer (later
//! `issued_at`) replaces the older one, an older one is dropped as stale. Offers are
//! dropped when they expire ([`OrderBook::prune`], also run on every insert).
//!
//! An offer is ignored, with the reason counted in [`BookStats`], when it is a
//! duplicate (the same envelope again, as gossip echoes it), badly signed, invalid
//! ([`Offer::validate`]), expired, replayed (a `(provider, nonce)` seen before, via
//! a [`ReplayGuard`]), stale, or when the book is full and the offer would be the
//! first to be evicted anyway.
//!
//! **Eviction rule.** The book holds at most [`BookConfig::capacity`] offers. When
//! full, a new offer evicts the offer that expires first, if that one expires before
//! the newcomer; otherwise the newcomer is refused (`Full`). Memory is thus bounded
//! by `capacity` offers (each at most [`Offer`]'s 4 KiB wire limit) plus the replay
//! guard's `replay_capacity` pairs.
//!
//! ## Matching cost
//!
//! Offers are indexed by price. [`OrderBook::match_job`] walks them from the
//! cheapest up to the job's maximum price, and stops as soon as even a provider of
//! the best possible quality ([`Reputation::max_quality`]) at the current price
//! could not be near-best, or after [`MatchConfig::max_scan`] feasible offers. The
//! cost of a match is thus bounded by `max_scan` feasibility checks, whatever the
//! size of the book. Only when nothing fits is every offer examined, to explain why.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

// A keyed fast hash: every offer refresh touches these maps, and SipHash showed up
// in simnet's profile. Keys come from the network, so the hash stays seeded.
use foldhash::{HashMap, HashMapExt};

use rand::{Rng, RngExt};

use crate::identity::AccountId;
use crate::messages::{JobSpec, Offer, ResourceClass};
use crate::replay::{ReplayError, ReplayGuard};
use crate::signed::Signed;
use crate::types::{Amount, Bps, DurationMs, Hash32, NetworkId, PricePerCu, Timestamp};

use super::Reputation;

/// Bounds of an order book.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BookConfig {
    /// Most offers kept.
    pub capacity: usize,
    /// Most offers kept of each resource class: past it the book keeps the
    /// cheapest, and an offer dearer than every one it holds is refused
    /// ([`DropReason::Full`]). A requester matches on price first, so the
    /// dearest offers are the ones it would reach last.
    pub per_class: usize,
    /// Most `(provider, nonce)` pairs the replay guard remembers.
    pub replay_capacity: usize,
}

impl Default for BookConfig {
    fn default() -> Self {
        BookConfig {
            capacity: 100_000,
            per_class: 10_000,
            replay_capacity: 200_000,
        }
    }
}

/// Why an offer was not taken into the book.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// The very same envelope is already in the book.
    Duplicate,
    BadSignature,
    Invalid,
    Expired,
    /// The `(provider, nonce)` was seen before with another envelope.
    Replayed,
    /// The book holds a newer offer of this provider and class.
    Stale,
    /// The book (or its share for the offer's class) is full and the offer
    /// would be the first evicted.
    Full,
}

/// Counters of what the book did with the offers it was given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BookStats {
    pub inserted: u64,
    pub replaced: u64,
    pub duplicate: u64,
    pub bad_signature: u64,
    pub invalid: u64,
    pub expired: u64,
    pub replayed: u64,
    pub stale: u64,
    pub full: u64,
    /// Offers pushed out by the eviction rule.
    pub evicted: u64,
    /// Offers dropped at expiry.
    pub expired_dropped: u64,
}

impl BookStats {
    fn count(&mut self, r: DropReason) {
        match r {
            DropReason::Duplicate => self.duplicate += 1,
            DropReason::BadSignature => self.bad_signature += 1,
            DropReason::Invalid => self.invalid += 1,
            DropReason::Expired => self.expired += 1,
            DropReason::Replayed => self.replayed += 1,
            DropReason::Stale => self.stale += 1,
            DropReason::Full => self.full += 1,
        }
    }
}

/// The longest a provider's own "full until" keeps it out of matching: it only
/// saves proposals it would refuse, so a late guess must not idle it for long.
pub const MAX_HOLD_OFF: DurationMs = DurationMs(30 * 60 * 1000);

/// What one match asks of the book (see [`OrderBook::match_job`]).
#[derive(Clone, Copy)]
struct Ask<'a> {
    now: Timestamp,
    job: &'a JobSpec,
    reputation: &'a dyn Reputation,
    config: &'a MatchConfig,
    exclude: &'a [AccountId],
}

/// One offer in the book.
#[derive(Clone, Debug)]
pub struct BookEntry {
    /// The id of the signed envelope.
    pub id: Hash32,
    /// Shared, so that a simulator can hand one offer to many books.
    pub offer: Arc<Offer>,
    /// Jobs this peer has placed with the provider since (our own view of its load).
    local_load: u16,
}

impl BookEntry {
    /// Slots free as far as we know: advertised free slots less the jobs we placed.
    pub fn free_slots(&self) -> u16 {
        self.offer
            .slots
            .saturating_sub(self.offer.busy_slots)
            .saturating_sub(self.local_load)
    }
}

/// How a requester ranks and picks offers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MatchConfig {
    /// Offers whose utility is within this share of the job's value `V` of the best
    /// are "near-best", and one of them is drawn at random.
    pub near_best: Bps,
    /// Most feasible offers examined per match (bounds its cost).
    pub max_scan: usize,
    /// Providers below this quality are refused (as an SLA shortfall).
    pub min_quality: f64,
    /// Most per-offer explanations returned when nothing matches.
    pub max_explanations: usize,
    /// The least share of matches drawn among young providers only (those
    /// whose record is too short to say much, see [`Reputation::is_young`])
    /// when one fits. Without it a bonded newcomer, scored below every
    /// provider with a few good jobs, never gets its first job, and the only
    /// way to a record is to buy one from oneself through a second key.
    pub explore: Bps,
    /// Draw among young providers at least as often as they make up the free
    /// slots on offer ([`OrderBook::young_share`]): young providers as a
    /// group get their share of the supply in matches, so a record bought
    /// from oneself buys no more access to jobs than an honest newcomer has,
    /// and when a market starts (everyone young) nobody is starved.
    pub explore_by_supply: bool,
}

/// Offers [`OrderBook::young_share`] counts at most.
pub const YOUNG_SHARE_SAMPLE: usize = 1_024;

impl Default for MatchConfig {
    fn default() -> Self {
        MatchConfig {
            near_best: Bps(500),
            max_scan: 256,
            min_quality: 0.0,
            max_explanations: 1_000,
            explore: Bps(1_000),
            explore_by_supply: true,
        }
    }
}

/// Why one offer cannot take a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NoMatchReason {
    PriceAboveMax {
        price: PricePerCu,
        max: PricePerCu,
    },
    /// The provider would deliver at `eta`, after the deadline.
    DeadlineInfeasible {
        eta: Timestamp,
        deadline: Timestamp,
    },
    /// Availability or penalty promised below what the job requires, or the
    /// provider's quality below the requester's floor.
    SlaBelowRequirement,
    NoCapacity,
    Expired,
    /// The provider was excluded by the caller (it already refused this job).
    Excluded,
    /// The provider's free bond does not cover the contract's.
    NoBond,
    /// A federated round: the provider does not offer the data set, or the
    /// model does not fit it.
    NoData,
    /// A federated round: the data set's budget left (per requester and in
    /// all) is below the job's ε (both in millionths of ε).
    PrivacyBudget {
        asked_micro: u64,
        left_micro: u64,
    },
}

/// Whether `offer` holds the private data set a federated round `job`
/// trains on, its model fits it, and its budget left covers the job's ε
/// (the owner also counts what this requester spent before, when it is
/// asked). Any other job fits.
pub fn data_fits(offer: &Offer, job: &JobSpec) -> Result<(), NoMatchReason> {
    let crate::messages::JobKind::FedRound { layers, .. } = &job.kind else {
        return Ok(());
    };
    let d = offer
        .dataset(&job.dataset.hash)
        .ok_or(NoMatchReason::NoData)?;
    if layers.first() != Some(&d.features) || layers.last() != Some(&d.classes) {
        return Err(NoMatchReason::NoData);
    }
    let asked = job.privacy.map_or(f64::INFINITY, |p| p.epsilon);
    if asked > d.epsilon_available() {
        let micro = |e: f64| (e * 1e6).round() as u64;
        return Err(NoMatchReason::PrivacyBudget {
            asked_micro: micro(asked),
            left_micro: micro(d.epsilon_available()),
        });
    }
    Ok(())
}

/// One offer and why it does not fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub offer: Hash32,
    pub provider: AccountId,
    pub reason: NoMatchReason,
}

/// A feasible offer and its score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    pub offer: Hash32,
    pub provider: AccountId,
    pub class: ResourceClass,
    pub price: PricePerCu,
    pub quality: f64,
    /// `U = Q − P` in micro-tokens.
    pub utility: f64,
    /// When the provider would deliver.
    pub eta: Timestamp,
    pub free_slots: u16,
}

/// The result of matching a job.
#[derive(Clone, Debug, PartialEq)]
pub enum MatchOutcome {
    /// The drawn offer, and the other near-best ones (best first) to fall back on.
    Matched {
        chosen: Candidate,
        alternatives: Vec<Candidate>,
    },
    /// Nothing fits: why, offer by offer (at most `max_explanations`), and how many
    /// offers were examined.
    NoMatch {
        reasons: Vec<Explanation>,
        examined: usize,
    },
}

/// The offers a peer knows; see the module docs.
#[derive(Debug)]
pub struct OrderBook {
    config: BookConfig,
    slots: Vec<Option<BookEntry>>,
    free: Vec<u32>,
    by_key: HashMap<(AccountId, ResourceClass), u32>,
    by_id: HashMap<Hash32, u32>,
    /// The price index, carrying a copy of what the feasibility check reads, so
    /// that a match walks this index and touches the full entries only for the
    /// offers that pass.
    by_price: BTreeMap<(PricePerCu, u32), Hot>,
    /// Each class's offers by price: its dearest is the one evicted when the
    /// class is at [`BookConfig::per_class`].
    by_class: BTreeSet<(ResourceClass, PricePerCu, u32)>,
    class_len: HashMap<ResourceClass, usize>,
    by_expiry: BTreeSet<(Timestamp, u32)>,
    load: HashMap<AccountId, u16>,
    /// Providers that refused a proposal of ours for want of capacity, with
    /// when they expect a slot to free (see [`OrderBook::hold_off`]).
    busy: HashMap<AccountId, (Timestamp, Timestamp)>,
    replay: ReplayGuard,
    stats: BookStats,
}

/// What matching reads of an offer, kept in the price index.
#[derive(Clone, Copy, Debug)]
struct Hot {
    provider: AccountId,
    expires_at: Timestamp,
    free_slots: u16,
    availability: Bps,
    penalty: Bps,
    speed: u64,
    bandwidth: u64,
    slack: DurationMs,
    /// The offer holds blobs: its transfer time needs the full entry.
    holds: bool,
}

impl Hot {
    fn of(e: &BookEntry) -> Hot {
        Hot {
            provider: e.offer.provider,
            expires_at: e.offer.expires_at,
            free_slots: e.free_slots(),
            availability: e.offer.sla.availability,
            penalty: e.offer.sla.penalty,
            speed: e.offer.speed_milli_cu_per_s,
            bandwidth: e.offer.bandwidth_bytes_per_s,
            slack: e.offer.sla.deadline_slack,
            holds: !e.offer.holds.is_empty() || !e.offer.datasets.is_empty(),
        }
    }
}

/// `bytes / bandwidth` in milliseconds, rounded up.
fn transfer_ms(bytes: u64, bytes_per_s: u64) -> u64 {
    let ms = (u128::from(bytes) * 1000).div_ceil(u128::from(bytes_per_s.max(1)));
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// When the provider of `offer` would deliver `job` if it started at `now`:
/// `now + T_r + T_c + slack` (see the module docs of [`crate::market`]).
pub fn eta(offer: &Offer, job: &JobSpec, now: Timestamp) -> Timestamp {
    let mut bytes = 0u64;
    if let Some(m) = &job.model
        && !offer.has(&m.hash)
    {
        bytes = bytes.saturating_add(m.size);
    }
    if !offer.has(&job.dataset.hash) {
        bytes = bytes.saturating_add(job.dataset.size);
    }
    let t_r = transfer_ms(bytes, offer.bandwidth_bytes_per_s);
    let t_c = transfer_ms(job.estimated_units.milli, offer.speed_milli_cu_per_s);
    now.plus(DurationMs(t_r))
        .plus(DurationMs(t_c))
        .plus(offer.sla.deadline_slack)
}

impl OrderBook {
    pub fn new(config: BookConfig) -> Self {
        OrderBook {
            config,
            slots: Vec::new(),
            free: Vec::new(),
            by_key: HashMap::new(),
            by_id: HashMap::new(),
            by_price: BTreeMap::new(),
            by_class: BTreeSet::new(),
            class_len: HashMap::new(),
            by_expiry: BTreeSet::new(),
            load: HashMap::new(),
            busy: HashMap::new(),
            replay: ReplayGuard::new(config.replay_capacity),
            stats: BookStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn stats(&self) -> BookStats {
        self.stats
    }

    /// The offer with this envelope id.
    pub fn get(&self, id: &Hash32) -> Option<&BookEntry> {
        self.by_id
            .get(id)
            .and_then(|&i| self.slots[i as usize].as_ref())
    }

    /// The current offer of a provider for a class.
    pub fn offer_of(&self, provider: &AccountId, class: ResourceClass) -> Option<&BookEntry> {
        self.by_key
            .get(&(*provider, class))
            .and_then(|&i| self.slots[i as usize].as_ref())
    }

    /// All offers, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &BookEntry> {
        self.slots.iter().flatten()
    }

    /// Verify a gossiped offer and take it in, or say why not (the reason is also
    /// counted in [`OrderBook::stats`]). Returns the envelope id.
    pub fn insert(
        &mut self,
        now: Timestamp,
        network: &NetworkId,
        signed: &Signed<Offer>,
    ) -> Result<Hash32, DropReason> {
        let id = signed.id();
        if self.by_id.contains_key(&id) {
            self.stats.count(DropReason::Duplicate);
            return Err(DropReason::Duplicate);
        }
        let offer = match signed.verify_shared(network) {
            Ok(o) if o.provider == signed.signer => o,
            _ => {
                self.stats.count(DropReason::BadSignature);
                return Err(DropReason::BadSignature);
            }
        };
        self.insert_verified(now, id, offer)
    }

    /// Take in an offer whose signature the caller has checked (the simulator uses
    /// this to skip ed25519, and may share one `Arc<Offer>` among many books).
    /// `id` must be the envelope id.
    pub fn insert_verified(
        &mut self,
        now: Timestamp,
        id: Hash32,
        offer: impl Into<Arc<Offer>>,
    ) -> Result<Hash32, DropReason> {
        let offer = offer.into();
        let r = self.try_insert(now, id, offer);
        if let Err(reason) = r {
            self.stats.count(reason);
        }
        r
    }

    fn try_insert(
        &mut self,
        now: Timestamp,
        id: Hash32,
        offer: Arc<Offer>,
    ) -> Result<Hash32, DropReason> {
        self.prune(now);
        if self.by_id.contains_key(&id) {
            return Err(DropReason::Duplicate);
        }
        if offer.expires_at <= now {
            return Err(DropReason::Expired);
        }
        if offer.validate(now).is_err() {
            return Err(DropReason::Invalid);
        }
        let key = (offer.provider, offer.class);
        let existing = self.by_key.get(&key).copied();
        if let Some(i) = existing
            && let Some(e) = &self.slots[i as usize]
            && e.offer.issued_at >= offer.issued_at
        {
            return Err(DropReason::Stale);
        }
        if existing.is_none() && self.len() >= self.config.capacity {
            match self.by_expiry.first() {
                Some(&(exp, _)) if exp < offer.expires_at => {}
                _ => return Err(DropReason::Full),
            }
        }
        // The class's dearest offer, if the class is full: the new one must be
        // cheaper to take its place.
        let class_victim = if existing.is_none()
            && self.class_len.get(&offer.class).copied().unwrap_or(0) >= self.config.per_class
        {
            match self.dearest(offer.class) {
                Some((price, i)) if price > offer.price => Some(i),
                _ => return Err(DropReason::Full),
            }
        } else {
            None
        };
        match self
            .replay
            .check(now, offer.provider, offer.nonce, offer.expires_at)
        {
            Ok(()) => {}
            Err(ReplayError::Expired(_)) => return Err(DropReason::Expired),
            Err(ReplayError::Replayed) => return Err(DropReason::Replayed),
            Err(_) => return Err(DropReason::Full),
        }
        if let Some(&(since, _)) = self.busy.get(&offer.provider)
            && offer.issued_at > since
            && offer.busy_slots < offer.slots
        {
            // Room again, in the provider's word since it refused us.
            self.busy.remove(&offer.provider);
        }
        if let Some(i) = existing {
            self.replace_in_place(i, id, offer);
            self.stats.replaced += 1;
            self.stats.inserted += 1;
            return Ok(id);
        }
        if let Some(victim) = class_victim {
            self.remove_slot(victim);
            self.stats.evicted += 1;
        }
        if self.len() >= self.config.capacity
            && let Some(&(_, victim)) = self.by_expiry.first()
        {
            self.remove_slot(victim);
            self.stats.evicted += 1;
        }
        let entry = BookEntry {
            id,
            local_load: self.load.get(&offer.provider).copied().unwrap_or(0),
            offer,
        };
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        self.by_key.insert(key, i);
        self.by_id.insert(id, i);
        self.by_price
            .insert((entry.offer.price, i), Hot::of(&entry));
        self.by_class
            .insert((entry.offer.class, entry.offer.price, i));
        *self.class_len.entry(entry.offer.class).or_default() += 1;
        self.by_expiry.insert((entry.offer.expires_at, i));
        self.slots[i as usize] = Some(entry);
        self.stats.inserted += 1;
        Ok(id)
    }

    /// Put a newer offer of the same provider and class in slot `i`, touching
    /// only the indexes whose keys change: a refresh usually changes the envelope
    /// id and the expiry, seldom the price, never the key. The result is the same
    /// as removing the old entry and inserting the new one, which would reuse slot
    /// `i` (the free list hands back the slot just freed) and carry over the same
    /// local load; a book in a simulator takes a thousand refreshes an hour.
    fn replace_in_place(&mut self, i: u32, id: Hash32, offer: Arc<Offer>) {
        let Some(e) = self.slots.get_mut(i as usize).and_then(Option::as_mut) else {
            return;
        };
        let (old_id, old_price, old_exp) = (e.id, e.offer.price, e.offer.expires_at);
        debug_assert_eq!(
            e.local_load,
            self.load.get(&offer.provider).copied().unwrap_or(0)
        );
        e.id = id;
        e.offer = offer;
        let hot = Hot::of(e);
        let (price, exp) = (e.offer.price, e.offer.expires_at);
        self.by_id.remove(&old_id);
        self.by_id.insert(id, i);
        if old_exp != exp {
            self.by_expiry.remove(&(old_exp, i));
            self.by_expiry.insert((exp, i));
        }
        match self.by_price.get_mut(&(price, i)) {
            Some(h) if old_price == price => *h = hot,
            _ => {
                self.by_price.remove(&(old_price, i));
                self.by_price.insert((price, i), hot);
                let class = e.offer.class;
                self.by_class.remove(&(class, old_price, i));
                self.by_class.insert((class, price, i));
            }
        }
    }

    /// The dearest offer of `class`: its price and slot.
    fn dearest(&self, class: ResourceClass) -> Option<(PricePerCu, u32)> {
        self.by_class
            .range((class, PricePerCu(0), 0)..=(class, PricePerCu(u64::MAX), u32::MAX))
            .next_back()
            .map(|&(_, p, i)| (p, i))
    }

    fn remove_slot(&mut self, i: u32) -> Option<BookEntry> {
        let e = self.slots.get_mut(i as usize)?.take()?;
        self.by_key.remove(&(e.offer.provider, e.offer.class));
        self.by_id.remove(&e.id);
        self.by_price.remove(&(e.offer.price, i));
        self.by_class.remove(&(e.offer.class, e.offer.price, i));
        if let Some(n) = self.class_len.get_mut(&e.offer.class) {
            *n = n.saturating_sub(1);
        }
        self.by_expiry.remove(&(e.offer.expires_at, i));
        self.free.push(i);
        Some(e)
    }

    /// Remove an offer (a provider withdrew, or refused and went away).
    pub fn remove(&mut self, id: &Hash32) -> Option<Arc<Offer>> {
        let i = *self.by_id.get(id)?;
        self.remove_slot(i).map(|e| e.offer)
    }

    /// Drop every offer that has expired by `now`.
    pub fn prune(&mut self, now: Timestamp) {
        while let Some(&(exp, i)) = self.by_expiry.first() {
            if exp > now {
                break;
            }
            self.remove_slot(i);
            self.stats.expired_dropped += 1;
        }
        self.replay.prune(now);
    }

    /// The earliest expiry among the offers (when [`OrderBook::prune`] has work).
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.by_expiry.first().map(|&(t, _)| t)
    }

    /// Record that we placed (`+1`) or finished (`-1`) a job with `provider`, so
    /// matching sees its free capacity before its next offer says so.
    pub fn add_load(&mut self, provider: &AccountId, delta: i32) {
        let cur = self.load.get(provider).copied().unwrap_or(0);
        let new = (i32::from(cur) + delta).clamp(0, i32::from(u16::MAX)) as u16;
        if new == 0 {
            self.load.remove(provider);
        } else {
            self.load.insert(*provider, new);
        }
        for class in [ResourceClass::Cpu, ResourceClass::Gpu] {
            if let Some(&i) = self.by_key.get(&(*provider, class))
                && let Some(e) = &mut self.slots[i as usize]
            {
                e.local_load = new;
                if let Some(h) = self.by_price.get_mut(&(e.offer.price, i)) {
                    h.free_slots = e.free_slots();
                }
            }
        }
    }

    /// `provider` refused a proposal for want of capacity and expects a slot to
    /// free at `until`: matching passes over it until then (at most
    /// [`MAX_HOLD_OFF`] from `now`), unless an offer it issues later says it
    /// has room. Without this a requester learns a provider is full only from
    /// its next offer, hours later, and proposes to it job after job.
    pub fn hold_off(&mut self, now: Timestamp, provider: &AccountId, until: Timestamp) {
        let until = until.min(now.plus(MAX_HOLD_OFF));
        if until <= now {
            return;
        }
        if self.busy.len() >= self.config.capacity {
            self.busy.retain(|_, (_, t)| *t > now);
        }
        if self.busy.len() < self.config.capacity {
            self.busy.insert(*provider, (now, until));
        }
    }

    /// Whether `provider` said it is full until after `now`.
    pub fn held_off(&self, now: Timestamp, provider: &AccountId) -> bool {
        !self.busy.is_empty() && self.busy.get(provider).is_some_and(|&(_, t)| t > now)
    }

    /// Our own count of jobs placed with `provider` and not yet finished.
    pub fn load_of(&self, provider: &AccountId) -> u16 {
        self.load.get(provider).copied().unwrap_or(0)
    }

    /// Check one offer against a job; `Ok` with its candidate score.
    pub fn assess(
        entry: &BookEntry,
        job: &JobSpec,
        now: Timestamp,
        reputation: &dyn Reputation,
        config: &MatchConfig,
    ) -> Result<Candidate, NoMatchReason> {
        let o = &entry.offer;
        if o.expires_at <= now {
            return Err(NoMatchReason::Expired);
        }
        if o.price > job.max_price {
            return Err(NoMatchReason::PriceAboveMax {
                price: o.price,
                max: job.max_price,
            });
        }
        let free_slots = entry.free_slots();
        if free_slots == 0 {
            return Err(NoMatchReason::NoCapacity);
        }
        if o.sla.availability < job.sla.min_availability || o.sla.penalty < job.sla.min_penalty {
            return Err(NoMatchReason::SlaBelowRequirement);
        }
        data_fits(o, job)?;
        let eta = eta(o, job, now);
        if eta > job.deadline {
            return Err(NoMatchReason::DeadlineInfeasible {
                eta,
                deadline: job.deadline,
            });
        }
        let quality = reputation.quality(&o.provider).clamp(0.0, 1.0);
        if quality < config.min_quality {
            return Err(NoMatchReason::SlaBelowRequirement);
        }
        let value = job
            .max_price
            .cost(job.estimated_units)
            .unwrap_or(Amount::ZERO);
        let paid = o
            .price
            .cost(job.estimated_units)
            .unwrap_or(Amount(u64::MAX));
        if !reputation.bonded(&o.provider, paid) {
            return Err(NoMatchReason::NoBond);
        }
        Ok(Candidate {
            offer: entry.id,
            provider: o.provider,
            class: o.class,
            price: o.price,
            quality,
            utility: quality * value.0 as f64 - paid.0 as f64,
            eta,
            free_slots,
        })
    }

    /// Rank the feasible offers for `job` by `U = Q − P` and draw one of the
    /// near-best (see the module docs of [`crate::market`]); or explain, offer by
    /// offer, why none fits. `exclude` lists providers not to consider (those that
    /// already refused this job).
    ///
    /// A share of matches first looks among young providers only, and takes
    /// the usual pick if none fits: [`MatchConfig::explore`], or the young
    /// providers' share of the offers if that is more
    /// ([`MatchConfig::explore_by_supply`]).
    pub fn match_job<R: Rng + ?Sized>(
        &self,
        now: Timestamp,
        job: &JobSpec,
        reputation: &dyn Reputation,
        config: &MatchConfig,
        exclude: &[AccountId],
        rng: &mut R,
    ) -> MatchOutcome {
        let ask = Ask {
            now,
            job,
            reputation,
            config,
            exclude,
        };
        let mut explore = u32::from(config.explore.0);
        if config.explore_by_supply {
            explore = explore.max((self.young_share(now, reputation) * 10_000.0) as u32);
        }
        if explore > 0
            && rng.random_range(0..10_000u32) < explore
            && let Some(m) = self.scan(ask, true, rng)
        {
            return m;
        }
        self.scan(ask, false, rng)
            .unwrap_or_else(|| self.explain(now, job, reputation, config, exclude))
    }

    /// The young providers' share of the free slots of the live offers in
    /// the book, counted over the [`YOUNG_SHARE_SAMPLE`] cheapest offers (what
    /// matching reads first), so a match costs a bounded scan however large
    /// the book. Slots, not offers: a machine split over many keys counts once.
    pub fn young_share(&self, now: Timestamp, reputation: &dyn Reputation) -> f64 {
        let (mut free, mut young) = (0u64, 0u64);
        for hot in self.by_price.values().take(YOUNG_SHARE_SAMPLE) {
            if hot.expires_at <= now {
                continue;
            }
            free += u64::from(hot.free_slots);
            if reputation.is_young(&hot.provider) {
                young += u64::from(hot.free_slots);
            }
        }
        if free == 0 {
            0.0
        } else {
            young as f64 / free as f64
        }
    }

    /// [`OrderBook::match_job`]'s draw, among young providers only if
    /// `young_only`; `None` if no offer fits.
    fn scan<R: Rng + ?Sized>(
        &self,
        ask: Ask<'_>,
        young_only: bool,
        rng: &mut R,
    ) -> Option<MatchOutcome> {
        let Ask {
            now,
            job,
            reputation,
            config,
            exclude,
        } = ask;
        let value = job
            .max_price
            .cost(job.estimated_units)
            .unwrap_or(Amount::ZERO)
            .0 as f64;
        let window = config.near_best.as_f64() * value;
        let q_hi = reputation.max_quality().clamp(0.0, 1.0);
        let mut found: Vec<Candidate> = Vec::new();
        let mut best = f64::NEG_INFINITY;
        let units = job.estimated_units;
        let held_data = job.kind.held_data();
        let mut all_bytes = job.dataset.size;
        if let Some(m) = &job.model {
            all_bytes = all_bytes.saturating_add(m.size);
        }
        for (&(price, i), hot) in self.by_price.range(..=(job.max_price, u32::MAX)) {
            // Every later offer costs at least `price`: its utility is at most this.
            let paid = price.cost(units).map_or(f64::MAX, |a| a.0 as f64);
            if q_hi * value - paid < best - window {
                break;
            }
            // The cheap checks, on the index alone.
            if hot.expires_at <= now
                || hot.free_slots == 0
                || hot.availability < job.sla.min_availability
                || hot.penalty < job.sla.min_penalty
                || (!exclude.is_empty() && exclude.contains(&hot.provider))
                || self.held_off(now, &hot.provider)
                || (young_only && !reputation.is_young(&hot.provider))
            {
                continue;
            }
            let Some(entry) = &self.slots[i as usize] else {
                continue;
            };
            if held_data && data_fits(&entry.offer, job).is_err() {
                continue;
            }
            let eta = if hot.holds {
                eta(&entry.offer, job, now)
            } else {
                now.plus(DurationMs(transfer_ms(all_bytes, hot.bandwidth)))
                    .plus(DurationMs(transfer_ms(units.milli, hot.speed)))
                    .plus(hot.slack)
            };
            if eta > job.deadline {
                continue;
            }
            let quality = reputation.quality(&hot.provider).clamp(0.0, 1.0);
            if quality < config.min_quality {
                continue;
            }
            if !reputation.bonded(&hot.provider, price.cost(units).unwrap_or(Amount(u64::MAX))) {
                continue;
            }
            let utility = quality * value - paid;
            best = best.max(utility);
            found.push(Candidate {
                offer: entry.id,
                provider: hot.provider,
                class: entry.offer.class,
                price,
                quality,
                utility,
                eta,
                free_slots: hot.free_slots,
            });
            if found.len() >= config.max_scan {
                break;
            }
        }
        if found.is_empty() {
            return None;
        }
        let lo = best - window;
        found.retain(|c| c.utility >= lo);
        found.sort_by(|a, b| b.utility.total_cmp(&a.utility).then(a.offer.cmp(&b.offer)));
        let weight = |c: &Candidate| {
            let rel = if window > 0.0 {
                (c.utility - lo) / window
            } else {
                1.0
            };
            f64::from(c.free_slots) * (1.0 + rel)
        };
        let total: f64 = found.iter().map(weight).sum();
        let mut x = rng.random::<f64>() * total;
        let mut pick = found.len() - 1;
        for (k, c) in found.iter().enumerate() {
            x -= weight(c);
            if x < 0.0 {
                pick = k;
                break;
            }
        }
        let chosen = found.remove(pick);
        Some(MatchOutcome::Matched {
            chosen,
            alternatives: found,
        })
    }

    /// Why each offer does not fit `job` (every offer is examined).
    pub fn explain(
        &self,
        now: Timestamp,
        job: &JobSpec,
        reputation: &dyn Reputation,
        config: &MatchConfig,
        exclude: &[AccountId],
    ) -> MatchOutcome {
        let mut reasons = Vec::new();
        let mut examined = 0;
        for entry in self.iter() {
            examined += 1;
            let reason = if exclude.contains(&entry.offer.provider) {
                NoMatchReason::Excluded
            } else if self.held_off(now, &entry.offer.provider) {
                NoMatchReason::NoCapacity
            } else {
                match Self::assess(entry, job, now, reputation, config) {
                    Err(r) => r,
                    // Feasible but not picked: can only happen if the caller asked
                    // for an explanation while a match existed.
                    Ok(_) => continue,
                }
            };
            if reasons.len() < config.max_explanations {
                reasons.push(Explanation {
                    offer: entry.id,
                    provider: entry.offer.provider,
                    reason,
                });
            }
        }
        MatchOutcome::NoMatch { reasons, examined }
    }
}
