//! The one body type on both legs: empty, a buffered chunk, or a streamed hyper body, the
//! latter optionally under an idle deadline.
//!
//! An enum instead of a boxed trait object keeps the forward-auth hot path free of a heap
//! allocation per request, while passthrough traffic still streams both ways unbuffered.
//! `Empty` and `Full` never allocate; a [`Body::Watched`] stream allocates its timer on its
//! first wait, so a body that is never polled (an empty `GET` body) costs nothing.
//!
//! Idle deadline (security rule 6, every wait has a timeout): a watched stream fails with
//! [`BodyError::Idle`] when the next frame has not arrived [`STREAM_IDLE_TIMEOUT`] after it was
//! asked for, like nginx's `proxy_read_timeout` (the time between two successive reads, not the
//! whole transfer). The clock runs only while the consumer waits: a slow reader (backpressure)
//! never trips it. The error ends the stream, so hyper resets the connection (HTTP/1.1) or the
//! stream (HTTP/2) instead of holding it open forever.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// The longest wait for the next frame of a watched stream: nginx's `proxy_read_timeout`
/// default, so a long poll or a slow report that worked behind nginx still works here.
pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A request or response body.
#[derive(Debug, Default)]
pub enum Body {
    /// No bytes at all (`Content-Length: 0`).
    #[default]
    Empty,
    /// One buffered chunk, sent whole.
    Full(Option<Bytes>),
    /// A body streamed from the other side, without a deadline of its own.
    Stream(Incoming),
    /// A body streamed from the other side that fails when it goes quiet.
    Watched(Idle<Incoming>),
}

impl Body {
    /// A buffered body.
    pub fn full(bytes: impl Into<Bytes>) -> Body {
        Body::Full(Some(bytes.into()))
    }

    /// A streamed body that fails when no frame arrives within `idle` of being asked for.
    pub fn watched(body: Incoming, idle: Duration) -> Body {
        Body::Watched(Idle::new(body, idle))
    }
}

/// Why a body stream ended early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The other side broke the stream.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// No frame arrived within the idle deadline.
    #[error("no body data for {0:?}")]
    Idle(Duration),
}

impl From<std::convert::Infallible> for BodyError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(chunk) => Poll::Ready(chunk.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(incoming) => Pin::new(incoming).poll_frame(cx).map_err(BodyError::from),
            Body::Watched(idle) => Pin::new(idle).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(chunk) => chunk.is_none(),
            Body::Stream(incoming) => incoming.is_end_stream(),
            Body::Watched(idle) => idle.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Stream(incoming) => incoming.size_hint(),
            Body::Watched(idle) => idle.size_hint(),
        }
    }
}

/// A body that fails with [`BodyError::Idle`] when its next frame is `idle` late.
#[derive(Debug)]
pub struct Idle<B> {
    inner: B,
    idle: Duration,
    /// Created on the first wait (one allocation per streamed body, none per frame).
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether the last poll was pending: the deadline runs from the first pending poll.
    waiting: bool,
}

impl<B> Idle<B> {
    /// Wraps `inner` with an idle deadline of `idle`.
    pub fn new(inner: B, idle: Duration) -> Idle<B> {
        Idle {
            inner,
            idle,
            timer: None,
            waiting: false,
        }
    }
}

impl<B> HttpBody for Idle<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.waiting = false;
            let frame = frame.map(|f| f.map_err(Into::into));
            if let Some(Err(err)) = &frame {
                tracing::debug!(error = %err, "streamed body broke off");
            }
            return Poll::Ready(frame);
        }
        let deadline = Instant::now() + this.idle;
        let timer = match &mut this.timer {
            Some(timer) => {
                if !this.waiting {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => this
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        this.waiting = true;
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                tracing::info!(idle = ?this.idle, "streamed body cut: no data within the idle timeout");
                Poll::Ready(Some(Err(BodyError::Idle(this.idle))))
            }
            Poll::Pending => Poll::Pending,
        }
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
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    /// A body fed by a channel: frames arrive when the test sends them.
    struct Chan(mpsc::Receiver<Bytes>);

    impl HttpBody for Chan {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    const IDLE: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn watched_body_fails_when_no_frame_arrives_within_the_idle_deadline() {
        let (tx, rx) = mpsc::channel(4);
        let mut body = Idle::new(Chan(rx), IDLE);
        let started = Instant::now();
        tx.send(Bytes::from_static(b"head")).await.unwrap();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "head");
        // The sender stays alive but silent: the stream must fail, not hang.
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(matches!(err, BodyError::Idle(d) if d == IDLE), "{err:?}");
        assert_eq!(started.elapsed(), IDLE);
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn each_frame_restarts_the_idle_deadline() {
        let (tx, rx) = mpsc::channel(4);
        let mut body = Idle::new(Chan(rx), IDLE);
        let started = Instant::now();
        let feeder = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(IDLE - Duration::from_secs(1)).await;
                tx.send(Bytes::from_static(b"tick")).await.unwrap();
            }
            // Ends the stream cleanly.
        });
        for _ in 0..3 {
            let f = body.frame().await.unwrap().unwrap();
            assert_eq!(f.into_data().unwrap(), "tick");
        }
        assert!(body.frame().await.is_none(), "clean end, no idle error");
        // Three gaps of 59 s: far past one deadline in total, never one idle gap.
        assert!(started.elapsed() >= 3 * (IDLE - Duration::from_secs(1)));
        feeder.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_does_not_trip_the_deadline() {
        let (tx, rx) = mpsc::channel(4);
        let mut body = Idle::new(Chan(rx), IDLE);
        tx.send(Bytes::from_static(b"a")).await.unwrap();
        body.frame().await.unwrap().unwrap();
        // The consumer does not ask for 5 minutes (backpressure), then data is there.
        tokio::time::sleep(5 * IDLE).await;
        tx.send(Bytes::from_static(b"b")).await.unwrap();
        let f = body.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "b");
    }

    #[test]
    fn buffered_bodies_are_complete_without_a_timer() {
        let b = Body::full("x");
        assert_eq!(b.size_hint().exact(), Some(1));
        assert!(Body::Empty.is_end_stream());
        // The enum stays small: no variant boxes per request.
        assert!(
            std::mem::size_of::<Body>() <= 128,
            "{}",
            std::mem::size_of::<Body>()
        );
    }
}
