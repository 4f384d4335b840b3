//! The controller: the one node elected (etcd election API) to write the cluster map. Each
//! of its writes is a txn that compares the map's mod_revision with the epoch the change was
//! computed from AND its own election key's create_revision, so a deposed controller (whose
//! key expired or was replaced, even if it still believes it leads) cannot write.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, LeaderKey, ResignOptions, Txn, TxnOp, TxnOpResponse,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};
use tracing::{info, warn};

use crate::config::ClusterConfig;
use crate::error::Error;
use crate::keys::Keys;
use crate::model::{ClusterMap, NodeId, PlacedNode, Residency, Revision, ShardId};
use crate::placement::{PlanError, PlannedMove};
use crate::watcher::{ClusterView, MapWatcher};

/// The elected controller. Dropping it stops its lease's keep-alives (leadership then ends
/// when the lease expires, as when the process dies); [`Controller::resign`] ends it at once.
pub struct Controller {
    client: Client,
    keys: Keys,
    leader: LeaderKey,
    lease: i64,
    keeper: JoinHandle<()>,
}

/// What [`Controller::reconcile`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// The map was created (first start).
    pub created: bool,
    /// Nodes added to placement, with their new shards.
    pub added: Vec<(NodeId, Vec<ShardId>)>,
    /// Moves activated (their target reported the import done): slots.
    pub activated: Vec<u16>,
    /// Moves rolled back (their target node is not registered): slots.
    pub rolled_back: Vec<u16>,
    /// The epoch after the change (unchanged if nothing was to do).
    pub epoch: Revision,
}

