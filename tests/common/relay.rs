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
pub struct Relay {
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the relay");
        let addr = listener.local_addr().expect("the relay's address");
        let (cut, cut_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            // Owned here: aborting this task drops the set, which aborts every connection's pumps.
            let mut pumps = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                pumps.spawn(pump(client_read, server_write, cut_rx.clone()));
                pumps.spawn(pump(server_read, client_write, cut_rx.clone()));
                while pumps.try_join_next().is_some() {}
            }
        });
        Self { addr, cut, task }
    }

    /// `https://<addr>`, for a kubeconfig's `server`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn cut(&self, cut: bool) {
        self.cut.send_replace(cut);
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
    mut cut: watch::Receiver<bool>,
) {
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if cut.wait_for(|cut| !cut).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
