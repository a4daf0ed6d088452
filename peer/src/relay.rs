//! `cloudchain relay`: a self-hosted iroh relay that needs no internet.
//!
//! Two peers behind two NATs cannot reach each other's blob endpoints
//! directly at first. Each keeps a connection to a relay that both can reach
//! (a host with a public address, or the operator's own server); the relay
//! forwards their first packets, and its QUIC address discovery (QAD) tells
//! each side the public address its NAT gave it. iroh then punches a hole
//! and moves the transfer to the direct path; if the NATs do not allow that,
//! the data keeps flowing through the relay.
//!
//! This runs the `iroh-relay` crate's server with a self-signed certificate
//! (kept in the relay's directory, so that restarts keep it): HTTPS on one port
//! (the relay protocol), plain HTTP on another (probes), and QAD on UDP
//! [`QAD_PORT`], the port iroh clients assume. Nodes name the relay's URL in
//! `net.relay_urls` and trust its certificate with `net.relay_certs`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use iroh::RelayUrl;
use iroh_relay::server::{CertConfig, QuicConfig, RelayConfig, Server, ServerConfig, TlsConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The certificate a relay writes for its clients to trust (DER).
pub const CERT_FILE: &str = "relay-cert.der";
/// Its private key (PKCS#8 DER, mode 0600).
pub const KEY_FILE: &str = "relay-key.der";
/// The UDP port of QUIC address discovery: iroh clients ask for it there.
pub const QAD_PORT: u16 = iroh_relay::defaults::DEFAULT_RELAY_QUIC_PORT;
/// The relay protocol's default HTTPS port.
pub const DEFAULT_HTTPS_PORT: u16 = 3341;
/// The default port of the plain HTTP service (probes).
pub const DEFAULT_HTTP_PORT: u16 = 3340;

/// Where and as whom the relay serves.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// The address to bind (every port below is on it).
    pub bind: IpAddr,
    /// The names clients use for the relay (IP addresses or host names); the
    /// first is in the URL. The certificate covers them all.
    pub names: Vec<String>,
    pub https_port: u16,
    pub http_port: u16,
    pub quic_port: u16,
    /// Where the certificate and key live.
    pub dir: PathBuf,
}

/// A running relay.
#[derive(Debug)]
pub struct RelayServer {
    server: Server,
    /// The URL nodes put in `net.relay_urls`.
    pub url: RelayUrl,
    /// The certificate nodes put in `net.relay_certs`.
    pub cert: PathBuf,
    pub https: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub quic: Option<SocketAddr>,
}

impl RelayServer {
    /// Stop serving.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.server
            .shutdown()
            .await
            .map_err(|e| anyhow::anyhow!("relay shutdown: {e}"))
    }
}

/// Read a certificate file to trust (DER, or PEM with one certificate).
pub fn read_cert(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the relay certificate {}", path.display()))?;
    let (der, form) = if bytes.starts_with(b"-----BEGIN") {
        let der = CertificateDer::from_pem_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: not a PEM certificate: {e}", path.display()))?;
        (der.to_vec(), "PEM")
    } else {
        (bytes, "DER")
    };
    // A certificate is one ASN.1 SEQUENCE; the TLS handshake checks the rest.
    if der.len() > 64 * 1024 || der.first() != Some(&0x30) {
        bail!(
            "{} is not a {form} certificate (`cloudchain relay` writes {CERT_FILE})",
            path.display()
        );
    }
    Ok(der)
}

/// The relay's certificate and key: loaded from `dir`, or made (self-signed for
/// `names`) and written there.
fn certificate(
    dir: &Path,
    names: &[String],
) -> anyhow::Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    if cert_path.exists() && key_path.exists() {
        let cert = read_cert(&cert_path)?;
        let key = std::fs::read(&key_path)
            .with_context(|| format!("cannot read {}", key_path.display()))?;
        return Ok((
            CertificateDer::from(cert),
            PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key)),
        ));
    }
    let made = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| anyhow::anyhow!("cannot make a certificate for {names:?}: {e}"))?;
    let cert = made.cert.der().clone();
    let key = made.signing_key.serialize_der();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    crate::control::write_private(&key_path, &key)?;
    std::fs::write(&cert_path, cert.as_ref())
        .with_context(|| format!("cannot write {}", cert_path.display()))?;
    Ok((cert, PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key))))
}

/// Start the relay.
pub async fn spawn(opts: &RelayOptions) -> anyhow::Result<RelayServer> {
    let first = opts
        .names
        .first()
        .context("a relay needs a name (an IP address or host name) for its URL")?;
    let (cert, key) = certificate(&opts.dir, &opts.names)?;
    let tls = || -> anyhow::Result<rustls::ServerConfig> {
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key.clone_key())
        .context("the relay certificate or key is not usable")
    };
    let mut relay = RelayConfig::new(SocketAddr::new(opts.bind, opts.http_port));
    relay.tls = Some(TlsConfig::new(
        SocketAddr::new(opts.bind, opts.https_port),
        CertConfig::Manual {
            server_config: tls()?,
        },
    ));
    let mut quic = QuicConfig::new(SocketAddr::new(opts.bind, opts.quic_port));
    quic.server_config = Some(tls()?);
    let mut cfg = ServerConfig::default();
    cfg.relay = Some(relay);
    cfg.quic = Some(quic);
    let server = Server::spawn(cfg)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the relay on {}: {e}", opts.bind))?;
    let https = server.https_addr();
    let port = https.map(|a| a.port()).unwrap_or(opts.https_port);
    let host = match first.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
        _ => first.clone(),
    };
    let url: RelayUrl = format!("https://{host}:{port}/")
        .parse()
        .with_context(|| format!("{first:?} does not make a URL"))?;
    Ok(RelayServer {
        url,
        cert: opts.dir.join(CERT_FILE),
        https,
        http: server.http_addr(),
        quic: server.quic_addr(),
        server,
    })
}
