//! The binary's exit codes and outputs, run as a user would (`--embedded`, small and short).

use std::process::{Command, Output};

fn loadgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hearth-loadgen"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("the binary runs")
}

const SMALL: [&str; 9] = [
    "--embedded",
    "--devices",
    "4",
    "--rate",
    "100",
    "--duration",
    "1s",
    "--warmup",
    "0s",
];

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn met_objectives_exit_0_and_a_breach_exits_2() {
    let mut args = SMALL.to_vec();
    args.extend(["--json", "--slo", "p99<60s", "--slo", "delivered_per_s>=1"]);
    let ok = loadgen(&args);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let v = json(&ok);
    assert_eq!(v["passed"], true);
    let slo = v["slo"].as_array().unwrap();
    assert!(slo
        .iter()
        .any(|r| r["slo"] == "p99<60s" && r["passed"] == true));

    // No delivery takes under a microsecond, and 100/s is not a million/s.
    let mut args = SMALL.to_vec();
    args.extend([
        "--json",
        "--slo",
        "p99<1us",
        "--slo",
        "delivered_per_s>=1M/s",
        "--slo",
        "lost==0",
    ]);
    let bad = loadgen(&args);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let v = json(&bad);
    assert_eq!(v["passed"], false);
    let by_name = |n: &str| {
        v["slo"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["slo"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("{n} missing"))
    };
    assert_eq!(by_name("p99<1us")["passed"], false);
    assert!(by_name("p99<1us")["actual"].as_f64().unwrap() >= 1.0);
    assert_eq!(by_name("delivered_per_s>=1M/s")["passed"], false);
    assert_eq!(by_name("lost==0")["passed"], true);
}

#[test]
fn setup_failures_exit_1() {
    // A scenario file that does not exist, and a bad objective.
    let out = loadgen(&[
        "--embedded",
        "--rate",
        "1",
        "--scenario",
        "/nonexistent.toml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonexistent"));
    let out = loadgen(&["--embedded", "--rate", "1", "--slo", "p99<5parsecs"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("parsecs"));
}

#[test]
fn progress_lines_go_to_a_log_when_asked() {
    // stderr is a pipe here: without --progress nothing is drawn, with it one line an interval.
    let mut args = SMALL.to_vec();
    args.extend(["--json", "--interval", "250ms"]);
    let quiet = loadgen(&args);
    assert_eq!(quiet.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains("deliv "));

    args.push("--progress");
    let out = loadgen(&args);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("deliv ")).collect();
    assert!(lines.len() >= 3, "one line per interval: {err}");
    assert!(!err.contains('\r'), "no terminal redraws in a log: {err:?}");
    let running = lines
        .iter()
        .find(|l| l.contains("left]"))
        .unwrap_or_else(|| panic!("a line during the run: {err}"));
    for part in [
        "[steady",
        "offered 100/s",
        "sent ",
        "p99 ",
        "(run ",
        "errors 0",
        "late ",
    ] {
        assert!(running.contains(part), "{part:?} in {running:?}");
    }
    // The JSON summary still goes to stdout alone.
    assert_eq!(json(&out)["passed"], true);
}
