//! The node as a cluster member (the `[cluster]` section): it registers under a lease and
//! follows the slot map with hearth-cluster, takes part in the controller election, feeds
//! every new map to the routing core (owners, epochs, moving slots, the owners' client
//! addresses for redirects) and gates writes on the lease; and it carries the core's
//! forwarded sends and their answers over hearth-link, one QUIC connection per peer.
//!
//! On the link, every message is one forwarded send or one answer: a kind byte, then the
//! core's own encoding (`core::forward`). A forwarded send goes on the stream its slot picks,
//! so the sends for one device's queue keep their order; the link batches whatever is queued
//! for a peer into frames of up to 64 KiB when its writer is free.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Buf, BufMut, BytesMut};
use hearth_cluster::{ClusterConfig, ClusterNode, ClusterView, Member, Serving};
use hearth_link::{Incoming, Link, LinkConfig};
use hearth_protocol::{slot_of, SLOT_COUNT};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::config::Residency;
use crate::core::{Forwarded, NodeId, Returned, SlotMap};
use crate::driver::{lock, Driver};
use crate::now_ms;

/// A link message holding one forwarded send.
const KIND_FORWARD: u8 = 1;
/// A link message holding one answer to a forwarded send.
const KIND_RETURN: u8 = 2;
/// A peer whose link has been down this long is lost: its unanswered sends are answered
/// with a retry (the sender's client resends with the same message id).
const DOWN_GRACE: Duration = Duration::from_secs(1);

/// The link side the driver performs `Forward` and `Return` actions with.
pub(crate) struct Links {
    link: Link,
    local: NodeId,
    /// Nodes registered now (a forward to any other is lost at once).
    members: Mutex<HashSet<NodeId>>,
}

impl Links {
    /// Queue forwarded sends for `node`. False when the node cannot be reached (not
    /// registered, or its outbox refused them): the caller tells the core it is lost.
    pub(crate) fn forward(&self, node: NodeId, batch: &[Forwarded]) -> bool {
        if !lock(&self.members).contains(&node) {
            tracing::warn!(
                node,
                sends = batch.len(),
                "forward to a node that is not registered"
            );
            return false;
        }
        let mut buf = BytesMut::new();
        for f in batch {
            buf.put_u8(KIND_FORWARD);
            f.encode(&mut buf);
            let msg = buf.split().freeze();
            let key = slot_of(f.routed.slot_key());
            if let Err(e) = self.link.try_send(node, key, msg) {
                tracing::warn!(node, error = %e, "forward refused by the link");
                return false;
            }
        }
        true
    }

    /// Queue answers for `node` (the node the forwarded sends came from).
    pub(crate) fn give_back(&self, node: NodeId, batch: &[Returned]) {
        let mut buf = BytesMut::new();
        for r in batch {
            buf.put_u8(KIND_RETURN);
            r.encode(&mut buf);
            let msg = buf.split().freeze();
            if let Err(e) = self.link.try_send(node, (r.token % 64) as u16, msg) {
                // The sender's node answers its device with a retry once it sees the link
                // fail; the resend is deduplicated where it was stored.
                tracing::warn!(node, error = %e, "answer to a forwarded send dropped");
            }
        }
    }
}

/// A running cluster membership.
pub(crate) struct Cluster {
    node: Arc<ClusterNode>,
    links: Arc<Links>,
    stop: watch::Sender<bool>,
    tasks: TaskTracker,
}

fn read_pem(what: &str, path: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading cluster.{what} {path:?}"))
}

/// The residency rules of the node's config as the cluster map's (zones without slot ranges
/// of their own: every slot is in the default zone).
fn map_residency(r: &Residency) -> hearth_cluster::Residency {
    hearth_cluster::Residency {
        default_zone: r.default_zone.clone(),
        zones: r
            .zones
            .iter()
            .map(|(name, regions)| {
                let zone = hearth_cluster::Zone {
                    regions: regions.clone(),
                    slots: Vec::new(),
                };
                (name.clone(), zone)
            })
            .collect(),
    }
}

