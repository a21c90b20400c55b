//! The client's request body on its way to a backend, and what is left of it
//! when an attempt fails, so that the request can go to another backend.
//!
//! Nothing is buffered unless a retry could use it: a body the backend never
//! read comes back whole, as it was; a body of a method that may be retried
//! after the backend read it is copied as it streams, up to a cap, and a body
//! larger than the cap streams on without a copy and is never retried.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;

use crate::body::{poll_timed, BodyError, IdleTimer};

/// A request body between attempts: the part already read from the client,
/// held in memory, then the part the client has not sent yet.
#[derive(Debug, Default)]
pub struct Replay {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    rest: Option<Incoming>,
}

impl Replay {
    /// A body not read at all yet.
    pub fn unread(body: Incoming) -> Replay {
        Replay {
            rest: Some(body),
            ..Replay::default()
        }
    }

    /// A copy, when the whole body is in memory; hedged requests need one.
    pub fn copy_if_complete(&self) -> Option<Replay> {
        self.rest.is_none().then(|| Replay {
            chunks: self.chunks.clone(),
            trailers: self.trailers.clone(),
            rest: None,
        })
    }
}

/// Copies of what has been sent, while they fit under the cap.
#[derive(Debug)]
struct Record {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    bytes: usize,
    cap: usize,
}

/// A request body sent to a backend.
///
/// When it is dropped before its end, what is left comes back through
/// [`Returned`]: all of it if nothing was read yet, or the copy of what was
/// read followed by the unread rest when copies are being kept. When it
/// reaches its end with a complete copy, the copy comes back at once, while
/// the backend is still answering, so that the request can be hedged. When
/// its end is reached, or it is dropped, it fires [`Sent`], which starts the
/// wait for the response.
#[derive(Debug)]
pub struct UpstreamBody {
    /// `None` for a request without a body. Boxed: every request's future
    /// holds its body, and most requests have none. Declared before `sent`
    /// so that it is dropped first: what is left is handed back before the
    /// wait for the response starts.
    stream: Option<Box<Streaming>>,
    sent: Option<oneshot::Sender<()>>,
}

/// A body's state while it streams to a backend.
#[derive(Debug)]
struct Streaming {
    replay: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    rest: Option<(Incoming, IdleTimer)>,
    record: Option<Record>,
    produced: bool,
    failed: bool,
    returned: Option<oneshot::Sender<Replay>>,
}

/// Receives what is left of a body after its attempt.
#[derive(Debug)]
pub struct Returned(oneshot::Receiver<Replay>);

impl Returned {
    /// What is left, if it can still be sent again and is back already.
    pub fn take(&mut self) -> Option<Replay> {
        self.0.try_recv().ok()
    }

    /// What is left, waiting at most `limit` for the body to come back: a
    /// connection that failed may hand its error over before it drops the
    /// body it was sending.
    pub async fn wait(&mut self, limit: Duration) -> Option<Replay> {
        tokio::time::timeout(limit, &mut self.0).await.ok()?.ok()
    }
}

/// Completes when the request body has been read to its end, or is gone.
/// Dropping the sender counts as sent, so that nothing waits forever.
#[derive(Debug)]
pub struct Sent(oneshot::Receiver<()>);

impl std::future::Future for Sent {
    type Output = ();

    /// Ready once the body is sent whole, or dropped, so that nothing waits forever.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

impl UpstreamBody {
    /// Gives up on the client's body when it arrives slower than `rate`
    /// bytes per second on average over [`crate::body::RATE_WINDOW`].
    pub fn with_min_rate(mut self, rate: u64) -> Self {
        if let Some((_, timer)) = self.stream.as_mut().and_then(|s| s.rest.as_mut()) {
            timer.min_rate(rate);
        }
        self
    }

