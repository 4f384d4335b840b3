//! Offline commands on the node's token key: issue tokens, generate keys.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::path::Path;

use anyhow::{bail, Context};
use hearth_protocol::{SigningKey, TokenClaims};

use crate::cli::TokenIssueArgs;

/// Sign a token for `args.account`/`args.device` valid until `now_secs + args.ttl` with the key
/// in `args.key`, and print it (alone on its line, or as JSON
/// `{"token","account","device","expires_at"}`).
pub fn token_issue(
    args: &TokenIssueArgs,
    now_secs: u64,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if args.device == 0 {
        bail!("device 0 is reserved; use a device id of 1 or more");
    }
    let key = load_key(&args.key)?;
    let expires_at = now_secs
        .checked_add(args.ttl.as_secs())
        .context("ttl is too long: the expiry does not fit in 64 bits")?;
    let claims = TokenClaims {
        account: args.account,
        device: args.device,
        expires_at,
    };
    let token = key.issue(&claims);
    if json {
        let v = serde_json::json!({
            "token": token,
            "account": claims.account,
            "device": claims.device,
            "expires_at": claims.expires_at,
        });
        serde_json::to_writer_pretty(&mut *out, &v)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{token}")?;
    }
    Ok(())
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
            "{} is not a token key (expected PKCS#8 DER Ed25519)",
            path.display()
        )
    })
}

/// Create a new token signing key at `path` (PKCS#8 DER Ed25519, mode 0600). Refuses to
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
