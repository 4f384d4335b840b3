//! A real cluster: a real etcd on its own loopback ports and three real `hearthd` processes on
//! 127.0.0.1, .2 and .3, with mutual-TLS links under a cluster CA made here, talking to the real
//! client. Cross-node delivery (the sender on one node, the recipient's account owned by
//! another), ACCEPTED only once the owner's write is durable (the owner is SIGKILLed right
//! after and the envelope is still there when it comes back), and a device redirected at HELLO
//! to the node that serves its account. Every process is started here and killed by its pid.
//!
//! etcd must be installed (`scripts/install-etcd.sh`; CI runs it): without it the tests fail.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hearth_client::{
    ClientConfig, Connection, Deliveries, Delivery, ErrorCode, MessageId, Outgoing,
};
use hearth_cluster::etcd_client::Client as Etcd;
use hearth_cluster::ClusterMap;
use hearth_protocol::{slot_of, SigningKey};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLUSTER: &str = "t";
const NODES: u32 = 3;
const WAIT: Duration = Duration::from_secs(30);

fn ip(id: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, id as u8))
}

fn free_udp(ip: IpAddr) -> u16 {
    UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_tcp(ip: IpAddr) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A process started by a test, killed (SIGKILL, by its pid) and reaped on drop.
struct Proc(Option<Child>);

impl Proc {
    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn log_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}

/// The whole cluster: etcd, the three nodes, the shared key material.
struct TestCluster {
    dir: tempfile::TempDir,
    etcd_url: String,
    etcd_peer: String,
    etcd: Proc,
    nodes: Vec<NodeProc>,
    signing: SigningKey,
    tls_pem: Vec<u8>,
}

struct NodeProc {
    id: u32,
    config: PathBuf,
    log: PathBuf,
    client: SocketAddr,
    admin: SocketAddr,
    proc: Proc,
}

impl NodeProc {
    fn spawn(&mut self) {
        let log = log_file(&self.log);
        let child = Command::new(env!("CARGO_BIN_EXE_hearthd"))
            .arg("--config")
            .arg(&self.config)
            .args(["--log", "info"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("hearthd starts");
        self.proc = Proc(Some(child));
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The status code of `GET path` on an admin address (None: no answer).
async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// Start etcd on `url` (client) and `peer`, data in `root/etcd`, and wait until it answers.
async fn spawn_etcd(root: &Path, url: &str, peer: &str) -> Proc {
    let etcd = Command::new("etcd")
        .args(["--name", "t", "--data-dir"])
        .arg(root.join("etcd"))
        .args(["--listen-client-urls", url])
        .args(["--advertise-client-urls", url])
        .args(["--listen-peer-urls", peer])
        .args(["--initial-advertise-peer-urls", peer])
        .args(["--initial-cluster", &format!("t={peer}")])
        .stdin(Stdio::null())
        .stdout(log_file(&root.join("etcd.log")))
        .stderr(log_file(&root.join("etcd.log")))
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run etcd ({e}): install it with scripts/install-etcd.sh")
        });
    let etcd = Proc(Some(etcd));
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(mut c) = Etcd::connect([url.to_owned()], None).await {
            if c.status().await.is_ok() {
                return etcd;
            }
        }
        assert!(Instant::now() < deadline, "etcd did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl TestCluster {
    /// Start etcd, then node 1 alone (it must not be ready: no map exists until all three
    /// registered), then nodes 2 and 3; wait until every node is ready.
    async fn start() -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        // etcd, on its own ports (never the packaged service's 2379).
        let (cport, pport) = (free_tcp(ip(1)), free_tcp(ip(1)));
        let etcd_url = format!("http://127.0.0.1:{cport}");
        let peer = format!("http://127.0.0.1:{pport}");
        let etcd = spawn_etcd(&root, &etcd_url, &peer).await;

        // Key material: the cluster CA and node certificates for the links, one client TLS
        // certificate every node presents, one token key every node verifies with.
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "hearth test cluster CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        std::fs::write(root.join("ca.pem"), ca.pem()).unwrap();
        let tls = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(root.join("tls-cert.pem"), tls.cert.pem()).unwrap();
        std::fs::write(root.join("tls-key.pem"), tls.key_pair.serialize_pem()).unwrap();
        let signing = SigningKey::generate();
        std::fs::write(root.join("token.key"), signing.to_pkcs8()).unwrap();

        let mut nodes = Vec::new();
        for id in 1..=NODES {
            let mut p = CertificateParams::new(vec![format!("n{id}.{CLUSTER}")]).unwrap();
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
            let (cert_path, key_path) = (
                root.join(format!("n{id}.pem")),
                root.join(format!("n{id}.key")),
            );
            std::fs::write(&cert_path, cert.pem()).unwrap();
            std::fs::write(&key_path, key.serialize_pem()).unwrap();
            let client = SocketAddr::new(ip(id), free_udp(ip(id)));
            let admin = SocketAddr::new(ip(id), free_tcp(ip(id)));
            let link = SocketAddr::new(ip(id), free_udp(ip(id)));
            let toml = format!(
                "listen = \"{client}\"\nadmin_listen = \"{admin}\"\ndata_dir = \"{data}\"\n\
                 tls_cert = \"{root}/tls-cert.pem\"\ntls_key = \"{root}/tls-key.pem\"\n\
                 token_key = \"{root}/token.key\"\n\n[cluster]\nnode_id = {id}\n\
                 etcd_endpoints = [\"{etcd_url}\"]\nname = \"{CLUSTER}\"\n\
                 advertise_client = \"{client}\"\nlink_listen = \"{link}\"\n\
                 advertise_link = \"{link}\"\nlease_ttl_secs = 2\ninitial_nodes = {NODES}\n\
                 ca_cert = \"{root}/ca.pem\"\nnode_cert = \"{cert}\"\nnode_key = \"{key}\"\n",
                data = root.join(format!("data{id}")).display(),
                root = root.display(),
                cert = cert_path.display(),
                key = key_path.display(),
            );
            let config = root.join(format!("n{id}.toml"));
            std::fs::write(&config, toml).unwrap();
            nodes.push(NodeProc {
                id,
                config,
                log: root.join(format!("n{id}.log")),
                client,
                admin,
                proc: Proc(None),
            });
        }
        let mut c = TestCluster {
            dir,
            etcd_url,
            etcd_peer: peer,
            etcd,
            nodes,
            signing,
            tls_pem: tls.cert.pem().into_bytes(),
        };
        c.nodes[0].spawn();
        c.wait_status(0, "/healthz", 200).await;
        assert_eq!(
            http_status(c.nodes[0].admin, "/readyz").await,
            Some(503),
            "not ready while the cluster has no map (it waits for {NODES} members)"
        );
        for i in 1..c.nodes.len() {
            c.nodes[i].spawn();
        }
        for i in 0..c.nodes.len() {
            c.wait_status(i, "/readyz", 200).await;
        }
        c
    }

    /// Wait until node `i`'s admin `path` answers `code`.
    async fn wait_status(&self, i: usize, path: &str, code: u16) {
        let deadline = Instant::now() + WAIT;
        while http_status(self.nodes[i].admin, path).await != Some(code) {
            assert!(
                Instant::now() < deadline,
                "node {} never answered {code} on {path}; its log:\n{}",
                self.nodes[i].id,
                self.nodes[i].log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The cluster map as etcd holds it now.
    async fn map(&self) -> ClusterMap {
        let mut c = Etcd::connect([self.etcd_url.clone()], None).await.unwrap();
        let resp = c.get(format!("/hearth/{CLUSTER}/map"), None).await.unwrap();
        ClusterMap::decode(resp.kvs()[0].value()).unwrap()
    }

    /// The `n`-th account whose slot node `id` serves.
    async fn account_on(&self, id: u32, n: usize) -> u64 {
        let map = self.map().await;
        (1..u64::MAX)
            .filter(|&a| map.owner_of_slot(slot_of(a)) == Some(id))
            .nth(n)
            .unwrap()
    }

    /// A client of `account`'s device `device` that first connects to node `id`.
    fn client(&self, id: u32, account: u64, device: u32) -> ClientConfig {
        ClientConfig::new(
            self.nodes[id as usize - 1].client,
            "localhost",
            self.tls_pem.clone(),
            common::token(&self.signing, account, device),
        )
    }

    async fn connect(&self, id: u32, account: u64, device: u32) -> (Connection, Deliveries) {
        tokio::time::timeout(WAIT, Connection::connect(&self.client(id, account, device)))
            .await
            .expect("connects in time")
            .unwrap_or_else(|e| panic!("device {account}/{device} via node {id}: {e}"))
    }

    fn addr(&self, id: u32) -> SocketAddr {
        self.nodes[id as usize - 1].client
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- node {} ---\n{}", n.id, n.log()))
            .collect()
    }
}

async fn next(d: &mut Deliveries, what: &str) -> Delivery {
    tokio::time::timeout(WAIT, d.next())
        .await
        .unwrap_or_else(|_| panic!("no delivery: {what}"))
        .unwrap_or_else(|| panic!("deliveries ended: {what}"))
}

fn envelope(to: u64, id: u128, payload: &'static [u8]) -> Outgoing {
    Outgoing {
        msg_id: MessageId::from_u128(id),
        ..Outgoing::new(to, payload)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_to_an_account_another_node_owns_is_stored_there_before_it_is_accepted() {
    let mut c = TestCluster::start().await;
    let a = c.account_on(1, 0).await;
    let b = c.account_on(2, 0).await;

    // Both devices on the nodes that own them.
    let (sa, _da) = c.connect(1, a, 1).await;
    assert_eq!(sa.quic().remote_address(), c.addr(1));
    let (sb, mut db) = c.connect(2, b, 1).await;
    assert_eq!(sb.quic().remote_address(), c.addr(2));

    // Live: forwarded from node 1 to node 2, pushed to b there, answered on node 1.
    let acc = sa.send(envelope(b, 1, b"live across")).await;
    let acc = acc.unwrap_or_else(|e| panic!("send refused: {e}\n{}", c.logs()));
    assert_eq!(acc.recipients, 1, "one device of b");
    let d = next(&mut db, "live across").await;
    assert_eq!((d.from_account, &d.payload[..]), (a, &b"live across"[..]));
    sb.ack(&[d.seq]).unwrap();
    sb.shutdown().await;
    drop((sb, db));

    // Offline: ACCEPTED means durable at the owner. Kill the owner (SIGKILL) the moment the
    // answer arrives; when it is back, the envelope is there.
    let acc = sa.send(envelope(b, 2, b"stored across")).await.unwrap();
    assert_eq!(acc.recipients, 1);
    c.nodes[1].proc.kill();
    c.nodes[1].spawn();
    c.wait_status(1, "/readyz", 200).await;
    let (sb, mut db) = c.connect(2, b, 1).await;
    let d = next(&mut db, "stored across, after the owner's crash").await;
    assert_eq!(d.msg_id, MessageId::from_u128(2));
    assert_eq!(&d.payload[..], b"stored across");
    sb.ack(&[d.seq]).unwrap();

    // And across again once the link is back (node 1 dials node 2 anew).
    let deadline = Instant::now() + WAIT;
    let mut id = 3;
    loop {
        match sa.send(envelope(b, id, b"after restart")).await {
            Ok(_) => break,
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                id += 1; // a new envelope: the refused one was not stored
            }
            Err(e) => panic!("send after the owner's restart: {e}\n{}", c.logs()),
        }
    }
    let d = next(&mut db, "after restart").await;
    assert_eq!(&d.payload[..], b"after restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_is_redirected_at_hello_to_the_node_that_serves_its_account() {
    let c = TestCluster::start().await;
    let a = c.account_on(1, 0).await;
    let z = c.account_on(3, 0).await;
    let (sa, mut da) = c.connect(1, a, 1).await;
    // z's device says HELLO to node 1, which redirects it to node 3; the client follows.
    let (sz, _dz) = c.connect(1, z, 1).await;
    assert_eq!(sz.quic().remote_address(), c.addr(3), "served by its owner");
    assert_eq!(sz.welcome().account, z);
    // Also through node 2.
    let (sz2, _) = c.connect(2, z, 2).await;
    assert_eq!(sz2.quic().remote_address(), c.addr(3));
    // From node 3 to an account of node 1 (node 1 dialled the link; node 3 sends on it).
    let acc = sz.send(envelope(a, 9, b"from node 3")).await;
    let acc = acc.unwrap_or_else(|e| panic!("send refused: {e}\n{}", c.logs()));
    assert_eq!(acc.recipients, 1);
    let d = next(&mut da, "from node 3").await;
    assert_eq!((d.from_account, &d.payload[..]), (z, &b"from node 3"[..]));
    sa.ack(&[d.seq]).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_loses_its_lease_accepts_no_writes_until_it_is_registered_again() {
    let mut c = TestCluster::start().await;
    let a = c.account_on(1, 0).await;
    let a2 = c.account_on(1, 1).await;
    let (sa, _da) = c.connect(1, a, 1).await;
    let (sa2, _da2) = c.connect(1, a2, 1).await;
    let acc = sa.send(envelope(a2, 1, b"before")).await.unwrap();
    assert_eq!(acc.recipients, 1);

    // etcd gone: no renewal, so within a lease TTL (2 s) every node is fenced.
    c.etcd.kill();
    c.wait_status(0, "/readyz", 503).await;
    let refused = sa.send(envelope(a2, 2, b"while fenced")).await;
    match refused {
        Err(e) => assert_eq!(
            e.code(),
            Some(ErrorCode::Overloaded),
            "refused by the serving gate (retryable), not {e}"
        ),
        Ok(a) => panic!("a fenced node accepted a write: {a:?}"),
    }

    // etcd back (same data): the node registers again, reads the map, and serves.
    let root = c.dir.path().to_path_buf();
    c.etcd = spawn_etcd(&root, &c.etcd_url, &c.etcd_peer).await;
    c.wait_status(0, "/readyz", 200).await;
    let deadline = Instant::now() + WAIT;
    loop {
        match sa.send(envelope(a2, 2, b"while fenced")).await {
            Ok(acc) => {
                assert_eq!(acc.recipients, 1);
                break;
            }
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("after re-registering: {e}\n{}", c.logs()),
        }
    }
    drop(sa2);
}
