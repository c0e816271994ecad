//! A keep-alive HTTPS/1.1 client for the webhook, built on the same rustls as the server, that
//! also reports which certificate the server presented. Shared by tests and the benchmark.

use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A TLS client config (ring provider) trusting the PEM CA certificates given.
pub fn client_config(ca_pems: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    client_config_for(ca_pems, rustls::DEFAULT_VERSIONS)
}

/// As [`client_config`], offering only the TLS `versions` given.
pub fn client_config_for(
    ca_pems: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for pem in ca_pems {
        for cert in CertificateDer::pem_slice_iter(pem) {
            roots.add(cert.expect("CA PEM")).expect("CA certificate");
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// One connection, reused for every request.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    /// The leaf certificate the server presented in this connection's handshake.
    pub peer_certificate: CertificateDer<'static>,
    /// The TLS version the handshake settled on.
    pub protocol_version: Option<rustls::ProtocolVersion>,
    _driver: tokio::task::JoinHandle<()>,
}

impl Connection {
    /// Connects to `addr` over TLS, verifying the server as `127.0.0.1`.
    pub async fn open(
        addr: std::net::SocketAddr,
        config: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let server_name = ServerName::IpAddress(addr.ip().into());
        let tls = TlsConnector::from(config).connect(server_name, tcp).await?;
        let peer_certificate = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .expect("server presented a certificate")
            .clone()
            .into_owned();
        let protocol_version = tls.get_ref().1.protocol_version();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(std::io::Error::other)?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self {
            sender,
            peer_certificate,
            protocol_version,
            _driver: driver,
        })
    }

    /// POSTs `body` as JSON to `path`; returns the status and the whole response body.
    pub async fn post(&mut self, path: &str, body: Bytes) -> Result<(u16, Bytes), hyper::Error> {
        let (status, _, body) = self.post_with_headers(path, body).await?;
        Ok((status, body))
    }

    /// As [`Connection::post`], with the response's headers.
    pub async fn post_with_headers(
        &mut self,
        path: &str,
        body: Bytes,
    ) -> Result<(u16, hyper::HeaderMap, Bytes), hyper::Error> {
        self.sender.ready().await?;
        let request = hyper::Request::post(path)
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .body(Full::new(body))
            .expect("request");
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, headers, body))
    }

    /// Whether the connection has ended (the server closed it).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}
