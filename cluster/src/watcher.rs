//! The map watcher: one etcd watch on the cluster's prefix (map, members, move progress),
//! read once in full and then followed event by event. A broken watch is opened again from
//! the last revision seen + 1, so no change is missed; only a compaction past that revision
//! forces a full read again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, KeyValue, WatchOptions};
use hearth_protocol::SLOT_COUNT;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};
use tracing::{debug, warn};

use crate::keys::Keys;
use crate::model::{ClusterMap, Member, NodeId, Revision, ShardId, SlotState};

/// A move's target reports its import here (`progress/<slot>`); the controller activates the
/// move once `copied` is true for the move's `since`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveProgress {
    /// The move's `since` revision (which move this is about).
    pub since: Revision,
    /// The whole range has been imported and is durable at the target.
    pub copied: bool,
    /// Bytes imported so far.
    pub bytes: u64,
}

/// Who serves a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The owner node.
    pub node: NodeId,
    /// The slot's shard.
    pub shard: ShardId,
    /// Where devices reach the owner (from its registration; `None` while it is not
    /// registered: the node is down).
    pub client_addr: Option<String>,
}

/// What an owner answers a forwarded (or local) write for a slot, by the epoch it was routed
/// under. See [`MapSnapshot::fence`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fence {
    /// This node serves the slot and the routing was current for it: accept.
    Accept,
    /// Not this node's to write (another owner, or the slot changed hands after the routing
    /// epoch, or it is sealed for a move): answer MOVED with the owner and epoch, so the
    /// sender waits for that epoch and routes again.
    Moved {
        /// The owner per this map (the move's target while the slot moves).
        owner: Option<NodeId>,
        /// This map's epoch.
        epoch: Revision,
    },
    /// The write was routed under a newer epoch than this node has seen: wait until the
    /// watcher reaches it (bounded), then fence again.
    Behind {
        /// The routing epoch to wait for.
        epoch: Revision,
    },
}

/// The slot map as one node sees it: the cluster map at its epoch, plus the live members'
/// addresses. Immutable; a new one is published on every change.
#[derive(Debug, Clone)]
pub struct MapSnapshot {
    /// The map.
    pub map: Arc<ClusterMap>,
    /// The map's epoch (its etcd mod_revision).
    pub epoch: Revision,
    /// Registered members.
    pub members: Arc<BTreeMap<NodeId, Member>>,
    owners: Arc<[NodeId]>,
}

impl MapSnapshot {
    fn new(map: Arc<ClusterMap>, epoch: Revision, members: Arc<BTreeMap<NodeId, Member>>) -> Self {
        let owners = (0..SLOT_COUNT)
            .map(|s| map.owner_of_slot(s).unwrap_or(0))
            .collect();
        MapSnapshot {
            map,
            epoch,
            members,
            owners,
        }
    }

    /// Owner node per slot, `SLOT_COUNT` entries (0 where a slot has no owner): what the
    /// routing core's `SlotMap::new(epoch, local, owners)` takes.
    pub fn owners(&self) -> Vec<NodeId> {
        self.owners.to_vec()
    }

    /// Who serves slot `slot`.
    pub fn owner(&self, slot: u16) -> Option<Owner> {
        let shard = self.map.slot(slot).shard;
        let node = self.map.shards.get(&shard)?.owner()?;
        Some(Owner {
            node,
            shard,
            client_addr: self.members.get(&node).map(|m| m.client_addr.clone()),
        })
    }

    /// Slot `slot`'s state (active or moving).
    pub fn slot_state(&self, slot: u16) -> SlotState {
        self.map.slot_state(slot)
    }

    /// The fencing rule for a write to slot `slot` arriving at node `local`, routed under
    /// `routed_epoch`. Accept only if this node owns the slot, the slot is not sealed for a
    /// move away from here, and the routing epoch is not older than the slot's current
    /// assignment (`since`). A routing epoch newer than this map means this node is behind.
    pub fn fence(&self, slot: u16, routed_epoch: Revision, local: NodeId) -> Fence {
        if routed_epoch > self.epoch {
            return Fence::Behind {
                epoch: routed_epoch,
            };
        }
        let entry = self.map.slot(slot);
        let owner = self.owners[usize::from(slot)];
        let moved = |owner| Fence::Moved {
            owner,
            epoch: self.epoch,
        };
        match self.map.slot_state(slot) {
            SlotState::Moving(m) => moved(self.map.shards.get(&m.to).and_then(|s| s.owner())),
            SlotState::Active { .. } if owner != local => moved(Some(owner).filter(|&o| o != 0)),
            SlotState::Active { .. } if routed_epoch < entry.since => moved(Some(owner)),
            SlotState::Active { .. } => Fence::Accept,
        }
    }
}

/// Everything the watcher knows, at one etcd revision.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// The etcd revision this view is current to.
    pub revision: Revision,
    /// The slot map, once one exists and was read.
    pub snapshot: Option<Arc<MapSnapshot>>,
    /// Registered members (with their keys' mod revision).
    pub members: Arc<BTreeMap<NodeId, Member>>,
    /// Move progress reports by slot.
    pub progress: BTreeMap<u16, MoveProgress>,
    /// Whether the watch stream is up.
    pub connected: bool,
    /// Full reads done (1 after start; more only after a compaction).
    pub reloads: u64,
    /// Watches opened again from the last revision + 1 after a break.
    pub resumes: u64,
}

/// A running map watcher (a background task, stopped on drop).
#[derive(Debug)]
pub struct MapWatcher {
    rx: watch::Receiver<Arc<ClusterView>>,
    task: JoinHandle<()>,
}