    /// Sends `body`, pausing at most `idle` between two frames from the
    /// client. With `keep` set, copies of up to that many bytes are kept for
    /// another attempt.
    pub fn new(
        body: Replay,
        idle: Duration,
        keep: Option<usize>,
    ) -> (UpstreamBody, Returned, Sent) {
        let (returned_tx, returned_rx) = oneshot::channel();
        let (sent_tx, sent_rx) = oneshot::channel();
        let record = keep.map(|cap| Record {
            chunks: VecDeque::new(),
            trailers: None,
            bytes: 0,
            cap,
        });
        let body = UpstreamBody {
            stream: Some(Box::new(Streaming {
                replay: body.chunks,
                trailers: body.trailers,
                rest: body.rest.map(|b| (b, IdleTimer::new(idle))),
                record,
                produced: false,
                failed: false,
                returned: Some(returned_tx),
            })),
            sent: Some(sent_tx),
        };
        (body, Returned(returned_rx), Sent(sent_rx))
    }

    /// No body at all.
    pub fn empty() -> (UpstreamBody, Sent) {
        // Nothing to give back, so no channel for it.
        let (sent_tx, sent_rx) = oneshot::channel();
        let body = UpstreamBody {
            stream: None,
            sent: Some(sent_tx),
        };
        (body, Sent(sent_rx))
    }

    /// Starts the wait for the response.
    fn sent(&mut self) {
        if let Some(sent) = self.sent.take() {
            let _ = sent.send(());
        }
    }
}

impl Streaming {
    fn keep_data(&mut self, data: &Bytes, copy: bool) {
        let Some(record) = &mut self.record else {
            return;
        };
        record.bytes += data.len();
        if record.bytes > record.cap {
            // Too large to keep: this body can no longer be sent again.
            self.record = None;
            return;
        }
        // A slice of the connection's read buffer would pin the whole buffer.
        let data = if copy {
            Bytes::copy_from_slice(data)
        } else {
            data.clone()
        };
        record.chunks.push_back(data);
    }

    fn next_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(data) = self.replay.pop_front() {
            self.keep_data(&data, false);
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        let Some((body, timer)) = self.rest.as_mut() else {
            if let Some(trailers) = self.trailers.take() {
                if let Some(record) = &mut self.record {
                    record.trailers = Some(trailers.clone());
                }
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            return Poll::Ready(None);
        };
        let frame = match poll_timed(body, timer, cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(frame) => frame,
        };
        // A body of known length is at its end with its last data frame, and
        // hyper then stops polling: the end must be noticed here.
        let ended = frame.is_none() || body.is_end_stream();
        match &frame {
            None => {}
            Some(Err(_)) => self.failed = true,
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    let data = data.clone();
                    self.keep_data(&data, true);
                } else if let (Some(t), Some(record)) = (f.trailers_ref(), &mut self.record) {
                    record.trailers = Some(t.clone());
                }
            }
        }
        if ended {
            self.rest = None;
        }
        Poll::Ready(frame)
    }

    /// The whole body has been read: hands back the copy, if one was kept.
    fn finish(&mut self) {
        if let (Some(record), Some(returned)) = (self.record.take(), self.returned.take()) {
            let _ = returned.send(Replay {
                chunks: record.chunks,
                trailers: record.trailers,
                rest: None,
            });
        }
    }

