//! Job-blob transfer on loopback, in one run: encrypted iroh-blobs (encrypt, add,
//! fetch, decrypt) next to plain iroh-blobs and plain TCP, for the same bytes.
//!
//! `cargo bench -p peer --bench transfer [-- SIZE_MB]` (default 200).

use std::net::SocketAddr;
use std::time::Instant;

use peer::blobs::{BlobNode, StoreKind};
use peer::crypto;
use protocol::{Hash32, Identity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn lo() -> SocketAddr {
    "127.0.0.1:0".parse().expect("address")
}

fn mb_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

async fn node(seed: u64) -> anyhow::Result<BlobNode> {
    BlobNode::spawn(
        &Identity::from_seed(seed),
        StoreKind::Memory,
        &peer::blobs::BlobNet::local(lo()),
    )
    .await
}

/// Add `data` on a fresh node, fetch it on another; seconds for the fetch.
async fn iroh_fetch(data: Vec<u8>, seeds: (u64, u64)) -> anyhow::Result<(f64, bytes::Bytes)> {
    let (a, b) = (node(seeds.0).await?, node(seeds.1).await?);
    let hash = a.add_bytes(data).await?;
    let from = BlobNode::peer_addr(&Identity::from_seed(seeds.0).account(), &a.contact())?;
    let t = Instant::now();
    b.fetch(from, &hash, |_| {}).await?;
    let secs = t.elapsed().as_secs_f64();
    let got = b.get_bytes(&hash).await?;
    a.shutdown().await?;
    b.shutdown().await?;
    Ok((secs, got))
}

async fn tcp_copy(data: &[u8]) -> anyhow::Result<f64> {
    let listener = tokio::net::TcpListener::bind(lo()).await?;
    let addr = listener.local_addr()?;
    let len = data.len();
    let reader = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0;
        while n < len {
            let k = s.read(&mut buf).await?;
            if k == 0 {
                break;
            }
            n += k;
        }
        Ok::<usize, std::io::Error>(n)
    });
    let t = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(data).await?;
    s.shutdown().await?;
    let n = reader.await??;
    anyhow::ensure!(n == len, "short TCP read: {n} of {len}");
    Ok(t.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let size_mb: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200);
    let n = size_mb * 1_000_000;
    let plain: Vec<u8> = (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();
    let req = Identity::from_seed(1);
    let prov = Identity::from_seed(2);
    let contract = Hash32::of(b"bench-contract");

    // Plain TCP on loopback.
    let tcp = tcp_copy(&plain).await?;
    // Plain iroh-blobs.
    let (iroh, got) = iroh_fetch(plain.clone(), (10, 11)).await?;
    anyhow::ensure!(got.len() == n);
    // Encrypted: seal, encrypt, add, fetch, decrypt.
    let t = Instant::now();
    let key = crypto::random_key();
    let sealed = crypto::seal_job_key(&req, &prov.account(), &contract, &key)?;
    let ct = crypto::encrypt(&key, "dataset", &contract, &plain);
    let enc = t.elapsed().as_secs_f64();
    let (fetch, got) = iroh_fetch(ct, (12, 13)).await?;
    let t = Instant::now();
    let key2 = crypto::open_job_key(&prov, &req.account(), &contract, &sealed)?;
    let back = crypto::decrypt(&key2, "dataset", &contract, &got)?;
    let dec = t.elapsed().as_secs_f64();
    anyhow::ensure!(back == plain, "round trip changed the bytes");
    let total = enc + fetch + dec;

    println!("{size_mb} MB job blob on loopback (one run, this machine):");
    println!(
        "  plain TCP                      {:8.1} MB/s  ({tcp:.3} s)",
        mb_s(n, tcp)
    );
    println!(
        "  plain iroh-blobs fetch         {:8.1} MB/s  ({iroh:.3} s)",
        mb_s(n, iroh)
    );
    println!(
        "  encrypted: iroh-blobs fetch    {:8.1} MB/s  ({fetch:.3} s)",
        mb_s(n, fetch)
    );
    println!(
        "  encrypted: end to end          {:8.1} MB/s  ({total:.3} s = encrypt {enc:.3} + fetch {fetch:.3} + decrypt {dec:.3})",
        mb_s(n, total)
    );
    println!(
        "  encrypted end to end / plain iroh-blobs: {:.0} %",
        100.0 * iroh / total
    );
    Ok(())
}
