//! The Hearth side: devices of an embedded node, through `hearth_client` (QUIC, TLS 1.3).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use hearth_client::{
    random_message_id, ClientConfig, Connection, Deliveries, Delivery, Outgoing, OutgoingGroup,
};
use hearth_protocol::{SigningKey, TokenClaims};

use crate::driver::{Ack, Rx, Topology, Transport, Tx};
use crate::stats::ServerCpu;

/// Every device of the benchmark is device 1 of its own account.
const DEVICE: u32 = 1;

/// Accounts and groups are never reused across runs (both Hearth modes share one node).
static NEXT_ID: AtomicU64 = AtomicU64::new(1_000);

fn fresh_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// How to reach the embedded node.
#[derive(Clone)]
pub(crate) struct Target {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The node's admin bearer token.
    pub admin_token: String,
    pub server_name: String,
    pub ca_pem: Vec<u8>,
    pub key: std::sync::Arc<SigningKey>,
}

/// Hearth as a [`Transport`]: stored (fsync'd, acknowledged, at-least-once) or ephemeral
/// (pushed to connected devices only, never stored) envelopes.
pub(crate) struct Hearth {
    target: Target,
    ephemeral: bool,
    /// Recipient accounts of the last durable topology.
    durable_recipients: Vec<u64>,
    /// Connections to close at teardown.
    open: Vec<Connection>,
}

impl Hearth {
    pub(crate) fn new(target: Target, ephemeral: bool) -> Hearth {
        Hearth {
            target,
            ephemeral,
            durable_recipients: Vec::new(),
            open: Vec::new(),
        }
    }

    async fn connect(&mut self, account: u64) -> anyhow::Result<(Connection, Deliveries)> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let token = self.target.key.issue(&TokenClaims {
            account,
            device: DEVICE,
            expires_at: now + 24 * 3600,
        });
        let t = &self.target;
        let cfg = ClientConfig::new(t.addr, t.server_name.clone(), t.ca_pem.clone(), token);
        let (conn, deliveries) = Connection::connect(&cfg)
            .await
            .with_context(|| format!("connecting account {account} to the Hearth node"))?;
        self.open.push(conn.clone());
        Ok((conn, deliveries))
    }

    async fn receiver(&mut self) -> anyhow::Result<(u64, HearthRx)> {
        let account = fresh_id();
        let (conn, deliveries) = self.connect(account).await?;
        Ok((
            account,
            HearthRx {
                conn,
                deliveries,
                batch: Vec::new(),
                seqs: Vec::new(),
            },
        ))
    }

    fn sender(&self, conn: Connection, to: To) -> HearthTx {
        HearthTx {
            conn,
            to,
            ephemeral: self.ephemeral,
        }
    }
}

impl Transport for Hearth {
    type Tx = HearthTx;
    type Rx = HearthRx;

    async fn one_to_one(&mut self, pairs: usize) -> anyhow::Result<Topology<HearthTx, HearthRx>> {
        let mut topo = Topology {
            senders: Vec::new(),
            receivers: Vec::new(),
            fanout: Vec::new(),
        };
        for _ in 0..pairs {
            let (to, rx) = self.receiver().await?;
            let (conn, _) = self.connect(fresh_id()).await?;
            topo.senders.push(self.sender(conn, To::Account(to)));
            topo.receivers.push(rx);
            topo.fanout.push(1);
        }
        Ok(topo)
    }

    async fn fan_out(
        &mut self,
        groups: usize,
        size: usize,
    ) -> anyhow::Result<Topology<HearthTx, HearthRx>> {
        let mut topo = Topology {
            senders: Vec::new(),
            receivers: Vec::new(),
            fanout: Vec::new(),
        };
        for _ in 0..groups {
            let mut members = Vec::with_capacity(size);
            for _ in 0..size {
                let (account, rx) = self.receiver().await?;
                members.push(account);
                topo.receivers.push(rx);
            }
            // The creator is a member too; it sends, and a sender gets no copy of its own.
            let (conn, _) = self.connect(fresh_id()).await?;
            let group = fresh_id();
            let ok = conn
                .create_group(group, &members)
                .await
                .context("creating a group")?;
            anyhow::ensure!(
                ok.members as usize == size + 1,
                "group has {} members",
                ok.members
            );
            topo.senders.push(self.sender(conn, To::Group(group)));
            topo.fanout.push(size as u32);
        }
        Ok(topo)
    }

