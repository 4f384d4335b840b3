//! The link endpoint: peers, their outboxes and stream writers, the dialer, the acceptor and
//! the stream readers.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::{sleep, timeout};
use tracing::{debug, warn};

use crate::frame::{encode_frame, read_frame, KIND_DATA, KIND_HELLO, MSG_OVERHEAD};
use crate::tls::{client_config, node_name, peer_is, server_config, Material};
use crate::{Delivery, LinkConfig, LinkError, PeerStats, SendError};

/// Application close codes.
const CLOSE_REPLACED: u32 = 1;
const CLOSE_REFUSED: u32 = 2;
const CLOSE_PROTOCOL: u32 = 3;
const CLOSE_SHUTDOWN: u32 = 4;

/// What peers sent: a stream of [`Delivery`] batches.
pub struct Incoming {
    rx: mpsc::Receiver<Delivery>,
}

impl Incoming {
    /// The next batch (`None` once the link is closed).
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }
}

/// A node's link endpoint (cheap to clone).
#[derive(Clone)]
pub struct Link {
    shared: Arc<Shared>,
}

struct Shared {
    cfg: LinkConfig,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    peers: Mutex<HashMap<u32, Arc<Peer>>>,
    incoming: mpsc::Sender<Delivery>,
    closed: watch::Sender<bool>,
}

/// A live connection with its generation (to tell a replaced one from the current).
#[derive(Clone)]
struct Conn {
    gen: u64,
    conn: quinn::Connection,
}

struct Peer {
    id: u32,
    addr: watch::Sender<Option<SocketAddr>>,
    conn: watch::Sender<Option<Conn>>,
    streams: Vec<StreamQueue>,
    queued: AtomicUsize,
    space: Notify,
    gens: AtomicU64,
    stats: Stats,
}

#[derive(Default)]
struct StreamQueue {
    q: Mutex<VecDeque<Bytes>>,
    ready: Notify,
}

#[derive(Default)]
struct Stats {
    batches_sent: AtomicU64,
    messages_sent: AtomicU64,
    bytes_sent: AtomicU64,
    batches_received: AtomicU64,
    bytes_received: AtomicU64,
    dropped: AtomicU64,
    connects: AtomicU64,
}

impl Link {
    /// Bind the endpoint and start accepting peers. Returns the link and its incoming
    /// batches.
    pub async fn bind(cfg: LinkConfig) -> Result<(Link, Incoming), LinkError> {
        let m = Material::from_pem(&cfg.ca_pem, &cfg.cert_pem, &cfg.key_pem)?;
        let server = server_config(&m, cfg.streams_per_peer.max(1))?;
        let client = client_config(&m, cfg.streams_per_peer.max(1))?;
        let endpoint = quinn::Endpoint::server(server, cfg.listen)?;
        let (tx, rx) = mpsc::channel(cfg.incoming_capacity.max(1));
        let shared = Arc::new(Shared {
            cfg,
            endpoint,
            client,
            peers: Mutex::new(HashMap::new()),
            incoming: tx,
            closed: watch::channel(false).0,
        });
        tokio::spawn(accept_loop(shared.clone()));
        Ok((Link { shared }, Incoming { rx }))
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.endpoint.local_addr().expect("bound")
    }

    /// Where node `id` listens (from its registration). Needed for the peers this node dials
    /// (those with a higher id); harmless for the others.
    pub fn set_peer(&self, id: u32, addr: SocketAddr) {
        if id != self.shared.cfg.node_id {
            self.shared.peer(id).addr.send_replace(Some(addr));
        }
    }

    /// Queue `msg` for node `peer` on the stream `key % streams_per_peer`, waiting while
    /// the peer's outbox is full.
    pub async fn send(&self, peer: u32, key: u16, msg: Bytes) -> Result<(), SendError> {
        let p = self.check(peer, &msg)?;
        let need = msg.len() + MSG_OVERHEAD;
        loop {
            let room = p.space.notified();
            if p.reserve(need, self.shared.cfg.max_outbox_bytes) {
                break;
            }
            if *self.shared.closed.borrow() {
                return Err(SendError::Closed);
            }
            room.await;
        }
        p.push(key, msg);
        Ok(())
    }

