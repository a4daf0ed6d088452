//! Properties of the wire format: every message round-trips, every single-bit flip
//! of a signed envelope is rejected, and truncated, oversized or random bytes give
//! errors, never panics.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use proptest::prelude::*;
use protocol::codec::{self, CodecError};
use protocol::*;

fn net() -> NetworkId {
    NetworkId::named("wire-tests")
}

fn acct() -> impl Strategy<Value = AccountId> {
    any::<[u8; 32]>().prop_map(AccountId)
}
fn hash() -> impl Strategy<Value = Hash32> {
    any::<[u8; 32]>().prop_map(Hash32)
}
fn ts() -> impl Strategy<Value = Timestamp> {
    any::<u64>().prop_map(Timestamp)
}
fn bps() -> impl Strategy<Value = Bps> {
    (0u16..=10_000).prop_map(Bps)
}
fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ._-]{0,40}"
}
fn blob() -> impl Strategy<Value = BlobRef> {
    (hash(), any::<u64>()).prop_map(|(hash, size)| BlobRef { hash, size })
}
fn sla() -> impl Strategy<Value = SlaTerms> {
    (any::<u64>(), bps(), bps(), any::<bool>()).prop_map(|(s, availability, penalty, exact)| {
        SlaTerms {
            deadline_slack: DurationMs(s),
            availability,
            penalty,
            exact,
        }
    })
}

prop_compose! {
    fn offer()(
        provider in acct(), gpu in any::<bool>(), device in text(), speed in any::<u64>(),
        memory_bytes in any::<u64>(), bw in any::<u64>(), price in any::<u64>(), sla in sla(),
        region in text(), slots in any::<u16>(), busy in any::<u16>(),
        holds in prop::collection::vec(hash(), 0..4),
        datasets in prop::collection::vec(data_offer(), 0..3),
        contact in prop::collection::vec(text(), 0..3),
        issued_at in ts(), expires_at in ts(), nonce in any::<u64>(),
    ) -> Offer {
        Offer {
            provider, class: if gpu { ResourceClass::Gpu } else { ResourceClass::Cpu },
            device, speed_milli_cu_per_s: speed, memory_bytes, bandwidth_bytes_per_s: bw,
            price: PricePerCu(price), sla, region, slots, busy_slots: busy, holds, datasets,
            contact, issued_at, expires_at, nonce,
        }
    }
}

prop_compose! {
    fn data_offer()(
        id in hash(), schema in hash(), rows in any::<u64>(), features in any::<u32>(),
        classes in any::<u32>(), bytes in any::<u64>(), per in any::<f64>(),
        left in any::<f64>(), delta in any::<f64>(),
    ) -> DataOffer {
        DataOffer {
            id, schema, rows, features, classes, bytes, epsilon_per_requester: per,
            epsilon_left: left, delta,
        }
    }
}

fn job_kind() -> impl Strategy<Value = JobKind> {
    prop_oneof![
        (
            prop::collection::vec(any::<u32>(), 0..5),
            any::<u32>(),
            any::<u32>(),
            any::<f32>(),
            prop::option::of((any::<f32>(), any::<f32>())),
            any::<u64>()
        )
            .prop_map(|(layers, epochs, batch, learning_rate, dp, seed)| {
                JobKind::Train {
                    layers,
                    epochs,
                    batch,
                    learning_rate,
                    dp: dp.map(|(c, s)| DpParams {
                        clip_norm: c,
                        noise_multiplier: s,
                    }),
                    seed,
                    task: TrainTask::Classify,
                }
            }),
        any::<u32>().prop_map(|batch| JobKind::Infer { batch }),
        (
            prop_oneof![
                Just(PreprocessOp::Standardize),
                Just(PreprocessOp::Normalize),
                bps().prop_map(|test_share| PreprocessOp::ShuffleSplit { test_share })
            ],
            any::<u64>()
        )
            .prop_map(|(op, seed)| JobKind::Preprocess { op, seed }),
        (
            hash(),
            (any::<u32>(), any::<u32>(), any::<u64>()),
            prop::collection::vec(any::<u32>(), 0..5),
            (any::<u32>(), any::<u32>(), any::<f32>()),
            (any::<f32>(), any::<f32>()),
            any::<u64>(),
        )
            .prop_map(
                |(
                    federation,
                    (round, rounds, rows),
                    layers,
                    (local_epochs, batch, learning_rate),
                    (c, s),
                    seed,
                )| {
                    JobKind::FedRound {
                        federation,
                        round,
                        rounds,
                        rows,
                        layers,
                        local_epochs,
                        batch,
                        learning_rate,
                        dp: DpParams {
                            clip_norm: c,
                            noise_multiplier: s,
                        },
                        seed,
                        task: TrainTask::Regress,
                    }
                }
            ),
    ]
}

