//! HdrHistogram interval logs (`--hdr-log FILE`), readable by HdrHistogram's
//! `HistogramLogProcessor` and by `hdrhistogram::serialization::interval_log`: one histogram per
//! interval and tag (`delivery`, `accept`, `probe`), values in µs, timestamps relative to the
//! start of the warm-up (`BaseTime`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;

use crate::report::Report;
use crate::timeline::deserialize;

/// The interval log of a run, as text.
pub(crate) fn interval_log(r: &Report) -> anyhow::Result<String> {
    let mut out = Vec::new();
    let mut ser = V2DeflateSerializer::new();
    let base = UNIX_EPOCH + Duration::from_secs_f64(r.started_unix_s.max(0.0));
    let mut w = IntervalLogWriterBuilder::new()
        .add_comment(&format!(
            "hearth-loadgen {} scenario {:?}: latency in microseconds from the intended send time",
            r.mode, r.scenario
        ))
        .add_comment("tags: delivery (online devices), accept (to ACCEPTED), probe")
        .with_start_time(base)
        .with_base_time(base)
        .with_max_value_divisor(1000.0)
        .begin_log_with(&mut out, &mut ser)?;
    for i in &r.extra.interval_hists {
        let start = Duration::from_secs_f64(i.start_s.max(0.0));
        let len = Duration::from_secs_f64(i.len_s.max(0.0));
        for (tag, bytes) in [
            ("delivery", &i.delivery),
            ("accept", &i.accept),
            ("probe", &i.probe),
        ] {
            let h = deserialize(bytes)?;
            if h.is_empty() && tag == "probe" {
                continue;
            }
            w.write_histogram(&h, start, len, Tag::new(tag))
                .map_err(|e| anyhow::anyhow!("writing the interval log: {e:?}"))?;
        }
    }
    drop(w);
    Ok(String::from_utf8(out)?)
}

/// Seconds since the Unix epoch now.
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
