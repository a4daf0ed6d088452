//! A self-hosted blob relay (`cloudchain relay`) on loopback: a node that
//! knows a peer only by its relay URL fetches a blob from it, byte-exact, and
//! trusts the relay only through the certificate file the relay wrote.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use peer::blobs::{BlobNet, BlobNode, Relays, StoreKind};
use peer::relay::{RelayOptions, read_cert};
use protocol::Identity;

fn lo() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_known_only_by_its_relay_serves_a_blob() {
    let dir = tempfile::tempdir().unwrap();
    let relay = peer::relay::spawn(&RelayOptions {
        bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
        names: vec!["127.0.0.1".into()],
        https_port: 0,
        http_port: 0,
        quic_port: peer::relay::QAD_PORT,
        dir: dir.path().to_path_buf(),
    })
    .await
    .unwrap();
    assert_eq!(relay.url.host_str(), Some("127.0.0.1"));
    let ca = read_cert(&relay.cert).unwrap();
    let net = BlobNet {
        bind: lo(),
        relays: Relays::Own {
            urls: vec![relay.url.clone()],
            ca: vec![ca],
        },
        portmapper: false,
        gc_every: peer::blobs::GC_EVERY,
        quota: None,
    };
    let a_id = Identity::from_seed(71);
    let b_id = Identity::from_seed(72);
    let a = BlobNode::spawn(&a_id, StoreKind::Memory, &net)
        .await
        .unwrap();
    let b = BlobNode::spawn(&b_id, StoreKind::Memory, &net)
        .await
        .unwrap();
    // Generous: a busy machine may take a while to finish the TLS handshake.
    assert!(
        a.online(Duration::from_secs(60)).await,
        "a never reached the relay"
    );
    assert!(
        b.online(Duration::from_secs(60)).await,
        "b never reached the relay"
    );
    // The relay URL is what an offer carries first.
    assert_eq!(a.contact()[0], relay.url.to_string());

    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let hash = a.add_bytes(data.clone()).await.unwrap();
    // Only the relay URL: no socket address of `a` is given.
    let only_relay = vec![relay.url.to_string()];
    let from = BlobNode::peer_addr(&a_id.account(), &only_relay).unwrap();
    let n = b.fetch(from, &hash, |_| {}).await.unwrap();
    assert_eq!(n, data.len() as u64);
    assert_eq!(b.get_bytes(&hash).await.unwrap().as_ref(), &data[..]);
    let fetched = b.recent_fetches();
    assert_eq!(fetched.len(), 1);
    assert_eq!(fetched[0].bytes, data.len() as u64);
    assert!(
        ["direct", "relayed"].contains(&fetched[0].path.as_str()),
        "{fetched:?}"
    );

    // A node that does not trust the relay's certificate cannot use it.
    let untrusting = BlobNet {
        bind: lo(),
        relays: Relays::Own {
            urls: vec![relay.url.clone()],
            ca: vec![],
        },
        portmapper: false,
        gc_every: peer::blobs::GC_EVERY,
        quota: None,
    };
    let c = BlobNode::spawn(&Identity::from_seed(73), StoreKind::Memory, &untrusting)
        .await
        .unwrap();
    assert!(
        !c.online(Duration::from_secs(3)).await,
        "a relay with an untrusted certificate was accepted"
    );
    for n in [a, b, c] {
        n.shutdown().await.unwrap();
    }
    relay.shutdown().await.unwrap();
}

#[test]
fn a_file_that_is_no_certificate_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("cert.der");
    std::fs::write(&f, b"hello").unwrap();
    let e = read_cert(&f).unwrap_err().to_string();
    assert!(e.contains("not a DER certificate"), "{e}");
    std::fs::write(
        &f,
        b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let e = read_cert(&f).unwrap_err().to_string();
    assert!(e.contains("not a PEM certificate"), "{e}");
    let e = read_cert(&dir.path().join("missing"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot read the relay certificate"), "{e}");
}
