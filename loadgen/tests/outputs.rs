//! The report files: HTML with its charts' data, the HdrHistogram interval log, the JSON file.

use std::process::Command;

use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;

#[test]
fn html_report_interval_log_and_json_file_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("r.html");
    let hlog = dir.path().join("r.hlog");
    let jf = dir.path().join("r.json");
    let out = Command::new(env!("CARGO_BIN_EXE_hearth-loadgen"))
        .args([
            "--embedded",
            "--devices",
            "6",
            "--rate",
            "200",
            "--duration",
            "2s",
        ])
        .args([
            "--warmup",
            "500ms",
            "--interval",
            "500ms",
            "--probe-rate",
            "20",
        ])
        .arg("--html")
        .arg(&html)
        .arg("--hdr-log")
        .arg(&hlog)
        .arg("--json-file")
        .arg(&jf)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&jf).unwrap()).unwrap();
    let measured = summary["latency_us"]["count"].as_u64().unwrap();
    assert!(measured > 0);

    // HTML: self-contained, with the charts and the data behind them.
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    for needle in [
        "Delivery latency over time",
        "Percentile spectrum",
        "Throughput over time",
        "Refused or failed requests",
        "<svg",
    ] {
        assert!(page.contains(needle), "missing {needle}");
    }
    assert!(
        !page.contains("http://") || !page.contains("src=\"http"),
        "no network fetches"
    );
    assert!(!page.contains("<script src"), "no external scripts");
    let start = page.find("id=\"hearth-data\">").unwrap() + "id=\"hearth-data\">".len();
    let end = start + page[start..].find("</script>").unwrap();
    let data: serde_json::Value = serde_json::from_str(&page[start..end].replace("<\\/", "</"))
        .expect("embedded chart data is JSON");
    let timeline = data["report"]["timeline"].as_array().unwrap();
    // 2.5 s of load at 0.5 s intervals: at least 5 rows, with per-interval p99s.
    assert!(timeline.len() >= 5, "{}", timeline.len());
    assert!(timeline.iter().any(|i| i["p99_us"].as_u64().unwrap() > 0));
    let spectrum = data["spectrum"]["delivery"].as_array().unwrap();
    assert!(spectrum.len() > 10);
    assert_eq!(spectrum.last().unwrap()["percentile"], 100.0);
    assert!(!data["spectrum"]["probe"].as_array().unwrap().is_empty());

    // Interval log: parses back; one delivery histogram per interval, holding every delivery.
    let text = std::fs::read(&hlog).unwrap();
    let mut tags = std::collections::BTreeMap::<String, u64>::new();
    let mut delivered = 0;
    let mut base = None;
    for e in IntervalLogIterator::new(&text) {
        match e.expect("log entry parses") {
            LogEntry::BaseTime(t) => base = Some(t),
            LogEntry::StartTime(_) => {}
            LogEntry::Interval(i) => {
                let tag = i.tag().expect("tagged").as_str().to_string();
                *tags.entry(tag.clone()).or_default() += 1;
                let bytes = base64_decode(i.encoded_histogram());
                let h: Histogram<u64> = Deserializer::new().deserialize(&mut &bytes[..]).unwrap();
                if tag == "delivery" {
                    delivered += h.len();
                }
            }
        }
    }
    assert!(base.is_some());
    assert_eq!(tags["delivery"], tags["accept"]);
    assert_eq!(tags["delivery"] as usize, timeline.len());
    assert!(tags.contains_key("probe"));
    // Intervals hold every online delivery, the warm-up's included.
    assert!(delivered >= measured, "{delivered} < {measured}");
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}
