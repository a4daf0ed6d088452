//! Market engine benchmarks: matching one bid against order books of 1k, 10k and
//! 100k offers, and order-book inserts (with and without signature checks).
//!
//! `cargo bench -p protocol --bench market`

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use protocol::market::{BookConfig, MatchConfig, MatchOutcome, OrderBook, TableReputation};
use protocol::*;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const T0: Timestamp = Timestamp(1_700_000_000_000);

fn acct(i: u32) -> AccountId {
    let mut a = [0u8; 32];
    a[..4].copy_from_slice(&i.to_le_bytes());
    a[4] = 1;
    AccountId(a)
}

fn offers(n: usize, rng: &mut ChaCha8Rng) -> Vec<(Hash32, Offer)> {
    (0..n)
        .map(|i| {
            let slots = rng.random_range(1..=8u16);
            let o = Offer {
                provider: acct(i as u32),
                class: if i % 4 == 0 {
                    ResourceClass::Cpu
                } else {
                    ResourceClass::Gpu
                },
                device: "bench-gpu".into(),
                speed_milli_cu_per_s: rng.random_range(100_000..10_000_000),
                memory_bytes: 16 << 30,
                bandwidth_bytes_per_s: rng.random_range(1 << 20..1 << 30),
                price: PricePerCu(rng.random_range(200..2_000)),
                sla: SlaTerms {
                    deadline_slack: DurationMs::secs(rng.random_range(1..60)),
                    availability: Bps(rng.random_range(9_000..=10_000)),
                    penalty: Bps(rng.random_range(500..2_000)),
                    exact: true,
                },
                region: "eu".into(),
                slots,
                busy_slots: rng.random_range(0..=slots),
                holds: vec![],
                datasets: vec![],
                contact: vec![],
                issued_at: T0,
                expires_at: T0.plus(DurationMs::secs(rng.random_range(600..86_000))),
                nonce: i as u64,
            };
            (Hash32::of(&(i as u64).to_le_bytes()), o)
        })
        .collect()
}

fn book_of(offers: &[(Hash32, Offer)]) -> OrderBook {
    let mut book = OrderBook::new(BookConfig {
        capacity: offers.len().max(1),
        replay_capacity: offers.len().max(1) * 2,
        per_class: usize::MAX,
    });
    for (id, o) in offers {
        book.insert_verified(T0, *id, o.clone()).unwrap();
    }
    book
}

fn job(rng: &mut ChaCha8Rng) -> JobSpec {
    JobSpec {
        requester: acct(u32::MAX),
        kind: JobKind::Infer { batch: 1 },
        model: Some(BlobRef {
            hash: Hash32::of(b"model"),
            size: 100 << 20,
        }),
        dataset: BlobRef {
            hash: Hash32::of(b"data"),
            size: 10 << 20,
        },
        estimated_units: ComputeUnits::from_milli(rng.random_range(1_000_000..100_000_000)),
        result_bytes: 1 << 20,
        max_price: PricePerCu(rng.random_range(600..1_200)),
        deadline: T0.plus(DurationMs::secs(3_600)),
        sla: SlaRequirement {
            min_availability: Bps(9_500),
            min_penalty: Bps(1_000),
        },
        privacy: None,
        issued_at: T0,
        expires_at: T0.plus(DurationMs::secs(600)),
        nonce: 1,
    }
}

