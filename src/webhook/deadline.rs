//! Per-connection deadlines for HTTP/1: how long a kept-alive connection may wait for its next
//! request, how long a request may take to arrive once its first byte has, and how long a
//! client may leave an answer untaken.
//!
//! hyper's own `header_read_timeout` cannot serve for the first: it starts when hyper begins to
//! read a request head, which on a kept-alive connection is as soon as the previous answer is
//! written, so it closes idle connections too. A close racing the API server's next POST on that
//! connection fails the call (Go's client retries a POST only when nothing of it was written),
//! and the pod would be admitted unstamped. Here the two clocks are apart, as Go's `net/http`
//! server keeps them (`IdleTimeout`, `ReadHeaderTimeout`): the idle one runs between an answer
//! and the next request's first byte, the request one from that byte until the request is
//! answered. A write that cannot go out (a client that stops reading) is held to whichever clock
//! runs.
//!
//! The clocks follow requests from the IO's side, which sees bytes, not requests: a request is
//! answered when the service's answer is ready, and the next begins with the next byte read. An
//! answer given before its request's body was read (a 404, a 413) leaves the body to be read
//! after it, which then starts the request clock, so such a connection ends 30 s after that
//! rather than 120 s. The API server, which posts whole AdmissionReviews to the configured path,
//! never meets that.

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
    /// For the first byte of the next request (or for an answer to be taken).
    NextRequest,
    /// For the rest of a request that has begun.
    RestOfRequest,
}

/// An HTTP/1 connection's IO with the [`ConnectionTimeouts`]: a read still waiting when the idle
/// one has passed reads as closed (hyper then closes the connection cleanly); any other read or
/// write still waiting when its clock has run out fails with `TimedOut`.
pub struct Deadlines<T> {
    inner: T,
    timeouts: ConnectionTimeouts,
    answers: Answers,
    /// `answers` when last looked at: a change means a request was answered.
    seen: u32,
    waiting: Waiting,
    /// When the current wait runs out.
    due: Instant,
    /// Goes off at `due` or before it: it is set at most the shorter timeout ahead, so that
    /// moving `due` (twice a request) is a clock read rather than a change to the timer, and
    /// when it goes off early it is set again.
    alarm: Pin<Box<Sleep>>,
}

impl<T> Deadlines<T> {
    /// Wraps a connection that has just been accepted (its first request not yet begun);
    /// `answers` is counted by the connection's service.
    pub fn new(inner: T, timeouts: ConnectionTimeouts, answers: Answers) -> Self {
        let now = Instant::now();
        Self {
            inner,
            timeouts,
            seen: answers.count(),
            answers,
            waiting: Waiting::NextRequest,
            due: now + timeouts.idle,
            alarm: Box::pin(tokio::time::sleep_until(now + timeouts.step())),
        }
    }

    /// How long the current wait may last.
    fn within(&self) -> Duration {
        match self.waiting {
            Waiting::NextRequest => self.timeouts.idle,
            Waiting::RestOfRequest => self.timeouts.request,
        }
    }

    fn start(&mut self, waiting: Waiting) {
        self.waiting = waiting;
        // Never before the alarm: that was set at most `step` ahead, and `within` is not less.
        self.due = Instant::now() + self.within();
    }

    /// A request answered since the last look starts the idle clock.
    fn note_answers(&mut self) {
        let answered = self.answers.count();
        if answered != self.seen {
            self.seen = answered;
            self.start(Waiting::NextRequest);
        }
    }

    /// Whether the current wait has run out; if not, the task is woken when it may have.
    fn run_out(&mut self, cx: &mut Context<'_>) -> bool {
        self.note_answers();
        while self.alarm.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if now >= self.due {
                return true;
            }
            let next = self.due.min(now + self.timeouts.step());
            self.alarm.as_mut().reset(next);
        }
        false
    }

    fn timed_out(&self, what: &str) -> io::Error {
        let within = self.within();
        io::Error::new(io::ErrorKind::TimedOut, format!("{what} within {within:?}"))
    }

    /// `Pending` from the inner IO, unless the wait has run out: then `timed_out`.
    fn pending_or<R>(&mut self, cx: &mut Context<'_>, what: &str) -> Poll<io::Result<R>> {
        if self.run_out(cx) {
            Poll::Ready(Err(self.timed_out(what)))
        } else {
            Poll::Pending
        }
    }
}