prop_compose! {
    fn job()(
        requester in acct(), kind in job_kind(), model in prop::option::of(blob()),
        dataset in blob(), units in any::<u64>(), max_price in any::<u64>(), deadline in ts(),
        a in bps(), p in bps(), privacy in prop::option::of((any::<f64>(), any::<f64>())),
        issued_at in ts(), expires_at in ts(), nonce in any::<u64>(),
    ) -> JobSpec {
        JobSpec {
            requester, kind, model, dataset, estimated_units: ComputeUnits::from_milli(units),
            result_bytes: 1 << 20,
            max_price: PricePerCu(max_price), deadline,
            sla: SlaRequirement { min_availability: a, min_penalty: p },
            privacy: privacy.map(|(epsilon, delta)| PrivacyTarget { epsilon, delta }),
            issued_at, expires_at, nonce,
        }
    }
}

fn signer(seed: u64) -> Identity {
    Identity::from_seed(seed)
}

prop_compose! {
    fn proposal()(j in job(), provider in acct(), offer in prop::option::of(hash()),
        price in any::<u64>(), sla in sla(), issued_at in ts(), expires_at in ts(),
        nonce in any::<u64>(), seed in 0u64..4) -> Proposal {
        Proposal {
            job: Signed::sign(&signer(seed), &net(), &j).unwrap(),
            provider, offer, price: PricePerCu(price), sla, issued_at, expires_at, nonce,
        }
    }
}

prop_compose! {
    fn terms()(j in job(), job_id in hash(), requester in acct(), provider in acct(),
        price in any::<u64>(), units in any::<u64>(), sla in sla(), deadline in ts(),
        created_at in ts()) -> ContractTerms {
        ContractTerms {
            network: net(), job: job_id, spec: j, requester, provider,
            price: PricePerCu(price), max_units: ComputeUnits::from_milli(units),
            sla, deadline, created_at,
        }
    }
}

prop_compose! {
    fn receipt()(contract in hash(), provider in acct(), result in blob(), units in any::<u64>(),
        t in prop::array::uniform4(any::<u64>()), commitment in hash(),
        every in any::<u32>(), n in any::<u32>()) -> Receipt {
        Receipt {
            contract, provider, result, units_used: ComputeUnits::from_milli(units),
            timings: Timings {
                accepted_at: Timestamp(t[0]), inputs_ready_at: Timestamp(t[1]),
                started_at: Timestamp(t[2]), finished_at: Timestamp(t[3]),
            },
            commitment, checkpoint_every: every, checkpoints: n,
        }
    }
}

prop_compose! {
    fn verdict()(contract in hash(), epoch in any::<u64>(), oracle in acct(),
        sla_ok in any::<bool>(), violations in any::<u32>(), result_ok in any::<bool>(),
        units in any::<u64>(), delivered in any::<bool>()) -> Verdict {
        Verdict { contract, epoch, oracle, sla_ok, violations, result_ok,
            units: ComputeUnits::from_milli(units), delivered }
    }
}

fn dispute() -> impl Strategy<Value = Dispute> {
    (
        hash(),
        acct(),
        prop_oneof![
            Just(DisputeReason::WrongResult),
            Just(DisputeReason::NotDelivered),
            Just(DisputeReason::SlaViolated),
            text().prop_map(DisputeReason::Other)
        ],
        prop::option::of(blob()),
        ts(),
    )
        .prop_map(|(contract, by, reason, evidence, raised_at)| Dispute {
            contract,
            by,
            reason,
            evidence,
            raised_at,
        })
}

fn reject_reason() -> impl Strategy<Value = RejectReason> {
    prop_oneof![
        any::<u64>().prop_map(|t| RejectReason::NoCapacity {
            free_at: Timestamp(t)
        }),
        any::<u64>().prop_map(|f| RejectReason::PriceBelowFloor {
            floor: PricePerCu(f)
        }),
        Just(RejectReason::DeadlineInfeasible),
        any::<u64>().prop_map(|t| RejectReason::QueueFull {
            free_at: Timestamp(t)
        }),
        text().prop_map(RejectReason::Unsupported),
        text().prop_map(RejectReason::Invalid),
        (any::<u64>(), any::<u64>())
            .prop_map(|(needed, room)| RejectReason::NoStorage { needed, room }),
        (any::<u64>(), any::<u64>()).prop_map(|(asked_micro, left_micro)| {
            RejectReason::PrivacyBudget {
                asked_micro,
                left_micro,
            }
        }),
    ]
}

