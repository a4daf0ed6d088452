//! Small value types shared by every message: hashes, time, money, compute units.
//!
//! Money is integer micro-tokens with checked arithmetic; floats never touch it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A 32-byte BLAKE3 hash (blob hashes, ids, state roots).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Hash32(pub [u8; 32]);

impl Hash32 {
    /// BLAKE3 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Hash32(*blake3::hash(bytes).as_bytes())
    }
    /// First 8 hex digits, for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}
impl fmt::Display for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}
impl fmt::Debug for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.short())
    }
}
impl std::str::FromStr for Hash32 {
    type Err = hex::FromHexError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out)?;
        Ok(Hash32(out))
    }
}

/// The network id: the hash of the genesis entry. Every signature covers it, so
/// nothing signed on one network replays on another.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NetworkId(pub [u8; 32]);

impl NetworkId {
    /// A network id for tests and local demos, derived from a name.
    pub fn named(name: &str) -> Self {
        NetworkId(blake3::derive_key(
            "cloudchain/v1/network-name",
            name.as_bytes(),
        ))
    }
}
impl fmt::Debug for NetworkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NetworkId({})", hex::encode(&self.0[..4]))
    }
}
impl fmt::Display for NetworkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Milliseconds since the Unix epoch. Logic crates are handed `now`; they never
/// read a clock.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug, Serialize, Deserialize,
)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn millis(self) -> u64 {
        self.0
    }
    /// `self + d`, saturating.
    pub fn plus(self, d: DurationMs) -> Timestamp {
        Timestamp(self.0.saturating_add(d.0))
    }
    /// `self - earlier`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> DurationMs {
        DurationMs(self.0.saturating_sub(earlier.0))
    }
}

/// A span of time in milliseconds.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug, Serialize, Deserialize,
)]
pub struct DurationMs(pub u64);

impl DurationMs {
    pub const fn secs(s: u64) -> Self {
        DurationMs(s * 1000)
    }
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}

/// An amount of tokens in micro-tokens (10⁻⁶ token).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug, Serialize, Deserialize,
)]
pub struct Amount(pub u64);

impl Amount {
    pub const ZERO: Amount = Amount(0);
    /// Whole tokens.
    pub const fn tokens(t: u64) -> Amount {
        Amount(t * 1_000_000)
    }
    pub fn checked_add(self, o: Amount) -> Option<Amount> {
        self.0.checked_add(o.0).map(Amount)
    }
    pub fn checked_sub(self, o: Amount) -> Option<Amount> {
        self.0.checked_sub(o.0).map(Amount)
    }
    pub fn saturating_sub(self, o: Amount) -> Amount {
        Amount(self.0.saturating_sub(o.0))
    }
}
impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

/// Compute units, counted in thousandths: 1 CU = 1 GFLOP, so 1 milli-CU = 1 MFLOP.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug, Serialize, Deserialize,
)]
pub struct ComputeUnits {
    pub milli: u64,
}

impl ComputeUnits {
    pub const fn from_milli(milli: u64) -> Self {
        ComputeUnits { milli }
    }
    /// From a FLOP count, rounded up to the next MFLOP.
    pub fn from_flops(flops: u64) -> Self {
        ComputeUnits {
            milli: flops.div_ceil(1_000_000),
        }
    }
    pub fn as_f64(self) -> f64 {
        self.milli as f64 / 1000.0
    }
}
impl fmt::Display for ComputeUnits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3} CU", self.as_f64())
    }
}

/// A price in micro-tokens per compute unit.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug, Serialize, Deserialize,
)]
pub struct PricePerCu(pub u64);

impl PricePerCu {
    /// `P·C`: the cost of `units` at this price, rounded up to the micro-token.
    /// `None` on overflow.
    pub fn cost(self, units: ComputeUnits) -> Option<Amount> {
        let micro = (self.0 as u128).checked_mul(units.milli as u128)?;
        u64::try_from(micro.div_ceil(1000)).ok().map(Amount)
    }
}

/// Parts per ten thousand (basis points), for shares and probabilities carried
/// in signed messages without floats.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug, Serialize, Deserialize,
)]
pub struct Bps(pub u16);

impl Bps {
    pub const ONE: Bps = Bps(10_000);
    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / 10_000.0
    }
    /// `amount · self`, rounded down; saturates at `amount` for values above 1.
    pub fn of(self, amount: Amount) -> Amount {
        let bps = u128::from(self.0.min(10_000));
        Amount((u128::from(amount.0) * bps / 10_000) as u64)
    }
    pub fn is_valid(self) -> bool {
        self.0 <= 10_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_rounds_up_and_checks_overflow() {
        let p = PricePerCu(1_500);
        assert_eq!(p.cost(ComputeUnits::from_milli(1_000)), Some(Amount(1_500)));
        assert_eq!(p.cost(ComputeUnits::from_milli(1)), Some(Amount(2)));
        assert_eq!(
            PricePerCu(u64::MAX).cost(ComputeUnits::from_milli(u64::MAX)),
            None
        );
        assert_eq!(ComputeUnits::from_flops(1), ComputeUnits::from_milli(1));
        assert_eq!(Amount(1_234_567).to_string(), "1.234567");
        assert_eq!(Bps(2_500).of(Amount(1_001)), Amount(250));
        assert_eq!(Bps(20_000).of(Amount(7)), Amount(7));
    }
}
