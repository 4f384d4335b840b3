//! The driver of the routing core: the core behind one lock, and the glue that performs its
//! node-wide actions (writes to the store and their results, push wake-ups, group loads).
//! Connection-scoped work is performed by each connection's task (`session.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use hearth_storage::{
    AccountRecord, Commit, DeviceKey, ListKind, QueueState, StorageError, Store, WriteOutcome,
};
use tokio::sync::{mpsc, Notify};

use crate::cluster::Links;
use crate::core::{Action, JobId, Loaded, Request, RequestOutcome, Router, View};
use crate::metrics::Metrics;
use crate::now_ms;
use crate::push::Pusher;
use crate::safety::Safety;

/// Locks `m`. The policy for poisoned locks, everywhere in the node: a lock is poisoned only
/// when a panic interrupted a change of what it guards, so that state can no longer be
/// trusted; the panic spreads instead of carrying on with it (hearthd aborts on the first
/// panic, see `main.rs`, so in production a poisoned lock is never seen).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock()
        .expect("a panic interrupted a change of this state: refusing to go on with it")
}

/// A write handed to the store, waiting for its result in submission order.
enum Pending {
    Written(JobId, Commit<WriteOutcome>),
    Refused(JobId, StorageError),
}

/// The core and what performs its actions.
pub(crate) struct Driver {
    core: Mutex<Router>,
    store: Store,
    pusher: Pusher,
    metrics: Arc<Metrics>,
    safety: Arc<Safety>,
    commits: mpsc::UnboundedSender<Pending>,
    /// When the core next wants `handle_timeout` (ms since the epoch; `u64::MAX`: never).
    deadline: AtomicU64,
    /// Wakes the timer when the deadline moved earlier.
    timer: Arc<Notify>,
    /// The inter-node links (cluster only).
    links: OnceLock<Arc<Links>>,
}

impl Driver {
    /// A driver over `core`; spawns the task that hands write results back to the core.
    pub(crate) fn start(
        core: Router,
        store: Store,
        pusher: Pusher,
        metrics: Arc<Metrics>,
        safety: Arc<Safety>,
    ) -> Arc<Driver> {
        let (commits, rx) = mpsc::unbounded_channel();
        let driver = Arc::new(Driver {
            core: Mutex::new(core),
            store,
            pusher,
            metrics,
            safety,
            commits,
            deadline: AtomicU64::new(u64::MAX),
            timer: Arc::new(Notify::new()),
            links: OnceLock::new(),
        });
        tokio::spawn(commit_loop(Arc::downgrade(&driver), rx));
        tokio::spawn(timer_loop(Arc::downgrade(&driver)));
        driver
    }

    /// Run `f` on the core, then perform the node-wide actions it yielded (outside the lock).
    pub(crate) fn with<R>(self: &Arc<Self>, f: impl FnOnce(&mut Router) -> R) -> R {
        let (r, actions) = {
            let mut core = lock(&self.core);
            let r = f(&mut core);
            let mut actions = Vec::new();
            while let Some(a) = core.poll_action() {
                actions.push(a);
            }
            let due = core.poll_timeout().unwrap_or(u64::MAX);
            if due < self.deadline.load(Ordering::Acquire) {
                self.deadline.store(due, Ordering::Release);
                self.timer.notify_one();
            }
            (r, actions)
        };
        for a in actions {
            self.perform(a);
        }
        r
    }

    /// Perform `Forward` and `Return` actions over these links (a cluster member).
    pub(crate) fn set_links(&self, links: Arc<Links>) {
        if self.links.set(links).is_err() {
            tracing::error!("the inter-node links were set twice; keeping the first");
        }
    }

    fn perform(self: &Arc<Self>, action: Action) {
        match action {
            Action::Enqueue { job, write } => {
                let pending = match self.store.write(write) {
                    Ok(commit) => Pending::Written(job, commit),
                    Err(e) => Pending::Refused(job, e),
                };
                // The loop lives as long as the driver.
                let _ = self.commits.send(pending);
            }
            Action::Wake { token, urgent } => self.pusher.wake(token, urgent),
            Action::LoadGroup { group } => {
                let driver = self.clone();
                tokio::task::spawn_blocking(move || {
                    let result = driver.store.group_members(group);
                    driver.with(|c| c.handle_group_loaded(group, result, now_ms()));
                });
            }
            Action::Forward { node, batch } if self.links.get().is_some() => {
                let links = self.links.get().expect("checked");
                if !links.forward(node, &batch) {
                    // Unreachable: its unanswered sends are answered with a retry.
                    self.with(|c| c.node_lost(node));
                }
            }
            Action::Return { node, batch } if self.links.get().is_some() => {
                self.links.get().expect("checked").give_back(node, &batch);
            }
            Action::Forward { node, batch } => {
                // No cluster: nothing can answer; the core hears the node is gone.
                tracing::error!(
                    node,
                    sends = batch.len(),
                    "a send routed to another node, but this node runs no cluster"
                );
                self.with(|c| c.node_lost(node));
            }
            Action::Return { node, batch } => {
                tracing::error!(
                    node,
                    answers = batch.len(),
                    "answers for another node, but this node runs no cluster"
                );
            }
        }
    }

