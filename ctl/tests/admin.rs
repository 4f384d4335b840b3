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

    let err = ctl(&["status", "--admin", "ftp://127.0.0.1:9090"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("must start with http:// or https://"), "{err}");
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

const ABUSE: &str = r#"{"flagged": [
    {"account": 901, "reasons": ["1500 distinct new recipients"], "new_recipients": 1500, "blocks": 0,
     "reports": 0, "fanout": 20000, "since_ms": 1735787045000},
    {"account": 17, "reasons": ["blocked 40 times", "reported 9 times"], "new_recipients": 3, "blocks": 40,
     "reports": 9, "fanout": 3, "since_ms": 1735787045000},
    {"account": 5, "reasons": ["reported 6 times"], "new_recipients": 0, "blocks": 0,
     "reports": 6, "fanout": 0, "since_ms": 1735787045000}
]}"#;

#[test]
fn abuse_top_lists_flagged_accounts_up_to_the_limit() {
    let (url, server) = respond_once("200 OK", ABUSE);
    let out = ctl(&["abuse", "top", "--admin", &url]).unwrap();
    assert_eq!(server.join().unwrap(), "GET /v1/abuse HTTP/1.1");
    let accounts: Vec<&str> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(accounts, ["901", "17", "5"], "{out}");
    assert!(
        out.lines()
            .nth(2)
            .unwrap()
            .ends_with("UTC  blocked 40 times; reported 9 times"),
        "{out}"
    );

    let (url, server) = respond_once("200 OK", ABUSE);
    let out = ctl(&["abuse", "top", "--limit", "2", "--admin", &url]).unwrap();
    server.join().unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[1]
            .trim_start()
            .starts_with("901           1,500       0        0   20,000  "),
        "{out}"
    );
    assert!(
        lines[2]
            .trim_start()
            .starts_with("17               3      40        9        3  "),
        "{out}"
    );
    assert_eq!(
        lines[3],
        "showing 2 of 3 flagged accounts (raise --limit to see more)"
    );

    let (url, server) = respond_once("200 OK", ABUSE);
    let out = ctl(&["abuse", "top", "--limit", "1", "--json", "--admin", &url]).unwrap();
    server.join().unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let all: serde_json::Value = serde_json::from_str(ABUSE).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"flagged": [all["flagged"][0].clone()]})
    );

    let (url, server) = respond_once("200 OK", r#"{"flagged": []}"#);
    let out = ctl(&["abuse", "top", "--admin", &url]).unwrap();
    server.join().unwrap();
    assert_eq!(out, "no flagged accounts\n");

    let (url, server) = respond_once("200 OK", r#"{"accounts": []}"#);
    let err = ctl(&["abuse", "top", "--admin", &url]).unwrap_err();
    server.join().unwrap();
    assert!(err.to_string().contains("no \"flagged\" list"), "{err}");

    assert!(ctl(&["abuse", "top", "--limit", "0"]).is_err());
}

#[test]
fn account_purge_needs_yes_and_sends_nothing_without_it() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let err = ctl(&["account", "purge", "--account", "42", "--admin", &url])
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot be undone"), "{err}");
    assert!(err.contains("--yes"), "{err}");
    assert!(err.contains("account 42"), "{err}");
    let accepted = listener.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "hearthctl contacted the node without --yes: {accepted:?}"
    );
}