impl MapWatcher {
    /// Start following the cluster at `keys`.
    pub(crate) fn start(client: Client, keys: Keys) -> MapWatcher {
        let (tx, rx) = watch::channel(Arc::new(ClusterView::default()));
        let task = tokio::spawn(run(client, keys, tx));
        MapWatcher { rx, task }
    }

    /// The current view.
    pub fn view(&self) -> Arc<ClusterView> {
        self.rx.borrow().clone()
    }

    /// The current slot map, once loaded.
    pub fn snapshot(&self) -> Option<Arc<MapSnapshot>> {
        self.rx.borrow().snapshot.clone()
    }

    /// True once a map has been read from etcd (and followed since).
    pub fn ready(&self) -> bool {
        self.rx.borrow().snapshot.is_some()
    }

    /// A receiver that sees every new view.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.rx.clone()
    }

    /// Wait until the view satisfies `f`; returns that view.
    pub async fn wait_for(&self, mut f: impl FnMut(&ClusterView) -> bool) -> Arc<ClusterView> {
        let mut rx = self.rx.clone();
        loop {
            let v = rx.borrow_and_update().clone();
            if f(&v) {
                return v;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Drop for MapWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// The watcher's working state.
struct State {
    keys: Keys,
    map_key: Vec<u8>,
    members_prefix: Vec<u8>,
    progress_prefix: Vec<u8>,
    view: ClusterView,
    map: Option<(Arc<ClusterMap>, Revision)>,
    members: BTreeMap<NodeId, Member>,
}

impl State {
    fn apply(&mut self, kv: &KeyValue, deleted: bool) {
        let key = kv.key();
        if key == self.map_key.as_slice() {
            self.map = if deleted {
                None
            } else {
                match ClusterMap::decode(kv.value()) {
                    Ok(m) => Some((Arc::new(m), kv.mod_revision() as Revision)),
                    Err(e) => {
                        warn!(error = %e, "undecodable cluster map ignored");
                        self.map.take()
                    }
                }
            };
        } else if let Some(id) = key.strip_prefix(self.members_prefix.as_slice()) {
            let Some(id) = std::str::from_utf8(id).ok().and_then(|s| s.parse().ok()) else {
                return;
            };
            if deleted {
                self.members.remove(&id);
            } else if let Ok(m) = serde_json::from_slice::<Member>(kv.value()) {
                self.members.insert(id, m);
            }
        } else if let Some(slot) = key.strip_prefix(self.progress_prefix.as_slice()) {
            let Some(slot) = std::str::from_utf8(slot).ok().and_then(|s| s.parse().ok()) else {
                return;
            };
            if deleted {
                self.view.progress.remove(&slot);
            } else if let Ok(p) = serde_json::from_slice(kv.value()) {
                self.view.progress.insert(slot, p);
            }
        }
    }

    fn publish(&mut self, tx: &watch::Sender<Arc<ClusterView>>) {
        let members = Arc::new(self.members.clone());
        self.view.members = members.clone();
        self.view.snapshot = self
            .map
            .as_ref()
            .map(|(m, e)| Arc::new(MapSnapshot::new(m.clone(), *e, members)));
        tx.send_replace(Arc::new(self.view.clone()));
    }

    async fn reload(&mut self, client: &mut Client) -> Result<(), etcd_client::Error> {
        let resp = timeout(
            CALL_TIMEOUT,
            client.get(self.keys.root(), Some(GetOptions::new().with_prefix())),
        )
        .await
        .map_err(|_| etcd_client::Error::WatchError("get timed out".into()))??;
        self.map = None;
        self.members.clear();
        self.view.progress.clear();
        for kv in resp.kvs() {
            self.apply(kv, false);
        }
        self.view.revision = resp.header().map_or(0, |h| h.revision()) as Revision;
        self.view.reloads += 1;
        Ok(())
    }
}

async fn run(mut client: Client, keys: Keys, tx: watch::Sender<Arc<ClusterView>>) {
    let mut st = State {
        map_key: keys.map().into_bytes(),
        members_prefix: keys.members().into_bytes(),
        progress_prefix: keys.progress_dir().into_bytes(),
        keys,
        view: ClusterView::default(),
        map: None,
        members: BTreeMap::new(),
    };
    let mut need_reload = true;
    let mut backoff = Duration::from_millis(50);
    loop {
        if need_reload {
            if let Err(e) = st.reload(&mut client).await {
                debug!(error = %e, "cluster read failed; retrying");
                sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
            need_reload = false;
            st.publish(&tx);
        }
        let from = st.view.revision as i64 + 1;
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from)
            .with_progress_notify();
        let mut stream = match timeout(CALL_TIMEOUT, client.watch(st.keys.root(), Some(opts))).await
        {
            Ok(Ok(s)) => s,
            _ => {
                sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        while let Ok(Some(resp)) = stream.message().await {
            if resp.canceled() {
                if resp.compact_revision() > 0 {
                    warn!(
                        compacted = resp.compact_revision(),
                        "watch revision compacted; reading the cluster again"
                    );
                    need_reload = true;
                }
                break;
            }
            if resp.created() {
                st.view.connected = true;
                backoff = Duration::from_millis(50);
                st.publish(&tx);
                continue;
            }
            for ev in resp.events() {
                if let Some(kv) = ev.kv() {
                    st.apply(kv, ev.event_type() == EventType::Delete);
                    st.view.revision = st.view.revision.max(kv.mod_revision() as Revision);
                }
            }
            if resp.events().is_empty() {
                // A progress notification: every event up to its revision has been
                // delivered. (The header of a response with events, or of the
                // `created` one, may be ahead of what was delivered.)
                if let Some(h) = resp.header() {
                    st.view.revision = st.view.revision.max(h.revision() as Revision);
                }
            }
            st.publish(&tx);
        }
        st.view.connected = false;
        if !need_reload {
            st.view.resumes += 1;
        }
        st.publish(&tx);
        sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}
