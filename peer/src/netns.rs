//! A NAT testbed built out of Linux network namespaces (#15).
//!
//! [`Topology::up`] builds, by running `ip`, `nft`, `tc` and `sysctl`, a small
//! internet with home networks behind NAT routers, entirely inside namespaces it
//! creates (nothing is added to the root namespace; veth pairs are created
//! directly inside the namespaces):
//!
//! ```text
//!  pub: br0 10.77.0.2/24 ── p0 ═ wan0 10.77.0.11 r0 lan0 10.77.1.1 ═ eth0 10.77.1.2 h0
//!                        ── p1 ═ wan0 10.77.0.12 r1 lan0 10.77.2.1 ═ eth0 10.77.2.2 h1
//!                        ── ...  wan0 10.77.0.(11+i) ri lan0 10.77.(1+i).1 ═ eth0 10.77.(1+i).2 hi
//! ```
//!
//! - `pub` is the public internet: every public process (bootstrap peers, relays)
//!   runs there on its own port. It does not forward, so homes cannot reach one
//!   another's private addresses, and it has no route to them.
//! - Each router `ri` forwards, masquerades what leaves `wan0` and routes by
//!   default via 10.77.0.2; each home `hi` routes by default via its router.
//! - Each router's firewall drops unsolicited inbound on `wan0` (`ct state new`),
//!   as a home router does. This is what makes hole punching behave as in the
//!   wild: without it, a peer's early SYN or datagram to the router's mapped port
//!   is accepted as a new flow of the router's own, conntrack then has to pick a
//!   different source port for the home's outgoing flow, and the punch misses.
//! - A guard table in each router drops, with a counter, anything forwarded to
//!   outside 10.77.0.0/16; [`Topology::guard_drops`] reads it so that a test can
//!   show nothing tried to leave the testbed.
//! - IPv6 is disabled (best effort) in every namespace: the testbed is IPv4 only.
//! - With [`Options::rate_mbit`], a token bucket limits both directions of each
//!   router's WAN link (egress of `wan0` and of its peer `pi` in `pub`).
//!
//! Namespaces are named `cc<pid>x<n>-pub`, `…-r0`, `…-h0`, … so that topologies
//! of concurrent tests do not collide. Dropping a [`Topology`] deletes them;
//! processes the caller started in them ([`Topology::command`]) are the caller's
//! to kill. A long-running command that must clean up on Ctrl-C or SIGTERM calls
//! [`teardown_all`] from its handler (one that runs on an ordinary thread, such as
//! `tokio::signal::ctrl_c`), and [`remove_stale`] deletes what processes that
//! died without cleaning up (SIGKILL) left behind.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, bail};

/// Namespaces that live topologies of this process own, for [`teardown_all`].
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// What [`Topology::up`] builds.
#[derive(Debug, Clone)]
pub struct Options {
    /// Home networks, each behind its own NAT router: 2 to 200.
    pub homes: usize,
    /// Bandwidth of each router's WAN link in Mbit/s (1 to 10000), both ways;
    /// `None`: unlimited.
    pub rate_mbit: Option<u32>,
    /// Symmetric NAT: the routers pick a random source port for every new
    /// flow (`masquerade fully-random`), so the port a relay or peer saw is
    /// not the one the next peer will see, and hole punching cannot work.
    /// Peers then stay relayed.
    pub symmetric: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            homes: 2,
            rate_mbit: None,
            symmetric: false,
        }
    }
}

/// A live NAT topology; dropping it deletes every namespace it made.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    homes: usize,
    /// Every namespace made so far, in creation order.
    namespaces: Vec<String>,
}

impl Topology {
    /// The address of `br0` in the public namespace.
    pub const PUBLIC_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

