//! TLS for the webhook: a serving certificate read from files and reloaded when they change
//! (including Kubernetes' Secret-volume symlink swap), and a rustls config limited to TLS 1.2
//! and 1.3.
//!
//! Reloading swaps the certificate used for new handshakes; connections in flight keep theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::logging::Lasted;

/// How often the certificate files are re-read. Kubernetes updates a mounted Secret within a
/// minute or so; a few seconds more is nothing, and reading two small files is free.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// A reload problem is said again when the certificate kept in service has this little left:
/// time for someone to fix the files before the API server refuses every handshake.
const EXPIRY_WARNING: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no PEM CERTIFICATE found")]
    NoCertificate { path: String },
    #[error("{path}: no usable PEM private key: {message}")]
    Key { path: String, message: String },
    #[error("{path}: certificate does not parse: {message}")]
    Certificate { path: String, message: String },
    #[error("{key} is not the private key of {cert}: {message}")]
    Mismatch {
        cert: String,
        key: String,
        message: String,
    },
    #[error("building the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A loaded serving certificate and when it expires.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// Unix seconds of the leaf's notAfter.
    pub not_after: i64,
}

/// The certificate file's bytes and the key file's.
type PairBytes = (Vec<u8>, Vec<u8>);

/// The two files' bytes, read once: what is parsed is what is remembered as served.
fn read_pair(cert_path: &Path, key_path: &Path) -> Result<PairBytes, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    Ok((read(cert_path)?, read(key_path)?))
}

fn parse(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
) -> Result<Loaded, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Certificate {
            path: cert_path.display().to_string(),
            message: e.to_string(),
        })?;
    let Some(leaf) = certs.first() else {
        return Err(TlsError::NoCertificate {
            path: cert_path.display().to_string(),
        });
    };
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| TlsError::Certificate {
            path: cert_path.display().to_string(),
            message: e.to_string(),
        })?;
    let not_after = parsed.validity().not_after.timestamp();
    let key_err = |message: String| TlsError::Key {
        path: key_path.display().to_string(),
        message,
    };
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| key_err(e.to_string()))?;
    let signing_key =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| key_err(e.to_string()))?;
    let key = CertifiedKey::new(certs, signing_key);
    // A Secret update seen half-way (new certificate, old key) must not be served: every
    // handshake would fail until the next poll.
    key.keys_match().map_err(|e| TlsError::Mismatch {
        cert: cert_path.display().to_string(),
        key: key_path.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(Loaded {
        key: Arc::new(key),
        not_after,
    })
}

/// Serves whichever certificate was loaded last.
#[derive(Debug)]
pub struct ReloadingResolver {
    cert_path: PathBuf,
    key_path: PathBuf,
    /// The certificate in service and the file bytes it was parsed from. Parsed from the very
    /// bytes remembered: a Secret-volume swap between two reads can never leave an old
    /// certificate served while the new files count as seen.
    state: RwLock<(Loaded, PairBytes)>,
}

impl ReloadingResolver {
    /// Loads the files once; fails if they are not usable now.
    pub fn new(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let bytes = read_pair(cert_path, key_path)?;
        let loaded = parse(cert_path, &bytes.0, key_path, &bytes.1)?;
        Ok(Arc::new(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            state: RwLock::new((loaded, bytes)),
        }))
    }

    /// notAfter (Unix seconds) of the certificate being served.
    pub fn not_after(&self) -> i64 {
        self.state.read().expect("resolver lock").0.not_after
    }

    /// Re-reads the files; swaps in the new certificate if they changed and parse. Returns
    /// `Ok(true)` on a swap. A half-written or bad pair leaves the old certificate in service.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let bytes = read_pair(&self.cert_path, &self.key_path)?;
        if self.state.read().expect("resolver lock").1 == bytes {
            return Ok(false);
        }
        let loaded = parse(&self.cert_path, &bytes.0, &self.key_path, &bytes.1)?;
        *self.state.write().expect("resolver lock") = (loaded, bytes);
        Ok(true)
    }

    /// Re-reads the files every `interval` until the task is dropped, calling `on_reload` with
    /// the new notAfter after each swap and `on_failure` after each read that could not be
    /// used. A failure that stays the same (a Secret mounted with a key that is not the
    /// certificate's, say) is logged once, again when it changes or clears, and once more when
    /// the certificate kept in service has less than a day (`EXPIRY_WARNING`) left; a served
    /// certificate that has expired is said once (from the first look, at startup), since the
    /// API server then refuses every handshake and admits pods unstamped.
    pub async fn watch(
        self: Arc<Self>,
        interval: Duration,
        on_reload: impl Fn(i64),
        on_failure: impl Fn(),
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = crate::logging::Lasting::default();
        let (mut said_expired, mut said_expiring) = (false, false);
        loop {
            tick.tick().await;
            let reloaded = self.reload();
            if reloaded.is_err() {
                on_failure();
            }
            match failing.record(reloaded.as_ref().err().map(ToString::to_string)) {
                Lasted::Failing(e) => {
                    tracing::warn!(error = %e, "serving certificate not reloaded; keeping the current one (said again only if the problem changes)")
                }
                Lasted::Cleared => {
                    tracing::info!(cert = %self.cert_path.display(), "serving certificate files usable again")
                }
                Lasted::Unchanged => {}
            }
            if let Ok(true) = reloaded {
                let not_after = self.not_after();
                tracing::info!(cert = %self.cert_path.display(), not_after, "serving certificate reloaded");
                on_reload(not_after);
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let expired = self.not_after() <= now;
            if expired && !said_expired {
                tracing::warn!(cert = %self.cert_path.display(), not_after = self.not_after(), "the serving certificate has expired: the API server refuses every handshake and admits pods without the webhook until it is renewed");
            }
            said_expired = expired;
            // A problem said once may be old news by the time it matters: said again, once,
            // when the certificate it keeps in service is about to expire.
            let expiring = !expired && self.not_after() - now < EXPIRY_WARNING.as_secs() as i64;
            if let (true, false, Some(problem)) = (expiring, said_expiring, failing.current()) {
                tracing::warn!(cert = %self.cert_path.display(), not_after = self.not_after(), problem = %problem, "the serving certificate expires within a day and its files still cannot be reloaded");
            }
            said_expiring = expiring && failing.current().is_some();
        }
    }
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.state.read().ok()?.0.key.clone())
    }
}