    fn is_end_stream(&self) -> bool {
        self.replay.is_empty()
            && self.trailers.is_none()
            && self.rest.as_ref().is_none_or(|(b, _)| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let held: u64 = self.replay.iter().map(|c| c.len() as u64).sum();
        let Some((body, _)) = &self.rest else {
            return SizeHint::with_exact(held);
        };
        let rest = body.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(held));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(held));
        }
        hint
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let Some(stream) = this.stream.as_mut() else {
            this.sent();
            return Poll::Ready(None);
        };
        let polled = stream.next_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) => {
                stream.produced = true;
                if stream.is_end_stream() {
                    stream.finish();
                    this.sent();
                }
            }
            Poll::Ready(Some(Err(_))) => stream.produced = true,
            Poll::Ready(None) => {
                stream.finish();
                this.sent();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.stream.as_ref().is_none_or(|s| s.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.stream
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |s| s.size_hint())
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let Some(returned) = self.returned.take() else {
            return;
        };
        if self.failed {
            return;
        }
        let (mut chunks, trailers) = match self.record.take() {
            Some(record) => (record.chunks, record.trailers),
            // Without copies, only a body that was never read can be sent again.
            None if !self.produced => (VecDeque::new(), None),
            None => return,
        };
        chunks.append(&mut self.replay);
        let _ = returned.send(Replay {
            chunks,
            trailers: trailers.or(self.trailers.take()),
            rest: self
                .rest
                .take()
                .map(|(b, _)| b)
                .filter(|b| !b.is_end_stream()),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn held(chunks: &[&'static str]) -> Replay {
        Replay {
            chunks: chunks
                .iter()
                .map(|c| Bytes::from_static(c.as_bytes()))
                .collect(),
            trailers: None,
            rest: None,
        }
    }

    async fn read_all(body: UpstreamBody) -> Vec<u8> {
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_body_never_read_comes_back_whole() {
        let (body, mut returned, _sent) =
            UpstreamBody::new(held(&["ab", "cd"]), Duration::from_secs(1), None);
        drop(body);
        let back = returned.take().expect("returned");
        assert_eq!(back.chunks.len(), 2);
        let (body, _, _) = UpstreamBody::new(back, Duration::from_secs(1), None);
        assert_eq!(read_all(body).await, b"abcd");
    }

    #[tokio::test]
    async fn a_body_read_without_copies_is_lost() {
        let (mut body, mut returned, _sent) =
            UpstreamBody::new(held(&["ab", "cd"]), Duration::from_secs(1), None);
        let _ = body.frame().await;
        drop(body);
        assert!(returned.take().is_none());
    }

    #[tokio::test]
    async fn a_copied_body_comes_back_complete_at_its_end() {
        let (body, mut returned, sent) =
            UpstreamBody::new(held(&["ab", "cd"]), Duration::from_secs(1), Some(10));
        let (mut body, copy) = {
            let mut body = body;
            while let Some(f) = body.frame().await {
                f.unwrap();
            }
            let copy = returned
                .take()
                .expect("returned at the end, before the drop");
            (body, copy)
        };
        assert!(body.frame().await.is_none());
        sent.await;
        let again = copy.copy_if_complete().expect("complete");
        let (b, _, _) = UpstreamBody::new(again, Duration::from_secs(1), None);
        assert_eq!(read_all(b).await, b"abcd");
    }

    #[tokio::test]
    async fn a_copied_body_is_complete_with_its_last_data_frame() {
        // hyper stops polling a body of known length after its last frame.
        let (mut body, mut returned, sent) =
            UpstreamBody::new(held(&["ab", "cd"]), Duration::from_secs(1), Some(10));
        let _ = body.frame().await;
        assert!(returned.take().is_none(), "not complete yet");
        let _ = body.frame().await;
        assert!(body.is_end_stream());
        let copy = returned
            .take()
            .expect("complete without a poll for the end");
        assert!(copy.copy_if_complete().is_some());
        tokio::time::timeout(Duration::from_secs(1), sent)
            .await
            .expect("sent");
        drop(body);
    }

    #[tokio::test]
    async fn a_partly_read_copied_body_comes_back_in_order() {
        let (mut body, mut returned, _sent) =
            UpstreamBody::new(held(&["ab", "cd", "ef"]), Duration::from_secs(1), Some(10));
        let _ = body.frame().await;
        drop(body);
        let back = returned.take().expect("returned");
        let (b, _, _) = UpstreamBody::new(back, Duration::from_secs(1), None);
        assert_eq!(read_all(b).await, b"abcdef");
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_not_kept() {
        let (mut body, mut returned, _sent) =
            UpstreamBody::new(held(&["abc", "def"]), Duration::from_secs(1), Some(4));
        let _ = body.frame().await;
        let _ = body.frame().await;
        assert!(body.frame().await.is_none());
        drop(body);
        assert!(returned.take().is_none());
    }

    #[test]
    fn size_hint_counts_held_chunks() {
        let (body, _, _) = UpstreamBody::new(held(&["abc", "de"]), Duration::from_secs(1), None);
        assert_eq!(body.size_hint().exact(), Some(5));
        assert!(!body.is_end_stream());
        let (body, _) = UpstreamBody::empty();
        assert!(body.is_end_stream());
    }
}
