//! The network's genesis in a data directory.
//!
//! Every peer of a network holds the same signed genesis (`genesis.bin` in its data
//! directory): initial balances and stakes and the ledger's rules. Its hash is the
//! network id, so peers with another genesis ignore each other. `cloudchain genesis`
//! writes one; `cloudchain init --genesis FILE` installs it.

use std::path::Path;

use anyhow::{Context, bail};
use crdt_ledger::{Genesis, GenesisEntry, Params};
use protocol::{AccountId, Amount, DurationMs, Identity, Signed, Timestamp, Wire};

pub const GENESIS_FILE: &str = "genesis.bin";

/// Read and check a genesis file.
pub fn load(path: &Path) -> anyhow::Result<GenesisEntry> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let signed: Signed<Genesis> = protocol::codec::decode_limited(
        "ledger-genesis",
        <Genesis as Wire>::MAX_SIZE + 1024,
        &bytes,
    )
    .with_context(|| format!("{} is not a genesis file", path.display()))?;
    GenesisEntry::from_signed(signed)
        .with_context(|| format!("{} holds an invalid genesis", path.display()))
}

/// Write a genesis file (atomically).
pub fn save(path: &Path, g: &GenesisEntry) -> anyhow::Result<()> {
    let bytes = protocol::codec::encode_unbounded("ledger-genesis", g.signed())?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// `ACCOUNT=TOKENS` (tokens may have up to six decimals).
pub fn parse_allocation(s: &str) -> anyhow::Result<(AccountId, Amount)> {
    let (acc, amt) = s
        .split_once('=')
        .with_context(|| format!("{s:?}: expected ACCOUNT=TOKENS"))?;
    let account: AccountId = acc
        .trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("{acc:?} is not an account id: {e}"))?;
    Ok((account, parse_tokens(amt.trim())?))
}

/// Tokens as a decimal with at most six places, into micro-tokens.
pub fn parse_tokens(s: &str) -> anyhow::Result<Amount> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() && frac.is_empty() || frac.len() > 6 {
        bail!("{s:?} is not an amount of tokens (at most six decimals)");
    }
    let w: u64 = if whole.is_empty() {
        0
    } else {
        whole
            .parse()
            .with_context(|| format!("{s:?} is not an amount of tokens"))?
    };
    let f: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}")
            .parse()
            .with_context(|| format!("{s:?} is not an amount of tokens"))?
    };
    w.checked_mul(1_000_000)
        .and_then(|m| m.checked_add(f))
        .map(Amount)
        .with_context(|| format!("{s:?} tokens is more than the ledger can hold"))
}

/// Build and sign a genesis. Duplicated accounts are refused.
pub fn build(
    signer: &Identity,
    name: &str,
    genesis_time: Timestamp,
    params: Params,
    mut balances: Vec<(AccountId, Amount)>,
    mut stakes: Vec<(AccountId, Amount)>,
    mut bonds: Vec<(AccountId, Amount)>,
) -> anyhow::Result<GenesisEntry> {
    for (what, v) in [
        ("balance", &mut balances),
        ("stake", &mut stakes),
        ("bond", &mut bonds),
    ] {
        v.sort_by_key(|(a, _)| *a);
        if let Some(w) = v.windows(2).find(|w| w[0].0 == w[1].0) {
            bail!("account {} has two {what} allocations", w[0].0);
        }
    }
    Ok(GenesisEntry::create(
        signer,
        Genesis {
            name: name.into(),
            genesis_time,
            params,
            balances,
            stakes,
            // Providers bond from their balance when they start; a requester
            // bonded at genesis has its escrows backed from the first job.
            bonds,
        },
    )?)
}

/// Rules for a small local network: short epochs so checkpoints come quickly.
pub fn local_params(epoch: DurationMs, committee: u16) -> Params {
    Params {
        epoch_length: epoch,
        stall_timeout: DurationMs(epoch.0.div_ceil(2).max(1_000)),
        committee_size: committee,
        ..Params::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_exactly_and_refuse_junk() {
        assert_eq!(parse_tokens("12").unwrap(), Amount(12_000_000));
        assert_eq!(parse_tokens("0.5").unwrap(), Amount(500_000));
        assert_eq!(parse_tokens("1.000001").unwrap(), Amount(1_000_001));
        for bad in ["", ".", "1.0000001", "-3", "abc", "99999999999999999"] {
            assert!(parse_tokens(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn genesis_round_trips_through_a_file() {
        let id = Identity::from_seed(4);
        let g = build(
            &id,
            "t",
            Timestamp(1),
            Params::default(),
            vec![(id.account(), Amount::tokens(5))],
            vec![],
            vec![],
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(GENESIS_FILE);
        save(&p, &g).unwrap();
        assert_eq!(load(&p).unwrap().network(), g.network());
        std::fs::write(&p, b"junk").unwrap();
        let err = format!("{:#}", load(&p).unwrap_err());
        assert!(err.contains("not a genesis file"), "{err}");
        let dup = build(
            &id,
            "t",
            Timestamp(1),
            Params::default(),
            vec![(id.account(), Amount(1)), (id.account(), Amount(2))],
            vec![],
            vec![],
        );
        assert!(dup.is_err());
    }
}
