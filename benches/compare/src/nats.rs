//! The NATS side through async-nats (TLS): core publish/subscribe (at-most-once, no
//! acknowledgement) and JetStream publish with acknowledgements (file storage).

use std::path::PathBuf;

use anyhow::Context;
use async_nats::jetstream::{self, stream::StorageType};
use async_nats::{Client, ConnectOptions, Subscriber};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};

use crate::driver::{Ack, Rx, Topology, Transport, Tx};
use crate::stats::ServerCpu;

/// A nats-server as a [`Transport`].
pub(crate) struct Nats {
    url: String,
    ca: PathBuf,
    pid: u32,
    /// Subjects are unique per topology.
    topo: u64,
    /// JetStream streams per durable topology (senders are spread over them).
    streams: usize,
    /// The streams of the last durable topology.
    stream: Option<(jetstream::Context, Vec<String>)>,
    open: Vec<Client>,
}

impl Nats {
    /// `url` like `tls://127.0.0.1:4222`; `ca` the PEM to trust; `pid` the server's process;
    /// `streams` JetStream streams for durable runs.
    pub(crate) fn new(url: String, ca: PathBuf, pid: u32, streams: usize) -> Nats {
        Nats {
            url,
            ca,
            pid,
            streams: streams.max(1),
            topo: 0,
            stream: None,
            open: Vec::new(),
        }
    }

    async fn connect(&mut self) -> anyhow::Result<Client> {
        let client = ConnectOptions::new()
            .add_root_certificates(self.ca.clone())
            .require_tls(true)
            .connect(&self.url)
            .await
            .with_context(|| format!("connecting to {}", self.url))?;
        self.open.push(client.clone());
        Ok(client)
    }

    /// A subscriber on its own connection, registered at the server when this returns.
    async fn receiver(&mut self, subject: &str) -> anyhow::Result<NatsRx> {
        let client = self.connect().await?;
        let sub = client.subscribe(subject.to_string()).await?;
        client.flush().await?;
        Ok(NatsRx {
            sub,
            _client: client,
        })
    }

    fn next_prefix(&mut self) -> String {
        self.topo += 1;
        format!("cmp{}", self.topo)
    }
}

impl Transport for Nats {
    type Tx = NatsTx;
    type Rx = NatsRx;

    async fn one_to_one(&mut self, pairs: usize) -> anyhow::Result<Topology<NatsTx, NatsRx>> {
        let prefix = self.next_prefix();
        let mut topo = Topology {
            senders: Vec::new(),
            receivers: Vec::new(),
            fanout: Vec::new(),
        };
        for i in 0..pairs {
            let subject = format!("{prefix}.p{i}");
            topo.receivers.push(self.receiver(&subject).await?);
            let client = self.connect().await?;
            topo.senders.push(NatsTx::Core {
                client,
                subject: subject.into(),
            });
            topo.fanout.push(1);
        }
        Ok(topo)
    }

    async fn fan_out(
        &mut self,
        groups: usize,
        size: usize,
    ) -> anyhow::Result<Topology<NatsTx, NatsRx>> {
        let prefix = self.next_prefix();
        let mut topo = Topology {
            senders: Vec::new(),
            receivers: Vec::new(),
            fanout: Vec::new(),
        };
        for g in 0..groups {
            let subject = format!("{prefix}.g{g}");
            for _ in 0..size {
                topo.receivers.push(self.receiver(&subject).await?);
            }
            let client = self.connect().await?;
            topo.senders.push(NatsTx::Core {
                client,
                subject: subject.into(),
            });
            topo.fanout.push(size as u32);
        }
        Ok(topo)
    }

    async fn durable(&mut self, conns: usize) -> anyhow::Result<Topology<NatsTx, NatsRx>> {
        let prefix = self.next_prefix();
        let admin = jetstream::new(self.connect().await?);
        let mut names = Vec::new();
        for k in 0..self.streams.min(conns.max(1)) {
            let name = format!("{}S{k}", prefix.to_uppercase());
            admin
                .create_stream(jetstream::stream::Config {
                    name: name.clone(),
                    subjects: vec![format!("{prefix}.s{k}.>")],
                    storage: StorageType::File,
                    ..Default::default()
                })
                .await
                .context("creating a JetStream stream")?;
            names.push(name);
        }
        let streams = names.len();
        self.stream = Some((admin, names));
        let mut topo = Topology {
            senders: Vec::new(),
            receivers: Vec::new(),
            fanout: Vec::new(),
        };
        for i in 0..conns {
            let js = jetstream::new(self.connect().await?);
            let subject = format!("{prefix}.s{}.d{i}", i % streams).into();
            topo.senders.push(NatsTx::JetStream { js, subject });
            topo.fanout.push(0);
        }
        Ok(topo)
    }

    async fn stored(&mut self) -> anyhow::Result<u64> {
        let (js, names) = self.stream.as_ref().context("no durable run yet")?;
        let mut total = 0;
        for name in names {
            total += js.get_stream(name).await?.get_info().await?.state.messages;
        }
        Ok(total)
    }

    async fn teardown(&mut self) {
        if let Some((js, names)) = self.stream.take() {
            for name in names {
                let _ = js.delete_stream(&name).await;
            }
        }
        for c in self.open.drain(..) {
            let _ = c.drain().await;
        }
    }

    fn server_cpu(&self) -> ServerCpu {
        ServerCpu::Process(self.pid)
    }
}

/// One publishing connection.
pub(crate) enum NatsTx {
    /// Core NATS: `publish` returns once the message is queued on the connection.
    Core {
        client: Client,
        subject: async_nats::Subject,
    },
    /// JetStream: resolves on the stream's publish acknowledgement.
    JetStream {
        js: jetstream::Context,
        subject: async_nats::Subject,
    },
}

impl Tx for NatsTx {
    fn acknowledged(&self) -> bool {
        matches!(self, NatsTx::JetStream { .. })
    }

    fn send(&self, payload: Bytes) -> BoxFuture<'static, Result<Ack, String>> {
        let this = match self {
            NatsTx::Core { client, subject } => Err((client.clone(), subject.clone())),
            NatsTx::JetStream { js, subject } => Ok((js.clone(), subject.clone())),
        };
        Box::pin(async move {
            match this {
                Err((client, subject)) => {
                    client
                        .publish(subject, payload)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok((js, subject)) => {
                    let ack = js
                        .publish(subject, payload)
                        .await
                        .map_err(|e| e.to_string())?;
                    ack.await.map_err(|e| e.to_string())?;
                }
            }
            Ok(Ack { recipients: None })
        })
    }
}

/// One subscribing connection.
pub(crate) struct NatsRx {
    sub: Subscriber,
    _client: Client,
}

impl Rx for NatsRx {
    async fn recv(&mut self, out: &mut Vec<Bytes>) -> bool {
        match self.sub.next().await {
            Some(m) => out.push(m.payload),
            None => return false,
        }
        while out.len() < 1024 {
            match self.sub.next().now_or_never() {
                Some(Some(m)) => out.push(m.payload),
                _ => break,
            }
        }
        true
    }
}