    /// Builds the topology; on any failure midway, deletes what it made.
    pub fn up(opts: &Options) -> anyhow::Result<Topology> {
        available().map_err(anyhow::Error::msg)?;
        if !(2..=200).contains(&opts.homes) {
            bail!("a NAT topology needs 2 to 200 homes, not {}", opts.homes);
        }
        if let Some(rate) = opts.rate_mbit.filter(|r| !(1..=10_000).contains(r)) {
            bail!("a WAN rate limit must be 1 to 10000 Mbit/s, not {rate}");
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut topo = Topology {
            prefix: format!("cc{}x{n}-", std::process::id()),
            homes: opts.homes,
            namespaces: Vec::new(),
        };
        topo.build(opts)?; // on error, `topo` drops here and tears down
        Ok(topo)
    }

    fn build(&mut self, opts: &Options) -> anyhow::Result<()> {
        let public = self.add_ns("pub", false)?;
        ip(&public, "link add br0 type bridge")?;
        ip(&public, "addr add 10.77.0.2/24 dev br0")?;
        ip(&public, "link set br0 up")?;
        for i in 0..self.homes {
            let r = self.add_ns(&format!("r{i}"), true)?;
            let h = self.add_ns(&format!("h{i}"), false)?;
            let (wan, lan, home) = (self.router_wan_addr(i), lan_addr(i, 1), lan_addr(i, 2));
            ip(
                &r,
                &format!("link add wan0 type veth peer name p{i} netns {public}"),
            )?;
            ip(&public, &format!("link set p{i} master br0 up"))?;
            ip(&r, &format!("addr add {wan}/24 dev wan0"))?;
            ip(&r, "link set wan0 up")?;
            ip(
                &r,
                &format!("link add lan0 type veth peer name eth0 netns {h}"),
            )?;
            ip(&r, &format!("addr add {lan}/24 dev lan0"))?;
            ip(&r, "link set lan0 up")?;
            ip(&h, &format!("addr add {home}/24 dev eth0"))?;
            ip(&h, "link set eth0 up")?;
            ip(&h, &format!("route add default via {lan}"))?;
            ip(&r, "route add default via 10.77.0.2")?;
            let rules = if opts.symmetric {
                ROUTER_RULES.replace(
                    "oifname \"wan0\" masquerade",
                    "oifname \"wan0\" masquerade fully-random",
                )
            } else {
                ROUTER_RULES.to_string()
            };
            run(self.command(&r, "nft").arg(rules))?;
            if let Some(rate) = opts.rate_mbit {
                // A burst of 10 ms at the rate, but at least 32 KiB; at most 50 ms
                // of queueing delay.
                let burst = (u64::from(rate) * 1250).max(32 * 1024);
                let tbf = format!("root tbf rate {rate}mbit burst {burst} latency 50ms");
                for (ns, dev) in [(&r, "wan0".to_owned()), (&public, format!("p{i}"))] {
                    exec(ns, &format!("tc qdisc replace dev {dev} {tbf}"))?;
                }
            }
        }
        Ok(())
    }

    /// Creates namespace `<prefix><suffix>`, registers it, brings `lo` up and sets
    /// whether it forwards.
    fn add_ns(&mut self, suffix: &str, forward: bool) -> anyhow::Result<String> {
        let name = format!("{}{suffix}", self.prefix);
        run(Command::new("ip").args(["netns", "add", &name]))?;
        self.namespaces.push(name.clone());
        live().push(name.clone());
        ip(&name, "link set lo up")?;
        // New namespaces may inherit forwarding from the root one: set it either way.
        let forward = u8::from(forward);
        exec(&name, &format!("sysctl -qw net.ipv4.ip_forward={forward}"))?;
        let v6 = "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1";
        let _ = exec(&name, v6); // a kernel without IPv6 has nothing to disable
        Ok(name)
    }

    /// The public namespace, where `br0` holds [`Self::PUBLIC_ADDR`].
    pub fn public_ns(&self) -> &str {
        &self.namespaces[0]
    }

    /// Home `i`'s namespace (behind router `i`).
    pub fn home_ns(&self, i: usize) -> &str {
        assert!(i < self.homes, "home {i} of {}", self.homes);
        &self.namespaces[2 + 2 * i]
    }

    /// Router `i`'s namespace.
    pub fn router_ns(&self, i: usize) -> &str {
        assert!(i < self.homes, "router {i} of {}", self.homes);
        &self.namespaces[1 + 2 * i]
    }

    /// Home `i`'s private address, 10.77.(1+i).2.
    pub fn home_addr(&self, i: usize) -> Ipv4Addr {
        lan_addr(i, 2)
    }

    /// Router `i`'s public address, 10.77.0.(11+i): what `pub` sees home `i` as.
    pub fn router_wan_addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, 11 + i as u8)
    }

    /// Every namespace of the topology: public, then r0, h0, r1, h1, …
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// `ip netns exec <ns> <program>`: add arguments, spawn it, and keep the
    /// `Child` to kill it; deleting the namespace does not.
    pub fn command(&self, ns: &str, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program);
        cmd
    }

    /// Packets the routers' guards dropped because they were headed outside
    /// 10.77.0.0/16.
    pub fn guard_drops(&self) -> anyhow::Result<u64> {
        let mut total = 0;
        for i in 0..self.homes {
            let out = exec(self.router_ns(i), "nft list counter ip guard leaked")?;
            let mut words = out.split_whitespace();
            let packets = words.by_ref().skip_while(|w| *w != "packets").nth(1);
            total += packets
                .and_then(|n| n.parse::<u64>().ok())
                .with_context(|| {
                    format!("no packet count in the guard counter of router {i}: {out}")
                })?;
        }
        Ok(total)
    }

    /// Deletes every namespace, reporting the deletions that failed.
    pub fn down(mut self) -> anyhow::Result<()> {
        let errors: Vec<String> = std::mem::take(&mut self.namespaces)
            .iter()
            .rev()
            .filter_map(|ns| delete(ns).err().map(|e| format!("{e:#}")))
            .collect();
        if !errors.is_empty() {
            bail!("tearing down the NAT topology: {}", errors.join("; "));
        }
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = delete(ns);
        }
    }
}

