//! The webhook's HTTPS server over real TLS handshakes on loopback: certificate rotation under a
//! running server (Kubernetes' Secret-volume symlink swap and in-place rewrites), connections in
//! flight kept, oversized and malformed bodies, graceful shutdown.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::eventually;
use common::server::InProcessWebhook;
use common::tls_client::{Connection, client_config};
use hyper::body::Bytes;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trust_rotation_operator::crd::Phase;
use trust_rotation_operator::webhook::deadline::ConnectionTimeouts;
use trust_rotation_operator::webhook::patch::RotationView;
use trust_rotation_operator::webhook::view::ViewHandle;

const RELOAD: Duration = Duration::from_millis(50);

/// A dev CA and serving certificate in their own folder.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        trust_rotation_operator::devcerts::write(dir.path(), vec!["localhost".to_owned()]).unwrap();
        Self { dir }
    }
    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn ca(&self) -> Vec<u8> {
        std::fs::read(self.file("ca.crt")).unwrap()
    }
    fn leaf(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(self.file("tls.crt")).unwrap()
    }
}

/// A folder laid out as the kubelet lays out a Secret volume: `tls.crt -> ..data/tls.crt`,
/// `..data -> ..<version>`, and an update is one atomic rename of `..data`.
struct SecretVolume {
    dir: tempfile::TempDir,
    version: u32,
}

impl SecretVolume {
    fn new(certs: &Certs) -> Self {
        let mut volume = Self {
            dir: tempfile::tempdir().unwrap(),
            version: 0,
        };
        volume.update(certs);
        for name in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), volume.dir.path().join(name))
                .unwrap();
        }
        volume
    }

    fn update(&mut self, certs: &Certs) {
        self.version += 1;
        let root = self.dir.path();
        let version = format!("..2026_11_23_00_00_{:02}.{}", self.version, self.version);
        std::fs::create_dir(root.join(&version)).unwrap();
        for name in ["tls.crt", "tls.key"] {
            std::fs::copy(certs.file(name), root.join(&version).join(name)).unwrap();
        }
        std::os::unix::fs::symlink(&version, root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }
    fn key(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }
}

fn view() -> ViewHandle {
    ViewHandle::fixed(RotationView::new(Phase::Synced, None, None))
}

fn review_body(uid: &str) -> Bytes {
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "plain", "name": "p", "operation": "CREATE",
            "userInfo": {"username": "test"},
            "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                "spec": {"containers": [{"name": "app", "image": "app"}]}}
        }
    });
    Bytes::from(serde_json::to_vec(&review).unwrap())
}

/// Posts one review on `conn` and checks it was answered for that uid.
async fn round_trip(conn: &mut Connection, uid: &str) {
    let (status, body) = conn.post("/mutate", review_body(uid)).await.unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["response"]["uid"], uid);
    assert_eq!(v["response"]["allowed"], true);
}

