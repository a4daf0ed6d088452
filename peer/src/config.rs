//! The node's data directory and its TOML configuration.
//!
//! A data directory holds `key` (the ed25519 secret, mode 0600), `config.toml`,
//! and later the ledger and the blob store. `cloudchain init` creates it.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use protocol::Identity;
use serde::{Deserialize, Serialize};

/// File names inside the data directory.
pub const KEY_FILE: &str = "key";
pub const CONFIG_FILE: &str = "config.toml";

/// The data directory: `--data-dir`, else `$CLOUDCHAIN_DATA_DIR`, else
/// `$XDG_DATA_HOME/cloudchain`, else `~/.local/share/cloudchain`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("cloudchain");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h).join(".local/share/cloudchain");
    }
    PathBuf::from(".cloudchain")
}

/// The node's configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Network name; peers on different networks ignore each other.
    pub network: String,
    pub net: NetConfig,
    pub provider: ProviderConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// libp2p listen addresses (multiaddrs).
    pub listen: Vec<String>,
    /// Peers to bootstrap from (multiaddrs with /p2p/<peer id>).
    pub bootstrap: Vec<String>,
    /// Discover peers on the local network with mDNS.
    pub mdns: bool,
    /// The address the iroh blob endpoint binds to.
    pub blob_bind: String,
    /// Use iroh's public relays (off: the node works on loopback or a LAN alone).
    pub relay: bool,
    /// Local control API (HTTP + JSON) address; loopback only.
    pub control: String,
    /// Addresses others reach this node on (multiaddrs): a public IP, a
    /// forwarded port. (The fields below are absent in config files written
    /// before them.)
    #[serde(default)]
    pub external: Vec<String>,
    /// Relay libp2p connections for peers behind NATs.
    #[serde(default)]
    pub relay_server: bool,
    /// Ask the home router for port mappings (UPnP for libp2p; UPnP, PCP or
    /// NAT-PMP for the blob endpoint).
    #[serde(default = "yes")]
    pub port_mapping: bool,
    /// Our own iroh relays (the URL `cloudchain relay` prints); they replace
    /// iroh's public ones.
    #[serde(default)]
    pub relay_urls: Vec<String>,
    /// Certificate files (DER) to trust for those relays: `cloudchain relay`
    /// writes its self-signed one. Relative paths are in the data directory.
    #[serde(default)]
    pub relay_certs: Vec<String>,
    /// Where `/metrics` (Prometheus text) is served; "" or "off": nowhere.
    #[serde(default = "default_metrics")]
    pub metrics: String,
    /// The blob store's quota in MiB (0: none): above it, finished jobs'
    /// blobs go at once rather than two hours after their deadline.
    #[serde(default = "default_blob_quota")]
    pub blob_quota_mb: u64,
}

fn default_blob_quota() -> u64 {
    20 * 1024
}

fn default_metrics() -> String {
    "127.0.0.1:9473".into()
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Lowest price accepted, in micro-tokens per compute unit (1 CU = 1 GFLOP).
    pub price_floor: u64,
    /// Jobs run at once.
    pub slots: u16,
    /// Region label shown in offers.
    pub region: String,
    /// Backend: "auto" (a real GPU if present, else CPU), "wgpu" or "cpu".
    pub backend: String,
    /// Whole tokens to keep bonded from the balance: requesters match only a
    /// provider whose free bond covers a contract's escrow, and a proven
    /// wrong result slashes it. (Absent in config files written before it.)
    #[serde(default = "default_bond")]
    pub bond: u64,
}

fn default_bond() -> u64 {
    50
}

impl Default for Config {
    fn default() -> Self {
        Config {
            network: "cloudchain-local".into(),
            net: NetConfig {
                listen: vec![
                    format!("/ip4/0.0.0.0/tcp/{}", crate::net::DEFAULT_PORT),
                    format!("/ip4/0.0.0.0/udp/{}/quic-v1", crate::net::DEFAULT_PORT),
                ],
                bootstrap: vec![],
                mdns: true,
                blob_bind: format!("0.0.0.0:{}", crate::net::DEFAULT_BLOB_PORT),
                relay: false,
                control: "127.0.0.1:0".into(),
                external: vec![],
                relay_server: false,
                port_mapping: true,
                relay_urls: vec![],
                relay_certs: vec![],
                metrics: default_metrics(),
                blob_quota_mb: default_blob_quota(),
            },
            provider: ProviderConfig {
                price_floor: 1_000,
                slots: 2,
                region: "local".into(),
                backend: "auto".into(),
                bond: default_bond(),
            },
        }
    }
}