/// Any message, signed by one of a few keys.
fn message() -> impl Strategy<Value = Message> {
    let id = |s: u64| signer(s);
    prop_oneof![
        (offer(), 0u64..4)
            .prop_map(move |(o, s)| Message::Offer(Signed::sign(&id(s), &net(), &o).unwrap())),
        (job(), 0u64..4)
            .prop_map(move |(j, s)| Message::Bid(Signed::sign(&id(s), &net(), &j).unwrap())),
        (proposal(), 0u64..4)
            .prop_map(move |(p, s)| Message::Proposal(Signed::sign(&id(s), &net(), &p).unwrap())),
        (terms(), 0u64..4).prop_map(move |(t, s)| {
            let mut c = MultiSigned::new(&t).unwrap();
            c.add_signature(&id(s), &net());
            c.add_signature(&id(s + 1), &net());
            Message::Contract(c)
        }),
        (terms(), hash(), reject_reason(), any::<bool>(), 0u64..4).prop_map(
            move |(t, h, r, acc, s)| {
                let a = if acc {
                    let mut c = MultiSigned::new(&t).unwrap();
                    c.add_signature(&id(s), &net());
                    ProposalAnswer::Accept(c)
                } else {
                    ProposalAnswer::Reject {
                        proposal: h,
                        reason: r,
                    }
                };
                Message::Answer(Signed::sign(&id(s), &net(), &a).unwrap())
            }
        ),
        (receipt(), 0u64..4)
            .prop_map(move |(r, s)| Message::Receipt(Signed::sign(&id(s), &net(), &r).unwrap())),
        (acct(), acct(), ts(), any::<u64>(), 0u64..4).prop_map(
            move |(oracle, provider, sent_at, nonce, s)| {
                Message::Probe(
                    Signed::sign(
                        &id(s),
                        &net(),
                        &Probe {
                            oracle,
                            provider,
                            sent_at,
                            nonce,
                        },
                    )
                    .unwrap(),
                )
            }
        ),
        (hash(), acct(), ts(), any::<u16>(), 0u64..4).prop_map(
            move |(probe, provider, replied_at, busy_slots, s)| {
                Message::ProbeReply(
                    Signed::sign(
                        &id(s),
                        &net(),
                        &ProbeReply {
                            probe,
                            provider,
                            replied_at,
                            busy_slots,
                        },
                    )
                    .unwrap(),
                )
            }
        ),
        (verdict(), 0u64..4)
            .prop_map(move |(v, s)| Message::Verdict(Signed::sign(&id(s), &net(), &v).unwrap())),
        (dispute(), 0u64..4)
            .prop_map(move |(d, s)| Message::Dispute(Signed::sign(&id(s), &net(), &d).unwrap())),
        (
            hash(),
            0u64..4,
            0u64..4,
            proptest::collection::vec(any::<u8>(), 0..=KeyGrant::MAX_SEALED),
            proptest::collection::vec("[a-z0-9.:]{1,20}", 0..3),
            any::<u64>(),
        )
            .prop_map(move |(contract, r, s, sealed, contact, t)| {
                let g = KeyGrant {
                    contract,
                    requester: id(r).account(),
                    reader: id(s).account(),
                    sealed,
                    contact,
                    issued_at: Timestamp(t),
                };
                Message::KeyGrant(Signed::sign(&id(r), &net(), &g).unwrap())
            }),
        (hash(), 0u64..4, "[ -~]{0,40}", any::<u64>()).prop_map(move |(contract, s, reason, t)| {
            let w = Withdrawal {
                contract,
                provider: id(s).account(),
                reason,
                at: Timestamp(t),
            };
            Message::Withdrawal(Signed::sign(&id(s), &net(), &w).unwrap())
        }),
    ]
}