/// The core's slot map for a view of the cluster, seen from node `local`.
fn slot_map(view: &ClusterView, local: NodeId) -> Option<SlotMap> {
    let snap = view.snapshot.as_ref()?;
    let since = (0..SLOT_COUNT).map(|s| snap.map.slot(s).since).collect();
    let moving = snap.map.moves.keys().copied().collect();
    let addrs = view
        .members
        .values()
        .map(|m| (m.id, m.client_addr.clone()))
        .collect();
    Some(
        SlotMap::new(snap.epoch, local, snap.owners())
            .with_since(since)
            .with_moving(moving)
            .with_addrs(addrs),
    )
}

impl Cluster {
    /// Join the cluster of `cfg`: bind the link, register, follow the map and campaign for
    /// the controller. `serving` mirrors the gate (for `/readyz`).
    pub(crate) async fn start(
        cfg: &ClusterConfig,
        region: &str,
        residency: &Residency,
        driver: Arc<Driver>,
        serving: Arc<AtomicBool>,
    ) -> anyhow::Result<Cluster> {
        let listen: SocketAddr = cfg
            .link_listen
            .parse()
            .with_context(|| format!("cluster.link_listen {:?}", cfg.link_listen))?;
        let mut lc = LinkConfig::new(cfg.node_id, &cfg.name, listen);
        lc.ca_pem = read_pem("ca_cert", &cfg.ca_cert)?;
        lc.cert_pem = read_pem("node_cert", &cfg.node_cert)?;
        lc.key_pem = read_pem("node_key", &cfg.node_key)?;
        let (link, incoming) = Link::bind(lc)
            .await
            .with_context(|| format!("starting the inter-node link on {listen}"))?;
        let member = Member {
            id: cfg.node_id,
            client_addr: cfg.advertise_client.clone(),
            link_addr: cfg.advertise_link.clone(),
            region: region.to_owned(),
            failure_zone: cfg.failure_zone.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
        };
        let mut cfg = cfg.clone();
        cfg.region = region.to_owned();
        let node = Arc::new(
            ClusterNode::start(&cfg, member)
                .await
                .context("joining the cluster on etcd")?,
        );
        let links = Arc::new(Links {
            link: link.clone(),
            local: cfg.node_id,
            members: Mutex::new(HashSet::new()),
        });
        driver.set_links(links.clone());
        let (stop, stop_rx) = watch::channel(false);
        let tasks = TaskTracker::new();
        let etcd = hearth_cluster::connect(&cfg)
            .await
            .context("connecting to etcd")?;
        tasks.spawn(controller(
            etcd,
            cfg.clone(),
            map_residency(residency),
            stop_rx.clone(),
        ));
        tasks.spawn(follow(
            node.clone(),
            links.clone(),
            driver.clone(),
            serving,
            stop_rx.clone(),
        ));
        tasks.spawn(receive(incoming, driver.clone()));
        tasks.spawn(watch_peers(links.clone(), driver, stop_rx));
        tracing::info!(node = cfg.node_id, link = %link.local_addr(), "joined the cluster");
        Ok(Cluster {
            node,
            links,
            stop,
            tasks,
        })
    }

    /// Stop: resign from the election, close the links, leave the membership (the member
    /// key goes at once, so peers stop routing here).
    pub(crate) async fn shutdown(self) {
        self.stop.send_replace(true);
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(3), self.tasks.wait()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.links.link.close()).await;
        match Arc::try_unwrap(self.node) {
            Ok(node) => {
                if let Err(e) = node.leave().await {
                    tracing::warn!(error = %e, "leaving the cluster");
                }
            }
            Err(_) => tracing::warn!("cluster tasks still running; the lease will expire"),
        }
    }
}

/// Take part in the controller election until stopped.
async fn controller(
    etcd: hearth_cluster::etcd_client::Client,
    cfg: ClusterConfig,
    residency: hearth_cluster::Residency,
    stop: watch::Receiver<bool>,
) {
    if let Err(e) = hearth_cluster::run_controller(etcd, cfg, residency, stop).await {
        tracing::error!(error = %e, "controller loop ended");
    }
}

