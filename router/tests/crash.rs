//! Kill a real `hearthd` with SIGKILL under load; after a restart every envelope that was
//! answered ACCEPTED must be delivered.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use common::*;
use hearth_client::{ClientConfig, Connection};
use hearth_protocol::{MessageId, SigningKey};

fn spawn_node(dir: &Path) -> (Child, SocketAddr) {
    // The load below is far above the production rate limits of one device: lift them.
    let mut cfg = config(dir);
    cfg.sweep_interval_ms = 1000;
    let cfg_path = dir.join("hearthd.toml");
    std::fs::write(&cfg_path, toml::to_string(&cfg).unwrap()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hearthd"))
        .arg("--config")
        .arg(&cfg_path)
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("hearthd starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "hearthd listening: quic=127.0.0.1:PORT admin=http://127.0.0.1:PORT"
    let quic = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("quic="))
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
    (child, quic.parse().unwrap())
}

fn client_config(dir: &Path, addr: SocketAddr, account: u64, device: u32) -> ClientConfig {
    let key = SigningKey::from_pkcs8(&std::fs::read(dir.join("token.key")).unwrap()).unwrap();
    ClientConfig {
        addr,
        server_name: "localhost".into(),
        ca_pem: std::fs::read(dir.join("dev-cert.pem")).unwrap(),
        token: token(&key, account, device),
        local_addr: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_envelope_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn_node(dir.path());
    let (c, _) = Connection::connect(&client_config(dir.path(), addr, 1, 1))
        .await
        .unwrap();
    c.close();
    let (sender, _) = Connection::connect(&client_config(dir.path(), addr, 2, 1))
        .await
        .unwrap();
    let accepted = Arc::new(Mutex::new(HashSet::new()));
    let mut tasks = Vec::new();
    // 32 pipelined senders keep the node busy committing when the kill lands.
    for t in 0..32u128 {
        let (sender, accepted) = (sender.clone(), accepted.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let id = t * 1_000_000 + i;
                let body = id.to_be_bytes();
                match sender.send(envelope(1, 0, id, &body)).await {
                    Ok(_) => accepted.lock().unwrap().insert(id),
                    Err(_) => return,
                };
            }
        }));
    }
    eventually("enough envelopes accepted", || {
        accepted.lock().unwrap().len() >= 2000
    })
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The dead node cannot say goodbye: fail the sends still waiting instead of idling out.
    sender.close();
    for t in tasks {
        t.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();

    let (mut child, addr) = spawn_node(dir.path());
    let (rc, mut rd) = Connection::connect(&client_config(dir.path(), addr, 1, 1))
        .await
        .unwrap();
    let mut missing = accepted.clone();
    let mut last_seq = 0;
    while !missing.is_empty() {
        let got = tokio::time::timeout(DEADLINE, rd.next())
            .await
            .unwrap_or_else(|_| panic!("{} accepted envelopes never delivered", missing.len()))
            .expect("connection open");
        assert!(got.seq > last_seq, "redelivery out of order");
        last_seq = got.seq;
        assert_eq!(
            got.msg_id,
            MessageId::from_u128(u128::from_be_bytes(got.payload[..].try_into().unwrap()))
        );
        missing.remove(&got.msg_id.as_u128());
        rc.ack(&[got.seq]).unwrap();
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_group_message_survives_sigkill_mid_fan_out() {
    use hearth_client::OutgoingGroup;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn_node(dir.path());
    let members: Vec<u64> = (10..30).collect();
    for &m in &members {
        let (c, _) = Connection::connect(&client_config(dir.path(), addr, m, 1))
            .await
            .unwrap();
        c.close();
    }
    let (sender, _) = Connection::connect(&client_config(dir.path(), addr, 1, 1))
        .await
        .unwrap();
    sender.create_group(5, &members).await.unwrap();
    let accepted = Arc::new(Mutex::new(HashSet::new()));
    let mut tasks = Vec::new();
    for t in 0..16u128 {
        let (sender, accepted) = (sender.clone(), accepted.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let id = t * 1_000_000 + i;
                let out = OutgoingGroup {
                    msg_id: MessageId::from_u128(id),
                    group: 5,
                    ttl_secs: 0,
                    ephemeral: false,
                    payload: bytes::Bytes::copy_from_slice(&id.to_be_bytes()),
                };
                match sender.send_group(out).await {
                    Ok(_) => accepted.lock().unwrap().insert(id),
                    Err(_) => return,
                };
            }
        }));
    }
    eventually("enough group messages accepted", || {
        accepted.lock().unwrap().len() >= 300
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    sender.close();
    for t in tasks {
        t.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    let (mut child, addr) = spawn_node(dir.path());
    for &m in &members {
        let (c, mut d) = Connection::connect(&client_config(dir.path(), addr, m, 1))
            .await
            .unwrap();
        let mut missing = accepted.clone();
        while !missing.is_empty() {
            let got = tokio::time::timeout(DEADLINE, d.next())
                .await
                .unwrap_or_else(|_| {
                    panic!("member {m}: {} accepted never delivered", missing.len())
                })
                .expect("connection open");
            assert_eq!(got.group, 5);
            missing.remove(&got.msg_id.as_u128());
            c.ack(&[got.seq]).unwrap();
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
