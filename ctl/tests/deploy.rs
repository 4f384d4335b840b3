//! deploy/: the example config is valid for the node, documents every key, and the defaults it
//! shows in commented-out lines are the node's real defaults; the unit agrees with it.

use hearth_router::Config;

const EXAMPLE: &str = include_str!("../../deploy/hearthd.toml");
const UNIT: &str = include_str!("../../deploy/hearthd.service");

/// `(table, key, "key = value")` for every commented-out `# key = value` line.
fn commented_keys() -> Vec<(Option<String>, String, String)> {
    commented_keys_with_paragraph()
        .into_iter()
        .map(|(t, k, l, _)| (t, k, l))
        .collect()
}

/// Like [`commented_keys`], with the number of the paragraph (lines between blank lines) that
/// holds each line: keys that only work together (`admin_tls_cert` and `admin_tls_key`) are
/// shown in one paragraph.
fn commented_keys_with_paragraph() -> Vec<(Option<String>, String, String, usize)> {
    let mut table = None;
    let mut keys = Vec::new();
    let mut paragraph = 0;
    for line in EXAMPLE.lines() {
        if line.trim().is_empty() {
            paragraph += 1;
        }
        if let Some(t) = line.strip_prefix('[') {
            table = Some(t.trim_end_matches(']').to_owned());
        }
        let Some(rest) = line.strip_prefix("# ") else {
            continue;
        };
        let Some((key, _)) = rest.split_once(" = ") else {
            continue;
        };
        if !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            keys.push((table.clone(), key.to_owned(), rest.to_owned(), paragraph));
        }
    }
    keys
}

fn lookup<'a>(v: &'a toml::Value, table: &Option<String>, key: &str) -> Option<&'a toml::Value> {
    match table {
        Some(t) => v.get(t)?.get(key),
        None => v.get(key),
    }
}

#[test]
fn example_config_parses_with_production_settings() {
    let cfg = Config::from_toml(EXAMPLE).unwrap();
    assert_eq!(cfg.listen, "0.0.0.0:4433".parse().unwrap());
    assert_eq!(
        cfg.admin_listen,
        "127.0.0.1:9090".parse().unwrap(),
        "admin stays on loopback"
    );
    assert_eq!(cfg.data_dir, std::path::Path::new("/var/lib/hearth"));
    assert!(cfg.tls_cert.is_some() && cfg.tls_key.is_some());
    assert_eq!(
        cfg.token_key_path(),
        std::path::Path::new("/etc/hearth/token.key")
    );
}

#[test]
fn commented_defaults_are_the_real_defaults_and_every_key_is_documented() {
    let defaults = toml::Value::try_from(Config::default()).unwrap();
    let with_paragraphs = commented_keys_with_paragraph();
    let commented = commented_keys();
    assert!(commented.len() >= 10, "{commented:?}");
    for (table, key, line, paragraph) in &with_paragraphs {
        let parsed: toml::Value = toml::from_str(line).unwrap();
        let shown = parsed.get(key).unwrap();
        match lookup(&defaults, table, key) {
            Some(real) => assert_eq!(shown, real, "{table:?}.{key}: the example says {line}"),
            // A key unset by default (an Option such as push.webhook_url): the commented line
            // is an example value, which the node must accept (with the other unset keys of
            // its paragraph, which may only work together).
            None => {
                let together: String = with_paragraphs
                    .iter()
                    .filter(|(t, k, _, p)| p == paragraph && lookup(&defaults, t, k).is_none())
                    .map(|(_, _, l, _)| format!("{l}\n"))
                    .collect();
                let text = match table {
                    Some(t) => format!("[{t}]\n{together}"),
                    None => together,
                };
                if let Err(e) = Config::from_toml(&text) {
                    panic!("unknown key or invalid example {table:?}.{line}: {e:#}");
                }
            }
        }
    }
    // Every key the node knows appears in the example, set or commented.
    let example: toml::Value = toml::from_str(EXAMPLE).unwrap();
    let documented = |table: &Option<String>, key: &str| {
        lookup(&example, table, key).is_some()
            || commented.iter().any(|(t, k, _)| t == table && k == key)
    };
    for (key, value) in defaults.as_table().unwrap() {
        match value.as_table() {
            Some(sub) => {
                for k in sub.keys() {
                    assert!(
                        documented(&Some(key.clone()), k),
                        "[{key}] {k} is not documented"
                    );
                }
            }
            None => assert!(documented(&None, key), "{key} is not documented"),
        }
    }
}

#[test]
fn unit_matches_the_example_config() {
    let lines: Vec<&str> = UNIT.lines().map(str::trim).collect();
    for needed in [
        "ExecStart=/usr/local/bin/hearthd --config /etc/hearth/hearthd.toml",
        "User=hearth",
        "StateDirectory=hearth",
        "ReadWritePaths=/var/lib/hearth",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
    ] {
        assert!(lines.contains(&needed), "hearthd.service lacks {needed}");
    }
    assert!(lines.iter().any(|l| l.starts_with("LimitNOFILE=")));
    assert!(lines.iter().any(|l| l.starts_with("TimeoutStopSec=")));
    let cfg = Config::from_toml(EXAMPLE).unwrap();
    assert!(UNIT.contains(&format!("ReadWritePaths={}", cfg.data_dir.display())));
}

#[test]
fn readme_config_snippets_are_valid() {
    let readme = include_str!("../../deploy/README.md");
    let mut snippets = Vec::new();
    let mut rest = readme;
    while let Some(start) = rest.find("```toml\n") {
        let body = &rest[start + "```toml\n".len()..];
        let end = body.find("```").expect("closed code block");
        snippets.push(&body[..end]);
        rest = &body[end..];
    }
    assert!(!snippets.is_empty(), "the README shows a residency example");
    for s in snippets {
        if let Err(e) = Config::from_toml(s) {
            panic!("README snippet is not a valid config: {e:#}\n{s}");
        }
    }
}
