//! The future of a submitted write.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use crate::error::StorageError;
use crate::types::DeviceKey;

/// Resolves once a submitted write is durable (fsync'd with [`crate::Durability::Sync`]),
/// with the write's own outcome.
///
/// Needs no particular runtime. Dropping it does not cancel the write.
#[derive(Debug)]
#[must_use = "a Commit tells when the write is durable"]
pub struct Commit<T = ()> {
    rx: oneshot::Receiver<Result<T, StorageError>>,
}

impl<T> Commit<T> {
    pub(crate) fn new(rx: oneshot::Receiver<Result<T, StorageError>>) -> Commit<T> {
        Commit { rx }
    }

    /// Blocks the current thread until the write is durable. Must not be called from async
    /// code (it panics inside a tokio runtime); `.await` the `Commit` there.
    pub fn wait(self) -> Result<T, StorageError> {
        self.rx.blocking_recv().unwrap_or(Err(StorageError::Closed))
    }
}

impl<T> Future for Commit<T> {
    type Output = Result<T, StorageError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(StorageError::Closed)))
    }
}

/// The result of a successful [`crate::Store::enqueue`].
#[derive(Debug)]
pub struct Enqueued {
    /// The sequence number given to the envelope in each device queue, in the order asked.
    pub seqs: Vec<(DeviceKey, u64)>,
    /// Resolves once the write is durable.
    pub commit: Commit,
}

/// Awaits a writer reply.
pub(crate) async fn reply<T>(
    rx: oneshot::Receiver<Result<T, StorageError>>,
) -> Result<T, StorageError> {
    rx.await.unwrap_or(Err(StorageError::Closed))
}
