//! TLS for `https://` targets: the rustls client configuration, built once
//! per run. The server's certificate is checked against the system's roots
//! (`rustls-native-certs`, which honours `SSL_CERT_FILE` and
//! `SSL_CERT_DIR`), or against the certificates of `--ca FILE` instead, or
//! not at all with `--insecure`. ALPN offers `h2` with `--h2`, `http/1.1`
//! otherwise. ring is the crypto provider, as in the rest of the workspace.

use std::{path::Path, sync::Arc};

use rustls_pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};
use tokio_rustls::rustls::{
    self, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, ring},
};

use crate::{Error, Options};

/// The ALPN protocol id of HTTP/2.
pub(crate) const ALPN_H2: &[u8] = b"h2";
/// The ALPN protocol id of HTTP/1.1.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The client configuration for `options`' https target.
pub(crate) fn client_config(options: &Options) -> Result<Arc<ClientConfig>, Error> {
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let mut config = if options.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate { provider }))
            .with_no_client_auth()
    } else {
        let roots = match &options.ca {
            Some(path) => ca_file(path)?,
            None => system_roots()?,
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![if options.http2 { ALPN_H2 } else { ALPN_HTTP1 }.to_vec()];
    Ok(Arc::new(config))
}

/// The name the server's certificate must be valid for: the URL's host
/// (a DNS name or an IP address).
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, Error> {
    ServerName::try_from(host.to_owned()).map_err(|_| Error::InvalidUrl {
        url: host.to_owned(),
        reason: "the host is not a valid TLS server name (DNS name or IP address)".to_owned(),
    })
}

/// The certificates of a PEM file, as the only trust anchors.
fn ca_file(path: &Path) -> Result<RootCertStore, Error> {
    let invalid = |reason: String| Error::Ca {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| invalid(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    for (index, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let cert = cert.map_err(|e| invalid(format!("certificate {}: {e}", index + 1)))?;
        roots
            .add(cert)
            .map_err(|e| invalid(format!("certificate {}: {e}", index + 1)))?;
    }
    if roots.is_empty() {
        return Err(invalid(
            "no certificate in it: expected PEM `-----BEGIN CERTIFICATE-----` blocks".to_owned(),
        ));
    }
    Ok(roots)
}

/// The system's trusted roots.
fn system_roots() -> Result<RootCertStore, Error> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let reason = match found.errors.first() {
            Some(error) => error.to_string(),
            None => "the certificate store is empty".to_owned(),
        };
        return Err(Error::NoRoots { reason });
    }
    Ok(roots)
}

/// `--insecure`: any certificate is accepted for any name, but the
/// handshake's signatures are still verified with the certificate's key, so
/// the connection is at least encrypted to whoever holds that key.
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
