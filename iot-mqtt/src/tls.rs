//! TLS towards the broker for the backend side (rustls with the ring provider): the CA that
//! signed the broker's certificate and this client's own certificate chain and key, in PEM.
//!
//! With Mosquitto's `require_certificate true` and `use_identity_as_username true`, the
//! certificate's common name becomes the MQTT user name, which the ACL's `%u` patterns match:
//! a device's certificate names its device id, the bridge's names `backend`.

use std::fmt;
use std::sync::Arc;
use std::vec::Vec;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM input could not be read.
    #[error("PEM: {0}")]
    Pem(#[from] rustls::pki_types::pem::Error),
    /// rustls refused a certificate, the key or the protocol versions.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// The CA input holds no certificate.
    #[error("no CA certificate given")]
    NoCa,
}

impl iot_core::error::Error for TlsError {
    fn kind(&self) -> iot_core::error::ErrorKind {
        match self {
            Self::Pem(_) => iot_core::error::ErrorKind::Decode,
            Self::Rustls(_) | Self::NoCa => iot_core::error::ErrorKind::InvalidInput,
        }
    }
}

/// A client's TLS identity and trust: PEM bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// Certificates of the CA that signed the broker's certificate.
    pub ca_pem: Vec<u8>,
    /// This client's certificate chain.
    pub cert_pem: Vec<u8>,
    /// This client's private key (PKCS#8, SEC1 or PKCS#1).
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_pem", &self.ca_pem.len())
            .field("cert_pem", &self.cert_pem.len())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl ClientTls {
    /// A rustls client configuration: TLS 1.2 and 1.3, the given CA as the only root, the
    /// given certificate as client authentication.
    pub fn rustls_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&self.ca_pem) {
            roots.add(cert?)?;
        }
        if roots.is_empty() {
            return Err(TlsError::NoCa);
        }
        let chain =
            CertificateDer::pem_slice_iter(&self.cert_pem).collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        Ok(Arc::new(config))
    }
}