    async fn durable(&mut self, conns: usize) -> anyhow::Result<Topology<HearthTx, HearthRx>> {
        anyhow::ensure!(!self.ephemeral, "ephemeral envelopes are not durable");
        let mut topo = Topology {
            senders: Vec::new(),
            receivers: Vec::new(),
            fanout: Vec::new(),
        };
        self.durable_recipients.clear();
        for _ in 0..conns {
            // The recipient registers its device, then goes offline: envelopes stay queued.
            let to = fresh_id();
            let (conn, _) = self.connect(to).await?;
            conn.shutdown().await;
            self.durable_recipients.push(to);
            let (conn, _) = self.connect(fresh_id()).await?;
            topo.senders.push(self.sender(conn, To::Account(to)));
            topo.fanout.push(0);
        }
        Ok(topo)
    }

    async fn stored(&mut self) -> anyhow::Result<u64> {
        let admin = self.target.admin;
        let auth = format!("Bearer {}", self.target.admin_token);
        let accounts = self.durable_recipients.clone();
        tokio::task::spawn_blocking(move || {
            let mut total = 0;
            for a in accounts {
                let url = format!("http://{admin}/v1/queues/{a}/{DEVICE}");
                let v: serde_json::Value = ureq::get(&url)
                    .set("Authorization", &auth)
                    .call()?
                    .into_json()?;
                total += v["queued"]
                    .as_u64()
                    .context("no `queued` in the queue status")?;
            }
            Ok(total)
        })
        .await?
    }

    async fn teardown(&mut self) {
        for c in self.open.drain(..) {
            c.close();
        }
    }

    fn server_cpu(&self) -> ServerCpu {
        ServerCpu::Embedded
    }

    async fn server_status(&mut self) -> Option<serde_json::Value> {
        let url = format!("http://{}/v1/status", self.target.admin);
        let get = move || -> anyhow::Result<serde_json::Value> {
            Ok(ureq::get(&url).call()?.into_json()?)
        };
        tokio::task::spawn_blocking(get).await.ok()?.ok()
    }
}

#[derive(Debug, Clone, Copy)]
enum To {
    Account(u64),
    Group(u64),
}

/// One sending device.
pub(crate) struct HearthTx {
    conn: Connection,
    to: To,
    ephemeral: bool,
}

impl Tx for HearthTx {
    fn acknowledged(&self) -> bool {
        true
    }

    fn send(&self, payload: Bytes) -> BoxFuture<'static, Result<Ack, String>> {
        let (conn, to, ephemeral) = (self.conn.clone(), self.to, self.ephemeral);
        Box::pin(async move {
            let msg_id = random_message_id();
            let r = match to {
                To::Account(to_account) => {
                    let out = Outgoing {
                        msg_id,
                        to_account,
                        to_device: 0,
                        ttl_secs: 0,
                        ephemeral,
                        payload,
                    };
                    conn.send(out).await
                }
                To::Group(group) => {
                    let out = OutgoingGroup {
                        msg_id,
                        group,
                        ttl_secs: 0,
                        ephemeral,
                        payload,
                    };
                    conn.send_group(out).await
                }
            };
            r.map(|a| Ack {
                recipients: Some(a.recipients),
            })
            .map_err(|e| e.to_string())
        })
    }
}

/// One receiving device; acknowledges what it received (stored envelopes).
pub(crate) struct HearthRx {
    conn: Connection,
    deliveries: Deliveries,
    batch: Vec<Delivery>,
    seqs: Vec<u64>,
}

impl Rx for HearthRx {
    async fn recv(&mut self, out: &mut Vec<Bytes>) -> bool {
        self.batch.clear();
        if self.deliveries.next_batch(&mut self.batch, 1024).await == 0 {
            return false;
        }
        self.seqs.clear();
        for d in self.batch.drain(..) {
            if d.seq != 0 {
                self.seqs.push(d.seq);
            }
            out.push(d.payload);
        }
        self.conn.ack(&self.seqs).is_ok()
    }
}