/// The commented config file `init` writes. It parses to `Config::default()`.
pub const CONFIG_TEMPLATE: &str = r#"# CloudChain node configuration.
# Every key is required; `cloudchain init` wrote the defaults.

# Peers on different networks ignore each other (the name seeds the network id
# until a genesis is loaded).
network = "cloudchain-local"

[net]
# libp2p listen addresses (TCP and QUIC on port 7410 by default, so that this
# node's bootstrap address stays the same across restarts; port 0 picks a free
# port each time).
listen = ["/ip4/0.0.0.0/tcp/7410", "/ip4/0.0.0.0/udp/7410/quic-v1"]
# Peers to bootstrap from, e.g. "/ip4/192.0.2.7/tcp/7410/p2p/12D3KooW...".
bootstrap = []
# Find peers on the local network by mDNS.
mdns = true
# Where the iroh blob endpoint listens (UDP).
blob_bind = "0.0.0.0:7411"
# Use iroh's public relays for NAT traversal (needs the internet).
relay = false
# The local control API used by the CLI (HTTP + JSON, loopback only).
control = "127.0.0.1:0"
# Addresses others reach this node on, if known: a public IP or a forwarded
# port, e.g. "/ip4/192.0.2.7/tcp/7410". Without one, a node behind a NAT
# reserves a slot on a relay it meets and peers reach it through the relay,
# then directly once a hole is punched.
external = []
# Relay libp2p connections for peers behind NATs (give `external` too).
relay_server = false
# Ask the home router for port mappings (UPnP; PCP and NAT-PMP for blobs).
port_mapping = true
# Our own blob relays, e.g. ["https://192.0.2.7:3341/"] (`cloudchain relay`
# prints its URL); they replace iroh's public relays.
relay_urls = []
# Certificate files to trust for those relays (`cloudchain relay` writes its
# self-signed relay-cert.der); relative paths are in the data directory.
relay_certs = []
# Prometheus metrics at http://<this>/metrics (loopback; "off" serves none).
metrics = "127.0.0.1:9473"
# The blob store's quota in MiB (0: none). A job's blobs go two hours after its
# deadline; above the quota, those of finished jobs go at once. Jobs in progress
# keep theirs whatever the quota.
blob_quota_mb = 20480

[provider]
# Lowest price accepted, in micro-tokens per compute unit (1 CU = 1 GFLOP).
price_floor = 1000
# Jobs run at once.
slots = 2
# Region label shown in offers.
region = "local"
# Compute backend: "auto" (a real GPU if one is found, else the CPU), "wgpu" or "cpu".
backend = "auto"
# Tokens kept bonded from the balance. Requesters match only a provider whose
# free bond covers a contract's escrow; a result the committee proves wrong
# slashes the contract's share (half to the requester, half burned).
bond = 50
"#;

impl Config {
    /// Parse config text; errors name the line and the field.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Config> {
        let cfg: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        cfg.validate().with_context(|| origin.to_string())?;
        Ok(cfg)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.network.is_empty() {
            bail!("`network` must not be empty");
        }
        if self.provider.slots == 0 {
            bail!("`provider.slots` must be at least 1");
        }
        if !["auto", "wgpu", "cpu"].contains(&self.provider.backend.as_str()) {
            bail!(
                "`provider.backend` is {:?}; use \"auto\", \"wgpu\" or \"cpu\"",
                self.provider.backend
            );
        }
        let control: std::net::SocketAddr =
            self.net.control.parse().with_context(|| {
                format!("`net.control` {:?} is not an address", self.net.control)
            })?;
        if !control.ip().is_loopback() {
            bail!("`net.control` must be a loopback address, got {control}");
        }
        for u in &self.net.relay_urls {
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                bail!("`net.relay_urls`: {u:?} is not an http(s) URL");
            }
            u.parse::<iroh::RelayUrl>()
                .with_context(|| format!("`net.relay_urls`: {u:?}"))?;
        }
        if !["", "off"].contains(&self.net.metrics.as_str()) {
            self.net
                .metrics
                .parse::<std::net::SocketAddr>()
                .with_context(|| {
                    format!("`net.metrics` {:?} is not an address", self.net.metrics)
                })?;
        }
        if !self.net.relay_certs.is_empty() && self.net.relay_urls.is_empty() {
            bail!("`net.relay_certs` is set but `net.relay_urls` names no relay");
        }
        Ok(())
    }
}

