//! The leaf probe of DESIGN.md ("Convergence"): a TLS handshake to a proxy's admin port with the
//! pod's identity as SNI and no client certificate, returning the chain the proxy presents, as
//! `linkerd identity` does. The chain is read, not trusted: judging it (is the leaf signed by
//! the active issuer?) is the caller's business.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{addr}: {identity:?} is not a valid TLS server name")]
    Name { addr: SocketAddr, identity: String },
    #[error("{addr}: connecting: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr}: TLS handshake: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr}: no answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("{addr}: the proxy presented no certificate")]
    NoCertificate { addr: SocketAddr },
}

/// Accepts whatever chain is presented (it is returned for the caller to judge) but still
/// checks the handshake signatures, so the peer holds the key of the leaf it shows.
#[derive(Debug)]
struct ReadChain(Arc<CryptoProvider>);

impl ServerCertVerifier for ReadChain {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client configuration for probes; build once, share.
pub fn client_config() -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ReadChain(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

/// The chain (leaf first, DER) that the proxy at `addr` presents for `identity`.
pub async fn probe_chain(
    config: Arc<ClientConfig>,
    addr: SocketAddr,
    identity: &str,
    timeout: Duration,
) -> Result<Vec<Vec<u8>>, ProbeError> {
    let name = ServerName::try_from(identity.to_owned()).map_err(|_| ProbeError::Name {
        addr,
        identity: identity.to_owned(),
    })?;
    let attempt = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| ProbeError::Connect { addr, source })?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|source| ProbeError::Handshake { addr, source })?;
        let chain: Vec<Vec<u8>> = tls
            .get_ref()
            .1
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|c| c.to_vec())
            .collect();
        if chain.is_empty() {
            return Err(ProbeError::NoCertificate { addr });
        }
        Ok(chain)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ProbeError::Timeout { addr, timeout })?
}
