//! TLS for edge mode: rustls (ring provider) with ALPN `h2` + `http/1.1`, SNI over several
//! certificates, and certificates re-read when their files change (Let's Encrypt renewals).
//!
//! SNI: each route host gets the first `[[edge.cert]]` whose certificate is valid for it. The
//! name check is rustls's own (`ResolvesServerCertUsingSni::add` verifies the leaf against the
//! name), so no X.509 parser of ours decides. The first certificate is the default, served to
//! clients without SNI or with a name no certificate covers (as nginx's default server does).
//!
//! Reload: the files' modification times and sizes are polled every [`POLL_INTERVAL`]; on a
//! change the whole set is rebuilt and swapped atomically (arc-swap), so a handshake sees one
//! consistent set. A broken new set (half-written file, key that does not match) keeps the old
//! one and is logged; the next change tries again.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ResolvesServerCertUsingSni};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::EdgeConfig;

/// How often certificate files are checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Why a certificate set could not be loaded. Every variant names the config key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{key}: cannot read {}", path.display())]
    Read {
        /// e.g. `edge.cert[0].cert`
        key: String,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("{key}: no PEM certificate in {}", path.display())]
    NoCertificate {
        /// e.g. `edge.cert[0].cert`
        key: String,
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no PEM private key.
    #[error("{key}: no PEM private key in {}", path.display())]
    NoKey {
        /// e.g. `edge.cert[0].key`
        key: String,
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the key, or the key does not belong to the certificate.
    #[error("{key}: {}: unusable key or key/certificate mismatch", path.display())]
    Unusable {
        /// e.g. `edge.cert[0].key`
        key: String,
        /// The key file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// No `[[edge.cert]]` at all.
    #[error("edge.cert: no certificate configured")]
    Empty,
}

impl TlsError {
    /// The config key behind the problem (`edge.cert[0].key`) and the problem, naming the file:
    /// `check` prints them as `CONFIG:LINE: KEY: problem`.
    pub fn key_and_problem(&self) -> (&str, String) {
        let (key, path, problem) = match self {
            TlsError::Read { key, path, source } => (key, path, format!("cannot read: {source}")),
            TlsError::NoCertificate { key, path } => {
                (key, path, "no PEM certificate found".to_owned())
            }
            TlsError::NoKey { key, path } => (key, path, "no PEM private key found".to_owned()),
            TlsError::Unusable { key, path, source } => (
                key,
                path,
                format!("unusable key or key/certificate mismatch: {source}"),
            ),
            TlsError::Empty => return ("edge.cert", "no certificate configured".to_owned()),
        };
        (key, format!("{}: {problem}", path.display()))
    }
}

/// A loaded certificate set, ready for handshakes.
#[derive(Debug)]
struct CertSet {
    by_name: ResolvesServerCertUsingSni,
    default: Arc<CertifiedKey>,
}

/// The live certificate resolver; cheap to share, swapped whole on a file change.
#[derive(Debug)]
pub struct EdgeCerts {
    config: EdgeConfig,
    current: ArcSwap<CertSet>,
    /// The files' stamps taken before the first load, where the watcher starts from.
    loaded: Vec<Stamp>,
}

/// Modification time and size of a file; `None` while it cannot be read.
type Stamp = Option<(SystemTime, u64)>;

impl ResolvesServerCert for EdgeCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.current.load();
        set.by_name
            .resolve(hello)
            .or_else(|| Some(set.default.clone()))
    }
}

impl EdgeCerts {
    /// Every problem of the certificate files `config` names, one per pair at most (`load`
    /// stops at the first), for `check` and a config reload.
    pub fn problems(config: &EdgeConfig) -> Vec<TlsError> {
        if config.certs.is_empty() {
            return vec![TlsError::Empty];
        }
        let pairs = config.certs.iter().enumerate();
        pairs
            .filter_map(|(i, c)| certified_key(i, &c.cert, &c.key).err())
            .collect()
    }

    /// Loads every certificate of `config`; a start-up error names the key at fault.
    pub fn load(config: &EdgeConfig) -> Result<Arc<EdgeCerts>, TlsError> {
        // Stamps first: a file replaced while (or after) it is read counts as a change.
        let loaded = stamps(config);
        let set = load_set(config)?;
        Ok(Arc::new(EdgeCerts {
            config: config.clone(),
            current: ArcSwap::from_pointee(set),
            loaded,
        }))
    }

    /// The acceptor: TLS 1.2 and 1.3 on ring, ALPN `h2` then `http/1.1`, SNI by this resolver.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Polls the files every [`POLL_INTERVAL`] until `self` is dropped; a changed file reloads
    /// the whole set.
    pub fn spawn_watcher(self: &Arc<Self>) {
        let weak: Weak<EdgeCerts> = Arc::downgrade(self);
        let mut seen = self.loaded.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(POLL_INTERVAL).await;
                let Some(certs) = weak.upgrade() else { return };
                let now = stamps(&certs.config);
                if now != seen {
                    seen = now;
                    certs.reload();
                }
            }
        });
    }

    /// Rebuilds the set from the files; on failure the old set stays.
    fn reload(&self) {
        match load_set(&self.config) {
            Ok(set) => {
                self.current.store(Arc::new(set));
                tracing::info!("edge certificates reloaded");
            }
            Err(err) => tracing::error!(
                error = %err,
                "edge certificates changed but cannot be loaded; keeping the previous ones"
            ),
        }
    }
}

