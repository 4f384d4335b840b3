//! The routing core (router/src/core/) decides without I/O: none of its files may name tokio,
//! quinn, RocksDB, a clock, a thread or a socket. The driver (session.rs, driver.rs) performs.

use std::path::{Path, PathBuf};

/// Names a file of the core must not contain (outside comments).
const FORBIDDEN: &[&str] = &[
    "tokio",
    "quinn",
    "rocksdb",
    "std::time",
    "Instant",
    "SystemTime",
    "std::thread",
    "std::net::UdpSocket",
    "std::net::TcpStream",
    "std::fs",
    "spawn",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("the core's sources") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_core_names_no_io_runtime_clock_or_thread() {
    let core = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
    let mut files = Vec::new();
    rust_files(&core, &mut files);
    assert!(files.len() >= 8, "found the core's files: {files:?}");
    let mut hits = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable source");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in FORBIDDEN {
                if code.contains(word) {
                    hits.push(format!("{}:{}: {word}: {line}", file.display(), n + 1));
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "the core must not do I/O:\n{}",
        hits.join("\n")
    );
}

#[test]
fn the_check_would_see_a_forbidden_import() {
    // The scan above reads code, not comments: a line that uses tokio is caught.
    let line = "use tokio::sync::mpsc; // a channel";
    let code = line.split("//").next().unwrap();
    assert!(FORBIDDEN.iter().any(|w| code.contains(w)));
    let comment = "// tokio is the driver's business";
    assert!(!FORBIDDEN
        .iter()
        .any(|w| comment.split("//").next().unwrap().contains(w)));
}
