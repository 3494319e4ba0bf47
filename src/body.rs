//! The one body type on both legs: empty, a buffered chunk, or a streamed hyper body.
//!
//! An enum instead of a boxed trait object keeps the forward-auth hot path free of a heap
//! allocation per request, while passthrough traffic still streams both ways unbuffered.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;

/// A request or response body.
#[derive(Debug, Default)]
pub enum Body {
    /// No bytes at all (`Content-Length: 0`).
    #[default]
    Empty,
    /// One buffered chunk, sent whole.
    Full(Option<Bytes>),
    /// A body streamed from the other side.
    Stream(Incoming),
}

impl Body {
    /// A buffered body.
    pub fn full(bytes: impl Into<Bytes>) -> Body {
        Body::Full(Some(bytes.into()))
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(chunk) => Poll::Ready(chunk.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(incoming) => Pin::new(incoming).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(chunk) => chunk.is_none(),
            Body::Stream(incoming) => incoming.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Stream(incoming) => incoming.size_hint(),
        }
    }
}