/// Home router rules: masquerade out of the WAN, drop unsolicited inbound on it
/// (see the module header), and drop and count what heads outside the testbed.
/// (nft rejects a chain named `fwd`: it is a keyword.)
const ROUTER_RULES: &str = r#"
table ip nat {
  chain post {
    type nat hook postrouting priority 100; policy accept;
    oifname "wan0" masquerade
  }
}
table ip fw {
  chain input {
    type filter hook input priority 0; policy accept;
    iifname "wan0" ct state new drop
  }
  chain fwdchain {
    type filter hook forward priority 0; policy accept;
    iifname "wan0" ct state new drop
  }
}
table ip guard {
  counter leaked { }
  chain out {
    type filter hook forward priority -10; policy accept;
    ip daddr != 10.77.0.0/16 counter name "leaked" drop
  }
}
"#;

/// Why this machine cannot build a topology: not root, or a tool is missing.
pub fn available() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status to check for root: {e}"))?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1));
    if euid != Some("0") {
        return Err("network namespaces need root (effective uid 0)".into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for (tool, package) in [
        ("ip", "iproute2"),
        ("tc", "iproute2"),
        ("nft", "nftables"),
        ("sysctl", "procps"),
    ] {
        if !std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()) {
            return Err(format!(
                "`{tool}` is not on PATH (Debian package {package})"
            ));
        }
    }
    Ok(())
}

/// Deletes every namespace that a live topology of this process owns, for a
/// Ctrl-C / SIGTERM handler; dropping those topologies later is harmless.
pub fn teardown_all() {
    for ns in std::mem::take(&mut *live()) {
        let _ = run(Command::new("ip").args(["netns", "del", &ns]));
    }
}

/// Deletes the namespaces (`cc<pid>x<n>-…`) of processes that no longer run,
/// and returns their names.
pub fn remove_stale() -> anyhow::Result<Vec<String>> {
    let list = run(Command::new("ip").args(["netns", "list"]))?;
    let mut removed = Vec::new();
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some((pid, rest)) = ns.strip_prefix("cc").and_then(|s| s.split_once('x')) else {
            continue;
        };
        let numbered = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let Some((n, _)) = rest.split_once('-') else {
            continue;
        };
        if numbered(pid) && numbered(n) && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            delete(ns)?;
            removed.push(ns.to_owned());
        }
    }
    Ok(removed)
}

fn lan_addr(i: usize, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 1 + i as u8, host)
}

fn live() -> std::sync::MutexGuard<'static, Vec<String>> {
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn delete(ns: &str) -> anyhow::Result<()> {
    live().retain(|n| n != ns);
    run(Command::new("ip").args(["netns", "del", ns])).map(drop)
}

/// `ip -n <ns> <args>`, the arguments separated by spaces.
fn ip(ns: &str, args: &str) -> anyhow::Result<String> {
    run(Command::new("ip")
        .args(["-n", ns])
        .args(args.split_whitespace()))
}

/// `ip netns exec <ns> <program> <args>`, separated by spaces.
fn exec(ns: &str, line: &str) -> anyhow::Result<String> {
    run(Command::new("ip")
        .args(["netns", "exec", ns])
        .args(line.split_whitespace()))
}

/// Runs `cmd` with its output captured; its stdout, or an error naming the
/// command and carrying its stderr.
fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
