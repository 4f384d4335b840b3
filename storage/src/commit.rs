//! The future of a submitted write.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use crate::error::StorageError;

/// Resolves once an enqueued write is durable (fsync'd with [`crate::Durability::Sync`]).
///
/// Needs no particular runtime. Dropping it does not cancel the write.
#[derive(Debug)]
#[must_use = "a Commit tells when the write is durable"]
pub struct Commit {
    rx: oneshot::Receiver<Result<(), StorageError>>,
}

impl Commit {
    pub(crate) fn new(rx: oneshot::Receiver<Result<(), StorageError>>) -> Commit {
        Commit { rx }
    }

    /// Blocks the current thread until the write is durable. Must not be called from async
    /// code (it panics inside a tokio runtime); `.await` the `Commit` there.
    pub fn wait(self) -> Result<(), StorageError> {
        self.rx.blocking_recv().unwrap_or(Err(StorageError::Closed))
    }
}

impl Future for Commit {
    type Output = Result<(), StorageError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(StorageError::Closed)))
    }
}

/// Awaits a writer reply.
pub(crate) async fn reply<T>(
    rx: oneshot::Receiver<Result<T, StorageError>>,
) -> Result<T, StorageError> {
    rx.await.unwrap_or(Err(StorageError::Closed))
}