fn matching(c: &mut Criterion) {
    let mut g = c.benchmark_group("match_one_bid");
    g.throughput(Throughput::Elements(1));
    for n in [1_000usize, 10_000, 100_000] {
        let mut rng = ChaCha8Rng::seed_from_u64(n as u64);
        let os = offers(n, &mut rng);
        let book = book_of(&os);
        let mut rep = TableReputation {
            prior: 0.7,
            ..Default::default()
        };
        for (_, o) in &os {
            rep.table.insert(o.provider, rng.random_range(0.5..1.0));
        }
        let jobs: Vec<JobSpec> = (0..64).map(|_| job(&mut rng)).collect();
        let cfg = MatchConfig::default();
        let mut k = 0usize;
        let now = T0.plus(DurationMs::secs(1));
        let matched = jobs
            .iter()
            .filter(|j| {
                matches!(
                    book.match_job(now, j, &rep, &cfg, &[], &mut rng),
                    MatchOutcome::Matched { .. }
                )
            })
            .count();
        eprintln!("{n} offers: {matched} of {} bids match", jobs.len());
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                k = (k + 1) % jobs.len();
                let out = book.match_job(now, &jobs[k], &rep, &cfg, &[], &mut rng);
                black_box(matches!(out, MatchOutcome::Matched { .. }))
            })
        });
    }
    g.finish();
}

fn inserts(c: &mut Criterion) {
    let mut g = c.benchmark_group("book_insert");
    let n = 10_000usize;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let os = offers(n, &mut rng);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("verified_10k", |b| {
        b.iter_batched(
            || os.clone(),
            |os| {
                let mut book = OrderBook::new(BookConfig {
                    capacity: n,
                    replay_capacity: 2 * n,
                    per_class: usize::MAX,
                });
                for (id, o) in os {
                    let _ = book.insert_verified(T0, id, o);
                }
                black_box(book.len())
            },
            BatchSize::LargeInput,
        )
    });
    // With ed25519 verification of every envelope (what a node does with gossip).
    let network = NetworkId::named("bench");
    let m = 1_000usize;
    let signed: Vec<Signed<Offer>> = (0..m)
        .map(|i| {
            let id = Identity::from_seed(i as u64);
            let mut o = os[i].1.clone();
            o.provider = id.account();
            Signed::sign(&id, &network, &o).unwrap()
        })
        .collect();
    g.throughput(Throughput::Elements(m as u64));
    g.bench_function("signed_1k", |b| {
        b.iter(|| {
            let mut book = OrderBook::new(BookConfig {
                capacity: m,
                replay_capacity: 2 * m,
                per_class: usize::MAX,
            });
            for s in &signed {
                let _ = book.insert(T0, &network, s);
            }
            black_box(book.len())
        })
    });
    g.finish();
}

/// One job through every engine: match, propose, accept, contract, run, receipt,
/// three oracles' verdicts, settlement; signatures included.
fn full_job(c: &mut Criterion) {
    full_job_with(c, "full_job_lifecycle", true);
    full_job_with(c, "full_job_lifecycle_unverified", false);
}

