//! A node's memory under a flood of offers: `N` distinct providers (1,000,000
//! by default) each gossip one validly signed offer to a node core that is a
//! provider and a requester, as a flooder with a million keys would. Prints,
//! every tenth of the way, the process's resident memory, what the core
//! keeps (order book, contacts) and the rate. The book, the replay guard, the
//! contacts and the competitor prices are all bounded, so memory levels off
//! once they are full.
//!
//! `cargo run --release -p node-core --example offer_flood [N]`

#![allow(clippy::unwrap_used)]
// A benchmark measures wall time; the core it drives takes time as input.
#![allow(clippy::disallowed_methods)]

use std::time::Instant;

use crdt_ledger::{Genesis, GenesisEntry, Ledger, MemStore, Params};
use node_core::{CoreConfig, Input, NodeCore, Timing};
use protocol::market::ProviderConfig;
use protocol::{
    Amount, Bps, DurationMs, Identity, Message, Offer, PricePerCu, ResourceClass, Signed, SlaTerms,
    Timestamp,
};
use rand::SeedableRng;

/// This process's resident set in MiB, from /proc (0 where there is none).
fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        >> 10
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let t0 = Timestamp(1_800_000_000_000);
    let me = Identity::from_seed(1);
    let oracle = Identity::from_seed(2);
    let params = Params {
        committee_size: 1,
        ..Params::default()
    };
    let mut balances = vec![
        (me.account(), Amount::tokens(100)),
        (oracle.account(), Amount::tokens(100)),
    ];
    balances.sort_by_key(|(a, _)| *a);
    let g = GenesisEntry::create(
        &oracle,
        Genesis {
            name: "offer-flood".into(),
            genesis_time: t0,
            stakes: vec![(oracle.account(), params.min_stake)],
            params,
            balances,
            bonds: Vec::new(),
        },
    )
    .unwrap();
    let network = g.network();
    let ledger: Ledger<MemStore> = Ledger::new(g, &me.account().0).unwrap();
    let mut core = NodeCore::new(
        me.clone(),
        ledger,
        CoreConfig {
            provider: Some(ProviderConfig::default()),
            oracle: false,
            bond: Amount::ZERO,
            contact: vec!["127.0.0.1:4433".into()],
            timing: Timing::default(),
            book: Default::default(),
            persist: false,
            submits: true,
        },
    );
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut out = Vec::new();
    core.handle(t0, Input::Start, &mut rng, &mut out);
    out.clear();
    let start_rss = rss_mib();
    println!("offers from distinct providers, each signed and checked as gossip");
    println!(
        "{:>10} {:>9} {:>8} {:>10} {:>10}",
        "offers", "rss MiB", "book", "offers/s", "elapsed s"
    );
    let started = Instant::now();
    let step = (n / 10).max(1);
    for i in 0..n {
        let id = Identity::from_seed(1_000 + i);
        let now = t0.plus(DurationMs(i / 1_000));
        let o = Offer {
            provider: id.account(),
            class: if i % 2 == 0 {
                ResourceClass::Cpu
            } else {
                ResourceClass::Gpu
            },
            device: "flood".into(),
            speed_milli_cu_per_s: 1_000_000 + i,
            memory_bytes: 1 << 30,
            bandwidth_bytes_per_s: 100 << 20,
            price: PricePerCu(1_000 + i % 5_000),
            sla: SlaTerms {
                deadline_slack: DurationMs::secs(10),
                availability: Bps(9_500),
                penalty: Bps(1_000),
                exact: true,
            },
            region: "eu".into(),
            slots: 2,
            busy_slots: 0,
            holds: Vec::new(),
            datasets: Vec::new(),
            contact: vec![format!(
                "10.{}.{}.{}:4433",
                (i >> 16) & 255,
                (i >> 8) & 255,
                i & 255
            )],
            issued_at: now,
            expires_at: now.plus(DurationMs::secs(3_600)),
            nonce: i,
        };
        let s = Signed::sign(&id, &network, &o).unwrap();
        core.handle(
            now,
            Input::gossip(Some(id.account()), Message::Offer(s)),
            &mut rng,
            &mut out,
        );
        out.clear();
        if (i + 1) % step == 0 {
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{:>10} {:>9} {:>8} {:>10.0} {:>10.1}",
                i + 1,
                rss_mib(),
                core.requester().book().len(),
                (i + 1) as f64 / secs,
                secs
            );
        }
    }
    println!(
        "resident memory {} MiB at the start, {} MiB after {n} offers",
        start_rss,
        rss_mib()
    );
}