    /// Like [`Link::send`], but refuse at once when the outbox is full.
    pub fn try_send(&self, peer: u32, key: u16, msg: Bytes) -> Result<(), SendError> {
        let p = self.check(peer, &msg)?;
        if !p.reserve(msg.len() + MSG_OVERHEAD, self.shared.cfg.max_outbox_bytes) {
            return Err(SendError::Full(peer));
        }
        p.push(key, msg);
        Ok(())
    }

    fn check(&self, peer: u32, msg: &Bytes) -> Result<Arc<Peer>, SendError> {
        if peer == self.shared.cfg.node_id {
            return Err(SendError::ToSelf(peer));
        }
        if msg.len() + MSG_OVERHEAD > self.shared.cfg.max_frame_bytes {
            return Err(SendError::TooLarge(msg.len()));
        }
        if *self.shared.closed.borrow() {
            return Err(SendError::Closed);
        }
        Ok(self.shared.peer(peer))
    }

    /// Counters per peer.
    pub fn stats(&self) -> Vec<PeerStats> {
        let peers: Vec<Arc<Peer>> = self
            .shared
            .peers
            .lock()
            .unwrap()
            .values()
            .cloned()
            .collect();
        let mut out: Vec<PeerStats> = peers
            .iter()
            .map(|p| {
                let conn = p.conn.borrow().clone();
                let s = &p.stats;
                PeerStats {
                    peer: p.id,
                    connected: conn.is_some(),
                    batches_sent: s.batches_sent.load(Ordering::Relaxed),
                    messages_sent: s.messages_sent.load(Ordering::Relaxed),
                    bytes_sent: s.bytes_sent.load(Ordering::Relaxed),
                    batches_received: s.batches_received.load(Ordering::Relaxed),
                    bytes_received: s.bytes_received.load(Ordering::Relaxed),
                    queued_bytes: p.queued.load(Ordering::Relaxed) as u64,
                    dropped: s.dropped.load(Ordering::Relaxed),
                    connects: s.connects.load(Ordering::Relaxed),
                    rtt: conn.map(|c| c.conn.rtt()),
                }
            })
            .collect();
        out.sort_by_key(|s| s.peer);
        out
    }

    /// Close every connection and stop; queued messages are dropped.
    pub async fn close(&self) {
        self.shared.closed.send_replace(true);
        self.shared
            .endpoint
            .close(CLOSE_SHUTDOWN.into(), b"shutdown");
        let peers: Vec<Arc<Peer>> = self
            .shared
            .peers
            .lock()
            .unwrap()
            .values()
            .cloned()
            .collect();
        for p in peers {
            p.space.notify_waiters();
            for s in &p.streams {
                s.ready.notify_one();
            }
        }
        self.shared.endpoint.wait_idle().await;
    }
}

impl Peer {
    fn reserve(&self, need: usize, max: usize) -> bool {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                // An empty outbox always takes one message, however large (up to the cap).
                (q == 0 || q + need <= max).then_some(q + need)
            })
            .is_ok()
    }

    fn push(&self, key: u16, msg: Bytes) {
        let s = &self.streams[usize::from(key) % self.streams.len()];
        s.q.lock().unwrap().push_back(msg);
        s.ready.notify_one();
    }

    fn release(&self, bytes: usize) {
        self.queued.fetch_sub(bytes, Ordering::AcqRel);
        self.space.notify_waiters();
    }
}

impl Shared {
    /// The peer `id`, created (with its stream writers, and its dialer if this node dials
    /// it) on first use.
    fn peer(self: &Arc<Self>, id: u32) -> Arc<Peer> {
        let mut peers = self.peers.lock().unwrap();
        if let Some(p) = peers.get(&id) {
            return p.clone();
        }
        let n = usize::from(self.cfg.streams_per_peer.max(1));
        let p = Arc::new(Peer {
            id,
            addr: watch::channel(None).0,
            conn: watch::channel(None).0,
            streams: (0..n).map(|_| StreamQueue::default()).collect(),
            queued: AtomicUsize::new(0),
            space: Notify::new(),
            gens: AtomicU64::new(0),
            stats: Stats::default(),
        });
        peers.insert(id, p.clone());
        for i in 0..n {
            tokio::spawn(stream_writer(self.clone(), p.clone(), i as u16));
        }
        if self.cfg.node_id < id {
            tokio::spawn(dialer(self.clone(), p.clone()));
        }
        p
    }

    fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Make `conn` the peer's current connection and serve its incoming streams until it
    /// ends.
    async fn adopt(self: Arc<Self>, p: Arc<Peer>, conn: quinn::Connection) {
        let gen = p.gens.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(old) = p.conn.send_replace(Some(Conn {
            gen,
            conn: conn.clone(),
        })) {
            old.conn.close(CLOSE_REPLACED.into(), b"replaced");
        }
        p.stats.connects.fetch_add(1, Ordering::Relaxed);
        debug!(node = self.cfg.node_id, peer = p.id, "link up");
        let readers = tokio::task::JoinSet::new();
        let mut readers = readers;
        loop {
            tokio::select! {
                s = conn.accept_uni() => match s {
                    Ok(recv) => { readers.spawn(read_stream(self.clone(), p.clone(), conn.clone(), recv)); }
                    Err(_) => break,
                },
                _ = conn.closed() => break,
            }
        }
        readers.abort_all();
        p.conn.send_if_modified(|c| {
            if c.as_ref().is_some_and(|c| c.gen == gen) {
                *c = None;
                true
            } else {
                false
            }
        });
        debug!(node = self.cfg.node_id, peer = p.id, "link down");
    }
}

/// Write what is queued on one stream of a peer, frame by frame, on the current connection.
async fn stream_writer(sh: Arc<Shared>, p: Arc<Peer>, index: u16) {
    let queue = &p.streams[usize::from(index)];
    let mut conn_rx = p.conn.subscribe();
    let mut closed_rx = sh.closed.subscribe();
    let mut open: Option<(u64, quinn::SendStream)> = None;
    let mut buf = BytesMut::new();
    loop {
        // Wait for messages.
        loop {
            if sh.is_closed() {
                return;
            }
            let ready = queue.ready.notified();
            if !queue.q.lock().unwrap().is_empty() {
                break;
            }
            ready.await;
        }
        // Wait for a connection.
        let conn = loop {
            if sh.is_closed() {
                return;
            }
            if let Some(c) = conn_rx.borrow_and_update().clone() {
                break c;
            }
            tokio::select! {
                r = conn_rx.changed() => if r.is_err() { return },
                _ = closed_rx.changed() => {}
            }
        };
        if open.as_ref().is_none_or(|(g, _)| *g != conn.gen) {
            match conn.conn.open_uni().await {
                Ok(mut s) => {
                    let mut hdr = [KIND_DATA, 0, 0];
                    hdr[1..].copy_from_slice(&index.to_be_bytes());
                    if s.write_all(&hdr).await.is_err() {
                        continue;
                    }
                    open = Some((conn.gen, s));
                }
                Err(_) => {
                    sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        // Take up to flush_bytes of queued messages into one frame.
        let (msgs, bytes) = {
            let mut q = queue.q.lock().unwrap();
            let mut msgs = Vec::new();
            let mut bytes = 0;
            while let Some(m) = q.front() {
                let n = m.len() + MSG_OVERHEAD;
                if !msgs.is_empty() && bytes + n > sh.cfg.flush_bytes {
                    break;
                }
                bytes += n;
                msgs.push(q.pop_front().expect("front"));
            }
            (msgs, bytes)
        };
        buf.clear();
        encode_frame(msgs.iter(), &mut buf);
        let send = &mut open.as_mut().expect("opened").1;
        let ok = send.write_all(&buf).await.is_ok();
        p.release(bytes);
        let s = &p.stats;
        if ok {
            s.batches_sent.fetch_add(1, Ordering::Relaxed);
            s.messages_sent
                .fetch_add(msgs.len() as u64, Ordering::Relaxed);
            s.bytes_sent.fetch_add(
                (bytes - msgs.len() * MSG_OVERHEAD) as u64,
                Ordering::Relaxed,
            );
        } else {
            s.dropped.fetch_add(msgs.len() as u64, Ordering::Relaxed);
            open = None;
        }
    }
}

/// Dial peer `p` whenever there is no connection, with backoff, and adopt the connection.
async fn dialer(sh: Arc<Shared>, p: Arc<Peer>) {
    let mut addr_rx = p.addr.subscribe();
    let mut backoff = Duration::from_millis(50);
    while !sh.is_closed() {
        let Some(addr) = *addr_rx.borrow_and_update() else {
            if addr_rx.changed().await.is_err() {
                return;
            }
            continue;
        };
        let server_name = node_name(&sh.cfg.cluster, p.id);
        let attempt = async {
            let connecting = sh
                .endpoint
                .connect_with(sh.client.clone(), addr, &server_name)
                .map_err(|e| e.to_string())?;
            let conn = connecting.await.map_err(|e| e.to_string())?;
            let mut hello = conn.open_uni().await.map_err(|e| e.to_string())?;
            let mut msg = vec![KIND_HELLO];
            msg.extend_from_slice(&sh.cfg.node_id.to_be_bytes());
            hello.write_all(&msg).await.map_err(|e| e.to_string())?;
            hello.finish().map_err(|e| e.to_string())?;
            Ok::<_, String>(conn)
        };
        match timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(conn)) => {
                backoff = Duration::from_millis(50);
                sh.clone().adopt(p.clone(), conn).await;
            }
            Ok(Err(e)) => debug!(peer = p.id, error = %e, "dial failed"),
            Err(_) => debug!(peer = p.id, "dial timed out"),
        }
        sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn accept_loop(sh: Arc<Shared>) {
    while let Some(incoming) = sh.endpoint.accept().await {
        tokio::spawn(accept_one(sh.clone(), incoming));
    }
}

/// Handshake (the CA check happens in TLS), then the hello: the claimed node id must be
/// named by the certificate and be lower than ours (the lower id dials).
async fn accept_one(sh: Arc<Shared>, incoming: quinn::Incoming) {
    let conn = match timeout(Duration::from_secs(5), incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            debug!(error = %e, "link handshake refused");
            return;
        }
        Err(_) => return,
    };
    let hello = async {
        let mut r = conn.accept_uni().await.ok()?;
        let mut b = [0u8; 5];
        r.read_exact(&mut b).await.ok()?;
        (b[0] == KIND_HELLO).then(|| u32::from_be_bytes([b[1], b[2], b[3], b[4]]))
    };
    let Ok(Some(id)) = timeout(Duration::from_secs(5), hello).await else {
        conn.close(CLOSE_PROTOCOL.into(), b"no hello");
        return;
    };
    if id >= sh.cfg.node_id || !peer_is(&conn, &sh.cfg.cluster, id) {
        warn!(
            claimed = id,
            "link peer refused: its certificate does not name it, or it should not dial"
        );
        conn.close(CLOSE_REFUSED.into(), b"identity");
        return;
    }
    let p = sh.peer(id);
    sh.adopt(p, conn).await;
}

/// Read frames from one incoming stream and hand them over in order.
async fn read_stream(
    sh: Arc<Shared>,
    p: Arc<Peer>,
    conn: quinn::Connection,
    mut recv: quinn::RecvStream,
) {
    let mut hdr = [0u8; 3];
    if recv.read_exact(&mut hdr).await.is_err() || hdr[0] != KIND_DATA {
        return;
    }
    let stream = u16::from_be_bytes([hdr[1], hdr[2]]);
    loop {
        match read_frame(&mut recv, sh.cfg.max_frame_bytes).await {
            Ok(Some(messages)) => {
                let bytes: usize = messages.iter().map(Bytes::len).sum();
                p.stats.batches_received.fetch_add(1, Ordering::Relaxed);
                p.stats
                    .bytes_received
                    .fetch_add(bytes as u64, Ordering::Relaxed);
                let d = Delivery {
                    from: p.id,
                    stream,
                    messages,
                };
                if sh.incoming.send(d).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                warn!(peer = p.id, error = %e, "bad frame from peer; closing the connection");
                conn.close(CLOSE_PROTOCOL.into(), b"frame");
                return;
            }
        }
    }
}
