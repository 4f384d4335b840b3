//! State shared by a connection's handle, its reader task and its writer task: the waiters of
//! outstanding requests, queued acknowledgements, and why the connection ended.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use hearth_protocol::MessageId;
use tokio::sync::{oneshot, watch, Notify};

use crate::types::GroupReply;
use crate::{Accepted, ClientError};

/// What a `SEND` waiter receives.
pub(crate) type SendResult = Result<Accepted, ClientError>;

type SendWaiter = (u64, oneshot::Sender<SendResult>);

#[derive(Default)]
struct State {
    /// One waiter per outstanding message id (the common case)...
    pending: HashMap<MessageId, SendWaiter>,
    /// ...and further waiters for an id already outstanding, oldest first (rare retries).
    duplicates: Vec<(MessageId, SendWaiter)>,
    pings: HashMap<u64, oneshot::Sender<()>>,
    /// Outstanding group requests by request id.
    requests: HashMap<MessageId, oneshot::Sender<Result<GroupReply, ClientError>>>,
    closed: Option<ClientError>,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    acks: Mutex<Vec<u64>>,
    /// Wakes the writer: acknowledgements were queued or the connection ended.
    pub(crate) wake_writer: Notify,
    closed_tx: watch::Sender<Option<ClientError>>,
    next_token: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub(crate) fn new() -> Shared {
        Shared {
            state: Mutex::new(State::default()),
            acks: Mutex::new(Vec::new()),
            wake_writer: Notify::new(),
            closed_tx: watch::channel(None).0,
            next_token: AtomicU64::new(1),
        }
    }

    /// Why the connection ended, if it has.
    pub(crate) fn close_error(&self) -> Option<ClientError> {
        lock(&self.state).closed.clone()
    }

    /// Waits until the connection has ended and returns why.
    pub(crate) async fn closed(&self) -> ClientError {
        let mut rx = self.closed_tx.subscribe();
        let res = rx.wait_for(Option::is_some).await;
        match res {
            Ok(err) => err.clone().unwrap_or_else(unreachable_close),
            // Unreachable: `self` owns the sender.
            Err(_) => unreachable_close(),
        }
    }

    /// Marks the connection dead with `err` (the first reason wins) and hands it to every
    /// waiter. Returns whether this call set the reason.
    pub(crate) fn fail(&self, err: ClientError) -> bool {
        let (pending, duplicates, pings, requests) = {
            let mut st = lock(&self.state);
            if st.closed.is_some() {
                return false;
            }
            st.closed = Some(err.clone());
            (
                std::mem::take(&mut st.pending),
                std::mem::take(&mut st.duplicates),
                std::mem::take(&mut st.pings),
                std::mem::take(&mut st.requests),
            )
        };
        for (_, (_, tx)) in pending.into_iter().chain(duplicates) {
            let _ = tx.send(Err(err.clone()));
        }
        for (_, tx) in requests {
            let _ = tx.send(Err(err.clone()));
        }
        drop(pings); // ping waiters see the sender dropped and read the close reason
        lock(&self.acks).clear();
        self.closed_tx.send_replace(Some(err));
        self.wake_writer.notify_one();
        true
    }

    /// Registers a waiter for the answer to `SEND msg_id`; returns its token (for
    /// [`Shared::forget_send`]) and receiver, or the close error.
    pub(crate) fn add_send(
        &self,
        id: MessageId,
    ) -> Result<(u64, oneshot::Receiver<SendResult>), ClientError> {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let mut st = lock(&self.state);
        if let Some(err) = &st.closed {
            return Err(err.clone());
        }
        match st.pending.entry(id) {
            Entry::Vacant(slot) => {
                slot.insert((token, tx));
            }
            Entry::Occupied(_) => st.duplicates.push((id, (token, tx))),
        }
        Ok((token, rx))
    }

    /// Hands the node's answer to the oldest waiter for `id`. Returns false if none waited.
    pub(crate) fn resolve_send(&self, id: MessageId, result: SendResult) -> bool {
        let waiter = {
            let mut st = lock(&self.state);
            let waiter = st.pending.remove(&id);
            if waiter.is_some() {
                st.promote_duplicate(id);
            }
            waiter
        };
        match waiter {
            Some((_, tx)) => {
                let _ = tx.send(result);
                true
            }
            None => false,
        }
    }

    /// Drops the waiter `token` for `id` (its `send` was cancelled).
    pub(crate) fn forget_send(&self, id: MessageId, token: u64) {
        let mut st = lock(&self.state);
        if st.pending.get(&id).is_some_and(|(t, _)| *t == token) {
            st.pending.remove(&id);
            st.promote_duplicate(id);
        } else {
            st.duplicates
                .retain(|(i, (t, _))| !(*i == id && *t == token));
        }
    }

    /// Registers a waiter for the answer to group request `id`.
    pub(crate) fn add_request(
        &self,
        id: MessageId,
    ) -> Result<oneshot::Receiver<Result<GroupReply, ClientError>>, ClientError> {
        let (tx, rx) = oneshot::channel();
        let mut st = lock(&self.state);
        if let Some(err) = &st.closed {
            return Err(err.clone());
        }
        st.requests.insert(id, tx);
        Ok(rx)
    }

    /// Hands the node's answer to the waiter of group request `id`; false if none waited.
    pub(crate) fn resolve_request(
        &self,
        id: MessageId,
        r: Result<GroupReply, ClientError>,
    ) -> bool {
        let waiter = lock(&self.state).requests.remove(&id);
        waiter.is_some_and(|tx| tx.send(r).is_ok())
    }

