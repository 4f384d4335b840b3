//! `hearthctl token issue` and `hearthctl key generate`, through the CLI parser and the library.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use hearth_ctl::{run, token_issue, Cli, Command, TokenCommand};
use hearth_protocol::{Scope, SigningKey, TokenClaims};

fn ctl(args: &[&str]) -> anyhow::Result<String> {
    let cli = Cli::try_parse_from(std::iter::once("hearthctl").chain(args.iter().copied()))?;
    let mut out = Vec::new();
    run(&cli, &mut out)?;
    Ok(String::from_utf8(out).expect("utf-8 output"))
}

use serde_json::json;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn generate(path: &Path) -> SigningKey {
    ctl(&["key", "generate", "--out", path.to_str().unwrap()]).unwrap();
    SigningKey::from_pkcs8(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn issued_token_verifies_with_the_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("token.key");
    let key = generate(&key_path);
    let before = now();
    let out = ctl(&[
        "token",
        "issue",
        "--account",
        "42",
        "--device",
        "7",
        "--ttl",
        "12h",
        "--key",
        key_path.to_str().unwrap(),
    ])
    .unwrap();
    let after = now();
    assert_eq!(out.lines().count(), 1, "{out:?}");
    let token = out.trim_end();
    let claims = key.verifying_key().verify(token, before).unwrap();
    assert_eq!((claims.account, claims.device), (42, 7));
    assert!((before + 12 * 3600..=after + 12 * 3600).contains(&claims.expires_at));
    // Another key must not verify it.
    assert!(SigningKey::generate()
        .verifying_key()
        .verify(token, before)
        .is_err());
}

#[test]
fn json_output_and_default_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("token.key");
    let key = generate(&key_path);
    let cli = Cli::try_parse_from([
        "hearthctl",
        "token",
        "issue",
        "--json",
        "--account",
        "18446744073709551615",
        "--device",
        "4294967295",
        "--key",
        key_path.to_str().unwrap(),
    ])
    .unwrap();
    let Command::Token(TokenCommand::Issue(args)) = &cli.command else {
        panic!("parsed {cli:?}")
    };
    assert!(cli.json);
    assert_eq!(args.ttl.as_secs(), 30 * 86_400, "default ttl is 30 days");
    let mut out = Vec::new();
    token_issue(args, 1_000_000, true, &mut out).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["account"], u64::MAX);
    assert_eq!(v["device"], u32::MAX);
    assert_eq!(v["expires_at"], 1_000_000 + 30 * 86_400);
    let claims = key
        .verifying_key()
        .verify(v["token"].as_str().unwrap(), 1_000_000)
        .unwrap();
    let expected = TokenClaims {
        account: u64::MAX,
        device: u32::MAX,
        expires_at: 1_000_000 + 30 * 86_400,
    };
    assert_eq!(claims, expected);
    assert!(v["token"].as_str().unwrap().starts_with("ht1."), "{v}");
    assert_eq!((&v["network"], &v["zone"]), (&json!(null), &json!(null)));
    assert_eq!(v.as_object().unwrap().len(), 6, "{v}");
}

#[test]
fn refuses_device_zero_bad_ttl_and_missing_or_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.key");
    let missing = missing.to_str().unwrap();
    let issue = |device: &str, ttl: &str, key: &str| {
        ctl(&[
            "token",
            "issue",
            "--account",
            "1",
            "--device",
            device,
            "--ttl",
            ttl,
            "--key",
            key,
        ])
    };
    assert!(issue("0", "1d", missing).is_err(), "device 0 is reserved");
    assert!(issue("1", "1y", missing)
        .unwrap_err()
        .to_string()
        .contains("invalid ttl"));
    let err = issue("1", "1d", missing).unwrap_err().to_string();
    assert!(
        err.contains("cannot read token key") && err.contains("nope.key"),
        "{err}"
    );
    assert!(err.contains("hearthctl key generate"), "{err}");

    let garbage = dir.path().join("garbage.key");
    std::fs::write(&garbage, b"not a key").unwrap();
    let err = issue("1", "1d", garbage.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a token key"), "{err}");
}

#[test]
fn key_generate_writes_a_private_key_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.key");
    let out = ctl(&["key", "generate", "--out", path.to_str().unwrap(), "--json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let key = SigningKey::from_pkcs8(&bytes).unwrap();
    let hex: String = key
        .verifying_key()
        .0
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v["public_key"], hex);
    assert_eq!(v["path"], path.to_str().unwrap());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    let err = ctl(&["key", "generate", "--out", path.to_str().unwrap()]).unwrap_err();
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the existing key is untouched"
    );

    // Two generated keys differ.
    let other = generate(&dir.path().join("other.key"));
    assert_ne!(other.verifying_key(), key.verifying_key());

    let err = ctl(&[
        "key",
        "generate",
        "--out",
        dir.path().join("no/such/dir").to_str().unwrap(),
    ])
    .unwrap_err();
    assert!(err.to_string().contains("cannot create"), "{err}");
}

fn issue_scoped(key_path: &Path, extra: &[&str]) -> anyhow::Result<serde_json::Value> {
    let key = key_path.to_str().unwrap();
    let args = [
        &[
            "token",
            "issue",
            "--account",
            "42",
            "--device",
            "3",
            "--key",
            key,
            "--json",
        ],
        extra,
    ]
    .concat();
    Ok(serde_json::from_str(&ctl(&args)?)?)
}

