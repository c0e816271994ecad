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
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ReadChain(provider)))
        .with_no_client_auth();
    // A resumed session would report the chain of the session it resumed, not the live one.
    // (A probe ends before a session ticket arrives, and linkerd2-proxy sends none; this keeps
    // it so whatever the server does.)
    config.resumption = rustls::client::Resumption::disabled();
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

/// Linkerd's identity controller serves its metrics on this port (`-admin-addr`), among them,
/// since Linkerd 2.18, `issuer_cert_ttl_seconds`: the seconds its loaded issuer has left.
pub const IDENTITY_ADMIN_PORT: u16 = 9990;

/// The metrics are read whole, up to this: a controller serves tens of kilobytes.
const METRICS_MAX_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("{addr}: connecting: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr}: reading /metrics: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr}: no answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("{addr}: /metrics answered {status:?}")]
    Status { addr: SocketAddr, status: String },
    #[error("{addr}: /metrics is over {METRICS_MAX_BYTES} bytes")]
    TooLarge { addr: SocketAddr },
    #[error("{addr}: /metrics has no issuer_cert_ttl_seconds (Linkerd before 2.18)")]
    NoIssuerTtl { addr: SocketAddr },
}

/// The seconds the issuer an identity controller replica signs with has left, from its
/// `issuer_cert_ttl_seconds` at `addr` (`podIP:9990`). An HTTP/1.0 request, so the answer is
/// whole when the connection closes, never chunked.
pub async fn issuer_ttl_seconds(addr: SocketAddr, timeout: Duration) -> Result<f64, ScrapeError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let scrape = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ScrapeError::Connect { addr, source })?;
        let io = |source| ScrapeError::Io { addr, source };
        let request =
            format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut answer = Vec::new();
        let mut limited = (&mut stream).take(METRICS_MAX_BYTES as u64 + 1);
        limited.read_to_end(&mut answer).await.map_err(io)?;
        if answer.len() > METRICS_MAX_BYTES {
            return Err(ScrapeError::TooLarge { addr });
        }
        Ok(answer)
    };
    let answer = tokio::time::timeout(timeout, scrape)
        .await
        .map_err(|_| ScrapeError::Timeout { addr, timeout })??;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        let status = status.to_owned();
        return Err(ScrapeError::Status { addr, status });
    }
    issuer_ttl_in(body).ok_or(ScrapeError::NoIssuerTtl { addr })
}

/// `issuer_cert_ttl_seconds` in metrics of Prometheus' text format (`name{labels} value
/// [timestamp]`).
fn issuer_ttl_in(metrics: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix("issuer_cert_ttl_seconds")?;
        let rest = match rest.strip_prefix('{') {
            Some(labels) => &labels[labels.find('}')? + 1..],
            None if rest.starts_with([' ', '\t']) => rest,
            None => return None,
        };
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The metric's parse, and the scrape over real sockets: a metrics server's answer read whole,
/// what a server without the metric or with an error says, a closed port.
#[cfg(test)]
mod scrape_tests {
    use super::*;

    #[test]
    fn the_issuer_ttl_is_read_from_prometheus_text() {
        let metrics = "# HELP issuer_cert_ttl_seconds The remaining time-to-live.\n\
            # TYPE issuer_cert_ttl_seconds gauge\n\
            issuer_cert_ttl_seconds_other 1\n\
            issuer_cert_ttl_seconds 3.1535966230955437e+07\n";
        assert_eq!(issuer_ttl_in(metrics), Some(31535966.230955437));
        assert_eq!(
            issuer_ttl_in("issuer_cert_ttl_seconds{component=\"identity\"} -572.5 1700000000\n"),
            Some(-572.5)
        );
        assert_eq!(issuer_ttl_in("go_goroutines 12\n"), None);
        assert_eq!(issuer_ttl_in("issuer_cert_ttl_seconds soon\n"), None);
    }

    async fn serve(status: axum::http::StatusCode, body: &'static str) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || async move { (status, body) }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    #[tokio::test]
    async fn an_identity_controllers_issuer_ttl_is_scraped_over_http() {
        use axum::http::StatusCode;
        let timeout = Duration::from_secs(2);
        let body = "# TYPE issuer_cert_ttl_seconds gauge\nissuer_cert_ttl_seconds 172799.5\n";
        let ok = serve(StatusCode::OK, body).await;
        assert_eq!(issuer_ttl_seconds(ok, timeout).await.unwrap(), 172799.5);
        let older = serve(StatusCode::OK, "go_goroutines 12\n").await;
        let e = issuer_ttl_seconds(older, timeout).await.unwrap_err();
        assert!(matches!(e, ScrapeError::NoIssuerTtl { .. }), "{e}");
        let failing = serve(StatusCode::SERVICE_UNAVAILABLE, "").await;
        let e = issuer_ttl_seconds(failing, timeout).await.unwrap_err();
        assert!(e.to_string().contains("503"), "{e}");
        let closed = SocketAddr::from(([127, 0, 0, 1], crate::testbed::free_port().unwrap()));
        let e = issuer_ttl_seconds(closed, timeout).await.unwrap_err();
        assert!(matches!(e, ScrapeError::Connect { .. }), "{e}");
    }
}