    /// Drops the waiter of group request `id` (cancelled).
    pub(crate) fn forget_request(&self, id: MessageId) {
        lock(&self.state).requests.remove(&id);
    }

    /// Registers a waiter for `PONG nonce`; returns the nonce and receiver, or the close error.
    pub(crate) fn add_ping(&self) -> Result<(u64, oneshot::Receiver<()>), ClientError> {
        let nonce = self.next_token.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let mut st = lock(&self.state);
        if let Some(err) = &st.closed {
            return Err(err.clone());
        }
        st.pings.insert(nonce, tx);
        Ok((nonce, rx))
    }

    /// Wakes the waiter of `PONG nonce`; false if none waited.
    pub(crate) fn resolve_ping(&self, nonce: u64) -> bool {
        let waiter = lock(&self.state).pings.remove(&nonce);
        waiter.is_some_and(|tx| tx.send(()).is_ok())
    }

    /// Drops the waiter of `PONG nonce` (its `ping` was cancelled).
    pub(crate) fn forget_ping(&self, nonce: u64) {
        lock(&self.state).pings.remove(&nonce);
    }

    /// Queues acknowledgements for the writer; the close error if the connection has ended.
    pub(crate) fn queue_acks(&self, seqs: &[u64]) -> Result<(), ClientError> {
        if let Some(err) = self.close_error() {
            return Err(err);
        }
        // Ephemeral deliveries have seq 0 and are never acknowledged.
        lock(&self.acks).extend(seqs.iter().copied().filter(|s| *s != 0));
        self.wake_writer.notify_one();
        Ok(())
    }

    /// Takes every queued acknowledgement.
    pub(crate) fn take_acks(&self) -> Vec<u64> {
        std::mem::take(&mut *lock(&self.acks))
    }

    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        let st = lock(&self.state);
        st.pending.len() + st.duplicates.len() + st.pings.len() + st.requests.len()
    }
}

impl State {
    fn promote_duplicate(&mut self, id: MessageId) {
        if let Some(pos) = self.duplicates.iter().position(|(i, _)| *i == id) {
            let (_, waiter) = self.duplicates.remove(pos);
            self.pending.insert(id, waiter);
        }
    }
}

fn unreachable_close() -> ClientError {
    ClientError::closed(hearth_protocol::ErrorCode::Normal, "connection ended")
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::ErrorCode;

    fn accepted(id: MessageId, at: u64) -> SendResult {
        Ok(Accepted {
            msg_id: id,
            accepted_at_ms: at,
            recipients: 1,
        })
    }

    #[test]
    fn answers_match_by_id_and_duplicates_resolve_in_order() {
        let s = Shared::new();
        let a = MessageId::from_u128(1);
        let b = MessageId::from_u128(2);
        let (_, mut ra) = s.add_send(a).unwrap();
        let (_, mut rb) = s.add_send(b).unwrap();
        let (_, mut ra2) = s.add_send(a).unwrap();
        assert!(s.resolve_send(b, accepted(b, 20)));
        assert_eq!(rb.try_recv().unwrap().unwrap().accepted_at_ms, 20);
        assert!(ra.try_recv().is_err());
        assert!(s.resolve_send(a, accepted(a, 10)));
        assert!(s.resolve_send(a, accepted(a, 11)));
        assert!(!s.resolve_send(a, accepted(a, 12)));
        assert_eq!(ra.try_recv().unwrap().unwrap().accepted_at_ms, 10);
        assert_eq!(ra2.try_recv().unwrap().unwrap().accepted_at_ms, 11);
        assert_eq!(s.waiting(), 0);
    }

    #[test]
    fn forgetting_a_cancelled_send_keeps_the_other_waiter() {
        let s = Shared::new();
        let a = MessageId::from_u128(7);
        let (t1, _r1) = s.add_send(a).unwrap();
        let (_t2, mut r2) = s.add_send(a).unwrap();
        s.forget_send(a, t1);
        assert_eq!(s.waiting(), 1);
        assert!(s.resolve_send(a, accepted(a, 5)));
        assert_eq!(r2.try_recv().unwrap().unwrap().accepted_at_ms, 5);
    }

    #[test]
    fn failing_hands_the_reason_to_every_waiter_once() {
        let s = Shared::new();
        let (_, mut r1) = s.add_send(MessageId::from_u128(1)).unwrap();
        let (_, mut p1) = s.add_ping().unwrap();
        s.queue_acks(&[1, 2]).unwrap();
        assert!(s.fail(ClientError::closed(ErrorCode::GoingAway, "bye")));
        assert!(!s.fail(ClientError::closed(ErrorCode::Internal, "later")));
        assert_eq!(
            r1.try_recv().unwrap().unwrap_err().code(),
            Some(ErrorCode::GoingAway)
        );
        assert!(p1.try_recv().is_err());
        assert_eq!(s.close_error().unwrap().code(), Some(ErrorCode::GoingAway));
        assert!(s.add_send(MessageId::from_u128(2)).is_err());
        assert!(s.add_ping().is_err());
        assert!(s.queue_acks(&[3]).is_err());
        assert!(s.take_acks().is_empty());
    }

    #[test]
    fn acks_skip_ephemeral_zero() {
        let s = Shared::new();
        s.queue_acks(&[0, 4, 0, 5]).unwrap();
        s.queue_acks(&[6]).unwrap();
        assert_eq!(s.take_acks(), vec![4, 5, 6]);
        assert!(s.take_acks().is_empty());
    }
}
