//! Membership: a node registers under a lease and keeps it alive; when the lease lapses (or
//! may have) the node is told so, registers again under a new lease, and tells when it is
//! back. etcd's keep-alive stream does not reconnect by itself: this loop does.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tracing::{info, warn};

use crate::error::Error;
use crate::keys::Keys;
use crate::model::{Member, Revision};

/// The node's standing in the membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Not registered (starting, or registering again after a loss).
    Registering,
    /// Registered under `lease`; the member key was written at etcd revision `revision`.
    Live {
        /// The lease id.
        lease: i64,
        /// Revision of the registration write.
        revision: Revision,
    },
    /// The lease lapsed or may have (no renewal within its TTL): the node must stop accepting
    /// writes for its slots until it is `Live` again and has read the map since.
    Lost,
}

/// A running registration (a background task). Dropping it stops the keep-alives without
/// revoking: the member key then disappears when the lease expires, as after a crash.
pub(crate) struct Registration {
    state: watch::Receiver<LeaseState>,
    task: JoinHandle<()>,
    client: Client,
}

impl Registration {
    /// Start registering `member` under a lease of `ttl` at `keys`. Returns at once; watch
    /// [`Registration::state`] for `Live`.
    pub(crate) fn start(client: Client, keys: Keys, member: Member, ttl: Duration) -> Registration {
        let (tx, rx) = watch::channel(LeaseState::Registering);
        let task = tokio::spawn(run(client.clone(), keys, member, ttl, tx));
        Registration {
            state: rx,
            task,
            client,
        }
    }

    /// The current state, and changes to it.
    pub(crate) fn state(&self) -> watch::Receiver<LeaseState> {
        self.state.clone()
    }

    /// Leave the membership now: stop the keep-alives and revoke the lease (the member key
    /// goes with it).
    pub(crate) async fn leave(self) -> Result<(), Error> {
        self.task.abort();
        // Copy the state out: the watch guard must not be held across the await (the future
        // stays Send, so a node's shutdown can be spawned).
        let state = *self.state.borrow();
        if let LeaseState::Live { lease, .. } = state {
            self.client.clone().lease_revoke(lease).await?;
        }
        Ok(())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How long one etcd call may take before the loop treats it as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

async fn run(
    mut client: Client,
    keys: Keys,
    member: Member,
    ttl: Duration,
    state: watch::Sender<LeaseState>,
) {
    let key = keys.member(member.id);
    let value = serde_json::to_vec(&member).expect("member serializes");
    let ttl_secs = ttl.as_secs().max(2) as i64;
    let mut backoff = Duration::from_millis(100);
    loop {
        let granted_at = Instant::now();
        let registered = timeout(CALL_TIMEOUT, register(&mut client, &key, &value, ttl_secs)).await;
        let (lease, revision) = match registered {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => {
                warn!(
                    node = member.id,
                    "node id already registered by a live lease; waiting for it to expire"
                );
                sleep(Duration::from_secs(1)).await;
                continue;
            }
            Ok(Err(e)) => {
                warn!(error = %e, "registration failed; retrying");
                sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
            Err(_) => {
                warn!("registration timed out; retrying");
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        info!(node = member.id, lease, revision, "registered");
        state.send_replace(LeaseState::Live { lease, revision });
        keep_alive(&mut client, lease, ttl, granted_at).await;
        warn!(node = member.id, lease, "lease lost");
        state.send_replace(LeaseState::Lost);
        // If etcd still has it, end it: the member key must go before it comes back under
        // the new lease (best effort: an expired lease cannot be revoked).
        let _ = timeout(CALL_TIMEOUT, client.lease_revoke(lease)).await;
    }
}

/// Grant a lease and create the member key under it, unless a live lease holds the key.
/// Returns the lease and the write's revision, or `None` when the key is taken.
async fn register(
    client: &mut Client,
    key: &str,
    value: &[u8],
    ttl_secs: i64,
) -> Result<Option<(i64, Revision)>, Error> {
    let lease = client.lease_grant(ttl_secs, None).await?.id();
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key,
            value,
            Some(PutOptions::new().with_lease(lease)),
        )]);
    let resp = client.txn(txn).await?;
    if !resp.succeeded() {
        let _ = client.lease_revoke(lease).await;
        return Ok(None);
    }
    // The txn's revision is the member key's mod_revision.
    let revision = resp.header().map_or(0, |h| h.revision());
    Ok(Some((lease, revision as Revision)))
}

/// Keep `lease` alive until it is gone or may be: returns when etcd says it expired, or when
/// no renewal succeeded within a TTL of the last one sent that succeeded.
async fn keep_alive(client: &mut Client, lease: i64, ttl: Duration, granted_at: Instant) {
    // The server's expiry is at least a TTL after it handled our last renewal, which was
    // after we sent it: a deadline counted from the send is on the safe side.
    let mut deadline = granted_at + ttl;
    let period = ttl / 3;
    'reconnect: loop {
        if Instant::now() >= deadline {
            return;
        }
        let opened = timeout(CALL_TIMEOUT, client.lease_keep_alive(lease)).await;
        let (mut keeper, mut stream) = match opened {
            Ok(Ok(ks)) => ks,
            _ => {
                sleep(Duration::from_millis(200)).await;
                continue 'reconnect;
            }
        };
        loop {
            let sent = Instant::now();
            if sent >= deadline {
                return;
            }
            if keeper.keep_alive().await.is_err() {
                continue 'reconnect;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left.min(CALL_TIMEOUT), stream.message()).await {
                Ok(Ok(Some(resp))) if resp.ttl() > 0 => deadline = sent + ttl,
                Ok(Ok(Some(_))) => return, // TTL 0: etcd no longer has the lease
                _ => continue 'reconnect,
            }
            sleep(period).await;
        }
    }
}
