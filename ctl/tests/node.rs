//! hearthctl against a real node: real QUIC, real RocksDB in a temp dir, the real client, and
//! tokens issued by `hearthctl token issue` from the key file the node created.

use std::path::Path;
use std::time::{Duration, Instant};

use clap::Parser;
use hearth_client::{ClientConfig, Connection, Deliveries, ErrorCode, Outgoing, PolicyChange};
use hearth_ctl::{run, Cli};
use hearth_router::{Config, Node};
use serde_json::Value;

/// The admin token file every node of these tests uses (`admin_token_file`), and that
/// [`ctl`] passes with `--token-file`.
fn admin_token_file() -> &'static Path {
    static FILE: std::sync::OnceLock<tempfile::TempPath> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, b"node-tests-admin-token-0123456789\n").unwrap();
        f.into_temp_path()
    })
}

/// Run hearthctl with `args` and the nodes' admin token (blocking HTTP, so off the runtime).
async fn ctl(args: &[&str]) -> anyhow::Result<String> {
    let token = admin_token_file().to_str().unwrap();
    let args: Vec<String> = std::iter::once("hearthctl")
        .chain(args.iter().copied())
        .chain(["--token-file", token])
        .map(String::from)
        .collect();
    tokio::task::spawn_blocking(move || {
        let cli = Cli::try_parse_from(args)?;
        let mut out = Vec::new();
        run(&cli, &mut out)?;
        Ok(String::from_utf8(out)?)
    })
    .await
    .expect("hearthctl task")
}

async fn ctl_json(args: &[&str]) -> Value {
    let out = ctl(&[args, &["--json"]].concat()).await.unwrap();
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed {out:?}: {e}"))
}

async fn start(dir: &Path) -> Node {
    let cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        admin_token_file: Some(admin_token_file().to_path_buf()),
        ..Config::default()
    };
    Node::start(cfg).await.unwrap()
}

async fn token(key: &Path, account: u64, device: u32) -> String {
    scoped_token(key, account, device, &[]).await
}

/// A token from `hearthctl token issue` with `extra` arguments (`--network`, `--zone`).
async fn scoped_token(key: &Path, account: u64, device: u32, extra: &[&str]) -> String {
    let (a, d) = (account.to_string(), device.to_string());
    let key = key.to_str().unwrap();
    let args = [
        &[
            "token",
            "issue",
            "--account",
            &a,
            "--device",
            &d,
            "--key",
            key,
        ],
        extra,
    ]
    .concat();
    ctl(&args).await.unwrap().trim_end().to_owned()
}

async fn connect(
    node: &Node,
    token: String,
) -> Result<(Connection, Deliveries), hearth_client::ClientError> {
    let cfg = ClientConfig::new(node.quic_addr(), node.server_name(), node.ca_pem(), token);
    Connection::connect(&cfg).await
}

