//! Admin API error handling and request shapes, against a one-shot HTTP responder.
//! (Behaviour against a real node is in `node.rs`.)

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::thread::JoinHandle;

use clap::Parser;
use hearth_ctl::{run, Cli};

fn ctl(args: &[&str]) -> anyhow::Result<String> {
    let cli = Cli::try_parse_from(std::iter::once("hearthctl").chain(args.iter().copied()))?;
    let mut out = Vec::new();
    run(&cli, &mut out)?;
    Ok(String::from_utf8(out).expect("utf-8 output"))
}

/// Serve one request with `status` and `body`; the handle yields the request line.
fn respond_once(status: &str, body: &str) -> (String, JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream);
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
            line.clear();
        }
        reader.get_mut().write_all(response.as_bytes()).unwrap();
        request_line.trim_end().to_owned()
    });
    (url, handle)
}

#[test]
fn unreachable_node_is_a_clear_error() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let err = ctl(&["status", "--admin", &url]).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("cannot reach node admin at {url}: ")),
        "{err}"
    );

    let err = ctl(&["status", "--admin", "https://127.0.0.1:9090"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("must start with http://"), "{err}");
}

#[test]
fn not_found_shows_the_nodes_message() {
    let (url, server) = respond_once("404 Not Found", r#"{"error": "no such device"}"#);
    let err = ctl(&[
        "device",
        "remove",
        "--account",
        "42",
        "--device",
        "3",
        "--admin",
        &url,
    ])
    .unwrap_err();
    assert_eq!(err.to_string(), "device 3 of account 42: no such device");
    assert_eq!(server.join().unwrap(), "DELETE /v1/devices/42/3 HTTP/1.1");
}

#[test]
fn server_errors_and_garbage_answers() {
    let (url, server) = respond_once("500 Internal Server Error", "boom");
    let err = ctl(&[
        "--admin",
        &format!("{url}/"),
        "queue",
        "stats",
        "--account",
        "7",
    ])
    .unwrap_err()
    .to_string();
    assert_eq!(err, format!("node admin at {url} answered HTTP 500: boom"));
    assert_eq!(server.join().unwrap(), "GET /v1/queues/7 HTTP/1.1");

    let (url, server) = respond_once("200 OK", "<html>");
    let err = ctl(&["status", "--admin", &url]).unwrap_err().to_string();
    assert!(
        err.starts_with("unexpected answer from node admin"),
        "{err}"
    );
    assert_eq!(server.join().unwrap(), "GET /v1/status HTTP/1.1");
}

#[test]
fn empty_account_and_json_passthrough() {
    let (url, server) = respond_once("200 OK", "[]");
    let out = ctl(&["queue", "stats", "--account", "7", "--admin", &url]).unwrap();
    assert_eq!(out, "account 7 has no registered devices\n");
    server.join().unwrap();

    let body = r#"{"account":7,"device":2,"slot":1,"queued":3,"bytes":10,"next_seq":4,
                   "registered_at_ms":0,"online":false,"extra":"kept"}"#;
    let (url, server) = respond_once("200 OK", body);
    let out = ctl(&[
        "queue",
        "stats",
        "--account",
        "7",
        "--device",
        "2",
        "--json",
        "--admin",
        &url,
    ])
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v, serde_json::from_str::<serde_json::Value>(body).unwrap());
    assert_eq!(server.join().unwrap(), "GET /v1/queues/7/2 HTTP/1.1");
}
