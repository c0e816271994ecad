//! The operator's Kubernetes client: kube's own, plus a deadline on every request that is not a
//! watch.
//!
//! kube sets no read timeout by default (it would cut quiet watches, which its watcher guards
//! with an idle timeout of its own). Every other request, though, could wait forever on a
//! connection whose peer has gone without a word (a load balancer or a NAT entry that forgot
//! it). The reconciler would then hang on one write while the lease, renewed over other
//! connections, kept it the leader: a rotation stuck with nobody to finish it. With the
//! deadline, such a request fails like any other refused one, is logged, and the next attempt
//! goes out on a new connection.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tower::{BoxError, Layer, Service};

/// A client from the environment (in-cluster config, else `$KUBECONFIG` or
/// `~/.kube/config`), as `kube::Client::try_default` finds it, with `request_timeout` on every
/// request that is not a watch.
pub async fn client(request_timeout: Duration) -> Result<kube::Client, kube::Error> {
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    // Every later error about a request says what went wrong, not where: say it once here.
    tracing::info!(api_server = %config.cluster_url, "Kubernetes API server");
    from_config(config, request_timeout)
}

/// [`client`], from a given configuration.
pub fn from_config(
    config: kube::Config,
    request_timeout: Duration,
) -> Result<kube::Client, kube::Error> {
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&DeadlineLayer {
            timeout: request_timeout,
        })
        .build())
}

/// Whether a request is a watch (`watch=true` or `watch=1` in its query): a long poll that may
/// rightly stay quiet for minutes, and that kube's watcher already guards.
pub fn is_watch(uri: &http::Uri) -> bool {
    uri.query().is_some_and(|query| {
        query
            .split('&')
            .any(|pair| pair == "watch=true" || pair == "watch=1")
    })
}

/// A request that was not answered, body and all, in time.
#[derive(Debug, thiserror::Error)]
#[error("{method} {path}: no complete answer from the API server within {timeout:?}")]
pub struct DeadlineExceeded {
    method: http::Method,
    path: String,
    timeout: Duration,
}

/// Puts a deadline on each request that is not a watch: its response, body included, must be
/// in by then.
#[derive(Clone, Copy, Debug)]
pub struct DeadlineLayer {
    pub timeout: Duration,
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            timeout: self.timeout,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
    timeout: Duration,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Deadline<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    ResBody: Body<Data = Bytes> + Unpin,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<DeadlineBody<ResBody>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // A timeout too long for the clock to add is no deadline at all.
        let at = Instant::now().checked_add(self.timeout);
        let deadline = at.filter(|_| !is_watch(request.uri())).map(|at| {
            let exceeded = DeadlineExceeded {
                method: request.method().clone(),
                path: request.uri().path().to_owned(),
                timeout: self.timeout,
            };
            (at, exceeded)
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            let Some((at, exceeded)) = deadline else {
                let response = response.await.map_err(Into::into)?;
                return Ok(response.map(DeadlineBody::unbounded));
            };
            match tokio::time::timeout_at(at, response).await {
                Ok(response) => {
                    let response = response.map_err(Into::into)?;
                    Ok(response.map(|body| DeadlineBody::until(body, at, exceeded)))
                }
                Err(_) => Err(exceeded.into()),
            }
        })
    }
}

/// A response body that fails once its request's deadline has passed.
pub struct DeadlineBody<B> {
    inner: B,
    deadline: Option<(Pin<Box<Sleep>>, DeadlineExceeded)>,
}

impl<B> DeadlineBody<B> {
    fn unbounded(inner: B) -> Self {
        Self {
            inner,
            deadline: None,
        }
    }

    fn until(inner: B, at: Instant, exceeded: DeadlineExceeded) -> Self {
        Self {
            inner,
            deadline: Some((Box::pin(tokio::time::sleep_until(at)), exceeded)),
        }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let expired =
            (this.deadline.as_mut()).is_some_and(|(sleep, _)| sleep.as_mut().poll(cx).is_ready());
        if let Some((_, exceeded)) = this.deadline.take_if(|_| expired) {
            return Poll::Ready(Some(Err(exceeded.into())));
        }
        Pin::new(&mut this.inner)
            .poll_frame(cx)
            .map(|frame| frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_are_told_by_their_query() {
        let watch = |uri: &str| is_watch(&uri.parse().unwrap());
        assert!(watch(
            "/api/v1/pods?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=7"
        ));
        assert!(watch("/api/v1/namespaces/x/configmaps?watch=1"));
        assert!(!watch("/api/v1/pods?limit=500"));
        assert!(!watch("/api/v1/pods?watch=false"));
        // A name that merely contains the word is no watch.
        assert!(!watch("/api/v1/namespaces/watch=true/pods"));
        assert!(!watch(
            "/api/v1/pods?fieldSelector=metadata.name%3Dwatch=true"
        ));
    }

    fn exceeded() -> DeadlineExceeded {
        DeadlineExceeded {
            method: http::Method::GET,
            path: "/api/v1/namespaces/default".to_owned(),
            timeout: Duration::from_millis(100),
        }
    }

    /// The answer's headers came in time, its body never does.
    #[tokio::test]
    async fn a_body_that_stops_coming_fails_at_the_deadline() {
        use http_body_util::BodyExt;
        let silent = http_body_util::StreamBody::new(futures::stream::pending::<
            Result<Frame<Bytes>, std::convert::Infallible>,
        >());
        let started = Instant::now();
        let at = started + Duration::from_millis(100);
        let read = DeadlineBody::until(silent, at, exceeded()).collect();
        let error = tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("the deadline ends the read")
            .expect_err("a body that never ends fails");
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(
            error.to_string(),
            "GET /api/v1/namespaces/default: no complete answer from the API server within 100ms"
        );
    }

    #[tokio::test]
    async fn a_body_read_in_time_is_passed_on_whole() {
        use http_body_util::BodyExt;
        let body = http_body_util::Full::new(Bytes::from_static(b"{\"kind\":\"Namespace\"}"));
        let at = Instant::now() + Duration::from_secs(5);
        let read = DeadlineBody::until(body, at, exceeded())
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&read[..], b"{\"kind\":\"Namespace\"}");
    }
}
