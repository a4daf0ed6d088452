//! A result index as a requester and a committee member decode it from a
//! provider's blob (after decryption, so any bytes a provider chooses): a
//! bounded decode gives an index or a clear error, never a panic; an index
//! that decodes encodes to bytes that decode and encode to the same bytes,
//! and its size check against a job's limits answers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peer::work::{Limits, ResultIndex};

fuzz_target!(|data: &[u8]| {
    // The first byte picks a limit, below and above the input's size.
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let limit = (u64::from(pick) << 6).max(1);
    let Ok(index) = ResultIndex::from_bytes(bytes, limit) else {
        return;
    };
    assert!(bytes.len() as u64 <= limit, "a decode past its limit");
    let again = index.to_bytes().expect("a decoded index encodes");
    let back = ResultIndex::from_bytes(&again, u64::MAX).expect("and decodes again");
    // Bytes, not values: a provider's metrics may hold NaN, never equal to itself.
    assert_eq!(back.to_bytes().expect("it encodes"), again);
    let limits = Limits {
        index: limit,
        output: u64::from(pick) << 10,
        model: u64::from(pick) << 8,
        links: index.models.len() as u64,
    };
    let _ = index.oversized(&limits);
    let _ = limits.stored();
});
