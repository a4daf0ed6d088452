//! Reading entries out of a document, and verifying them in batches.

use super::*;

/// Entries found in a document, values that are not entries, and the count of
/// all values.
pub(crate) type DocEntries = (Vec<(EntryKey, Entry)>, Vec<(String, InvalidReason)>, u64);

/// Every value at every key of a document's root map, decoded as entries (keys
/// for which `skip` is true are left out). Returns the entries, the values that
/// are not entries, and how many values there are in all.
pub(crate) fn collect_doc_entries<D: ReadDoc>(
    doc: &D,
    skip: impl Fn(&EntryKey) -> bool,
) -> DocEntries {
    fn take(
        found: &mut Vec<(EntryKey, Entry)>,
        rejected: &mut Vec<(String, InvalidReason)>,
        key: EntryKey,
        k: &str,
        bytes: Option<&[u8]>,
    ) {
        match bytes {
            Some(b) => match Entry::from_bytes(b) {
                Ok(e) => found.push((key, e)),
                Err(e) => rejected.push((k.to_string(), InvalidReason::Malformed(e.to_string()))),
            },
            None => rejected.push((k.to_string(), InvalidReason::Malformed("not bytes".into()))),
        }
    }
    let mut found = Vec::new();
    let mut rejected = Vec::new();
    let mut values = 0u64;
    let mut conflicted: Vec<(EntryKey, String)> = Vec::new();
    // One pass over the visible values; keys with concurrent values (forks, or
    // garbage next to an entry) are read again with all their values.
    for item in doc.map_range(automerge::ROOT, ..) {
        let k = item.key.as_ref();
        let Some(key) = EntryKey::parse(k) else {
            values += 1;
            take_bad(&mut rejected, k);
            continue;
        };
        if item.conflict {
            conflicted.push((key, k.to_string()));
            continue;
        }
        values += 1;
        if skip(&key) {
            continue;
        }
        match &item.value {
            automerge::ValueRef::Scalar(automerge::ScalarValueRef::Bytes(b)) => {
                take(&mut found, &mut rejected, key, k, Some(b))
            }
            _ => take(&mut found, &mut rejected, key, k, None),
        }
    }
    for (key, k) in conflicted {
        let all = match doc.get_all(automerge::ROOT, k.as_str()) {
            Ok(v) => v,
            Err(e) => {
                rejected.push((k, InvalidReason::Malformed(e.to_string())));
                continue;
            }
        };
        values += all.len() as u64;
        if skip(&key) {
            continue;
        }
        for (v, _) in all {
            match &v {
                Value::Scalar(sv) => match sv.as_ref() {
                    ScalarValue::Bytes(b) => take(&mut found, &mut rejected, key, &k, Some(b)),
                    _ => take(&mut found, &mut rejected, key, &k, None),
                },
                Value::Object(_) => take(&mut found, &mut rejected, key, &k, None),
            }
        }
    }
    (found, rejected, values)
}

fn take_bad(rejected: &mut Vec<(String, InvalidReason)>, k: &str) {
    rejected.push((
        k.to_string(),
        InvalidReason::Malformed("not an author/seq key".into()),
    ));
}

/// Verify entries found at keys: signature (batch), author = signer, key matches.
pub(crate) fn verify_entries(
    network: &NetworkId,
    found: Vec<(EntryKey, Entry)>,
) -> (Vec<VerifiedEntry>, Vec<(EntryKey, InvalidReason)>) {
    let mut ok = Vec::with_capacity(found.len());
    let mut bad = Vec::new();
    // Authors sign many entries: decompress each key once.
    let mut keys: HashMap<AccountId, Option<ed25519_dalek::VerifyingKey>> = HashMap::new();
    let mut rest = found;
    while !rest.is_empty() {
        let tail = rest.split_off(rest.len().min(1024));
        let chunk = std::mem::replace(&mut rest, tail);
        let refs: Vec<&Entry> = chunk.iter().map(|(_, e)| e).collect();
        let batch = batch_ok(network, &refs, &mut keys);
        for (key, e) in chunk {
            // After a good batch only the body is decoded; otherwise each
            // signature is checked strictly to find the bad one.
            let data = if batch {
                codec::decode::<EntryData>(e.signed.body_bytes())
                    .map_err(|err| InvalidReason::Malformed(err.to_string()))
            } else {
                e.signed
                    .verify(network)
                    .map_err(|err| InvalidReason::BadSignature(err.to_string()))
            };
            match data.and_then(|d| check_entry(&key, e, d)) {
                Ok(ve) => ok.push(ve),
                Err(r) => bad.push((key, r)),
            }
        }
    }
    (ok, bad)
}

/// Batch-verify a chunk with cached keys, with the equation single checks use
/// ([`protocol::signed::verify_signatures`]): a batch accepts exactly what
/// one-by-one checks accept. Small-order keys never pass; a failed batch
/// falls back to checking each entry.
fn batch_ok(
    network: &NetworkId,
    chunk: &[&Entry],
    keys: &mut HashMap<AccountId, Option<ed25519_dalek::VerifyingKey>>,
) -> bool {
    let kind = <EntryData as Wire>::KIND;
    let mut vks = Vec::with_capacity(chunk.len());
    for e in chunk {
        let vk = keys.entry(e.signed.signer).or_insert_with(|| {
            ed25519_dalek::VerifyingKey::from_bytes(&e.signed.signer.0)
                .ok()
                .filter(|k| !k.is_weak())
        });
        match vk {
            Some(k) => vks.push(*k),
            None => return false,
        }
    }
    let messages: Vec<Vec<u8>> = chunk
        .iter()
        .map(|e| protocol::signed::signing_message(kind, network, e.signed.body_bytes()))
        .collect();
    let batch: Vec<(ed25519_dalek::VerifyingKey, &[u8], [u8; 64])> = vks
        .into_iter()
        .zip(&messages)
        .zip(chunk)
        .map(|((k, m), e)| (k, m.as_slice(), e.signed.signature.0))
        .collect();
    protocol::signed::verify_signatures(&batch)
}

/// Verify entries received outside sync, keeping their order: each result is
/// what [`Entry::verify`] gives, but the signatures are checked in one batch
/// (one by one, strictly, only if the batch fails).
pub(crate) fn verify_received(
    network: &NetworkId,
    entries: Vec<Entry>,
) -> Vec<Result<VerifiedEntry, protocol::SignatureError>> {
    let mut keys = HashMap::new();
    let batch = {
        let refs: Vec<&Entry> = entries.iter().collect();
        batch_ok(network, &refs, &mut keys)
    };
    entries
        .into_iter()
        .map(|e| {
            let data = if batch {
                let data = e.signed.body_unverified()?;
                check_author(&e, &data)?;
                data
            } else {
                e.verify(network)?
            };
            Ok(VerifiedEntry {
                hash: e.hash(),
                data,
                entry: e,
            })
        })
        .collect()
}

fn check_entry(key: &EntryKey, e: Entry, data: EntryData) -> Result<VerifiedEntry, InvalidReason> {
    check_author(&e, &data).map_err(|err| InvalidReason::BadSignature(err.to_string()))?;
    if data.author != key.author || data.seq != key.seq {
        return Err(InvalidReason::WrongKey {
            key: key.to_key(),
            actual: EntryKey {
                author: data.author,
                seq: data.seq,
            }
            .to_key(),
        });
    }
    Ok(VerifiedEntry {
        hash: e.hash(),
        data,
        entry: e,
    })
}