    /// The store.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// The push wake-up sender.
    pub(crate) fn pusher(&self) -> &Pusher {
        &self.pusher
    }

    /// Node-wide counters.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Rate limiters and abuse signals (for their statistics).
    pub(crate) fn safety(&self) -> &Safety {
        &self.safety
    }

    /// Whether the node can no longer store anything (a write failed).
    pub(crate) fn poisoned(self: &Arc<Self>) -> bool {
        self.store.is_poisoned() || self.with(|c| c.poisoned())
    }

    /// Perform a store request of a connection.
    pub(crate) async fn request(&self, request: &Request) -> RequestOutcome {
        let store = &self.store;
        let done = RequestOutcome::Done;
        match request.clone() {
            Request::GroupCreate {
                group,
                creator,
                members,
                max_size,
            } => RequestOutcome::Group(
                store
                    .create_group(group, creator, &members, max_size, now_ms())
                    .await,
            ),
            Request::GroupUpdate {
                group,
                actor,
                op,
                max_size,
            } => RequestOutcome::Group(store.update_group(group, actor, op, max_size).await),
            Request::GroupGet {
                group,
                offset,
                limit,
                ..
            } => {
                let page = store
                    .group_members(group)
                    .and_then(|members| match members {
                        None => Ok(None),
                        Some(m) => Ok(store.group_info(group, offset, limit)?.map(|p| (m, p))),
                    });
                RequestOutcome::Page(page)
            }
            Request::SetReach { account, reach } => done(store.set_reach(account, reach).await),
            Request::UpdateList {
                account,
                kind,
                add,
                accounts,
                ..
            } => done(
                store
                    .update_list(account, kind, add, &accounts)
                    .await
                    .map(|_| ()),
            ),
            Request::SetNetworks { account, names } => {
                done(store.set_networks(account, names).await)
            }
            Request::SetAccessKey { account, hash } => {
                done(store.set_access_key_hash(account, hash).await)
            }
            Request::SetPushToken { device, token } => {
                done(store.set_push_token(device, token).await)
            }
        }
    }
}

/// Hand write results to the core, in the order the writes were submitted.
async fn commit_loop(driver: std::sync::Weak<Driver>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    while let Some(p) = rx.recv().await {
        let (job, result) = match p {
            Pending::Written(job, commit) => (job, commit.await),
            Pending::Refused(job, e) => (job, Err(e)),
        };
        let Some(driver) = driver.upgrade() else {
            return;
        };
        driver.with(|c| c.handle_committed(job, result, now_ms()));
    }
}

/// Call the core's `handle_timeout` when its deadline comes.
async fn timer_loop(driver: std::sync::Weak<Driver>) {
    loop {
        let Some(d) = driver.upgrade() else {
            return;
        };
        let due = d.deadline.load(Ordering::Acquire);
        let now = now_ms();
        if due <= now {
            d.deadline.store(u64::MAX, Ordering::Release);
            d.with(|c| c.handle_timeout(now_ms()));
            continue;
        }
        let wait = Duration::from_millis((due - now).min(1000));
        let timer = d.timer.clone();
        drop(d);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = timer.notified() => {}
        }
    }
}

/// The core reads the store's in-memory state.
impl View for Store {
    fn devices(&self, account: u64) -> Vec<u32> {
        Store::devices(self, account).unwrap_or_default()
    }

    fn devices_of_many(&self, accounts: &[u64], out: &mut Vec<DeviceKey>) {
        if let Ok(d) = Store::devices_of_many(self, accounts) {
            out.extend(d);
        }
    }

    fn queue(&self, key: DeviceKey) -> Option<QueueState> {
        self.queue_state(key)
    }

    fn account(&self, account: u64) -> Option<Arc<AccountRecord>> {
        self.account_arc(account)
    }

    fn listed(&self, account: u64, kind: ListKind, other: u64) -> bool {
        self.list_contains(account, kind, other)
    }

    fn push_token(&self, key: DeviceKey) -> Option<bytes::Bytes> {
        Store::push_token(self, key)
    }

    fn group_members(&self, group: u64) -> Loaded<Option<Arc<Vec<u64>>>> {
        match self.cached_group_members(group) {
            Some(members) => Loaded::Ready(Some(members)),
            None => Loaded::NotLoaded,
        }
    }
}