#[test]
fn network_and_zone_make_a_v2_token() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("token.key");
    let key = generate(&key_path);
    let vk = key.verifying_key();
    let t = now();

    let v = issue_scoped(&key_path, &["--network", "photos", "--zone", "eu"]).unwrap();
    let token = v["token"].as_str().unwrap();
    assert!(token.starts_with("ht2."), "{v}");
    let (claims, scope) = vk.verify_scoped(token, t).unwrap();
    assert_eq!((claims.account, claims.device), (42, 3));
    let expected = Scope {
        network: "photos".into(),
        zone: "eu".into(),
    };
    assert_eq!(scope, expected);
    assert_eq!(
        (&v["network"], &v["zone"]),
        (&json!("photos"), &json!("eu"))
    );
    assert!(vk.verify(token, t).is_err(), "a v2 token is not a v1 token");

    // One of the two: the other is empty in the token (the node's default) and null in JSON.
    let v = issue_scoped(&key_path, &["--zone", "eu"]).unwrap();
    let (_, scope) = vk.verify_scoped(v["token"].as_str().unwrap(), t).unwrap();
    assert_eq!((scope.network.as_str(), scope.zone.as_str()), ("", "eu"));
    assert_eq!((&v["network"], &v["zone"]), (&json!(null), &json!("eu")));
    let v = issue_scoped(&key_path, &["--network", "chat"]).unwrap();
    let (_, scope) = vk.verify_scoped(v["token"].as_str().unwrap(), t).unwrap();
    assert_eq!((scope.network.as_str(), scope.zone.as_str()), ("chat", ""));

    // Neither: v1, as before.
    let v = issue_scoped(&key_path, &[]).unwrap();
    let token = v["token"].as_str().unwrap();
    assert!(token.starts_with("ht1."), "{v}");
    assert_eq!(vk.verify_scoped(token, t).unwrap().1, Scope::default());

    // Plain output is the token alone.
    let out = ctl(&[
        "token",
        "issue",
        "--account",
        "1",
        "--device",
        "1",
        "--network",
        "chat",
        "--key",
        key_path.to_str().unwrap(),
    ])
    .unwrap();
    assert_eq!(out.lines().count(), 1, "{out:?}");
    assert!(vk.verify_scoped(out.trim_end(), t).is_ok(), "{out:?}");
}

#[test]
fn refuses_bad_network_and_zone_names() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("token.key");
    generate(&key_path);
    let long = "n".repeat(65);
    let cases: [(&[&str], &str); 5] = [
        (&["--network", ""], "--network must not be empty"),
        (&["--zone", ""], "--zone must not be empty"),
        (&["--network", &long], "at most 64 bytes"),
        (&["--zone", "eu "], "must not contain spaces"),
        (&["--network", "a\tb"], "must not contain spaces"),
    ];
    for (extra, expected) in cases {
        let err = issue_scoped(&key_path, extra).unwrap_err().to_string();
        assert!(err.contains(expected), "{extra:?}: {err}");
    }
    // 64 bytes is the protocol's limit and is fine.
    let v = issue_scoped(&key_path, &["--network", &"n".repeat(64)]).unwrap();
    assert_eq!(v["network"].as_str().unwrap().len(), 64);
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// `openssl pkey` reads `path` as a DER private key; `None` when openssl is not installed.
fn openssl_reads(path: &Path) -> Option<Result<(), String>> {
    let out = std::process::Command::new("openssl")
        .args(["pkey", "-inform", "DER", "-noout", "-in"])
        .arg(path)
        .output();
    match out {
        Err(e) => {
            eprintln!("skipping the openssl check: openssl is not installed ({e})");
            None
        }
        Ok(o) if o.status.success() => Some(Ok(())),
        Ok(o) => Some(Err(String::from_utf8_lossy(&o.stderr).into_owned())),
    }
}

/// Key files are PKCS#8 v1 (RFC 5208), which OpenSSL 3 reads; v2 files (RFC 5958, what ring
/// and earlier versions wrote) still sign tokens.
#[test]
fn key_files_are_pkcs8_v1_and_v2_files_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.key");
    let key = generate(&path);
    let der = std::fs::read(&path).unwrap();
    assert_eq!(der.len(), 48);
    assert_eq!(der[..16], unhex("302e020100300506032b657004220420")[..]);
    if let Some(r) = openssl_reads(&path) {
        r.expect("openssl pkey reads the generated key");
    }
    assert_eq!(
        SigningKey::from_pkcs8(&der).unwrap().verifying_key(),
        key.verifying_key()
    );

    // A v2 file: RFC 8032 7.1 TEST 1's seed and public key.
    let seed = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    let public = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    let v2_hex = format!("3053020101300506032b657004220420{seed}a123032100{public}");
    let v2_path = dir.path().join("v2.key");
    std::fs::write(&v2_path, unhex(&v2_hex)).unwrap();
    let out = ctl(&[
        "token",
        "issue",
        "--account",
        "42",
        "--device",
        "7",
        "--key",
        v2_path.to_str().unwrap(),
    ])
    .unwrap();
    let v2_key = SigningKey::from_pkcs8(&unhex(&v2_hex)).unwrap();
    assert_eq!(v2_key.verifying_key().0[..], unhex(public)[..]);
    let claims = v2_key
        .verifying_key()
        .verify(out.trim_end(), now())
        .unwrap();
    assert_eq!((claims.account, claims.device), (42, 7));
    // Loaded from v2, it is written as v1 with the same seed.
    assert_eq!(v2_key.to_pkcs8()[16..], unhex(seed)[..]);
}
