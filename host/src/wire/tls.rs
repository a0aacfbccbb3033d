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

/// Which of the two `[tls]` files; shown as its config key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    /// `tls.cert`, the certificate chain.
    Cert,
    /// `tls.key`, the private key.
    Key,
}

impl std::fmt::Display for TlsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsFile::Cert => "tls.cert",
            TlsFile::Key => "tls.key",
        })
    }
}

/// Why a certificate or key was not loaded. The message names the config
/// key and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("`{file}`: cannot read {path}: {error}")]
    Read {
        /// `tls.cert` or `tls.key`.
        file: TlsFile,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file is not the PEM expected.
    #[error("`{file}`: {path}: {problem}")]
    Pem {
        /// `tls.cert` or `tls.key`.
        file: TlsFile,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: PemProblem,
    },
    /// rustls refused the pair (the key does not match the certificate, an
    /// unsupported key type).
    #[error("`tls.cert`/`tls.key`: {cert} with {key}: {problem}")]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What is wrong.
        problem: PairProblem,
    },
}

/// What is wrong with a PEM file ([`TlsError::Pem`]).
#[derive(Debug, thiserror::Error)]
pub enum PemProblem {
    /// Not PEM, or a block is cut short.
    #[error("invalid PEM: {}", pem_message(.0))]
    Invalid(rustls_pki_types::pem::Error),
    /// `tls.cert` holds no certificate block.
    #[error("no certificate (expected \"-----BEGIN CERTIFICATE-----\" blocks, leaf first)")]
    NoCertificate,
    /// `tls.key` holds no private-key block.
    #[error(
        "no private key (expected a \"-----BEGIN PRIVATE KEY-----\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block)"
    )]
    NoPrivateKey,
}

/// A PEM parser error in words: the parser's own message shows the marker
/// it missed as a list of bytes.
fn pem_message(error: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match error {
        Error::MissingSectionEnd { end_marker } => {
            let label = String::from_utf8_lossy(end_marker);
            format!("a \"-----BEGIN {label}-----\" block has no \"-----END {label}-----\" line")
        }
        Error::IllegalSectionStart { line } => {
            format!("malformed BEGIN line {:?}", String::from_utf8_lossy(line))
        }
        other => other.to_string(),
    }
}

/// Why rustls refused a certificate and key ([`TlsError::Pair`]).
#[derive(Debug, thiserror::Error)]
pub enum PairProblem {
    /// The key is not the leaf certificate's.
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
    /// Anything else rustls refused (an unsupported key type, no protocol
    /// version).
    #[error("{0}")]
    Refused(rustls::Error),
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

fn read(file: TlsFile, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        file,
        path: path.to_owned(),
        error,
    })
}

/// Reads `cert` and `key` and builds a server config: the chain must hold
/// at least one certificate, the key must parse and match the leaf.
/// Blocking.
pub fn load(cert: &Path, key: &Path) -> Result<Loaded, TlsError> {
    let cert_pem = read(TlsFile::Cert, cert)?;
    let key_pem = read(TlsFile::Key, key)?;
    let pem_err = |file: TlsFile, path: &Path, problem: PemProblem| TlsError::Pem {
        file,
        path: path.to_owned(),
        problem,
    };
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(TlsFile::Cert, cert, PemProblem::Invalid(e)))?;
    if chain.is_empty() {
        return Err(pem_err(TlsFile::Cert, cert, PemProblem::NoCertificate));
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        let problem = match e {
            rustls_pki_types::pem::Error::NoItemsFound => PemProblem::NoPrivateKey,
            e => PemProblem::Invalid(e),
        };
        pem_err(TlsFile::Key, key, problem)
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pair_err = |problem: PairProblem| TlsError::Pair {
        cert: cert.to_owned(),
        key: key.to_owned(),
        problem,
    };
    let len = chain.len();
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| pair_err(PairProblem::Refused(e)))?
        .with_no_client_auth()
        // Checks that the key belongs to the leaf certificate.
        .with_single_cert(chain, private)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                pair_err(PairProblem::KeyMismatch)
            }
            e => pair_err(PairProblem::Refused(e)),
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