/// A data directory with its key and configuration loaded.
#[derive(Debug)]
pub struct DataDir {
    pub path: PathBuf,
    pub identity: Identity,
    pub config: Config,
}

impl DataDir {
    /// Create a data directory: a fresh key and the commented default config.
    /// Refuses to touch an existing key.
    pub fn init(path: &Path) -> anyhow::Result<DataDir> {
        std::fs::create_dir_all(path)
            .with_context(|| format!("cannot create data directory {}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot restrict {}", path.display()))?;
        }
        let key = path.join(KEY_FILE);
        if key.exists() {
            bail!(
                "{} already holds a key ({}); refusing to overwrite it",
                path.display(),
                key.display()
            );
        }
        let identity = Identity::generate(&mut getrandom::rand_core::UnwrapErr(getrandom::SysRng));
        identity.save(&key)?;
        let cfg_path = path.join(CONFIG_FILE);
        if !cfg_path.exists() {
            std::fs::write(&cfg_path, CONFIG_TEMPLATE)
                .with_context(|| format!("cannot write {}", cfg_path.display()))?;
        }
        Self::open(path)
    }

    /// Open an initialized data directory.
    pub fn open(path: &Path) -> anyhow::Result<DataDir> {
        let key = path.join(KEY_FILE);
        if !key.exists() {
            bail!(
                "no key in {}: run `cloudchain init --data-dir {}` first",
                path.display(),
                path.display()
            );
        }
        let identity = Identity::load(&key)?;
        let cfg_path = path.join(CONFIG_FILE);
        let config = match std::fs::read_to_string(&cfg_path) {
            Ok(text) => Config::parse(&text, &cfg_path.display().to_string())?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Config::default(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", cfg_path.display())),
        };
        Ok(DataDir {
            path: path.to_path_buf(),
            identity,
            config,
        })
    }
}

impl DataDir {
    /// The network's genesis installed in this directory.
    pub fn genesis(&self) -> anyhow::Result<crdt_ledger::GenesisEntry> {
        let p = self.path.join(crate::genesis::GENESIS_FILE);
        if !p.exists() {
            bail!(
                "no genesis in {}: get your network's genesis file and run `cloudchain join FILE --data-dir {}` (or create one with `cloudchain genesis`)",
                self.path.display(),
                self.path.display()
            );
        }
        crate::genesis::load(&p)
    }

    /// Install `g` as this directory's genesis; refuses to switch networks.
    pub fn install_genesis(&self, g: &crdt_ledger::GenesisEntry) -> anyhow::Result<()> {
        let p = self.path.join(crate::genesis::GENESIS_FILE);
        if p.exists() {
            let have = crate::genesis::load(&p)?;
            if have.network() != g.network() {
                bail!(
                    "{} belongs to network {} (genesis {:?}), not {}; use another data directory",
                    self.path.display(),
                    have.network(),
                    have.genesis().name,
                    g.network()
                );
            }
            return Ok(());
        }
        crate::genesis::save(&p, g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses_to_the_defaults() {
        assert_eq!(
            Config::parse(CONFIG_TEMPLATE, "template").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn bad_config_names_line_and_field() {
        let bad = CONFIG_TEMPLATE.replace("slots = 2", "slots = \"two\"");
        let err = Config::parse(&bad, "config.toml").unwrap_err().to_string();
        assert!(err.contains("slots"), "{err}");
        assert!(err.contains("line"), "{err}");
        let unknown = format!("{CONFIG_TEMPLATE}\nbogus = 1\n");
        let err = Config::parse(&unknown, "config.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
        let public = CONFIG_TEMPLATE.replace("127.0.0.1:0", "0.0.0.0:8080");
        let err = format!("{:#}", Config::parse(&public, "c").unwrap_err());
        assert!(err.contains("loopback"), "{err}");
    }

    #[test]
    fn init_then_open_and_refuse_reinit() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("node");
        let a = DataDir::init(&d).unwrap();
        let b = DataDir::open(&d).unwrap();
        assert_eq!(a.identity.account(), b.identity.account());
        let err = DataDir::init(&d).unwrap_err().to_string();
        assert!(err.contains("refusing to overwrite"), "{err}");
        let err = DataDir::open(&dir.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cloudchain init"), "{err}");
    }
}
