//! Per-connection deadlines for HTTP/1: how long a kept-alive connection may wait for its next
//! request, and how long a request may take to arrive once its first byte has.
//!
//! hyper's own `header_read_timeout` cannot serve for the first: it starts when hyper begins to
//! read a request head, which on a kept-alive connection is as soon as the previous answer is
//! written, so it closes idle connections too. A close racing the API server's next POST on that
//! connection fails the call (Go's client retries a POST only when nothing of it was written),
//! and the pod would be admitted unstamped. Here the two clocks are apart, as Go's `net/http`
//! server keeps them (`IdleTimeout`, `ReadHeaderTimeout`): the idle one runs between an answer
//! and the next request's first byte, the request one from that byte until the request is
//! answered.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How long an HTTP/1 connection may wait for its next request, and take to send one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionTimeouts {
    /// From the handshake or an answer until the next request's first byte. Longer than the API
    /// server's own 90 s keep-alive for its webhook connections (Go's `http.DefaultTransport`
    /// `IdleConnTimeout`), so that it is always the API server that closes an idle connection,
    /// never this side under its next request.
    pub idle: Duration,
    /// From a request's first byte until it has been answered: the head and the body must
    /// arrive within it. The API server sends both at once; 30 s is the longest `timeoutSeconds`
    /// a webhook can be given, past which the API server has given up the call anyway.
    pub request: Duration,
}

impl Default for ConnectionTimeouts {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(120),
            request: Duration::from_secs(30),
        }
    }
}

/// Counts the answers given on one connection; the [`Deadlines`] of that connection read it to
/// know that a request is over. Cloned into the connection's service.
#[derive(Clone, Debug, Default)]
pub struct Answers(Arc<AtomicU32>);

impl Answers {
    /// One more request answered (its response is ready to be written).
    pub fn answered(&self) {
        // One connection's service and IO are polled by the same task: no ordering is needed.
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiting {
    /// For the first byte of the next request.
    NextRequest,
    /// For the rest of a request that has begun.
    RestOfRequest,
}

/// An HTTP/1 connection's IO with the [`ConnectionTimeouts`]: past the idle one it reads as
/// closed (hyper then closes the connection cleanly); past the request one, reading fails with
/// `TimedOut`. Writes pass through untouched.
pub struct Deadlines<T> {
    inner: T,
    timeouts: ConnectionTimeouts,
    answers: Answers,
    /// `answers` when last looked at: a change means a request was answered.
    seen: u32,
    waiting: Waiting,
    deadline: Pin<Box<Sleep>>,
}

impl<T> Deadlines<T> {
    /// Wraps a connection that has just been accepted (its first request not yet begun);
    /// `answers` is counted by the connection's service.
    pub fn new(inner: T, timeouts: ConnectionTimeouts, answers: Answers) -> Self {
        Self {
            inner,
            timeouts,
            seen: answers.count(),
            answers,
            waiting: Waiting::NextRequest,
            deadline: Box::pin(tokio::time::sleep(timeouts.idle)),
        }
    }

    fn start(&mut self, waiting: Waiting) {
        self.waiting = waiting;
        let within = match waiting {
            Waiting::NextRequest => self.timeouts.idle,
            Waiting::RestOfRequest => self.timeouts.request,
        };
        self.deadline.as_mut().reset(Instant::now() + within);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Deadlines<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let answered = this.answers.count();
        if answered != this.seen {
            this.seen = answered;
            this.start(Waiting::NextRequest);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && this.waiting == Waiting::NextRequest {
                    this.start(Waiting::RestOfRequest);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                // Nothing more comes: as if the client had closed. hyper ends an idle
                // connection on that without an error.
                Poll::Ready(()) if this.waiting == Waiting::NextRequest => Poll::Ready(Ok(())),
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the request did not arrive whole within {:?} of its first byte",
                        this.timeouts.request
                    ),
                ))),
            },
            error => error,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Deadlines<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const TIMEOUTS: ConnectionTimeouts = ConnectionTimeouts {
        idle: Duration::from_secs(120),
        request: Duration::from_secs(30),
    };

    /// Reads once; `Err(())` if the read did not finish (the deadline has not passed).
    async fn read_once(
        io: &mut Deadlines<tokio::io::DuplexStream>,
    ) -> Result<io::Result<usize>, ()> {
        let mut buf = [0u8; 64];
        tokio::time::timeout(Duration::from_millis(1), io.read(&mut buf))
            .await
            .map_err(|_| ())
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_reads_as_closed_after_the_idle_timeout() {
        let (client, server) = tokio::io::duplex(64);
        let mut io = Deadlines::new(server, TIMEOUTS, Answers::default());
        tokio::time::sleep(Duration::from_secs(119)).await;
        assert!(
            read_once(&mut io).await.is_err(),
            "closed before the idle timeout"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(read_once(&mut io).await.unwrap().unwrap(), 0, "not closed");
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_begun_request_has_the_request_timeout_and_an_answer_restarts_the_idle_one() {
        let (mut client, server) = tokio::io::duplex(64);
        let answers = Answers::default();
        let mut io = Deadlines::new(server, TIMEOUTS, answers.clone());
        // A request begins (its first bytes) after 100 s of idleness: from now on it has 30 s.
        tokio::time::sleep(Duration::from_secs(100)).await;
        client
            .write_all(b"POST /mutate HTTP/1.1\r\n")
            .await
            .unwrap();
        assert_eq!(read_once(&mut io).await.unwrap().unwrap(), 23);
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(
            read_once(&mut io).await.is_err(),
            "cut off before the request timeout"
        );
        // Answered: the idle timeout runs again, in full, though the request one has passed.
        answers.answered();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            read_once(&mut io).await.is_err(),
            "the request timeout ran while idle"
        );
        tokio::time::sleep(Duration::from_secs(117)).await;
        assert!(
            read_once(&mut io).await.is_err(),
            "closed before the idle timeout"
        );
        // The next request stalls half-way: cut off once the request timeout has passed.
        client.write_all(b"POST").await.unwrap();
        assert_eq!(read_once(&mut io).await.unwrap().unwrap(), 4);
        tokio::time::sleep(Duration::from_secs(30)).await;
        let error = read_once(&mut io).await.unwrap().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        assert!(
            error.to_string().contains("within 30s of its first byte"),
            "{error}"
        );
    }
}