/// Modification time and size of every cert and key file (None where unreadable).
fn stamps(config: &EdgeConfig) -> Vec<Stamp> {
    let stamp = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    config
        .certs
        .iter()
        .flat_map(|c| [stamp(&c.cert), stamp(&c.key)])
        .collect()
}

fn load_set(config: &EdgeConfig) -> Result<CertSet, TlsError> {
    let mut keys = Vec::with_capacity(config.certs.len());
    for (i, c) in config.certs.iter().enumerate() {
        keys.push(certified_key(i, &c.cert, &c.key)?);
    }
    let default = Arc::new(keys.first().cloned().ok_or(TlsError::Empty)?);
    let mut by_name = ResolvesServerCertUsingSni::new();
    for route in &config.routes {
        // `add` fails when the certificate is not valid for the name: try the next one.
        let found = keys
            .iter()
            .any(|k| by_name.add(&route.host, k.clone()).is_ok());
        if !found {
            tracing::warn!(
                host = %route.host,
                "no edge certificate is valid for this host; the default one will be served"
            );
        }
    }
    Ok(CertSet { by_name, default })
}

/// One `[[edge.cert]]` (index `i`) as a rustls key, its key checked against its certificate.
fn certified_key(i: usize, cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_key = format!("edge.cert[{i}].cert");
    let key_key = format!("edge.cert[{i}].key");
    let chain = read_chain(&cert_key, cert)?;
    let private = read_key(&key_key, key)?;
    let provider = rustls::crypto::ring::default_provider();
    let unusable = |source| TlsError::Unusable {
        key: key_key.clone(),
        path: key.to_owned(),
        source,
    };
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(unusable)?;
    let ck = CertifiedKey::new(chain, signing);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(ck),
        Err(e) => Err(unusable(e)),
    }
}

fn read_file(key: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key: key.to_owned(),
        path: path.to_owned(),
        source,
    })
}

fn read_chain(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file(key, path)?;
    let chain: Vec<_> = rustls_pemfile::certs(&mut BufReader::new(bytes.as_slice()))
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            key: key.to_owned(),
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

fn read_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_file(key, path)?;
    match rustls_pemfile::private_key(&mut BufReader::new(bytes.as_slice())) {
        Ok(Some(k)) => Ok(k),
        _ => Err(TlsError::NoKey {
            key: key.to_owned(),
            path: path.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CertConfig, RouteAuth, RouteConfig};

    fn edge_config(dir: &Path) -> EdgeConfig {
        let ck = rcgen::generate_simple_self_signed(vec!["a.example".to_owned()]).unwrap();
        let cert = dir.join("a.pem");
        let key = dir.join("a.key");
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
        EdgeConfig {
            listen_https: "127.0.0.1:0".parse().unwrap(),
            listen_http: None,
            certs: vec![CertConfig { cert, key }],
            routes: vec![RouteConfig {
                host: "a.example".to_owned(),
                backend: "http://127.0.0.1:1".parse().unwrap(),
                auth: RouteAuth::None,
                local_networks: Vec::new(),
            }],
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("portcullis-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn broken_new_certificate_keeps_the_old_one() {
        let dir = temp_dir("broken");
        let config = edge_config(&dir);
        let certs = EdgeCerts::load(&config).unwrap();
        let before = certs.current.load_full();
        std::fs::write(&config.certs[0].cert, "not a certificate\n").unwrap();
        certs.reload();
        assert!(Arc::ptr_eq(&before, &certs.current.load_full()));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn problems_name_the_key_and_the_file() {
        let dir = temp_dir("problems");
        let mut config = edge_config(&dir);
        config.certs[0].key = dir.join("missing.key");
        let err = EdgeCerts::load(&config).unwrap_err();
        let (key, problem) = err.key_and_problem();
        assert_eq!(key, "edge.cert[0].key");
        assert!(
            problem.ends_with("missing.key: cannot read: No such file or directory (os error 2)"),
            "{problem}"
        );
        std::fs::write(&config.certs[0].key, "junk").unwrap();
        let err = EdgeCerts::load(&config).unwrap_err();
        let (key, problem) = err.key_and_problem();
        assert_eq!(key, "edge.cert[0].key");
        assert!(problem.ends_with(": no PEM private key found"), "{problem}");
        let other = edge_config(&temp_dir("problems-other"));
        config.certs[0].key = other.certs[0].key.clone();
        let err = EdgeCerts::load(&config).unwrap_err();
        let (key, problem) = err.key_and_problem();
        assert_eq!(key, "edge.cert[0].key");
        assert!(
            problem.contains(": unusable key or key/certificate mismatch"),
            "{problem}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