/// Poll `hearthctl ... --json` until `ok` holds (generous deadline; no timing assumed).
async fn wait_for(args: &[&str], ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = ctl_json(args).await;
        if ok(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{args:?} never satisfied the condition; last: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_queue_stats_and_device_remove() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let key = dir.path().join("token.key");
    let admin = format!("http://{}", node.admin_addr());
    let admin = admin.as_str();

    let v = ctl_json(&["status", "--admin", admin]).await;
    assert_eq!(v["durability"], "sync");
    assert_eq!(v["quic_addr"], node.quic_addr().to_string());
    assert_eq!(v["connections"], 0);
    assert_eq!(v["devices_registered"], 0);
    let out = ctl(&["queue", "stats", "--account", "42", "--admin", admin])
        .await
        .unwrap();
    assert_eq!(out, "account 42 has no registered devices\n");

    // Device 2 registers by connecting once, then goes offline.
    let (d2, _) = connect(&node, token(&key, 42, 2).await).await.unwrap();
    assert_eq!((d2.welcome().account, d2.welcome().device), (42, 2));
    d2.shutdown().await;
    let q = [
        "queue",
        "stats",
        "--account",
        "42",
        "--device",
        "2",
        "--admin",
        admin,
    ];
    wait_for(&q, |v| v["online"] == false).await;

    // Device 1 stays online and queues one envelope for device 2.
    let (d1, _d1_deliveries) = connect(&node, token(&key, 42, 1).await).await.unwrap();
    let accepted = d1
        .send(Outgoing {
            to_device: 2,
            ..Outgoing::new(42, vec![7u8; 100])
        })
        .await;
    assert_eq!(accepted.unwrap().recipients, 1);

    let v = ctl_json(&["queue", "stats", "--account", "42", "--admin", admin]).await;
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 2, "{v}");
    let dev = |d: u32| {
        list.iter()
            .find(|q| q["device"] == d)
            .unwrap_or_else(|| panic!("{v}"))
    };
    assert_eq!(
        (dev(1)["online"].clone(), dev(1)["queued"].clone()),
        (true.into(), 0.into())
    );
    assert_eq!(
        (dev(2)["online"].clone(), dev(2)["queued"].clone()),
        (false.into(), 1.into())
    );
    assert!(dev(2)["bytes"].as_u64().unwrap() >= 100, "{v}");

    let out = ctl(&["queue", "stats", "--account", "42", "--admin", admin])
        .await
        .unwrap();
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert_eq!(lines[0][..3], ["ACCOUNT", "DEVICE", "ONLINE"], "{out}");
    assert_eq!(lines[1][..4], ["42", "1", "yes", "0"], "{out}");
    assert_eq!(lines[2][..4], ["42", "2", "no", "1"], "{out}");
    assert!(
        out.contains("\n2 devices (1 online), 1 envelope queued, "),
        "{out}"
    );

    let status = ["status", "--admin", admin];
    let v = wait_for(&status, |v| v["connections"] == 1).await;
    assert_eq!(v["devices_registered"], 2);
    assert_eq!(v["envelopes"]["accepted"], 1);
    assert_eq!(v["queue"]["envelopes"], 1);
    let out = ctl(&status).await.unwrap();
    assert!(out.contains("\ndurability    sync\n"), "{out}");
    assert!(out.contains("\nconnections   1\n"), "{out}");
    assert!(out.contains("\ndevices       2 registered\n"), "{out}");
    assert!(out.contains("\nqueued        1 envelope, "), "{out}");

    // Remove the offline device: its queue goes with it.
    let rm2 = [
        "device",
        "remove",
        "--account",
        "42",
        "--device",
        "2",
        "--admin",
        admin,
    ];
    let out = ctl(&rm2).await.unwrap();
    assert!(
        out.starts_with("removed device 2 of account 42: deleted 1 queued envelope ("),
        "{out}"
    );
    let err = ctl(&q).await.unwrap_err().to_string();
    assert_eq!(err, "device 2 of account 42: no such device");
    let err = ctl(&rm2).await.unwrap_err().to_string();
    assert_eq!(err, "device 2 of account 42: no such device");

    // Remove the online device: the node closes its connection with DEVICE_REMOVED.
    let v = ctl_json(&[
        "device",
        "remove",
        "--account",
        "42",
        "--device",
        "1",
        "--admin",
        admin,
    ])
    .await;
    let expected = serde_json::json!({"account": 42, "device": 1, "removed": true, "envelopes": 0, "bytes": 0});
    assert_eq!(v, expected);
    let why = tokio::time::timeout(Duration::from_secs(20), d1.closed())
        .await
        .unwrap();
    assert_eq!(why.code(), Some(ErrorCode::DeviceRemoved), "{why}");

    let v = ctl_json(&status).await;
    assert_eq!(
        (
            v["devices_registered"].clone(),
            v["queue"]["envelopes"].clone()
        ),
        (0.into(), 0.into())
    );
    let out = ctl(&["queue", "stats", "--account", "42", "--admin", admin])
        .await
        .unwrap();
    assert_eq!(out, "account 42 has no registered devices\n");

    node.shutdown().await;
    let err = ctl(&status).await.unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("cannot reach node admin at {admin}: ")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_refuses_tokens_from_another_key() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(&dir.path().join("node")).await;
    let other = dir.path().join("other.key");
    ctl(&["key", "generate", "--out", other.to_str().unwrap()])
        .await
        .unwrap();

    let err = connect(&node, token(&other, 1, 1).await).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadToken), "{err}");
    // The node's own key (created at data_dir/token.key) works.
    let (conn, _) = connect(&node, token(&dir.path().join("node/token.key"), 1, 1).await)
        .await
        .unwrap();
    assert_eq!(conn.welcome().device, 1);
    conn.close();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_tokens_are_checked_by_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::from_toml(
        "region = \"eu-west\"\n[privacy]\nnetworks = [\"chat\", \"photos\"]\n\
         [residency.zones]\nglobal = [\"*\"]\neu = [\"eu-west\"]\nus = [\"us-east\"]\n",
    )
    .unwrap();
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.admin_listen = "127.0.0.1:0".parse().unwrap();
    cfg.data_dir = dir.path().to_path_buf();
    let node = Node::start(cfg).await.unwrap();
    let key = dir.path().join("token.key");

    let t = scoped_token(&key, 1, 1, &["--network", "photos", "--zone", "eu"]).await;
    assert!(t.starts_with("ht2."), "{t}");
    let (conn, _) = connect(&node, t).await.unwrap();
    assert_eq!((conn.welcome().account, conn.welcome().device), (1, 1));
    conn.close();

    let t = scoped_token(&key, 2, 1, &["--network", "social"]).await;
    let err = connect(&node, t).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadToken), "{err}");

    let t = scoped_token(&key, 3, 1, &["--zone", "us"]).await;
    let err = connect(&node, t).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Residency), "{err}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_top_and_account_purge() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::from_toml("[safety]\nreports_received_per_window = 1\n").unwrap();
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.admin_listen = "127.0.0.1:0".parse().unwrap();
    cfg.data_dir = dir.path().to_path_buf();
    cfg.admin_token_file = Some(admin_token_file().to_path_buf());
    let node = Node::start(cfg).await.unwrap();
    let key = dir.path().join("token.key");
    let admin = format!("http://{}", node.admin_addr());
    let admin = admin.as_str();
    let abuse = ["abuse", "top", "--admin", admin];

    assert_eq!(ctl(&abuse).await.unwrap(), "no flagged accounts\n");
    assert_eq!(ctl_json(&abuse).await, serde_json::json!({"flagged": []}));

    // Account 42: device 2 registers a push token and goes offline; device 1 stays online.
    let (d2, _) = connect(&node, token(&key, 42, 2).await).await.unwrap();
    let push = PolicyChange::PushToken(vec![9u8; 32].into());
    d2.set_policy(push).await.unwrap();
    d2.shutdown().await;
    let (d1, _d1_deliveries) = connect(&node, token(&key, 42, 1).await).await.unwrap();
    // Accounts 7 and 8, one device each, online.
    let (a7, _a7_deliveries) = connect(&node, token(&key, 7, 1).await).await.unwrap();
    let (a8, _a8_deliveries) = connect(&node, token(&key, 8, 1).await).await.unwrap();

    // 42 keeps lists, created one group and is a member of another.
    let block = PolicyChange::Block {
        add: true,
        accounts: vec![99, 100],
    };
    d1.set_policy(block).await.unwrap();
    let allow = PolicyChange::Allow {
        add: true,
        accounts: vec![7],
    };
    d1.set_policy(allow).await.unwrap();
    d1.create_group(500, &[7]).await.unwrap();
    a7.create_group(600, &[42, 8]).await.unwrap();

    // Three envelopes wait for device 2: two from account 7, one from device 1 (42's own send).
    for from in [&a7, &a7, &d1] {
        let out = Outgoing {
            to_device: 2,
            ..Outgoing::new(42, vec![1u8; 64])
        };
        assert_eq!(from.send(out).await.unwrap().recipients, 1);
    }
    // 42 also sends to 8 (that envelope is 8's: it stays).
    a8.shutdown().await;
    let to8 = d1.send(Outgoing::new(8, vec![2u8; 64])).await.unwrap();
    assert_eq!(to8.recipients, 1);

    // Two accounts report 42: past the threshold of 1, 42 is flagged.
    a7.report(42).await.unwrap();
    let (a9, _a9_deliveries) = connect(&node, token(&key, 9, 1).await).await.unwrap();
    a9.report(42).await.unwrap();
    let v = wait_for(&abuse, |v| {
        v["flagged"].as_array().is_some_and(|f| !f.is_empty())
    })
    .await;
    let flagged = v["flagged"].as_array().unwrap();
    assert_eq!(flagged.len(), 1, "{v}");
    assert_eq!(flagged[0]["account"], 42, "{v}");
    assert!(flagged[0]["reports"].as_u64().unwrap() >= 2, "{v}");
    assert!(!flagged[0]["reasons"].as_array().unwrap().is_empty(), "{v}");
    let out = ctl(&abuse).await.unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("ACCOUNT  NEW RECIPIENTS"), "{out}");
    assert!(lines[1].contains(" UTC  reported 2 times "), "{out}");
    assert!(lines[1].trim_start().starts_with("42  "), "{out}");

    // Without --yes nothing happens.
    let purge = ["account", "purge", "--account", "42", "--admin", admin];
    let err = ctl(&purge).await.unwrap_err().to_string();
    assert!(err.contains("--yes"), "{err}");
    let q = ["queue", "stats", "--account", "42", "--admin", admin];
    assert_eq!(ctl_json(&q).await.as_array().unwrap().len(), 2);

    let purge = [&purge[..], &["--yes"]].concat();
    let v = ctl_json(&purge).await;
    let expected = serde_json::json!({
        "account": 42, "devices": 2, "envelopes": 3, "groups_left": 1, "groups_deleted": 1,
        "list_entries": 3, "dedup_records": 2, "push_tokens": 1, "account_record": true,
    });
    assert_eq!(v, expected);
    // The online device is disconnected.
    let why = tokio::time::timeout(Duration::from_secs(20), d1.closed())
        .await
        .unwrap();
    assert_eq!(why.code(), Some(ErrorCode::DeviceRemoved), "{why}");

    // Nothing is left: no devices, no queues, no abuse counters; a second purge finds nothing.
    assert_eq!(
        ctl(&q).await.unwrap(),
        "account 42 has no registered devices\n"
    );
    assert_eq!(ctl(&abuse).await.unwrap(), "no flagged accounts\n");
    let out = ctl(&purge).await.unwrap();
    assert_eq!(
        out,
        "account 42: the node held no stored data about it; nothing to erase\n"
    );
    // Other accounts keep their data: 8's queued envelope from 42, 7's device.
    let v = ctl_json(&["queue", "stats", "--account", "8", "--admin", admin]).await;
    assert_eq!(v[0]["queued"], 1, "{v}");
    let v = ctl_json(&["queue", "stats", "--account", "7", "--admin", admin]).await;
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");

    a7.close();
    a9.close();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_show_and_members() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let key = dir.path().join("token.key");
    let admin = format!("http://{}", node.admin_addr());
    let admin = admin.as_str();

    let show = ["group", "show", "--group", "7", "--admin", admin];
    let err = ctl(&show).await.unwrap_err().to_string();
    assert_eq!(err, "group 7: no such group");

    let (a1, _a1_deliveries) = connect(&node, token(&key, 1, 1).await).await.unwrap();
    let created = a1.create_group(7, &[2, 3]).await.unwrap();
    assert_eq!(created.members, 3);

    let v = ctl_json(&show).await;
    assert_eq!(
        (v["group"].as_u64(), v["creator"].as_u64()),
        (Some(7), Some(1)),
        "{v}"
    );
    assert_eq!(v["members"], 3, "{v}");
    assert_eq!(v["version"], created.version, "{v}");
    let out = ctl(&show).await.unwrap();
    assert!(out.contains("\ncreator  account 1\n"), "{out}");
    assert!(out.ends_with("\nmembers  3\n"), "{out}");

    let members = ["group", "members", "--group", "7", "--admin", admin];
    let v = ctl_json(&members).await;
    let expected = serde_json::json!({"group": 7, "total": 3, "offset": 0, "members": [
        {"account": 1, "role": "admin"},
        {"account": 2, "role": "member"},
        {"account": 3, "role": "member"},
    ]});
    assert_eq!(v, expected);
    let out = ctl(&members).await.unwrap();
    assert_eq!(
        out,
        "ACCOUNT  ROLE\n      1  admin\n      2  member\n      3  member\n\
         showing 1–3 of 3 members\n"
    );
    let page = [&members[..], &["--offset", "1", "--limit", "1"]].concat();
    let v = ctl_json(&page).await;
    assert_eq!(
        v["members"],
        serde_json::json!([{"account": 2, "role": "member"}]),
        "{v}"
    );
    assert_eq!(
        (v["total"].as_u64(), v["offset"].as_u64()),
        (Some(3), Some(1)),
        "{v}"
    );

    let err = ctl(&["group", "members", "--group", "8", "--admin", admin])
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(err, "group 8: no such group");

    a1.close();
    node.shutdown().await;
}
