//! Wall time and figures of a scenario: `cargo run --release -p simnet --example timing -- paper-30d [days] [--replica-per-peer]`
//! (a node core per peer, see `simnet::cores`).
use std::time::Instant;
// The allocator `cloudchain` runs with (see `peer/src/main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[allow(clippy::disallowed_methods)] // measuring wall time is the point of this example
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let own = args.iter().any(|a| a == "--replica-per-peer");
    let mut args = args.into_iter().filter(|a| !a.starts_with("--"));
    let name = args.next().unwrap_or_else(|| "paper-30d".into());
    let days: Option<f64> = args.next().and_then(|d| d.parse().ok());
    let mut sc = match simnet::Scenario::load(&name) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let t = Instant::now();
    if let Some(d) = days {
        sc.days = d;
    }
    let replicas = if own {
        simnet::cores::Replicas::PerPeer
    } else {
        simnet::cores::Replicas::Shared
    };
    // A line on stderr at each simulated day: wall time and resident memory.
    let days_total = sc.days;
    let mut next_day = 1.0;
    let m = simnet::cores::run(&sc, sc.seed, replicas, |f| {
        while f * days_total >= next_day {
            eprintln!(
                "day {next_day:.0}: {:.1} s, RSS {:.2} GiB",
                t.elapsed().as_secs_f64(),
                rss_gib()
            );
            next_day += 1.0;
        }
    });
    let s = m.summary(&sc.requesters.fairness_groups);
    println!("{s:#?}");
    println!("{:?}", m.events_by_kind);
    println!(
        "wall time {:.1} s, {} events, digest {}",
        t.elapsed().as_secs_f64(),
        m.events,
        m.digest()
    );
}

/// This process's resident set in GiB, from /proc (0 where there is none).
/// (`VmRSS` is in KiB; this printed KiB / 10⁶ as "GB" before, 2.4 % above
/// the GiB figure and 2.4 % below the decimal one.)
fn rss_gib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let kb = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            kb.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1_048_576.0)
}