fn full_job_with(c: &mut Criterion, name: &str, verify_signatures: bool) {
    use protocol::market::{
        ProviderConfig, ProviderEngine, ProviderInput, ProviderOutput, RequesterConfig,
        RequesterEngine, RequesterInput, RequesterOutput, UniformReputation,
    };
    use protocol::oracle::{CheckResult, OracleConfig, OracleEngine, OracleInput, OracleOutput};

    let network = NetworkId::named("bench");
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let rep = UniformReputation(0.9);
    let mut req = RequesterEngine::new(
        Identity::from_seed(1),
        network,
        RequesterConfig {
            verify_signatures,
            ..RequesterConfig::default()
        },
    );
    let mut prov = ProviderEngine::new(
        Identity::from_seed(2),
        network,
        ProviderConfig {
            slots: 1_000,
            queue_capacity: 0,
            verify_signatures,
            ..ProviderConfig::default()
        },
    );
    let check = |_: &ContractTerms, _: &Receipt| CheckResult::Correct;
    let ids: Vec<Identity> = (10..13).map(Identity::from_seed).collect();
    let committee: Vec<AccountId> = ids.iter().map(|i| i.account()).collect();
    let cfg = OracleConfig {
        verify_share: Bps(10_000),
        verify_signatures,
        ..OracleConfig::default()
    };
    let mut oracles: Vec<_> = ids
        .into_iter()
        .map(|i| OracleEngine::new(i, network, cfg, check))
        .collect();
    let mut now = T0;
    for o in &mut oracles {
        o.handle(
            now,
            OracleInput::Epoch {
                epoch: 1,
                committee: committee.clone(),
                beacon: Hash32::default(),
            },
            &mut rng,
        );
    }
    for out in prov.handle(now, ProviderInput::Start, &mut rng) {
        if let ProviderOutput::Publish(Message::Offer(so)) = out {
            req.handle(now, RequesterInput::Offer(so), &rep, &mut rng);
        }
    }
    let mut nonce = 0u64;
    c.bench_function(name, |b| {
        b.iter(|| {
            nonce += 1;
            now = now.plus(DurationMs(10));
            let spec = JobSpec {
                expires_at: now.plus(DurationMs::secs(300)),
                ..JobSpec::inference(
                    req.account(),
                    BlobRef {
                        hash: Hash32::of(b"data"),
                        size: 1 << 20,
                    },
                    ComputeUnits::from_milli(1_000_000),
                    PricePerCu(1_000),
                    now,
                    now.plus(DurationMs::secs(600)),
                    nonce,
                )
            };
            // Requester → provider → requester → provider.
            let out = req.handle(now, RequesterInput::Submit(Box::new(spec)), &rep, &mut rng);
            let Some(RequesterOutput::Send {
                message: Message::Proposal(p),
                ..
            }) = out
                .into_iter()
                .find(|o| matches!(o, RequesterOutput::Send { .. }))
            else {
                panic!("no proposal");
            };
            let out = prov.handle(now, ProviderInput::Proposal(p), &mut rng);
            let Some(ProviderOutput::Send {
                message: Message::Answer(a),
                ..
            }) = out
                .into_iter()
                .find(|o| matches!(o, ProviderOutput::Send { .. }))
            else {
                panic!("no answer");
            };
            let out = req.handle(now, RequesterInput::Answer(a), &rep, &mut rng);
            let contract = out
                .iter()
                .find_map(|o| match o {
                    RequesterOutput::Send {
                        message: Message::Contract(c),
                        ..
                    } => Some(c.clone()),
                    _ => None,
                })
                .unwrap();
            let id = contract.body_hash();
            prov.handle(now, ProviderInput::Contract(contract.clone()), &mut rng);
            let out = prov.handle(
                now,
                ProviderInput::Finished {
                    contract: id,
                    result: BlobRef { hash: id, size: 10 },
                    units_used: ComputeUnits::from_milli(1_000_000),
                    commitment: id,
                    checkpoint_every: 0,
                    checkpoints: 0,
                    inputs_ready_at: now,
                    started_at: now,
                },
                &mut rng,
            );
            let receipt = out
                .into_iter()
                .find_map(|o| match o {
                    ProviderOutput::Publish(Message::Receipt(r)) => Some(r),
                    _ => None,
                })
                .unwrap();
            req.handle(
                now,
                RequesterInput::Receipt(receipt.clone()),
                &rep,
                &mut rng,
            );
            // The committee.
            let mut verdicts = Vec::new();
            for o in &mut oracles {
                o.handle(now, OracleInput::Contract(contract.clone()), &mut rng);
                o.handle(now, OracleInput::Receipt(receipt.clone()), &mut rng);
            }
            let due = now.plus(DurationMs::secs(31));
            for o in &mut oracles {
                for x in o.handle_timeout(due, &mut rng) {
                    if let OracleOutput::Publish(Message::Verdict(v)) = x {
                        verdicts.push(v);
                    }
                }
            }
            let mut settled = None;
            for o in &mut oracles {
                for v in &verdicts {
                    for x in o.handle(due, OracleInput::Verdict(v.clone()), &mut rng) {
                        if let OracleOutput::Settle(si) = x {
                            settled = Some(si);
                        }
                    }
                }
            }
            let si = settled.unwrap();
            req.handle(due, RequesterInput::Settlement(si.clone()), &rep, &mut rng);
            prov.handle(due, ProviderInput::Settlement(si), &mut rng);
            black_box(req.drain_finished().len())
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = matching, inserts, full_job
}
criterion_main!(benches);