/// A TLS 1.2/1.3 server config (ring provider) that asks `resolver` for its certificate and
/// offers HTTP/1.1, the only protocol the server speaks (see [`super::server::serve_tls`]).
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::sim::pki::{Template, generate_key, to_pem};

    /// A serving pair in `dir` valid from `not_before` to `not_after`.
    fn write_pair(dir: &Path, not_before: time::OffsetDateTime, not_after: time::OffsetDateTime) {
        let key = generate_key().unwrap();
        let template = Template {
            common_name: "webhook".to_owned(),
            dns_names: vec!["localhost".to_owned()],
            is_ca: false,
            not_before,
            not_after,
        };
        let cert = template.self_signed(&key).unwrap();
        std::fs::write(dir.join("tls.crt"), to_pem(&cert)).unwrap();
        std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    }

    /// Files that cannot be used are counted at every look but logged once per problem, said
    /// again once when the certificate kept in service has less than a day left, and said
    /// usable again when they are; a served certificate that has expired is said once.
    #[tokio::test(start_paused = true)]
    async fn a_lasting_reload_problem_is_logged_once_and_counted_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let now = time::OffsetDateTime::now_utc();
        let day = time::Duration::days(1);
        write_pair(dir.path(), now - day, now + time::Duration::hours(12));
        let resolver = ReloadingResolver::new(&cert, &key).unwrap();
        let logs = crate::logging::tests::Buffer::default();
        let _logging = tracing::subscriber::set_default(logs.subscriber());
        let failures = Arc::new(AtomicU32::new(0));
        let counted = failures.clone();
        let every = Duration::from_secs(2);
        let watch = resolver.watch(
            every,
            |_| {},
            move || {
                counted.fetch_add(1, Ordering::SeqCst);
            },
        );
        let looks = async {
            // A key that is not the certificate's, for ten looks.
            std::fs::write(&key, generate_key().unwrap().serialize_pem()).unwrap();
            tokio::time::sleep(every * 10).await;
            // Then an expired pair, for five.
            write_pair(dir.path(), now - day * 2, now - day);
            tokio::time::sleep(every * 5).await;
        };
        tokio::select! {
            () = watch => unreachable!("the watch ended"),
            () = looks => {}
        }
        let text = logs.text();
        let failed = failures.load(Ordering::SeqCst);
        assert!((9..=11).contains(&failed), "{failed} failures counted");
        assert_eq!(text.matches("not reloaded").count(), 1, "{text}");
        assert!(text.contains("is not the private key of"), "{text}");
        assert_eq!(text.matches("usable again").count(), 1, "{text}");
        assert_eq!(text.matches("has expired").count(), 1, "{text}");
        assert_eq!(text.matches("expires within a day").count(), 1, "{text}");
    }
}
