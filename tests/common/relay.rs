//! A TCP relay between one client and the API server that a test can cut: a network partition
//! for that client alone, while everyone else still reaches the API server directly.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// While cut, the relay forwards nothing in either direction and closes nothing: requests hang,
/// as they do behind a partition, and new connections are accepted and hang too. What it reads
/// meanwhile is held and delivered, late, once the cut is healed, as a network that was only
/// slow would deliver it. Dropping the relay closes every connection.
///
/// A stall ([`Relay::stall`]) is narrower and never heals: the connections open at that moment
/// go quiet for good, as behind a load balancer or a NAT entry that forgot them, while new ones
/// pass.
pub struct Relay {
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    /// Connections numbered below this forward nothing more.
    stalled_below: watch::Sender<u64>,
    opened: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the relay");
        let addr = listener.local_addr().expect("the relay's address");
        let (cut, cut_rx) = watch::channel(false);
        let (stalled_below, stall_rx) = watch::channel(0);
        let opened = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = opened.clone();
        let task = tokio::spawn(async move {
            // Owned here: aborting this task drops the set, which aborts every connection's pumps.
            let mut pumps = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let id = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let gate = Gate {
                    id,
                    cut: cut_rx.clone(),
                    stalled_below: stall_rx.clone(),
                };
                pumps.spawn(pump(client_read, server_write, gate.clone()));
                pumps.spawn(pump(server_read, client_write, gate));
                while pumps.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            cut,
            stalled_below,
            opened,
            task,
        }
    }

    /// Starts a relay to `cp`'s API server.
    pub async fn to(cp: &trust_rotation_operator::testbed::ControlPlane) -> Self {
        let upstream = cp.server().trim_start_matches("https://");
        Self::start(upstream.parse().expect("the API server's address")).await
    }

    /// Writes `<name>.kubeconfig` beside `cp`'s admin kubeconfig: the same, through the relay.
    pub fn kubeconfig(
        &self,
        cp: &trust_rotation_operator::testbed::ControlPlane,
        name: &str,
    ) -> std::path::PathBuf {
        let path = cp.dir().join(format!("{name}.kubeconfig"));
        let text = std::fs::read_to_string(cp.kubeconfig()).expect("the admin kubeconfig");
        let relayed = text.replace(cp.server(), &format!("https://{}", self.addr));
        std::fs::write(&path, relayed).expect("writing the relayed kubeconfig");
        path
    }

    pub fn cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }

    /// Every connection open now forwards nothing more, in either direction, and is never
    /// closed; connections opened later pass.
    pub fn stall(&self) {
        let opened = self.opened.load(std::sync::atomic::Ordering::SeqCst);
        self.stalled_below.send_replace(opened);
    }

    /// How many connections the relay has accepted.
    pub fn connections(&self) -> u64 {
        self.opened.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// What a connection's pumps wait on before forwarding.
#[derive(Clone)]
struct Gate {
    id: u64,
    cut: watch::Receiver<bool>,
    stalled_below: watch::Receiver<u64>,
}

impl Gate {
    /// Returns when the bytes read may go on; `false` when the relay is gone.
    async fn open(&mut self) -> bool {
        if self.id < *self.stalled_below.borrow() {
            std::future::pending::<()>().await;
        }
        self.cut.wait_for(|cut| !cut).await.is_ok()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut gate: Gate,
) {
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !gate.open().await || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
