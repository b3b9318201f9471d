//! The progress streams of both APIs (server-sent events and gRPC server streaming): a render
//! on its own task whose [`Progress`] events and end reach the client as they happen, and
//! which stops when the client's stream is dropped (the task is aborted: its searches stop
//! within a step and its queued generation items are dropped). How the frames are written
//! on the wire is each API's business.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::task::AbortHandle;
use tokio_stream::Stream;

use super::error::ApiError;
use super::state::AppState;
use crate::pipeline::{Progress, ProgressSink, Rendered};

/// One thing a progress stream tells: an event, or the end.
pub(super) enum Frame {
    Progress(Progress),
    Done(Box<Result<Rendered, ApiError>>),
}

/// A render in progress, as a stream of [`Frame`]s that ends after `Done`.
pub(super) struct Watching {
    /// Frames read while starting, told first.
    first: VecDeque<Frame>,
    rx: UnboundedReceiver<Frame>,
    task: AbortHandle,
    finished: bool,
}

impl Watching {
    /// Starts rendering `layout` and waits until it is planned and admitted: an error before
    /// then (a bad layout, no room) is the request's own answer, with its status; later ones
    /// end the stream.
    pub async fn start(state: Arc<AppState>, layout: Vec<u8>) -> Result<Self, ApiError> {
        let (tx, rx) = unbounded_channel();
        let events = tx.clone();
        let sink: ProgressSink = Arc::new(move |p| {
            let _ = events.send(Frame::Progress(p));
        });
        let task = tokio::spawn(async move {
            let done = state.render(layout, Some(sink)).await;
            let _ = tx.send(Frame::Done(Box::new(done)));
        });
        let mut me = Self { first: VecDeque::new(), rx, task: task.abort_handle(), finished: false };
        loop {
            match me.rx.recv().await {
                Some(Frame::Done(done)) => {
                    let done = (*done)?;
                    me.first.push_back(Frame::Done(Box::new(Ok(done))));
                    return Ok(me);
                }
                Some(frame @ Frame::Progress(Progress::Planned { .. })) => {
                    me.first.push_back(frame);
                    return Ok(me);
                }
                Some(frame) => me.first.push_back(frame),
                None => return Err(ApiError::Internal("the request ended without an answer".into())),
            }
        }
    }
}

impl Stream for Watching {
    type Item = Frame;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let next = match self.first.pop_front() {
            Some(frame) => Poll::Ready(Some(frame)),
            None => self.rx.poll_recv(cx),
        };
        if let Poll::Ready(Some(Frame::Done(_)) | None) = &next {
            self.finished = true;
        }
        next
    }
}

impl Drop for Watching {
    /// The client is gone (or the stream ended): stop the render if it still runs.
    fn drop(&mut self) {
        self.task.abort();
    }
}
