//! The admin API's bearer token: created 0600 in the data dir (or taken from
//! `admin_token_file`), required for every endpoint that changes state or names an account,
//! device or group; a missing or wrong token gets 401 and changes nothing. Optional HTTPS.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

/// `method path` with an optional `Authorization` header: (status, JSON body or Null).
fn call(n: &TestNode, method: &str, path: &str, auth: Option<&str>) -> (u16, serde_json::Value) {
    let url = format!("http://{}{}", n.node.admin_addr(), path);
    let mut req = ureq::request(method, &url);
    if let Some(a) = auth {
        req = req.set("Authorization", a);
    }
    let (status, resp) = match req.call() {
        Ok(r) => (r.status(), r),
        Err(ureq::Error::Status(code, r)) => (code, r),
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let body = resp.into_string().unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// Every endpoint that names an account, device or group, or changes state.
const PROTECTED: [(&str, &str); 8] = [
    ("GET", "/v1/queues/1"),
    ("GET", "/v1/queues/1/1"),
    ("GET", "/v1/abuse"),
    ("GET", "/v1/groups/5"),
    ("GET", "/v1/groups/5/members"),
    ("DELETE", "/v1/devices/1/1"),
    ("DELETE", "/v1/accounts/1"),
    ("GET", "/v1/no-such-endpoint"),
];

const OPEN: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/v1/status"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_right_token_nothing_is_shown_or_changed() {
    let dir = tempfile::tempdir().unwrap();
    let n = TestNode::start(dir.path()).await;
    // The token file was created at first start, private, and holds the node's token.
    let file = dir.path().join("admin.token");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().trim(),
        n.node.admin_token()
    );
    assert!(n.node.admin_token().len() >= 32);

    // Account 1 (device 1) holds one queued envelope and is online; group 5 exists.
    let (c1, mut d1) = n.connect(1, 1).await;
    let (s, _) = n.connect(2, 1).await;
    s.create_group(5, &[1]).await.unwrap();
    s.send(envelope(1, 1, 1, b"kept")).await.unwrap();
    assert_eq!(&next(&mut d1).await.payload[..], b"kept");

    let wrong = format!("Bearer {}x", n.node.admin_token());
    let not_bearer = format!("Basic {}", n.node.admin_token());
    for (method, path) in PROTECTED {
        for auth in [
            None,
            Some("Bearer "),
            Some(wrong.as_str()),
            Some(not_bearer.as_str()),
        ] {
            let (status, body) = call(&n, method, path, auth);
            assert_eq!(status, 401, "{method} {path} with {auth:?}: {body}");
            let msg = body["error"].as_str().unwrap_or_default();
            assert!(
                !msg.contains(n.node.admin_token()),
                "the token leaked: {msg}"
            );
            if auth.is_none() {
                assert!(msg.contains("Authorization: Bearer"), "{msg}");
            }
        }
    }
    // Nothing changed: the device is registered, its envelope queued, its connection open,
    // the group still there.
    let auth = n.admin_auth();
    let (status, q) = call(&n, "GET", "/v1/queues/1/1", Some(&auth));
    assert_eq!(status, 200, "{q}");
    assert_eq!(
        (q["queued"].as_u64(), q["online"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(call(&n, "GET", "/v1/groups/5", Some(&auth)).0, 200);
    s.send(envelope(1, 1, 2, b"still online")).await.unwrap();
    assert_eq!(&next(&mut d1).await.payload[..], b"still online");
    assert!(!c1.is_closed());

    // Health, metrics and status stay open.
    for path in OPEN {
        assert_eq!(call(&n, "GET", path, None).0, 200, "{path}");
    }
    // The right token works, for reads and for changes.
    let (status, removed) = call(&n, "DELETE", "/v1/devices/1/1", Some(&auth));
    assert_eq!(
        (status, removed["removed"].as_bool()),
        (200, Some(true)),
        "{removed}"
    );
    assert_eq!(call(&n, "GET", "/v1/queues/1/1", Some(&auth)).0, 404);
    eventually("device 1/1 disconnected", || c1.is_closed()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_token_file_is_used_and_metrics_can_require_it() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("secret-admin-token");
    std::fs::write(&token_file, "operator-chosen-token-0123456789\n").unwrap();
    let mut cfg = config(&dir.path().join("data"));
    cfg.admin_token_file = Some(token_file);
    cfg.admin_open_metrics = false;
    let n = TestNode::start_with(cfg).await;
    assert_eq!(n.node.admin_token(), "operator-chosen-token-0123456789");
    assert!(!dir.path().join("data/admin.token").exists());
    for path in OPEN {
        assert_eq!(call(&n, "GET", path, None).0, 401, "{path}");
        let ok = call(
            &n,
            "GET",
            path,
            Some("Bearer operator-chosen-token-0123456789"),
        );
        assert_eq!(ok.0, 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_survives_a_restart_and_a_short_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let n = TestNode::start(dir.path()).await;
    let token = n.node.admin_token().to_owned();
    n.node.shutdown().await;
    let n = TestNode::start(dir.path()).await;
    assert_eq!(n.node.admin_token(), token);
    n.node.shutdown().await;

    let short = dir.path().join("short.token");
    std::fs::write(&short, "abc\n").unwrap();
    let mut cfg = config(dir.path());
    cfg.admin_token_file = Some(short);
    let err = hearth_router::Node::start(cfg)
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("at least 16"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_over_https_with_the_operators_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("admin.pem"), dir.path().join("admin.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let mut cfg = config(&dir.path().join("data"));
    cfg.admin_tls_cert = Some(cert);
    cfg.admin_tls_key = Some(key);
    let n = TestNode::start_with(cfg).await;
    assert!(n.node.admin_url().starts_with("https://"));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let agent = ureq::AgentBuilder::new()
        .tls_config(std::sync::Arc::new(tls))
        .build();
    let url = format!("{}/v1/queues/1", n.node.admin_url());
    let list: serde_json::Value = agent
        .get(&url)
        .set("Authorization", &n.admin_auth())
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(list, serde_json::json!([]));
    assert!(matches!(
        agent.get(&url).call(),
        Err(ureq::Error::Status(401, _))
    ));
    // Plain HTTP on the TLS port gets no answer; the node keeps serving HTTPS.
    let plain = format!("http://{}/healthz", n.node.admin_addr());
    assert!(ureq::get(&plain)
        .timeout(std::time::Duration::from_secs(5))
        .call()
        .is_err());
    let health = format!("{}/healthz", n.node.admin_url());
    assert_eq!(
        agent.get(&health).call().unwrap().into_string().unwrap(),
        "ok"
    );
}
