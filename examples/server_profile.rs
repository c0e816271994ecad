//! The server's own instructions per admission, next to a no-op handler's on the same stack:
//! the load bench's ratio taken apart without the machine's noise.
//!
//! ```text
//! cargo build --release --example server_profile
//! valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file=/tmp/sp.%p \
//!     target/release/examples/server_profile hook 2000
//! ```
//!
//! Arguments: the handler, by its name in the bench (`webhook`, or `hook`; `no-op`, or `noop`;
//! a rung of the bench's ladder: `answer`, `validate`, `read`, `review`), and the number of
//! requests. The server runs on its own thread (`server`, the
//! second thread callgrind numbers) with a current-thread runtime, as in the bench; one
//! keep-alive TLS client on the main thread posts the typical pod's AdmissionReview. Run it with
//! two request counts: the difference of the server thread's totals over the difference of the
//! counts is one request's instructions in user space (the kernel's share is not counted).

#[allow(dead_code)]
#[path = "../tests/common/server.rs"]
mod server;
#[allow(dead_code)]
#[path = "../tests/common/tls_client.rs"]
mod tls_client;

use std::time::Duration;

use hyper::body::Bytes;

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let handler = match name.as_str() {
        "hook" => server::LoadHandler::Webhook,
        "noop" => server::LoadHandler::Noop,
        other => server::LoadHandler::from_name(other)
            .unwrap_or_else(|| panic!("unknown handler {other:?}")),
    };
    let n: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(1000);
    trust_rotation_operator::cli::init_logging(trust_rotation_operator::cli::LogFormat::Plain);
    let body = Bytes::from(server::typical_body());

    let dir = tempfile::tempdir().unwrap();
    trust_rotation_operator::devcerts::write(dir.path(), vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::Builder::new()
        .name("server".to_owned())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let server = server::InProcessWebhook::start_app(
                    &cert,
                    &key,
                    server::load_router(handler),
                    Duration::from_secs(3600),
                )
                .await;
                addr_tx.send(server.addr).unwrap();
                let _ = stop_rx.await;
                server.stop().await;
            });
        })
        .unwrap();

    let addr = addr_rx.recv().unwrap();
    let ca = std::fs::read(dir.path().join("ca.crt")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut conn = tls_client::Connection::open(addr, tls_client::client_config(&[&ca]))
            .await
            .unwrap();
        for _ in 0..n {
            let (status, _) = conn.post("/mutate", body.clone()).await.unwrap();
            assert_eq!(status, 200);
        }
    });
    let _ = stop_tx.send(());
    server.join().unwrap();
}
