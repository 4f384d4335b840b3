//! The `hearthctl` binary and the node's admin token: found through `--token-file`,
//! `HEARTH_ADMIN_TOKEN` or `./hearth-data/admin.token`; without it (or with a wrong one) the
//! node refuses, hearthctl says how to fix it, and nothing changes. Also HTTPS with `--admin-ca`.

use std::path::Path;
use std::process::{Command, Output};

use bytes::Bytes;
use hearth_client::{ClientConfig, Connection, Outgoing};
use hearth_protocol::{MessageId, SigningKey, TokenClaims};
use hearth_router::{Config, Node};

fn config(dir: &Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        ..Config::default()
    }
}

/// The real binary, in `cwd`, with no token in its environment unless given.
fn hearthctl(cwd: &Path, env_token: Option<&str>, args: &[String]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hearthctl"));
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("HEARTH_ADMIN")
        .env_remove("HEARTH_ADMIN_TOKEN")
        .env_remove("HEARTH_ADMIN_TOKEN_FILE")
        .env_remove("HEARTH_ADMIN_CA");
    if let Some(t) = env_token {
        cmd.env("HEARTH_ADMIN_TOKEN", t);
    }
    cmd.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn token(key: &SigningKey, account: u64, device: u32) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    key.issue(&TokenClaims {
        account,
        device,
        expires_at: now + 3600,
    })
}

/// Run the binary off the async runtime (the node serves on it meanwhile).
async fn run(cwd: &Path, env_token: Option<&str>, args: Vec<String>) -> Output {
    let (cwd, env) = (cwd.to_path_buf(), env_token.map(str::to_owned));
    tokio::task::spawn_blocking(move || hearthctl(&cwd, env.as_deref(), &args))
        .await
        .unwrap()
}

/// `args` as owned strings.
fn v(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hearthctl_needs_the_right_token_and_finds_it_three_ways() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = Node::start(config(&data)).await.unwrap();
    let admin = node.admin_url();
    let token_file = data.join("admin.token");
    let tf = token_file.to_str().unwrap();
    let right = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    let wrong_file = dir.path().join("wrong.token");
    std::fs::write(&wrong_file, "not-the-node-token-0123456789\n").unwrap();

    // Device 42/1 registers and gets one envelope queued while offline.
    let cc = |t| ClientConfig::new(node.quic_addr(), node.server_name(), node.ca_pem(), t);
    let (d, _) = Connection::connect(&cc(token(node.signing_key(), 42, 1)))
        .await
        .unwrap();
    d.shutdown().await;
    let (s, _) = Connection::connect(&cc(token(node.signing_key(), 7, 1)))
        .await
        .unwrap();
    s.send(Outgoing {
        msg_id: MessageId::from_u128(1),
        to_account: 42,
        to_device: 1,
        ttl_secs: 0,
        ephemeral: false,
        payload: Bytes::from_static(b"queued"),
    })
    .await
    .unwrap();

    let cwd = dir.path();
    let remove = |extra: &[&str]| {
        let mut a = v(&["device", "remove", "--account", "42", "--device", "1"]);
        a.extend(v(extra));
        a.extend(v(&["--admin", &admin]));
        a
    };
    let stats = |extra: &[&str]| {
        let mut a = v(&[
            "queue",
            "stats",
            "--account",
            "42",
            "--device",
            "1",
            "--json",
        ]);
        a.extend(v(extra));
        a.extend(v(&["--admin", &admin]));
        a
    };

    // No token anywhere: refused, with what to do.
    let out = run(cwd, None, remove(&[])).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("needs its admin token") && err.contains("--token-file"),
        "{err}"
    );
    // A wrong token, from a file or from the environment: refused.
    let out = run(
        cwd,
        None,
        remove(&["--token-file", wrong_file.to_str().unwrap()]),
    )
    .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("refused the admin token"),
        "{}",
        stderr(&out)
    );
    let out = run(cwd, Some("not-the-node-token-0123456789"), remove(&[])).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("refused the admin token"),
        "{}",
        stderr(&out)
    );

    // Nothing changed: the device and its envelope are still there.
    let out = run(cwd, None, stats(&["--token-file", tf])).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let q: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(q["queued"], 1, "{q}");

    // HEARTH_ADMIN_TOKEN works.
    let out = run(cwd, Some(&right), stats(&[])).await;
    assert!(out.status.success(), "{}", stderr(&out));
    // So does ./hearth-data/admin.token, where the embedded default node writes it.
    let home = dir.path().join("operator");
    std::fs::create_dir_all(home.join("hearth-data")).unwrap();
    std::fs::copy(&token_file, home.join("hearth-data/admin.token")).unwrap();
    let out = run(&home, None, stats(&[])).await;
    assert!(out.status.success(), "{}", stderr(&out));

    // With the right token the removal goes through.
    let out = run(cwd, None, remove(&["--token-file", tf])).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(cwd, None, stats(&["--token-file", tf])).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no such device"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hearthctl_over_https_trusts_the_given_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("admin.pem"), dir.path().join("admin.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let mut cfg = config(&dir.path().join("data"));
    cfg.admin_tls_cert = Some(cert.clone());
    cfg.admin_tls_key = Some(key);
    let node = Node::start(cfg).await.unwrap();
    let admin = node.admin_url();
    assert!(admin.starts_with("https://"), "{admin}");
    let tf = dir.path().join("data/admin.token");
    let base = v(&[
        "status",
        "--json",
        "--admin",
        &admin,
        "--token-file",
        tf.to_str().unwrap(),
    ]);
    // The built-in roots do not know this certificate.
    let out = run(dir.path(), None, base.clone()).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot reach node admin"),
        "{}",
        stderr(&out)
    );
    // With --admin-ca they do.
    let mut args = base;
    args.extend(v(&["--admin-ca", cert.to_str().unwrap()]));
    let out = run(dir.path(), None, args).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["quic_addr"], node.quic_addr().to_string());
}