/// Verify every signature inside a message; the error if one fails.
fn verify_message(m: &Message) -> Result<(), SignatureError> {
    let n = net();
    match m {
        Message::Offer(s) => s.verify(&n).map(drop),
        Message::Bid(s) => s.verify(&n).map(drop),
        Message::Proposal(s) => s.verify(&n).and_then(|p| p.job.verify(&n).map(drop)),
        Message::Answer(s) => s.verify(&n).and_then(|a| match a {
            ProposalAnswer::Accept(c) => c.verify_signers(&n, &[]).map(drop),
            ProposalAnswer::Reject { .. } => Ok(()),
        }),
        Message::Contract(c) => {
            if c.signatures.len() < 2 {
                return Err(SignatureError::Codec(CodecError::NonCanonical {
                    kind: "contract",
                }));
            }
            c.verify_signers(&n, &[]).map(drop)
        }
        Message::Receipt(s) => s.verify(&n).map(drop),
        Message::Probe(s) => s.verify(&n).map(drop),
        Message::ProbeReply(s) => s.verify(&n).map(drop),
        Message::Verdict(s) => s.verify(&n).map(drop),
        Message::Dispute(s) => s.verify(&n).map(drop),
        Message::KeyGrant(s) => s.verify(&n).map(drop),
        Message::Withdrawal(s) => s.verify(&n).map(drop),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Every message round-trips through a frame, and its signatures verify.
    #[test]
    fn every_message_round_trips(m in message()) {
        let frame = Frame::new(net(), m);
        let bytes = frame.to_bytes().unwrap();
        let back = Frame::from_bytes(&bytes, &net()).unwrap();
        prop_assert_eq!(&back, &frame);
        prop_assert!(verify_message(&back.message).is_ok());
        // On another network the frame is refused.
        let other = NetworkId::named("other");
        let refused = matches!(Frame::from_bytes(&bytes, &other), Err(FrameError::Network { .. }));
        prop_assert!(refused);
    }

    /// Flipping any single bit of a framed, signed message makes it fail to decode
    /// or fail to verify: it is never accepted as a valid message.
    #[test]
    fn every_bit_flip_is_rejected(m in message(), pick in any::<prop::sample::Index>()) {
        let bytes = Frame::new(net(), m).to_bytes().unwrap();
        // One sampled bit per case (all bits are covered by `all_bit_flips_of_an_offer`).
        let bit = pick.index(bytes.len() * 8);
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        let accepted = match Frame::from_bytes(&flipped, &net()) {
            Ok(f) => verify_message(&f.message).is_ok(),
            Err(_) => false,
        };
        prop_assert!(!accepted, "bit {} flipped and still accepted", bit);
    }

    /// Truncations of a valid frame are errors.
    #[test]
    fn truncations_are_errors(m in message(), cut in any::<prop::sample::Index>()) {
        let bytes = Frame::new(net(), m).to_bytes().unwrap();
        let at = cut.index(bytes.len());
        prop_assert!(Frame::from_bytes(&bytes[..at], &net()).is_err());
    }

    /// Random bytes never panic the decoder of any kind.
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = Frame::from_bytes(&bytes, &net());
        let _ = codec::decode::<Offer>(&bytes);
        let _ = codec::decode::<JobSpec>(&bytes);
        let _ = codec::decode::<Proposal>(&bytes);
        let _ = codec::decode::<ProposalAnswer>(&bytes);
        let _ = codec::decode::<ContractTerms>(&bytes);
        let _ = codec::decode::<Receipt>(&bytes);
        let _ = codec::decode::<Verdict>(&bytes);
        let _ = codec::decode::<Dispute>(&bytes);
        let _ = codec::decode::<Probe>(&bytes);
        let _ = codec::decode::<ProbeReply>(&bytes);
    }
}

fn sample_offer(now: u64) -> Offer {
    Offer {
        provider: signer(1).account(),
        class: ResourceClass::Gpu,
        device: "NVIDIA H100".into(),
        speed_milli_cu_per_s: 50_000_000,
        memory_bytes: 80 << 30,
        bandwidth_bytes_per_s: 1 << 30,
        price: PricePerCu(2_000),
        sla: SlaTerms {
            deadline_slack: DurationMs::secs(60),
            availability: Bps(9_900),
            penalty: Bps(1_000),
            exact: true,
        },
        region: "eu-west".into(),
        slots: 4,
        busy_slots: 1,
        holds: vec![Hash32::of(b"model")],
        datasets: vec![],
        contact: vec!["127.0.0.1:4000".into()],
        issued_at: Timestamp(now),
        expires_at: Timestamp(now + 60_000),
        nonce: 42,
    }
}

/// Exhaustively: every one of the bits of a framed offer, flipped, is rejected.
#[test]
fn all_bit_flips_of_an_offer() {
    let signed = Signed::sign(&signer(1), &net(), &sample_offer(1_000)).unwrap();
    let bytes = Frame::new(net(), Message::Offer(signed))
        .to_bytes()
        .unwrap();
    for bit in 0..bytes.len() * 8 {
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        if let Ok(f) = Frame::from_bytes(&flipped, &net()) {
            assert!(verify_message(&f.message).is_err(), "bit {bit} accepted");
        }
    }
}

