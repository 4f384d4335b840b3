//! Metadata hygiene: at the most verbose log level a node's logs carry neither payloads nor
//! the accounts that talked to each other.

mod common;

use std::process::{Command, Stdio};

use bytes::Bytes;
use common::*;
use hearth_client::{ClientConfig, Connection, OutgoingGroup};
use hearth_protocol::{MessageId, SigningKey};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_hold_no_account_pairs_and_no_payloads() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("hearthd.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let data = dir.path().join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_hearthd"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log",
            "trace",
        ])
        .arg("--data-dir")
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("quic="))
        .unwrap()
        .parse()
        .unwrap();
    let key = SigningKey::from_pkcs8(&std::fs::read(data.join("token.key")).unwrap()).unwrap();
    let cfg = |account: u64| ClientConfig {
        addr,
        server_name: "localhost".into(),
        ca_pem: std::fs::read(data.join("dev-cert.pem")).unwrap(),
        token: token(&key, account, 1),
        local_addr: None,
    };
    let (alice, bob) = (4_242_424_242_001u64, 4_242_424_242_002u64);
    let (a, mut a_in) = Connection::connect(&cfg(alice)).await.unwrap();
    let (b, mut b_in) = Connection::connect(&cfg(bob)).await.unwrap();
    let marker = b"PAYLOAD-MARKER-7f1c";
    a.send(envelope(bob, 0, 1, marker)).await.unwrap();
    let got = next(&mut b_in).await;
    b.ack(&[got.seq]).unwrap();
    b.create_group(31_337_313_373, &[alice]).await.unwrap();
    let out = OutgoingGroup {
        msg_id: MessageId::from_u128(2),
        group: 31_337_313_373,
        ttl_secs: 0,
        ephemeral: false,
        payload: Bytes::from_static(marker),
    };
    b.send_group(out).await.unwrap();
    let got = next(&mut a_in).await;
    a.ack(&[got.seq]).unwrap();
    b.ping().await.unwrap();
    a.close();
    b.close();
    child.kill().unwrap();
    child.wait().unwrap();
    let logs = std::fs::read(&log_path).unwrap();
    assert!(
        logs.len() > 10_000,
        "trace logging produced almost nothing: the check would be empty"
    );
    let text = String::from_utf8_lossy(&logs);
    for needle in [
        alice.to_string(),
        bob.to_string(),
        format!("{alice:x}"),
        format!("{bob:x}"),
    ] {
        assert!(
            !text.contains(&needle),
            "an account id ({needle}) appears in the logs"
        );
    }
    assert!(
        !logs.windows(marker.len()).any(|w| w == marker),
        "a payload appears in the logs"
    );
}