#[test]
fn account_purge_deletes_and_reports() {
    let body = r#"{"account": 42, "devices": 2, "envelopes": 7, "groups_left": 1,
                   "groups_deleted": 0, "list_entries": 3, "dedup_records": 4,
                   "push_tokens": 1, "account_record": true}"#;
    let (url, server) = respond_once("200 OK", body);
    let out = ctl(&[
        "account",
        "purge",
        "--account",
        "42",
        "--yes",
        "--admin",
        &url,
    ])
    .unwrap();
    assert_eq!(server.join().unwrap(), "DELETE /v1/accounts/42 HTTP/1.1");
    assert!(out.starts_with("erased account 42:\nREMOVED "), "{out}");
    assert!(out.contains("\nqueued envelopes "), "{out}");
    assert!(
        out.ends_with("account record                      yes\n"),
        "{out}"
    );

    let (url, server) = respond_once("200 OK", body);
    let out = ctl(&[
        "account",
        "purge",
        "--account",
        "42",
        "--yes",
        "--json",
        "--admin",
        &url,
    ])
    .unwrap();
    server.join().unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v, serde_json::from_str::<serde_json::Value>(body).unwrap());

    let (url, server) = respond_once("500 Internal Server Error", r#"{"error": "disk full"}"#);
    let err = ctl(&[
        "account",
        "purge",
        "--account",
        "9",
        "--yes",
        "--admin",
        &url,
    ])
    .unwrap_err()
    .to_string();
    assert_eq!(server.join().unwrap(), "DELETE /v1/accounts/9 HTTP/1.1");
    assert_eq!(
        err,
        format!("node admin at {url} answered HTTP 500: disk full")
    );
}

#[test]
fn group_show_and_members_requests() {
    let body = r#"{"group": 7, "creator": 1, "version": 2, "members": 3}"#;
    let (url, server) = respond_once("200 OK", body);
    let out = ctl(&["group", "show", "--group", "7", "--admin", &url]).unwrap();
    assert_eq!(server.join().unwrap(), "GET /v1/groups/7 HTTP/1.1");
    assert_eq!(
        out,
        "group    7\ncreator  account 1\nversion  2\nmembers  3\n"
    );

    let (url, server) = respond_once("200 OK", body);
    let out = ctl(&["group", "show", "--group", "7", "--json", "--admin", &url]).unwrap();
    server.join().unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v, serde_json::from_str::<serde_json::Value>(body).unwrap());

    let (url, server) = respond_once("404 Not Found", r#"{"error": "no such group"}"#);
    let err = ctl(&["group", "show", "--group", "99", "--admin", &url]).unwrap_err();
    assert_eq!(server.join().unwrap(), "GET /v1/groups/99 HTTP/1.1");
    assert_eq!(err.to_string(), "group 99: no such group");

    // Defaults: the first page of 100.
    let page = r#"{"group": 7, "total": 3, "offset": 0, "members": [
        {"account": 1, "role": "admin"}, {"account": 2, "role": "member"}]}"#;
    let (url, server) = respond_once("200 OK", page);
    let out = ctl(&["group", "members", "--group", "7", "--admin", &url]).unwrap();
    assert_eq!(
        server.join().unwrap(),
        "GET /v1/groups/7/members?offset=0&limit=100 HTTP/1.1"
    );
    assert_eq!(
        out,
        "ACCOUNT  ROLE\n      1  admin\n      2  member\n\
         showing 1–2 of 3 members (next page: --offset 2)\n"
    );

    let (url, server) = respond_once("200 OK", page);
    let args = [
        "group", "members", "--group", "7", "--offset", "5", "--limit", "2", "--json", "--admin",
        &url,
    ];
    let out = ctl(&args).unwrap();
    assert_eq!(
        server.join().unwrap(),
        "GET /v1/groups/7/members?offset=5&limit=2 HTTP/1.1"
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v, serde_json::from_str::<serde_json::Value>(page).unwrap());

    let (url, server) = respond_once("404 Not Found", r#"{"error": "no such group"}"#);
    let err = ctl(&["group", "members", "--group", "8", "--admin", &url]).unwrap_err();
    assert_eq!(
        server.join().unwrap(),
        "GET /v1/groups/8/members?offset=0&limit=100 HTTP/1.1"
    );
    assert_eq!(err.to_string(), "group 8: no such group");

    // Limits outside what the node serves are refused before any request.
    for limit in ["0", "10001"] {
        let args = ["group", "members", "--group", "7", "--limit", limit];
        assert!(ctl(&args).is_err(), "--limit {limit}");
    }
}
