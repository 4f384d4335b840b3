//! `ClusterNode`: what a hearthd node runs: its registration and the map watcher, and the gate
//! that says whether it may serve (accept writes for) its slots.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::sync::watch;

use crate::config::ClusterConfig;
use crate::error::Error;
use crate::keys::Keys;
use crate::membership::{LeaseState, Registration};
use crate::model::{Member, Revision};
use crate::watcher::{ClusterView, MapSnapshot, MapWatcher, MoveProgress};

/// Connect to the etcd endpoints of `cfg` (lazily reconnecting channel; HTTP/2 keep-alives
/// detect a dead connection within a few seconds).
pub async fn connect(cfg: &ClusterConfig) -> Result<Client, Error> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    Ok(Client::connect(&cfg.etcd_endpoints, Some(opts)).await?)
}

/// Whether this node may serve its slots now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serving {
    /// Registered, and the map was read after the registration: serve the slots the map
    /// gives this node, at epoch `epoch`.
    Yes {
        /// The map's epoch.
        epoch: Revision,
    },
    /// Not registered yet, or no current map: `/readyz` fails, devices are not accepted.
    NotReady,
    /// The lease lapsed: stop accepting writes for every slot until `Yes` again.
    Fenced,
}

/// A cluster member: registration under a lease plus the map watcher.
pub struct ClusterNode {
    client: Client,
    keys: Keys,
    registration: Registration,
    watcher: MapWatcher,
}

impl ClusterNode {
    /// Join the cluster of `cfg` as `member` (its id must be `cfg.node_id`): start the
    /// registration and the watcher. Returns at once; see [`ClusterNode::serving`].
    pub async fn start(cfg: &ClusterConfig, member: Member) -> Result<ClusterNode, Error> {
        cfg.validate().map_err(Error::Config)?;
        if member.id != cfg.node_id {
            return Err(Error::Config(
                "member id differs from cluster.node_id".into(),
            ));
        }
        let client = connect(cfg).await?;
        Ok(ClusterNode::with_client(client, cfg, member))
    }

    /// Like [`ClusterNode::start`] on an existing etcd client.
    pub fn with_client(client: Client, cfg: &ClusterConfig, member: Member) -> ClusterNode {
        let keys = Keys::new(cfg.key_prefix());
        let watcher = MapWatcher::start(client.clone(), keys.clone());
        let registration =
            Registration::start(client.clone(), keys.clone(), member, cfg.lease_ttl());
        ClusterNode {
            client,
            keys,
            registration,
            watcher,
        }
    }

    /// The gate: serve only while the lease is live and the watcher has read the cluster up
    /// to (at least) the registration write, which it sees as an event after any map change
    /// that came before.
    pub fn serving(&self) -> Serving {
        let lease = *self.registration.state().borrow();
        let view = self.watcher.view();
        match lease {
            LeaseState::Lost => Serving::Fenced,
            LeaseState::Registering => Serving::NotReady,
            LeaseState::Live { revision, .. } => match &view.snapshot {
                Some(s) if view.revision >= revision => Serving::Yes { epoch: s.epoch },
                _ => Serving::NotReady,
            },
        }
    }

    /// True while [`ClusterNode::serving`] is `Yes` (what `/readyz` reports).
    pub fn ready(&self) -> bool {
        matches!(self.serving(), Serving::Yes { .. })
    }

    /// Wait until the node may serve; returns the epoch.
    pub async fn wait_serving(&self) -> Revision {
        let mut lease = self.registration.state();
        let mut views = self.watcher.subscribe();
        loop {
            if let Serving::Yes { epoch } = self.serving() {
                return epoch;
            }
            tokio::select! {
                _ = lease.changed() => {}
                _ = views.changed() => {}
            }
        }
    }

    /// The current slot map, once loaded.
    pub fn snapshot(&self) -> Option<Arc<MapSnapshot>> {
        self.watcher.snapshot()
    }

    /// Everything the watcher knows now.
    pub fn view(&self) -> Arc<ClusterView> {
        self.watcher.view()
    }

    /// Every new view (map or members changed): rebuild the core's `SlotMap` from it.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.watcher.subscribe()
    }

    /// The lease state, and changes to it.
    pub fn lease_state(&self) -> watch::Receiver<LeaseState> {
        self.registration.state()
    }

    /// As a move's target: report how far the import of `slot` (move `since`) has come;
    /// `copied` = everything imported and durable, so the controller may activate.
    pub async fn report_progress(&self, slot: u16, progress: &MoveProgress) -> Result<(), Error> {
        let v = serde_json::to_vec(progress).expect("progress serializes");
        self.client
            .clone()
            .put(self.keys.progress(slot), v, None)
            .await?;
        Ok(())
    }

    /// Leave the membership (revoke the lease) and stop watching.
    pub async fn leave(self) -> Result<(), Error> {
        self.registration.leave().await
    }
}
