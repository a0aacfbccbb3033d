//! TLS termination (`[tls]`): the certificate and key the HTTPS listener
//! serves, read from PEM files and swapped in when they change.
//!
//! The listener takes the current [`ServerConfig`] for every new connection
//! (one atomic load, see [`Tls::acceptor`]); a reload builds a complete new
//! config first (parse, key matches certificate) and swaps it in, so open
//! connections keep the session they have and new ones get the new
//! certificate. A file that does not parse, or a key that does not match,
//! leaves the old certificate serving and is logged.
//!
//! rustls with the `ring` provider (the only crypto provider in the tree);
//! TLS 1.2 and 1.3; ALPN offers `h2` and `http/1.1`, served by the same
//! hyper connection builder as the plain listener. One certificate for all
//! names (no SNI selection).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, ServerConfig};

use crate::base::config::TlsConfig;

/// How long a client may take to complete the TLS handshake (like the
/// 10 s a request head may take).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a certificate or key was not loaded. The message names the config
/// key and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("`{key}`: cannot read {path}: {error}")]
    Read {
        /// `tls.cert` or `tls.key`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file is not the PEM expected.
    #[error("`{key}`: {path}: {message}")]
    Pem {
        /// `tls.cert` or `tls.key`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the pair (the key does not match the certificate, an
    /// unsupported key type).
    #[error("`tls.cert`/`tls.key`: {cert} with {key}: {message}")]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// A certificate and key read and checked, ready to serve.
#[derive(Debug)]
pub struct Loaded {
    config: Arc<ServerConfig>,
    /// Hash of both files' bytes: a reload of the same bytes is a no-op.
    digest: u64,
    /// Certificates in the chain.
    chain: usize,
}

impl Loaded {
    /// Certificates in the chain (leaf first).
    pub fn chain_len(&self) -> usize {
        self.chain
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        key,
        path: path.to_owned(),
        error,
    })
}

/// Reads `cert` and `key` and builds a server config: the chain must hold
/// at least one certificate, the key must parse and match the leaf.
/// Blocking.
pub fn load(cert: &Path, key: &Path) -> Result<Loaded, TlsError> {
    let cert_pem = read("tls.cert", cert)?;
    let key_pem = read("tls.key", key)?;
    let pem_err = |k: &'static str, path: &Path, message: String| TlsError::Pem {
        key: k,
        path: path.to_owned(),
        message,
    };
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err("tls.cert", cert, format!("invalid PEM: {e}")))?;
    if chain.is_empty() {
        return Err(pem_err(
            "tls.cert",
            cert,
            "no certificate (expected \"-----BEGIN CERTIFICATE-----\" blocks, leaf first)".into(),
        ));
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        let message = match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "no private key (expected a \"-----BEGIN PRIVATE KEY-----\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block)".into()
            }
            e => format!("invalid PEM: {e}"),
        };
        pem_err("tls.key", key, message)
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pair_err = |message: String| TlsError::Pair {
        cert: cert.to_owned(),
        key: key.to_owned(),
        message,
    };
    let len = chain.len();
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| pair_err(e.to_string()))?
        .with_no_client_auth()
        // Checks that the key belongs to the leaf certificate.
        .with_single_cert(chain, private)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                pair_err("the private key does not belong to the certificate".into())
            }
            e => pair_err(e.to_string()),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut hasher = DefaultHasher::new();
    cert_pem.hash(&mut hasher);
    key_pem.hash(&mut hasher);
    Ok(Loaded {
        config: Arc::new(config),
        digest: hasher.finish(),
        chain: len,
    })
}

#[derive(Debug)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    digest: u64,
}

/// The certificate the HTTPS listener serves now, and where it comes from.
#[derive(Debug)]
pub struct Tls {
    current: ArcSwap<ServerConfig>,
    files: Mutex<Files>,
}

/// What a reload of the certificate files did.
#[derive(Debug)]
pub enum TlsReload {
    /// New connections get the new certificate.
    Swapped {
        /// Certificates in the new chain.
        chain: usize,
    },
    /// The files hold what is served already.
    Unchanged,
    /// The files were refused; the previous certificate keeps serving.
    Rejected(TlsError),
}

impl Tls {
    /// Loads the files `config` names. Blocking.
    pub fn new(config: &TlsConfig) -> Result<Self, TlsError> {
        let loaded = load(&config.cert, &config.key)?;
        Ok(Self {
            current: ArcSwap::new(loaded.config),
            files: Mutex::new(Files {
                cert: config.cert.clone(),
                key: config.key.clone(),
                digest: loaded.digest,
            }),
        })
    }

    /// An acceptor with the current certificate, for one new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    fn files(&self) -> std::sync::MutexGuard<'_, Files> {
        // Every change is one assignment: a poisoned lock is consistent.
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The certificate and key files served now.
    pub fn paths(&self) -> (PathBuf, PathBuf) {
        let files = self.files();
        (files.cert.clone(), files.key.clone())
    }

    /// Reads the files again and swaps in what they hold, if it is new and
    /// valid. Blocking.
    pub fn reload(&self) -> TlsReload {
        let mut files = self.files();
        match load(&files.cert, &files.key) {
            Ok(loaded) if loaded.digest == files.digest => TlsReload::Unchanged,
            Ok(loaded) => {
                files.digest = loaded.digest;
                self.current.store(loaded.config);
                TlsReload::Swapped {
                    chain: loaded.chain,
                }
            }
            Err(e) => TlsReload::Rejected(e),
        }
    }

    /// Serves `loaded`, read from `config`'s files, from now on (a config
    /// reload that names other files).
    pub fn switch(&self, config: &TlsConfig, loaded: Loaded) {
        let mut files = self.files();
        files.cert.clone_from(&config.cert);
        files.key.clone_from(&config.key);
        files.digest = loaded.digest;
        self.current.store(loaded.config);
    }
}
