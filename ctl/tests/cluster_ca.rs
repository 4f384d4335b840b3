//! `hearthctl cluster ca`: the CA and node certificates it writes (keys 0600, never
//! overwritten) carry a working mutual-TLS link between two nodes.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use hearth_link::{Link, LinkConfig};

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn ctl(args: &[&str]) -> anyhow::Result<String> {
    let cli =
        hearth_ctl::Cli::try_parse_from(std::iter::once("hearthctl").chain(args.iter().copied()))?;
    let mut out = Vec::new();
    hearth_ctl::run(&cli, &mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

fn link_config(dir: &std::path::Path, id: u32) -> LinkConfig {
    LinkConfig {
        ca_pem: std::fs::read(dir.join("ca.pem")).unwrap(),
        cert_pem: std::fs::read(dir.join(format!("n{id}.pem"))).unwrap(),
        key_pem: std::fs::read(dir.join(format!("n{id}.key"))).unwrap(),
        ..LinkConfig::new(id, "prod", "127.0.0.1:0".parse().unwrap())
    }
}

#[tokio::test]
async fn issued_certificates_carry_a_mutual_tls_link() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("pki");
    let dir = d.to_str().unwrap();
    let out = ctl(&["cluster", "ca", "init", "--dir", dir, "--cluster", "prod"]).unwrap();
    assert!(out.contains("ca.pem"), "{out}");
    for id in ["1", "2"] {
        ctl(&[
            "cluster",
            "ca",
            "node",
            "--dir",
            dir,
            "--cluster",
            "prod",
            "--id",
            id,
        ])
        .unwrap();
    }
    assert_eq!(mode(&d.join("ca.key")), 0o600);
    assert_eq!(mode(&d.join("n1.key")), 0o600);
    assert_eq!(mode(&d.join("n2.key")), 0o600);
    let again = ctl(&["cluster", "ca", "init", "--dir", dir, "--cluster", "prod"]).unwrap_err();
    assert!(again.to_string().contains("already exists"), "{again}");
    let again = ctl(&[
        "cluster",
        "ca",
        "node",
        "--dir",
        dir,
        "--cluster",
        "prod",
        "--id",
        "1",
    ])
    .unwrap_err();
    assert!(again.to_string().contains("already exists"), "{again}");
    let wrong = ctl(&[
        "cluster",
        "ca",
        "node",
        "--dir",
        dir,
        "--cluster",
        "other",
        "--id",
        "3",
    ])
    .unwrap_err();
    assert!(wrong.to_string().contains("another --cluster"), "{wrong}");
    assert!(
        !d.join("n3.key").exists(),
        "nothing written for a certificate that fails"
    );
    let json = ctl(&[
        "--json",
        "cluster",
        "ca",
        "node",
        "--dir",
        dir,
        "--cluster",
        "prod",
        "--id",
        "4",
    ])
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["name"], "n4.prod");

    // The certificates work for the link, both ways.
    let (a, mut a_in) = Link::bind(link_config(&d, 1)).await.unwrap();
    let (b, mut b_in) = Link::bind(link_config(&d, 2)).await.unwrap();
    a.set_peer(2, b.local_addr());
    a.send(2, 1, Bytes::from_static(b"to two")).await.unwrap();
    b.send(1, 1, Bytes::from_static(b"to one")).await.unwrap();
    let at_b = tokio::time::timeout(Duration::from_secs(10), b_in.recv())
        .await
        .unwrap()
        .unwrap();
    let at_a = tokio::time::timeout(Duration::from_secs(10), a_in.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((at_b.from, &at_b.messages[0][..]), (1, &b"to two"[..]));
    assert_eq!((at_a.from, &at_a.messages[0][..]), (2, &b"to one"[..]));
}