impl ConnectionTimeouts {
    /// How far ahead the alarm is set: the shorter timeout.
    fn step(&self) -> Duration {
        self.idle.min(self.request)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Deadlines<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.note_answers();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && this.waiting == Waiting::NextRequest {
                    this.start(Waiting::RestOfRequest);
                }
                Poll::Ready(Ok(()))
            }
            // Nothing more comes: as if the client had closed. hyper ends an idle connection on
            // that without an error.
            Poll::Pending if this.waiting == Waiting::NextRequest => {
                if this.run_out(cx) {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                }
            }
            Poll::Pending => this.pending_or(cx, "the request did not arrive whole"),
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
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Pending => this.pending_or(cx, UNTAKEN),
            done => done,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.pending_or(cx, UNTAKEN),
            done => done,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.pending_or(cx, UNTAKEN),
            done => done,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Pending => this.pending_or(cx, UNTAKEN),
            done => done,
        }
    }
}

/// Why a write failed: the client did not read what was sent to it.
const UNTAKEN: &str = "the client took nothing written to it";

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const TIMEOUTS: ConnectionTimeouts = ConnectionTimeouts {
        idle: Duration::from_secs(120),
        request: Duration::from_secs(30),
    };

    /// A connection's server side, and the client's.
    fn connection(answers: &Answers) -> (DuplexStream, Deadlines<DuplexStream>) {
        let (client, server) = tokio::io::duplex(64);
        (client, Deadlines::new(server, TIMEOUTS, answers.clone()))
    }

    /// Reads once, waiting as long as it takes (time is paused and jumps to the next timer):
    /// what the read gave, and after how long. A read no timer ends fails the test.
    async fn read(io: &mut Deadlines<DuplexStream>) -> (io::Result<usize>, Duration) {
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(3600), io.read(&mut buf))
            .await
            .expect("a read that nothing ended");
        (read, started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_reads_as_closed_once_the_idle_timeout_has_passed() {
        let (_client, mut io) = connection(&Answers::default());
        let (read, after) = read(&mut io).await;
        assert_eq!(read.unwrap(), 0, "not closed");
        assert_eq!(after, TIMEOUTS.idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_begun_request_has_the_request_timeout_and_an_answer_restarts_the_idle_one() {
        let answers = Answers::default();
        let (mut client, mut io) = connection(&answers);
        // A request begins (its first bytes) after 100 s of idleness: from now on it has 30 s,
        // though the idle timeout would have left it 20.
        tokio::time::sleep(Duration::from_secs(100)).await;
        client
            .write_all(b"POST /mutate HTTP/1.1\r\n")
            .await
            .unwrap();
        assert_eq!(read(&mut io).await.0.unwrap(), 23);
        tokio::time::sleep(Duration::from_secs(29)).await;
        // Answered: the idle timeout runs again, in full, though the request one passes now.
        answers.answered();
        let (read_, after) = read(&mut io).await;
        assert_eq!(read_.unwrap(), 0, "not closed");
        assert_eq!(
            after, TIMEOUTS.idle,
            "the idle timeout did not restart on the answer"
        );
        // A request that stalls half-way is cut off once the request timeout has passed.
        let (mut client, mut io) = connection(&answers);
        client.write_all(b"POST").await.unwrap();
        assert_eq!(read(&mut io).await.0.unwrap(), 4);
        let (read_, after) = read(&mut io).await;
        let error = read_.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        assert!(
            error.to_string() == "the request did not arrive whole within 30s",
            "{error}"
        );
        assert_eq!(after, TIMEOUTS.request);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_the_client_does_not_take_fails_once_the_idle_timeout_has_passed() {
        let answers = Answers::default();
        let (_client, mut io) = connection(&answers);
        answers.answered();
        let started = Instant::now();
        // More than the pipe holds, and the client reads none of it.
        let error = io.write_all(&[b'x'; 1024]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        assert_eq!(
            error.to_string(),
            "the client took nothing written to it within 120s"
        );
        assert_eq!(started.elapsed(), TIMEOUTS.idle);
    }
}