#[test]
fn signatures_are_domain_separated() {
    let id = signer(1);
    let o = sample_offer(1_000);
    let s = Signed::sign(&id, &net(), &o).unwrap();
    assert_eq!(s.verify(&net()).unwrap(), o);
    assert!(matches!(
        s.verify(&NetworkId::named("elsewhere")),
        Err(SignatureError::BadSignature { .. })
    ));
    assert!(matches!(
        s.verify_by(&net(), &signer(2).account()),
        Err(SignatureError::WrongSigner { .. })
    ));
    // The same bytes re-labelled as another kind do not verify.
    let as_bytes = codec::encode_unbounded("signed", &s).unwrap();
    let relabelled: Signed<Receipt> = codec::decode_limited("x", 1 << 16, &as_bytes).unwrap();
    assert!(relabelled.verify(&net()).is_err());
}

#[test]
fn batch_verification_accepts_good_and_names_the_bad_one() {
    let mut items: Vec<Signed<Offer>> = (0..16)
        .map(|i| Signed::sign(&signer(i), &net(), &sample_offer(1_000 + i)).unwrap())
        .collect();
    let bodies = verify_batch(&net(), &items).unwrap();
    assert_eq!(bodies.len(), 16);
    assert_eq!(bodies[3], sample_offer(1_003));
    // Swap in a signature from another item: batch fails and names index 5.
    items[5].signature = items[6].signature;
    let (i, err) = verify_batch(&net(), &items).unwrap_err();
    assert_eq!(i, 5);
    assert!(matches!(err, SignatureError::BadSignature { .. }));
}

#[test]
fn contract_needs_both_signatures() {
    let n = net();
    let req = signer(10);
    let prov = signer(11);
    let o = sample_offer(1_000);
    let spec = JobSpec {
        kind: JobKind::Infer { batch: 32 },
        sla: SlaRequirement {
            min_availability: Bps(9_000),
            min_penalty: Bps(500),
        },
        expires_at: Timestamp(61_000),
        ..JobSpec::inference(
            req.account(),
            BlobRef {
                hash: Hash32::of(b"d"),
                size: 10,
            },
            ComputeUnits::from_milli(1_000),
            PricePerCu(3_000),
            Timestamp(1_000),
            Timestamp(100_000),
            1,
        )
    };
    spec.validate(Timestamp(2_000)).unwrap();
    o.validate(Timestamp(2_000)).unwrap();
    let t = ContractTerms {
        network: n,
        job: Hash32::of(b"job"),
        spec,
        requester: req.account(),
        provider: prov.account(),
        price: o.price,
        max_units: ComputeUnits::from_milli(1_000),
        sla: o.sla,
        deadline: Timestamp(100_000),
        created_at: Timestamp(2_000),
    };
    assert_eq!(t.escrow(), Some(Amount(2_000)));
    let mut c = MultiSigned::new(&t).unwrap();
    c.add_signature(&prov, &n);
    let both = [req.account(), prov.account()];
    assert!(matches!(
        c.verify_signers(&n, &both),
        Err(SignatureError::MissingSignature { .. })
    ));
    c.add_signature(&req, &n);
    assert_eq!(c.verify_signers(&n, &both).unwrap(), t);
}

#[test]
fn validation_catches_bad_fields() {
    let now = Timestamp(10_000);
    let mut o = sample_offer(10_000);
    o.validate(now).unwrap();
    o.busy_slots = 9;
    assert!(matches!(
        o.validate(now),
        Err(InvalidMessage::Field { field: "slots", .. })
    ));
    let o = sample_offer(1_000);
    assert!(matches!(
        o.validate(Timestamp(70_000)),
        Err(InvalidMessage::Expired { .. })
    ));
    assert!(matches!(
        sample_offer(100_000).validate(now),
        Err(InvalidMessage::FromTheFuture { .. })
    ));
    let mut o = sample_offer(10_000);
    o.device = "x".repeat(500);
    assert!(matches!(
        o.validate(now),
        Err(InvalidMessage::Field {
            field: "device",
            ..
        })
    ));
}

#[test]
fn oversized_and_future_version_frames_are_refused() {
    let big = vec![0u8; Frame::MAX_SIZE + 1];
    assert!(matches!(
        Frame::from_bytes(&big, &net()),
        Err(FrameError::Codec(CodecError::TooLarge { .. }))
    ));
    let signed = Signed::sign(&signer(1), &net(), &sample_offer(1_000)).unwrap();
    let mut f = Frame::new(net(), Message::Offer(signed));
    f.version = 2;
    let bytes = codec::encode(&f).unwrap();
    assert_eq!(
        Frame::from_bytes(&bytes, &net()),
        Err(FrameError::Version(2))
    );
}
