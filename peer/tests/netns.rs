//! The namespace NAT topology (#15): homes reach the public namespace through
//! their routers' NAT and nothing else, nothing leaves the testbed, and the
//! namespaces go away when the topology is dropped, panic or not.
//!
//! Needs root, iproute2, nftables and ping; without them each test prints why
//! and passes (CI runs as root with the tools).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use peer::netns::{Options, Topology, available};

/// Why these tests cannot run here, if they cannot.
fn unavailable() -> Option<String> {
    if let Err(why) = available() {
        return Some(why);
    }
    if Command::new("ping").arg("-V").output().is_err() {
        return Some("`ping` is missing (Debian package iputils-ping)".into());
    }
    None
}

/// One echo request from `ns` to `to`, with a generous wait for the reply.
fn ping_once(topo: &Topology, ns: &str, to: Ipv4Addr) -> bool {
    let mut ping = topo.command(ns, "ping");
    ping.args(["-n", "-c1", "-W2", &to.to_string()]);
    ping.stdout(Stdio::null()).stderr(Stdio::null());
    ping.status().expect("run ping").success()
}

/// Whether `ns` reaches `to`, allowing a busy machine a few tries.
fn reaches(topo: &Topology, ns: &str, to: Ipv4Addr) -> bool {
    (0..5).any(|_| ping_once(topo, ns, to))
}

fn netns_names() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_gone(names: &[String]) {
    let list = netns_names();
    for name in names {
        assert!(
            !list
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name.as_str())),
            "namespace {name} is still there:\n{list}"
        );
    }
}

const LISTEN_ENV: &str = "CC_NETNS_TEST_LISTEN";
const PEER_FILE_ENV: &str = "CC_NETNS_TEST_PEER_FILE";

/// Run by `homes_reach_the_public_namespace_through_nat` as a child of this test
/// binary inside the public namespace (bare Debian has no listener tool): accepts
/// one TCP connection and writes the address it came from to a file.
#[test]
#[ignore = "a helper that the NAT test runs inside a namespace"]
fn tcp_listener_helper() {
    let (Ok(addr), Ok(file)) = (std::env::var(LISTEN_ENV), std::env::var(PEER_FILE_ENV)) else {
        return;
    };
    let listener = TcpListener::bind(&addr).expect("bind the helper listener");
    let (_stream, from) = listener.accept().expect("accept");
    std::fs::write(file, from.to_string()).expect("write the peer address");
}

#[test]
fn homes_reach_the_public_namespace_through_nat() {
    if let Some(why) = unavailable() {
        eprintln!("skipping the namespace NAT test: {why}");
        return;
    }
    let topo = Topology::up(&Options {
        homes: 2,
        rate_mbit: None,
        ..Options::default()
    })
    .expect("bring the topology up");
    let (public, h0, h1) = (topo.public_ns(), topo.home_ns(0), topo.home_ns(1));

    assert!(
        reaches(&topo, h0, Topology::PUBLIC_ADDR),
        "h0 cannot reach pub"
    );
    assert!(
        reaches(&topo, h1, Topology::PUBLIC_ADDR),
        "h1 cannot reach pub"
    );
    assert!(
        !ping_once(&topo, h0, topo.home_addr(1)),
        "h0 reaches h1's private address"
    );
    assert!(
        !ping_once(&topo, public, topo.home_addr(0)),
        "pub reaches h0's private address"
    );
    assert!(
        !ping_once(&topo, public, topo.router_wan_addr(0)),
        "router 0 answers unsolicited inbound on its WAN"
    );

    // A TCP connection from h0 arrives in pub from router 0's WAN address.
    let dir = tempfile::tempdir().expect("temp dir");
    let peer_file = dir.path().join("peer");
    let listen = SocketAddr::from((Topology::PUBLIC_ADDR, 7711));
    let mut listener = topo
        .command(public, std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "tcp_listener_helper",
            "--ignored",
            "--test-threads=1",
        ])
        .env(LISTEN_ENV, listen.to_string())
        .env(PEER_FILE_ENV, &peer_file)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn the listener helper");
    // bash's /dev/tcp is the client; retry while the helper starts.
    let connect = format!(
        "for i in $(seq 1 150); do (exec 3<>/dev/tcp/{}/{}) 2>/dev/null && exit 0; sleep 0.2; done; exit 1",
        listen.ip(),
        listen.port()
    );
    let connected = topo
        .command(h0, "bash")
        .args(["-c", &connect])
        .status()
        .expect("run bash");
    if !connected.success() {
        let _ = listener.kill();
        let _ = listener.wait();
        panic!("h0 could not connect to the listener in pub");
    }
    assert!(
        listener.wait().expect("wait for the helper").success(),
        "the listener helper failed"
    );
    let from: SocketAddr = std::fs::read_to_string(&peer_file)
        .expect("the helper's peer file")
        .parse()
        .expect("a socket address");
    assert_eq!(
        from.ip(),
        topo.router_wan_addr(0),
        "pub saw h0 other than as its router"
    );

    assert_eq!(
        topo.guard_drops().expect("read the guards"),
        0,
        "something tried to leave the testbed"
    );
    // The guard does catch what heads outside 10.77.0.0/16 (TEST-NET-1).
    assert!(
        !ping_once(&topo, h0, Ipv4Addr::new(192, 0, 2, 1)),
        "h0 reached outside the testbed"
    );
    assert!(
        topo.guard_drops().expect("read the guards") > 0,
        "the guard did not count the leak"
    );

    let names = topo.namespaces().to_vec();
    assert_eq!(names.len(), 5);
    drop(topo);
    assert_gone(&names);
}

#[test]
fn a_panic_still_tears_the_topology_down() {
    if let Some(why) = unavailable() {
        eprintln!("skipping the namespace teardown test: {why}");
        return;
    }
    let names = Mutex::new(Vec::new());
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // Also exercises the rate limits' `tc` commands.
        let topo = Topology::up(&Options {
            homes: 3,
            rate_mbit: Some(20),
            ..Options::default()
        })
        .expect("bring the topology up");
        names
            .lock()
            .expect("names")
            .extend_from_slice(topo.namespaces());
        let listed = netns_names();
        assert!(
            topo.namespaces()
                .iter()
                .all(|n| listed.contains(n.as_str())),
            "not listed:\n{listed}"
        );
        panic!("midway through a test");
    }));
    assert!(outcome.is_err());
    let names = names.into_inner().expect("names");
    assert_eq!(names.len(), 7);
    assert_gone(&names);
}

#[test]
fn remove_stale_deletes_the_namespaces_of_dead_processes() {
    if let Some(why) = unavailable() {
        eprintln!("skipping the stale namespace test: {why}");
        return;
    }
    // Above the largest pid_max (2^22): no process can have this pid.
    let stale = "cc4194305x0-pub";
    let added = Command::new("ip").args(["netns", "add", stale]).status();
    assert!(added.expect("ip netns add").success());
    let removed = peer::netns::remove_stale().expect("remove stale namespaces");
    assert!(
        removed.iter().any(|n| n == stale),
        "{stale} not removed: {removed:?}"
    );
    assert_gone(&[stale.to_owned()]);
}