impl Controller {
    /// Campaign for the controller role of the cluster at `cfg`, as node `cfg.node_id`;
    /// returns once elected (waits while another controller leads).
    pub async fn campaign(client: Client, cfg: &ClusterConfig) -> Result<Controller, Error> {
        let keys = Keys::new(cfg.key_prefix());
        let mut c = client.clone();
        let lease = c
            .lease_grant(i64::from(cfg.lease_ttl_secs.max(2)), None)
            .await?
            .id();
        let keeper = tokio::spawn(keep_lease(client.clone(), lease, cfg.lease_ttl() / 3));
        let resp = match c
            .campaign(keys.election(), cfg.node_id.to_string(), lease)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                keeper.abort();
                let _ = c.lease_revoke(lease).await;
                return Err(e.into());
            }
        };
        let leader = resp
            .leader()
            .cloned()
            .ok_or_else(|| Error::Config("campaign answered without a leader key".into()))?;
        info!(node = cfg.node_id, rev = leader.rev(), "elected controller");
        Ok(Controller {
            client,
            keys,
            leader,
            lease,
            keeper,
        })
    }

    /// The create_revision of this controller's election key: every write compares it.
    pub fn election_revision(&self) -> Revision {
        self.leader.rev() as Revision
    }

    /// The lease the election key lives under.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// Give up the role now (another candidate is elected at once).
    pub async fn resign(mut self) -> Result<(), Error> {
        self.keeper.abort();
        self.client
            .resign(Some(ResignOptions::new().with_leader(self.leader.clone())))
            .await?;
        let _ = self.client.lease_revoke(self.lease).await;
        Ok(())
    }

    /// Read the map and its epoch (`None`: not created yet).
    pub async fn read(&mut self) -> Result<Option<(ClusterMap, Revision)>, Error> {
        read_map(&mut self.client, &self.keys).await
    }

    /// Write `map` if the map is still at `epoch` (0: does not exist yet) and this controller
    /// still holds its election key. Returns the new epoch. Refusals: [`Error::Deposed`],
    /// [`Error::StaleEpoch`].
    pub async fn write(&mut self, epoch: Revision, map: &ClusterMap) -> Result<Revision, Error> {
        let key = self.keys.map();
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key.as_str(), CompareOp::Equal, epoch as i64),
                Compare::create_revision(self.leader.key(), CompareOp::Equal, self.leader.rev()),
            ])
            .and_then([TxnOp::put(key.as_str(), map.encode(), None)])
            .or_else([
                TxnOp::get(key.as_str(), None),
                TxnOp::get(self.leader.key(), None),
            ]);
        let resp = self.client.txn(txn).await?;
        if resp.succeeded() {
            return Ok(resp.header().map_or(0, |h| h.revision()) as Revision);
        }
        let mut gets = resp.op_responses().into_iter().filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        });
        let current = gets
            .next()
            .and_then(|g| g.kvs().first().map(|kv| kv.mod_revision()))
            .unwrap_or(0) as Revision;
        let mine = gets
            .next()
            .and_then(|g| g.kvs().first().map(|kv| kv.create_revision()))
            == Some(self.leader.rev());
        if !mine {
            return Err(Error::Deposed);
        }
        Err(Error::StaleEpoch {
            expected: epoch,
            current,
        })
    }

    /// Read the map, apply `f` (given the map and the `since` revision its changes take
    /// effect at), and write it back guarded by the epoch it was read at. Returns `f`'s value
    /// and the new epoch.
    pub async fn change<T>(
        &mut self,
        f: impl FnOnce(&mut ClusterMap, Revision) -> Result<T, PlanError>,
    ) -> Result<(T, Revision), Error> {
        let (mut map, epoch) = self.read().await?.ok_or(Error::NoMap)?;
        let out = f(&mut map, epoch + 1)?;
        let epoch = self.write(epoch, &map).await?;
        Ok((out, epoch))
    }

    /// Create the map at first start from `nodes`, unless it exists. Returns whether this
    /// call created it, and the epoch.
    pub async fn create_map(
        &mut self,
        cfg: &ClusterConfig,
        residency: Residency,
        nodes: &BTreeMap<NodeId, PlacedNode>,
    ) -> Result<(bool, Revision), Error> {
        if let Some((_, epoch)) = self.read().await? {
            return Ok((false, epoch));
        }
        let map = ClusterMap::create(
            &cfg.name,
            cfg.replication_factor,
            cfg.shards_per_node,
            residency,
            nodes,
            1,
        )?;
        match self.write(0, &map).await {
            Ok(epoch) => Ok((true, epoch)),
            Err(Error::StaleEpoch { current, .. }) => Ok((false, current)),
            Err(e) => Err(e),
        }
    }

    /// Add a node to placement with its shards (no slots yet: a rebalance plan moves some).
    pub async fn add_node(
        &mut self,
        id: NodeId,
        node: PlacedNode,
    ) -> Result<(Vec<ShardId>, Revision), Error> {
        self.change(|m, _| m.add_node(id, node)).await
    }

    /// Mark the planned moves' slots MOVING (one write for all; refused whole if any one is
    /// refused, e.g. for residency).
    pub async fn start_moves(&mut self, moves: &[PlannedMove]) -> Result<Revision, Error> {
        self.change(|m, since| {
            for p in moves {
                if m.slot(p.slot).shard != p.from {
                    return Err(PlanError::SameShard {
                        slot: p.slot,
                        shard: m.slot(p.slot).shard,
                    });
                }
                m.start_move(p.slot, p.to, since)?;
            }
            Ok(())
        })
        .await
        .map(|(_, e)| e)
    }

    /// Activate the move of `slot` started at `move_since`.
    pub async fn activate(&mut self, slot: u16, move_since: Revision) -> Result<Revision, Error> {
        self.change(|m, since| m.activate_move(slot, move_since, since))
            .await
            .map(|(_, e)| e)
    }

    /// Roll back the move of `slot` started at `move_since`.
    pub async fn rollback(&mut self, slot: u16, move_since: Revision) -> Result<Revision, Error> {
        self.change(|m, _| m.rollback_move(slot, move_since))
            .await
            .map(|(_, e)| e)
    }

    /// Mark a node leaving (decommission: its shards retire, plans move their slots off).
    pub async fn set_leaving(&mut self, id: NodeId) -> Result<Revision, Error> {
        self.change(|m, _| m.set_leaving(id)).await.map(|(_, e)| e)
    }

    /// Remove an emptied node from placement.
    pub async fn remove_node(&mut self, id: NodeId) -> Result<Revision, Error> {
        self.change(|m, _| m.remove_node(id)).await.map(|(_, e)| e)
    }

    /// One step of the controller's duties from what `view` shows: create the map once
    /// `cfg.initial_nodes` members are registered, add registered nodes that placement does
    /// not know, activate moves whose target reported its import done, and roll back moves
    /// whose target node is not registered (the source still has everything). One write.
    pub async fn reconcile(
        &mut self,
        cfg: &ClusterConfig,
        residency: &Residency,
        view: &ClusterView,
    ) -> Result<Reconciled, Error> {
        let mut out = Reconciled::default();
        let placed = |m: &crate::model::Member| PlacedNode {
            region: m.region.clone(),
            failure_zone: m.failure_zone.clone(),
            state: Default::default(),
        };
        let Some((mut map, epoch)) = self.read().await? else {
            if view.members.len() < cfg.initial_nodes as usize {
                return Ok(out);
            }
            let nodes = view
                .members
                .iter()
                .map(|(&id, m)| (id, placed(m)))
                .collect();
            let (created, epoch) = self.create_map(cfg, residency.clone(), &nodes).await?;
            out.created = created;
            out.epoch = epoch;
            return Ok(out);
        };
        out.epoch = epoch;
        for (&id, m) in view.members.iter() {
            if !map.nodes.contains_key(&id) {
                let shards = map.add_node(id, placed(m))?;
                out.added.push((id, shards));
            }
        }
        let since = epoch + 1;
        for (slot, mv) in map.moves.clone() {
            let done = view
                .progress
                .get(&slot)
                .is_some_and(|p| p.since == mv.since && p.copied);
            let target_up = map
                .shards
                .get(&mv.to)
                .and_then(|s| s.owner())
                .is_some_and(|n| view.members.contains_key(&n));
            if done && map.activate_move(slot, mv.since, since).is_ok() {
                out.activated.push(slot);
            } else if !target_up && map.rollback_move(slot, mv.since).is_ok() {
                out.rolled_back.push(slot);
            }
        }
        if out.added.is_empty() && out.activated.is_empty() && out.rolled_back.is_empty() {
            return Ok(out);
        }
        out.epoch = self.write(epoch, &map).await?;
        Ok(out)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Run the controller role until `stop` turns true: campaign, then reconcile on every change
/// of the cluster; after a refusal (deposed) campaign again. Resigns when stopped.
pub async fn run_controller(
    client: Client,
    cfg: ClusterConfig,
    residency: Residency,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Error> {
    let watcher = MapWatcher::start(client.clone(), Keys::new(cfg.key_prefix()));
    let mut views = watcher.subscribe();
    while !*stop.borrow() {
        let mut ctl = tokio::select! {
            c = Controller::campaign(client.clone(), &cfg) => match c {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "campaign failed; retrying");
                    sleep(Duration::from_millis(500)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        loop {
            let view = views.borrow_and_update().clone();
            match timeout(
                Duration::from_secs(5),
                ctl.reconcile(&cfg, &residency, &view),
            )
            .await
            {
                Ok(Ok(_)) | Ok(Err(Error::StaleEpoch { .. })) | Ok(Err(Error::Plan(_))) => {}
                Ok(Err(Error::Deposed)) => break,
                Ok(Err(e)) => warn!(error = %e, "reconcile failed"),
                Err(_) => warn!("reconcile timed out"),
            }
            tokio::select! {
                r = views.changed() => if r.is_err() { break },
                _ = sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => {
                    let _ = ctl.resign().await;
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

pub(crate) async fn read_map(
    client: &mut Client,
    keys: &Keys,
) -> Result<Option<(ClusterMap, Revision)>, Error> {
    let key = keys.map();
    let resp = client.get(key.as_str(), None).await?;
    let Some(kv) = resp.kvs().first() else {
        return Ok(None);
    };
    let map = ClusterMap::decode(kv.value()).map_err(|e| Error::BadValue {
        key,
        reason: e.to_string(),
    })?;
    Ok(Some((map, kv.mod_revision() as Revision)))
}

async fn keep_lease(mut client: Client, lease: i64, period: Duration) {
    loop {
        if let Ok((mut keeper, mut stream)) = client.lease_keep_alive(lease).await {
            loop {
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match timeout(Duration::from_secs(2), stream.message()).await {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                    Ok(Ok(Some(_))) => return, // expired: the election key is gone with it
                    _ => break,
                }
                sleep(period).await;
            }
        }
        sleep(Duration::from_millis(200)).await;
    }
}
