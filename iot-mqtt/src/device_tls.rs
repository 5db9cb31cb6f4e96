//! TLS 1.3 for the device session (feature `tls`): [`TlsTcp`] opens TCP through any
//! `embedded-nal-async` stack and runs `embedded-tls` over it, with caller-provided record
//! buffers (no allocator), the broker's certificate checked against the fleet CA, and the
//! device's certificate and P-256 key as client authentication.
//!
//! The cipher suite is `TLS_AES_128_GCM_SHA256`; certificates must be ECDSA P-256 with
//! SHA-256 (what `rcgen` and most fleet CAs issue for devices). The broker's name must be a DNS
//! name in its certificate (`subjectAltName` or common name). Certificate validity periods are
//! not checked: a device usually has no trusted clock before it is online; the CA's key is the
//! trust anchor.

use core::net::SocketAddr;

use embedded_io_async::Error as _;
use embedded_nal_async::TcpConnect;
use embedded_tls::pki::CertVerifier;
use embedded_tls::{
    Aes128GcmSha256, Certificate, CryptoProvider, CryptoRngCore, SignatureScheme, TlsClock,
    TlsConfig, TlsConnection, TlsContext, TlsError, TlsVerifier,
};
use p256::ecdsa::{DerSignature, SigningKey};
use p256::pkcs8::DecodePrivateKey;

use crate::device::{Connector, DeviceError};

/// The largest server certificate chain, in bytes, the verifier keeps during a handshake.
pub const CERT_CHAIN_MAX: usize = 4096;

/// A clock that does not know the time: validity periods are not checked.
#[derive(Debug, Clone, Copy)]
pub struct NoClock;

impl TlsClock for NoClock {
    fn now() -> Option<u64> {
        None
    }
}

/// Why a TLS identity was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// The device key is not a PKCS#8 DER P-256 private key.
    #[error("device key is not a PKCS#8 DER P-256 key")]
    BadKey,
}

impl iot_core::error::Error for TlsSetupError {
    fn kind(&self) -> iot_core::error::ErrorKind {
        iot_core::error::ErrorKind::InvalidInput
    }
}

/// The device's TLS identity and trust, all DER and borrowed (they can live in flash).
#[derive(Debug, Clone, Copy)]
pub struct DeviceIdentity<'a> {
    /// The fleet CA that signed the broker's certificate.
    pub ca_der: &'a [u8],
    /// The device's certificate.
    pub cert_der: &'a [u8],
    /// The device's P-256 private key, PKCS#8 DER.
    pub key_pkcs8_der: &'a [u8],
    /// The broker's DNS name, checked against its certificate and sent as SNI.
    pub server_name: &'a str,
}

struct Provider<'p, 'a, R> {
    rng: &'p mut R,
    verifier: CertVerifier<'a, Aes128GcmSha256, NoClock, CERT_CHAIN_MAX>,
    key: &'p SigningKey,
    cert_der: &'a [u8],
}

impl<R: CryptoRngCore> CryptoProvider for Provider<'_, '_, R> {
    type CipherSuite = Aes128GcmSha256;
    type Signature = DerSignature;

    fn rng(&mut self) -> impl CryptoRngCore {
        &mut *self.rng
    }

    fn verifier(&mut self) -> Result<&mut impl TlsVerifier<Self::CipherSuite>, TlsError> {
        Ok(&mut self.verifier)
    }

    fn signer(
        &mut self,
    ) -> Result<(impl signature::SignerMut<Self::Signature>, SignatureScheme), TlsError> {
        Ok((self.key.clone(), SignatureScheme::EcdsaSecp256r1Sha256))
    }

    fn client_cert(&mut self) -> Option<Certificate<impl AsRef<[u8]>>> {
        Some(Certificate::X509(self.cert_der))
    }
}

/// TLS over TCP for [`DeviceSession::connect`](crate::device::DeviceSession::connect).
///
/// The record buffers bound the largest TLS record: 16,640 bytes each take any record; a
/// broker that honours the max-fragment-length extension allows less.
pub struct TlsTcp<'a, T, R> {
    stack: &'a T,
    identity: DeviceIdentity<'a>,
    key: SigningKey,
    rng: R,
    read_buf: &'a mut [u8],
    write_buf: &'a mut [u8],
}

impl<'a, T: TcpConnect, R: CryptoRngCore> TlsTcp<'a, T, R> {
    /// A connector over `stack` with `identity`, a cryptographic random number generator and
    /// the two record buffers.
    pub fn new(
        stack: &'a T,
        identity: DeviceIdentity<'a>,
        rng: R,
        read_buf: &'a mut [u8],
        write_buf: &'a mut [u8],
    ) -> Result<Self, TlsSetupError> {
        let key = SigningKey::from_pkcs8_der(identity.key_pkcs8_der)
            .map_err(|_| TlsSetupError::BadKey)?;
        Ok(Self {
            stack,
            identity,
            key,
            rng,
            read_buf,
            write_buf,
        })
    }
}

impl<T: TcpConnect, R: CryptoRngCore> Connector for TlsTcp<'_, T, R> {
    type Io<'b>
        = TlsConnection<'b, T::Connection<'b>, Aes128GcmSha256>
    where
        Self: 'b;

    async fn open(&mut self, remote: SocketAddr) -> Result<Self::Io<'_>, DeviceError> {
        let socket = self
            .stack
            .connect(remote)
            .await
            .map_err(|e| DeviceError::Transport(e.kind()))?;
        let mut tls = TlsConnection::new(socket, self.read_buf, self.write_buf);
        let config = TlsConfig::new().with_server_name(self.identity.server_name);
        let provider = Provider {
            rng: &mut self.rng,
            verifier: CertVerifier::new(Certificate::X509(self.identity.ca_der)),
            key: &self.key,
            cert_der: self.identity.cert_der,
        };
        tls.open(TlsContext::new(&config, provider))
            .await
            .map_err(|_| DeviceError::Tls)?;
        Ok(tls)
    }
}
