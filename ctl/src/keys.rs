//! Offline commands on the node's token key: issue tokens, generate keys.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::path::Path;

use anyhow::{bail, Context};
use hearth_protocol::{Scope, SigningKey, TokenClaims};

use crate::cli::TokenIssueArgs;

/// Sign a token for `args.account`/`args.device` valid until `now_secs + args.ttl` with the key
/// in `args.key`, and print it (alone on its line, or as JSON
/// `{"token","account","device","expires_at","network","zone"}`). With `args.network` or
/// `args.zone` the token is v2 (`ht2.`) and carries them; a name left out (JSON `null`) means
/// the node's default.
pub fn token_issue(
    args: &TokenIssueArgs,
    now_secs: u64,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if args.device == 0 {
        bail!("device 0 is reserved; use a device id of 1 or more");
    }
    let network = scope_name("network", args.network.as_deref())?;
    let zone = scope_name("zone", args.zone.as_deref())?;
    let key = load_key(&args.key)?;
    let expires_at = now_secs
        .checked_add(args.ttl.as_secs())
        .context("ttl is too long: the expiry does not fit in 64 bits")?;
    let claims = TokenClaims {
        account: args.account,
        device: args.device,
        expires_at,
    };
    let token = if network.is_some() || zone.is_some() {
        let scope = Scope {
            network: network.unwrap_or_default().to_owned(),
            zone: zone.unwrap_or_default().to_owned(),
        };
        key.issue_scoped(&claims, &scope)
            .map_err(|e| anyhow::anyhow!("cannot issue the token: {e}"))?
    } else {
        key.issue(&claims)
    };
    if json {
        let v = serde_json::json!({
            "token": token,
            "account": claims.account,
            "device": claims.device,
            "expires_at": claims.expires_at,
            "network": network,
            "zone": zone,
        });
        serde_json::to_writer_pretty(&mut *out, &v)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{token}")?;
    }
    Ok(())
}

/// Longest network or zone name a v2 token carries, in bytes (the protocol's limit).
const MAX_SCOPE_NAME: usize = 64;

/// A network or zone name as given on the command line: not empty, at most 64 bytes, no
/// whitespace or control characters (the node compares names exactly, so a stray space would
/// make a token it refuses).
fn scope_name<'a>(what: &str, name: Option<&'a str>) -> anyhow::Result<Option<&'a str>> {
    let Some(name) = name else {
        return Ok(None);
    };
    if name.is_empty() {
        bail!("--{what} must not be empty (leave it out for the node's default {what})");
    }
    if name.len() > MAX_SCOPE_NAME {
        bail!("--{what} {name:?} is too long: at most {MAX_SCOPE_NAME} bytes");
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("--{what} {name:?} must not contain spaces or control characters");
    }
    Ok(Some(name))
}

fn load_key(path: &Path) -> anyhow::Result<SigningKey> {
    let der = std::fs::read(path).map_err(|e| {
        let hint = if e.kind() == ErrorKind::NotFound {
            " (a node creates it in its data dir on first start, or run \
             `hearthctl key generate --out PATH`; point --key at it)"
        } else {
            ""
        };
        anyhow::anyhow!("cannot read token key {}: {e}{hint}", path.display())
    })?;
    SigningKey::from_pkcs8(&der).map_err(|_| {
        anyhow::anyhow!(
            "{} is not a token key (expected PKCS#8 v1 or v2 DER Ed25519)",
            path.display()
        )
    })
}

/// Create a new token signing key at `path` (PKCS#8 v1 DER Ed25519, mode 0600). Refuses to
/// overwrite an existing file: tokens signed by the old key would stop working.
pub fn key_generate(path: &Path, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let key = SigningKey::generate();
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut file = opts.open(path).map_err(|e| match e.kind() {
        ErrorKind::AlreadyExists => anyhow::anyhow!(
            "{} already exists; refusing to overwrite a token key (tokens it signed would stop \
             working)",
            path.display()
        ),
        _ => anyhow::anyhow!("cannot create {}: {e}", path.display()),
    })?;
    if let Err(e) = file
        .write_all(key.to_pkcs8())
        .and_then(|()| file.sync_all())
    {
        drop(file);
        let _ = std::fs::remove_file(path);
        bail!("cannot write {}: {e}", path.display());
    }
    let public_key = hex(&key.verifying_key().0);
    if json {
        let v = serde_json::json!({ "path": path, "public_key": public_key });
        serde_json::to_writer_pretty(&mut *out, &v)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "wrote a new token key to {} (mode 0600)",
            path.display()
        )?;
        writeln!(out, "public key: {public_key}")?;
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