/// Feed every new view and lease state to the core: the slot map, the serving gate, the
/// peers' link addresses.
async fn follow(
    node: Arc<ClusterNode>,
    links: Arc<Links>,
    driver: Arc<Driver>,
    serving_flag: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut views = node.subscribe();
    let mut lease = node.lease_state();
    let mut epoch = None;
    let mut was_serving = false;
    loop {
        let view = views.borrow_and_update().clone();
        lease.borrow_and_update();
        let serving = matches!(node.serving(), Serving::Yes { .. });
        for m in view.members.values() {
            if m.id == links.local {
                continue;
            }
            match resolve(&m.link_addr).await {
                Some(addr) => links.link.set_peer(m.id, addr),
                None => tracing::warn!(node = m.id, addr = %m.link_addr, "bad link address"),
            }
        }
        *lock(&links.members) = view.members.keys().copied().collect();
        let map = slot_map(&view, links.local);
        let new_epoch = map.as_ref().map(SlotMap::epoch);
        driver.with(|c| {
            if let Some(map) = map {
                c.set_slot_map(map);
            }
            c.set_serving(serving);
        });
        serving_flag.store(serving, Ordering::SeqCst);
        if new_epoch != epoch || serving != was_serving {
            tracing::info!(epoch = ?new_epoch, serving, members = view.members.len(), "cluster view");
            epoch = new_epoch;
            was_serving = serving;
        }
        tokio::select! {
            r = views.changed() => if r.is_err() { return },
            r = lease.changed() => if r.is_err() { return },
            _ = crate::stopped(&mut stop) => return,
        }
    }
}

async fn resolve(addr: &str) -> Option<SocketAddr> {
    if let Ok(a) = addr.parse() {
        return Some(a);
    }
    tokio::net::lookup_host(addr).await.ok()?.next()
}

/// Hand what peers sent to the core: forwarded sends to the owner stage, answers to the
/// sends this node forwarded.
async fn receive(mut incoming: Incoming, driver: Arc<Driver>) {
    while let Some(d) = incoming.recv().await {
        let mut forwarded = Vec::new();
        let mut returned = Vec::new();
        for mut m in d.messages {
            if !m.has_remaining() {
                tracing::warn!(peer = d.from, "empty link message");
                continue;
            }
            let kind = m.get_u8();
            let decoded = match kind {
                KIND_FORWARD => Forwarded::decode(&mut m).map(|f| forwarded.push(f)),
                KIND_RETURN => Returned::decode(&mut m).map(|r| returned.push(r)),
                other => {
                    tracing::warn!(peer = d.from, kind = other, "unknown link message kind");
                    continue;
                }
            };
            if let Err(e) = decoded {
                tracing::warn!(peer = d.from, error = %e, "bad link message skipped");
            } else if m.has_remaining() {
                tracing::warn!(peer = d.from, "trailing bytes after a link message");
            }
        }
        let from = d.from;
        driver.with(|c| {
            if !forwarded.is_empty() {
                c.handle_forwarded(from, forwarded, now_ms());
            }
            if !returned.is_empty() {
                c.handle_returned(returned);
            }
        });
    }
}

/// Tell the core when a peer is lost, so the sends it was forwarded are answered (with a
/// retry) instead of waiting forever: its link down for [`DOWN_GRACE`], its connection
/// replaced (frames in flight on the old one may be gone), or messages dropped.
async fn watch_peers(links: Arc<Links>, driver: Arc<Driver>, mut stop: watch::Receiver<bool>) {
    let mut down_since: HashMap<NodeId, Instant> = HashMap::new();
    let mut seen: HashMap<NodeId, (u64, u64)> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::stopped(&mut stop) => return,
        }
        let members = lock(&links.members).clone();
        let mut lost = Vec::new();
        for s in links.link.stats() {
            let before = seen.insert(s.peer, (s.connects, s.dropped));
            if let Some((connects, dropped)) = before {
                if (connects > 0 && s.connects > connects) || s.dropped > dropped {
                    lost.push(s.peer);
                }
            }
            if s.connected && members.contains(&s.peer) {
                down_since.remove(&s.peer);
            } else {
                let since = *down_since.entry(s.peer).or_insert_with(Instant::now);
                if since.elapsed() >= DOWN_GRACE {
                    lost.push(s.peer);
                }
            }
        }
        if !lost.is_empty() {
            driver.with(|c| {
                for &n in &lost {
                    c.node_lost(n);
                }
            });
        }
    }
}