/// Opens new connections until one is served `want`.
async fn wait_served(addr: std::net::SocketAddr, config: &Arc<rustls::ClientConfig>, want: &Certs) {
    let want = want.leaf();
    eventually(
        "the new certificate on a new connection",
        Duration::from_secs(10),
        || {
            let (config, want) = (config.clone(), want.clone());
            async move {
                let conn = Connection::open(addr, config).await.ok()?;
                (conn.peer_certificate == want).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_volume_swap_is_served_on_the_next_connection_and_keeps_connections_in_flight() {
    let (old, new) = (Certs::new(), Certs::new());
    let mut volume = SecretVolume::new(&old);
    let server = InProcessWebhook::start(&volume.cert(), &volume.key(), view(), RELOAD).await;
    let config = client_config(&[&old.ca(), &new.ca()]);

    let mut in_flight = Connection::open(server.addr, config.clone()).await.unwrap();
    assert_eq!(in_flight.peer_certificate, old.leaf());
    round_trip(&mut in_flight, "before").await;

    volume.update(&new);
    wait_served(server.addr, &config, &new).await;

    // The connection opened before the swap still works (and keeps the certificate it had).
    round_trip(&mut in_flight, "after").await;
    assert_eq!(in_flight.peer_certificate, old.leaf());

    // A client that trusts only the old CA is now refused: the old certificate is gone.
    let old_only = client_config(&[&old.ca()]);
    assert!(Connection::open(server.addr, old_only).await.is_err());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_written_update_keeps_the_old_certificate_until_the_pair_matches() {
    let (old, new) = (Certs::new(), Certs::new());
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::copy(old.file("tls.crt"), &cert).unwrap();
    std::fs::copy(old.file("tls.key"), &key).unwrap();
    let server = InProcessWebhook::start(&cert, &key, view(), RELOAD).await;
    let config = client_config(&[&old.ca(), &new.ca()]);

    // New certificate, old key: a pair that does not match is never served.
    std::fs::copy(new.file("tls.crt"), &cert).unwrap();
    let err = server.resolver.reload().unwrap_err().to_string();
    assert!(err.contains("is not the private key of"), "{err}");
    tokio::time::sleep(RELOAD * 4).await;
    let mut conn = Connection::open(server.addr, config.clone()).await.unwrap();
    assert_eq!(conn.peer_certificate, old.leaf());
    round_trip(&mut conn, "half-written").await;

    // Garbage in place of the certificate: refused on reload, and still the old one served.
    std::fs::write(&cert, b"not a certificate").unwrap();
    assert!(server.resolver.reload().is_err());
    tokio::time::sleep(RELOAD * 4).await;
    let conn = Connection::open(server.addr, config.clone()).await.unwrap();
    assert_eq!(conn.peer_certificate, old.leaf());

    // The matching key arrives: the new pair is served.
    std::fs::copy(new.file("tls.crt"), &cert).unwrap();
    std::fs::copy(new.file("tls.key"), &key).unwrap();
    wait_served(server.addr, &config, &new).await;
    server.stop().await;
}

/// A server on a fresh dev certificate.
async fn serve_fresh_certs() -> (Certs, InProcessWebhook) {
    let certs = Certs::new();
    let (cert, key) = (certs.file("tls.crt"), certs.file("tls.key"));
    let server = InProcessWebhook::start(&cert, &key, view(), RELOAD).await;
    (certs, server)
}

/// Writes raw HTTP over TLS, for requests a well-behaved client would not send.
async fn raw_tls(
    addr: std::net::SocketAddr,
    certs: &Certs,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(client_config(&[&certs.ca()]))
        .connect(
            rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
            tcp,
        )
        .await
        .unwrap()
}

/// Reads what the server sent first; it must be a 413, within 5 s.
async fn assert_answered_413(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    what: &str,
) {
    let mut response = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut response))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap();
    let response = String::from_utf8_lossy(&response[..n]);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
}

/// TLS 1.2 and 1.3 are both served (the API server of an older cluster may offer only 1.2).
/// Nothing older can be: rustls implements neither 1.0 nor 1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_tls_1_2_and_1_3() {
    let (certs, server) = serve_fresh_certs().await;
    for (version, want) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let config = common::tls_client::client_config_for(&[&certs.ca()], &[version]);
        let mut conn = Connection::open(server.addr, config).await.unwrap();
        assert_eq!(conn.protocol_version, Some(want));
        round_trip(&mut conn, &format!("{want:?}")).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_is_refused_with_413() {
    let (certs, server) = serve_fresh_certs().await;
    let mut tls = raw_tls(server.addr, &certs).await;
    // Announce 8 MiB, send 1 KiB, and wait: the answer must come without the rest.
    let head = format!(
        "POST /mutate HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        8 * 1024 * 1024
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&[b' '; 1024]).await.unwrap();
    tls.flush().await.unwrap();
    assert_answered_413(&mut tls, "an answer before the body was sent").await;

    // Without an announced length (chunked), the body is cut off at the limit while read.
    let mut tls = raw_tls(server.addr, &certs).await;
    let head = "POST /mutate HTTP/1.1\r\nhost: 127.0.0.1\r\ntransfer-encoding: chunked\r\n\r\n";
    tls.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
    for _ in 0..(8 * 16) {
        if tls.write_all(chunk.as_bytes()).await.is_err() {
            break; // the server answered and closed: expected
        }
    }
    let _ = tls.flush().await;
    assert_answered_413(&mut tls, "an answer to an endless chunked body").await;
    // Both counted, as invalid requests.
    let invalid = r#"trust_rotation_webhook_admissions_total{outcome="invalid"}"#;
    assert_eq!(server.metric(invalid), Some(2.0));

    // The limit is 7 MiB: a body just under it is read and answered (invalid, but 200).
    let mut conn = Connection::open(server.addr, client_config(&[&certs.ca()]))
        .await
        .unwrap();
    let (status, _) = conn
        .post("/mutate", Bytes::from(vec![b' '; 7 * 1024 * 1024 - 1]))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(server.metric(invalid), Some(3.0));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_get_200_and_say_what_was_wrong() {
    let (certs, server) = serve_fresh_certs().await;
    let mut conn = Connection::open(server.addr, client_config(&[&certs.ca()]))
        .await
        .unwrap();
    for (body, says) in [
        (&b"{not json"[..], "not an AdmissionReview"),
        (&b""[..], "not an AdmissionReview"),
        (
            &br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u-1"}}"#[..],
            "admission.k8s.io/v1beta1",
        ),
        (
            &br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#[..],
            "no request",
        ),
    ] {
        let (status, answer) = conn.post("/mutate", Bytes::from(body)).await.unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(body));
        let v: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        let message = v["response"]["status"]["message"].as_str().unwrap_or("");
        assert!(message.contains(says), "{message:?} should mention {says:?}");
    }
    // The connection survived every bad request.
    round_trip(&mut conn, "still-alive").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_stops_accepting() {
    let (certs, server) = serve_fresh_certs().await;
    let addr = server.addr;
    let config = client_config(&[&certs.ca()]);
    let mut conn = Connection::open(addr, config.clone()).await.unwrap();
    round_trip(&mut conn, "before-shutdown").await;
    drop(conn);
    tokio::time::timeout(Duration::from_secs(5), server.stop())
        .await
        .expect("shutdown within 5s when idle");
    assert!(Connection::open(addr, config).await.is_err());
}

/// The load bench's handlers (the no-op, the ladder's rungs, the webhook) all serve over the real
/// TLS stack, and every one but the no-op answers the typical pod with the webhook's patch: the
/// bench compares like with like.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_bench_handlers_answer_the_typical_pod() {
    use common::server::{LoadHandler, load_router, typical_body};
    let certs = Certs::new();
    let config = client_config(&[&certs.ca()]);
    let mut patched = Vec::new();
    for handler in [LoadHandler::Noop, LoadHandler::Webhook]
        .into_iter()
        .chain(LoadHandler::LADDER)
    {
        assert_eq!(LoadHandler::from_name(handler.name()), Some(handler));
        let server = InProcessWebhook::start_app(
            &certs.file("tls.crt"),
            &certs.file("tls.key"),
            load_router(handler),
            Duration::from_secs(3600),
        )
        .await;
        let mut conn = Connection::open(server.addr, config.clone()).await.unwrap();
        let (status, answer) = conn
            .post("/mutate", Bytes::from(typical_body()))
            .await
            .unwrap();
        assert_eq!(status, 200, "{handler:?}");
        let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(answer["response"]["allowed"], true, "{handler:?}");
        if handler == LoadHandler::Noop {
            assert!(answer["response"].get("patch").is_none());
        } else {
            patched.push((handler, answer["response"]["patch"].clone()));
        }
        server.stop().await;
    }
    // Every rung answers with the webhook's own patch.
    let (_, webhook_patch) = &patched[0];
    assert!(
        webhook_patch.is_string(),
        "the webhook patched the typical pod"
    );
    for (handler, patch) in &patched {
        assert_eq!(patch, webhook_patch, "{handler:?}");
    }
}

/// A client that refuses the serving certificate (a caBundle of another CA: the API server
/// then admits pods without the webhook) is counted by reason, apart from clients that only
/// open and close a connection; one that trusts it is not counted at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_refusing_the_certificate_is_counted_apart() {
    let (certs, server) = serve_fresh_certs().await;
    let count = |reason: &str| {
        server
            .metric(&format!(
                "trust_rotation_webhook_tls_handshake_failures_total{{reason=\"{reason}\"}}"
            ))
            .unwrap()
    };
    // Trusted: no failure.
    let mut conn = Connection::open(server.addr, client_config(&[&certs.ca()]))
        .await
        .unwrap();
    round_trip(&mut conn, "trusted").await;
    // Another CA (of the same name), twice: the client aborts the handshake with an alert
    // (decrypt_error: the signature does not verify).
    let other = Certs::new();
    for _ in 0..2 {
        let refused = Connection::open(server.addr, client_config(&[&other.ca()])).await;
        assert!(refused.is_err());
    }
    // A connection opened and closed without a word.
    drop(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    eventually("the failures counted", Duration::from_secs(5), || async {
        (count("peer_rejected_certificate") == 2.0 && count("other") == 1.0).then_some(())
    })
    .await;
    assert_eq!(count("timed_out"), 0.0);
    server.stop().await;
}

/// Short connection timeouts, for the tests below.
const SHORT: ConnectionTimeouts = ConnectionTimeouts {
    idle: Duration::from_secs(3),
    request: Duration::from_millis(400),
};

/// How much earlier than its timeout a close may be seen: the client starts its clock after the
/// server starts its own (once it has read the answer, or once its write has returned).
const SLACK: Duration = Duration::from_millis(300);

async fn serve_timed(timeouts: ConnectionTimeouts) -> (Certs, InProcessWebhook) {
    let certs = Certs::new();
    let (cert, key) = (certs.file("tls.crt"), certs.file("tls.key"));
    let server = InProcessWebhook::start_timed(&cert, &key, view(), RELOAD, timeouts).await;
    (certs, server)
}

/// Reads until the server ends the connection (or `within` passes): how long that took, and
/// what was read.
async fn read_until_closed(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    within: Duration,
) -> (Option<Duration>, String) {
    let started = std::time::Instant::now();
    let mut received = Vec::new();
    let ended = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&received).into_owned();
    (ended.ok().map(|()| started.elapsed()), text)
}

/// A kept-alive connection may wait longer than the request timeout between requests (hyper's
/// own header-read timeout would close it here), and is closed once it has waited the idle one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_kept_for_the_idle_timeout_and_then_closed() {
    let (certs, server) = serve_timed(SHORT).await;
    let mut conn = Connection::open(server.addr, client_config(&[&certs.ca()]))
        .await
        .unwrap();
    round_trip(&mut conn, "first").await;
    tokio::time::sleep(SHORT.request * 2).await;
    round_trip(&mut conn, "after-twice-the-request-timeout").await;
    let answered = std::time::Instant::now();
    while !conn.is_closed() {
        assert!(
            answered.elapsed() < SHORT.idle * 2,
            "an idle connection still open after {:?} (idle timeout {:?})",
            SHORT.idle * 2,
            SHORT.idle
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let idle = answered.elapsed();
    eprintln!("closed after {idle:?} idle");
    assert!(idle >= SHORT.idle - SLACK, "closed early: {idle:?}");

    // The close is a clean one (TLS close_notify, then the end of the stream), as for a client
    // that closes; a connection that never sent a request ends the same way.
    let mut tls = raw_tls(server.addr, &certs).await;
    let started = std::time::Instant::now();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(SHORT.idle * 2, tls.read(&mut byte))
        .await
        .expect("a connection without a request still open");
    let ended = started.elapsed();
    assert_eq!(read.unwrap(), 0, "not a clean end of stream");
    assert!(ended >= SHORT.idle - SLACK, "closed early: {ended:?}");
    server.stop().await;
}

/// A request that stops half-way, in its head or its body, is cut off once the request timeout
/// has passed since its first byte, well before the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_stalls_is_cut_off_after_the_request_timeout() {
    let timeouts = ConnectionTimeouts {
        idle: Duration::from_secs(30),
        ..SHORT
    };
    let (certs, server) = serve_timed(timeouts).await;
    let body = review_body("stalled");
    let head = format!(
        "POST /mutate HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let partial_head = &head.as_bytes()[..head.len() / 2];
    let partial_body = [head.as_bytes(), &body[..body.len() / 2]].concat();
    for (what, sent) in [("head", partial_head), ("body", &partial_body[..])] {
        let mut tls = raw_tls(server.addr, &certs).await;
        tls.write_all(sent).await.unwrap();
        let (ended, received) = read_until_closed(&mut tls, Duration::from_secs(10)).await;
        let ended = ended.unwrap_or_else(|| panic!("a stalled {what} was still open after 10s"));
        eprintln!("stalled {what}: closed after {ended:?}, having sent {received:?}");
        assert!(
            ended >= timeouts.request - SLACK && ended < Duration::from_secs(5),
            "stalled {what}: closed after {ended:?}"
        );
        // Nothing that reads as an answer to the review.
        assert!(!received.contains("AdmissionReview"), "{received}");
    }
    // The server still answers whole requests on new connections.
    let mut conn = Connection::open(server.addr, client_config(&[&certs.ca()]))
        .await
        .unwrap();
    round_trip(&mut conn, "after-the-stalls").await;
    server.stop().await;
}

/// Negative control for the test above: with the default timeouts (a request has 30 s), the
/// same stalled head keeps its connection open, so the test above sees the short timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_within_the_default_timeout_keeps_its_connection() {
    let (certs, server) = serve_fresh_certs().await;
    let mut tls = raw_tls(server.addr, &certs).await;
    tls.write_all(b"POST /mutate HTTP/1.1\r\nhost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let (ended, received) = read_until_closed(&mut tls, SHORT.request * 5).await;
    assert_eq!(ended, None, "closed, having sent {received:?}");
    drop(tls);
    server.stop().await;
}
