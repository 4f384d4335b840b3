//! The HTML report (`--html FILE`): one self-contained file (inline CSS and SVG, no script, no
//! network) with the summary, objectives, latency over time (p50/p99/max per interval), the
//! percentile spectrum, throughput and errors over time, and the node's connections and memory.
//! The data behind the charts is embedded as JSON (`<script type="application/json"
//! id="hearth-data">`) for tools.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde_json::json;

use crate::report::{Latency, Report, CLOSED_LOOP_LABEL};

const W: f64 = 1100.0;
const H: f64 = 300.0;
const ML: f64 = 70.0;
const MR: f64 = 40.0;
const MT: f64 = 36.0;
const MB: f64 = 44.0;

const BLUE: &str = "#2563eb";
const ORANGE: &str = "#ea580c";
const GREY: &str = "#9ca3af";
const GREEN: &str = "#16a34a";
const PURPLE: &str = "#7c3aed";
const RED: &str = "#dc2626";
const TEAL: &str = "#0d9488";

/// One line of a chart.
struct Series<'a> {
    name: &'a str,
    color: &'a str,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

#[derive(Clone, Copy, PartialEq)]
enum Scale {
    Linear,
    Log,
}

struct Axis {
    min: f64,
    max: f64,
    scale: Scale,
}

impl Axis {
    fn linear(min: f64, max: f64) -> Axis {
        let max = if max <= min { min + 1.0 } else { max };
        let step = nice_step((max - min) / 5.0);
        Axis {
            min: (min / step).floor() * step,
            max: (max / step).ceil() * step,
            scale: Scale::Linear,
        }
    }

    fn log(min: f64, max: f64) -> Axis {
        let min = min.max(1e-3);
        let max = max.max(min * 10.0);
        Axis {
            min: 10f64.powf(min.log10().floor()),
            max: 10f64.powf(max.log10().ceil()),
            scale: Scale::Log,
        }
    }

    /// Position in 0..1.
    fn frac(&self, v: f64) -> f64 {
        match self.scale {
            Scale::Linear => (v - self.min) / (self.max - self.min),
            Scale::Log => {
                (v.max(self.min).log10() - self.min.log10()) / (self.max.log10() - self.min.log10())
            }
        }
    }

    fn ticks(&self) -> Vec<f64> {
        match self.scale {
            Scale::Linear => {
                let step = nice_step((self.max - self.min) / 5.0);
                let mut t = Vec::new();
                let mut v = self.min;
                while v <= self.max + step * 1e-9 {
                    t.push(v);
                    v += step;
                }
                t
            }
            Scale::Log => {
                let decades = (self.max.log10() - self.min.log10()).round() as i32;
                let mut t = Vec::new();
                for d in 0..=decades {
                    let base = self.min * 10f64.powi(d);
                    t.push(base);
                    if decades <= 3 && d < decades {
                        t.push(base * 2.0);
                        t.push(base * 5.0);
                    }
                }
                t
            }
        }
    }
}

fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    let m = raw / p;
    p * if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    }
}

fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if a >= 1e4 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = if v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A shaded band behind the plot (a phase).
struct Band<'a> {
    from: f64,
    to: f64,
    label: &'a str,
    fill: &'a str,
}

struct Chart<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    x: Axis,
    y: Axis,
    x_ticks: Option<Vec<(f64, String)>>,
    bands: Vec<Band<'a>>,
    series: Vec<Series<'a>>,
    /// Draw the first series as bars instead of a line.
    bars: bool,
}

impl Chart<'_> {
    fn svg(&self) -> String {
        let pw = W - ML - MR;
        let ph = H - MT - MB;
        let px = |v: f64| ML + self.x.frac(v).clamp(0.0, 1.0) * pw;
        let py = |v: f64| MT + (1.0 - self.y.frac(v).clamp(0.0, 1.0)) * ph;
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg class="chart" viewBox="0 0 {W} {H}" width="{W}" height="{H}" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{}">"#,
            esc(self.title)
        );
        let _ = write!(
            s,
            r#"<text x="{ML}" y="20" class="title">{}</text>"#,
            esc(self.title)
        );
        for b in &self.bands {
            let (x0, x1) = (px(b.from), px(b.to));
            if x1 - x0 < 0.5 {
                continue;
            }
            let _ = write!(
                s,
                r#"<rect x="{x0:.1}" y="{MT}" width="{:.1}" height="{ph}" fill="{}"/>"#,
                x1 - x0,
                b.fill,
            );
            // Label the band only where it fits.
            if x1 - x0 > 12.0 + 6.5 * b.label.len() as f64 {
                let _ = write!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" class="band">{}</text>"#,
                    x0 + 4.0,
                    MT + 12.0,
                    esc(b.label)
                );
            }
        }
        // Grid and y ticks.
        for t in self.y.ticks() {
            let y = py(t);
            let _ = write!(
                s,
                r#"<line x1="{ML}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" class="grid"/><text x="{:.1}" y="{:.1}" class="tick" text-anchor="end">{}</text>"#,
                ML + pw,
                ML - 6.0,
                y + 4.0,
                fmt_num(t)
            );
        }
        let xt: Vec<(f64, String)> = match &self.x_ticks {
            Some(t) => t.clone(),
            None => self
                .x
                .ticks()
                .into_iter()
                .map(|t| (t, fmt_num(t)))
                .collect(),
        };
        for (t, label) in xt {
            let x = px(t);
            let _ = write!(
                s,
                r#"<line x1="{x:.1}" x2="{x:.1}" y1="{MT}" y2="{:.1}" class="grid"/><text x="{x:.1}" y="{:.1}" class="tick" text-anchor="middle">{}</text>"#,
                MT + ph,
                MT + ph + 16.0,
                esc(&label)
            );
        }
        let _ = write!(
            s,
            r#"<rect x="{ML}" y="{MT}" width="{pw}" height="{ph}" class="frame"/>"#
        );
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" class="axis" text-anchor="middle">{}</text>"#,
            ML + pw / 2.0,
            H - 6.0,
            esc(self.x_label)
        );
        let _ = write!(
            s,
            r#"<text transform="translate(16,{:.1}) rotate(-90)" class="axis" text-anchor="middle">{}</text>"#,
            MT + ph / 2.0,
            esc(self.y_label)
        );
        for (i, ser) in self.series.iter().enumerate() {
            if ser.points.is_empty() {
                continue;
            }
            if self.bars && i == 0 {
                let n = ser.points.len().max(1) as f64;
                let bw = (pw / n * 0.8).clamp(1.0, 40.0);
                for &(x, y) in &ser.points {
                    if y <= 0.0 {
                        continue;
                    }
                    let (x0, y0) = (px(x) - bw / 2.0, py(y));
                    let _ = write!(
                        s,
                        r#"<rect x="{x0:.1}" y="{y0:.1}" width="{bw:.1}" height="{:.1}" fill="{}"><title>{} at {} s: {}</title></rect>"#,
                        MT + ph - y0,
                        ser.color,
                        esc(ser.name),
                        trim(x),
                        fmt_num(y)
                    );
                }
                continue;
            }
            let d: Vec<String> = ser
                .points
                .iter()
                .enumerate()
                .map(|(j, &(x, y))| {
                    format!(
                        "{}{:.1},{:.1}",
                        if j == 0 { 'M' } else { 'L' },
                        px(x),
                        py(y)
                    )
                })
                .collect();
            let _ = write!(
                s,
                r#"<path d="{}" fill="none" stroke="{}" stroke-width="2"{}/>"#,
                d.join(""),
                ser.color,
                if ser.dashed {
                    r#" stroke-dasharray="6 4""#
                } else {
                    ""
                }
            );
            if ser.points.len() <= 400 {
                for &(x, y) in &ser.points {
                    let _ = write!(
                        s,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="2.2" fill="{}"><title>{}: {} at {}</title></circle>"#,
                        px(x),
                        py(y),
                        ser.color,
                        esc(ser.name),
                        fmt_num(y),
                        trim(x)
                    );
                }
            }
        }
        // Legend, right-aligned above the plot.
        let mut lx = W - MR;
        for ser in self.series.iter().rev() {
            let w = 14.0 + 7.0 * ser.name.chars().count() as f64 + 18.0;
            lx -= w;
            let _ = write!(
                s,
                r#"<rect x="{lx:.1}" y="12" width="12" height="4" fill="{}"/><text x="{:.1}" y="20" class="legend">{}</text>"#,
                ser.color,
                lx + 16.0,
                esc(ser.name)
            );
        }
        s.push_str("</svg>");
        s
    }
}

fn bands(r: &Report, end: f64) -> Vec<Band<'static>> {
    let w = r.warmup_s;
    let ra = w + r.ramp_s;
    let st = ra + r.duration_s;
    vec![
        Band {
            from: 0.0,
            to: w,
            label: "warm-up",
            fill: "#f3f4f6",
        },
        Band {
            from: w,
            to: ra,
            label: "ramp",
            fill: "#fef9c3",
        },
        Band {
            from: ra,
            to: st,
            label: "steady (measured)",
            fill: "#ffffff",
        },
        Band {
            from: st,
            to: end.max(st),
            label: "settle",
            fill: "#f3f4f6",
        },
    ]
}

/// Quantiles of the spectrum: 0%, then 1 - 10^(-k/8) up to 99.999%, then 100%.
fn spectrum_quantiles() -> Vec<f64> {
    let mut q: Vec<f64> = (0..=40)
        .map(|k| 1.0 - 10f64.powf(-(k as f64) / 8.0))
        .collect();
    q[0] = 0.0;
    q
}

/// (x = log10(1/(1-q)), q, latency µs) of a histogram, capped at its count's resolution.
fn spectrum(h: &Histogram<u64>) -> Vec<(f64, f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let n = h.len() as f64;
    let mut out: Vec<(f64, f64, u64)> = spectrum_quantiles()
        .into_iter()
        .filter(|&q| q == 0.0 || 1.0 - q >= 1.0 / n)
        .map(|q| ((1.0 / (1.0 - q)).log10(), q, h.value_at_quantile(q)))
        .collect();
    let top = (n.log10()).max(out.last().map_or(0.0, |p| p.0));
    out.push((top, 1.0, h.max()));
    out
}

/// The whole HTML document.
pub(crate) fn render(r: &Report) -> String {
    // A last partial interval much shorter than the others makes a noisy rate: not plotted
    // (its data stays in the JSON and the interval log).
    let mut lens: Vec<f64> = r.timeline.iter().map(|i| i.len_s).collect();
    lens.sort_by(f64::total_cmp);
    let full = lens.get(lens.len() / 2).copied().unwrap_or(0.0);
    let tl: Vec<crate::timeline::Interval> = r
        .timeline
        .iter()
        .filter(|i| i.len_s >= 0.25 * full)
        .cloned()
        .collect();
    let tl = &tl;
    let end = tl.last().map_or(0.0, |i| i.start_s + i.len_s);
    let mid = |i: &crate::timeline::Interval| i.start_s + i.len_s / 2.0;
    let ms = |us: u64| us as f64 / 1e3;

    // Latency over time.
    let lat_rows: Vec<_> = tl.iter().filter(|i| i.count > 0).collect();
    let lat_series = vec![
        Series {
            name: "p50",
            color: BLUE,
            dashed: false,
            points: lat_rows.iter().map(|i| (mid(i), ms(i.p50_us))).collect(),
        },
        Series {
            name: "p99",
            color: ORANGE,
            dashed: false,
            points: lat_rows.iter().map(|i| (mid(i), ms(i.p99_us))).collect(),
        },
        Series {
            name: "max",
            color: GREY,
            dashed: true,
            points: lat_rows.iter().map(|i| (mid(i), ms(i.max_us))).collect(),
        },
        Series {
            name: "accept p99",
            color: PURPLE,
            dashed: true,
            points: tl
                .iter()
                .filter(|i| i.accept_p99_us > 0)
                .map(|i| (mid(i), ms(i.accept_p99_us)))
                .collect(),
        },
    ];
    let (lo, hi) = minmax(lat_series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
    let latency = Chart {
        title: "Delivery latency over time (per interval, from the intended send time)",
        x_label: "seconds since the start of the warm-up",
        y_label: "ms (log)",
        x: Axis::linear(0.0, end),
        y: Axis::log(lo, hi),
        x_ticks: None,
        bands: bands(r, end),
        series: lat_series,
        bars: false,
    };

    // Percentile spectrum.
    let spec_d = spectrum(&r.extra.delivery);
    let spec_a = spectrum(&r.extra.accept);
    let spec_p = spectrum(&r.extra.probe);
    let pts = |v: &[(f64, f64, u64)]| v.iter().map(|p| (p.0, ms(p.2))).collect::<Vec<_>>();
    let mut spec_series = vec![
        Series {
            name: "delivery",
            color: ORANGE,
            dashed: false,
            points: pts(&spec_d),
        },
        Series {
            name: "accept",
            color: PURPLE,
            dashed: false,
            points: pts(&spec_a),
        },
    ];
    if !spec_p.is_empty() {
        spec_series.push(Series {
            name: "probe",
            color: TEAL,
            dashed: false,
            points: pts(&spec_p),
        });
    }
    let xmax = spec_series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(3.0f64, f64::max)
        .ceil();
    let labels = [
        "0%",
        "90%",
        "99%",
        "99.9%",
        "99.99%",
        "99.999%",
        "99.9999%",
        "99.99999%",
    ];
    let (lo, hi) = minmax(
        spec_series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1)),
    );
    let spectrum_chart = Chart {
        title: "Percentile spectrum (measured window)",
        x_label: "percentile",
        y_label: "ms (log)",
        x: Axis {
            min: 0.0,
            max: xmax,
            scale: Scale::Linear,
        },
        y: Axis::log(lo, hi),
        x_ticks: Some(
            (0..=xmax as usize)
                .map(|k| (k as f64, labels.get(k).copied().unwrap_or("").to_string()))
                .collect(),
        ),
        bands: Vec::new(),
        series: spec_series,
        bars: false,
    };

    // Throughput.
    let mut thr_series = Vec::new();
    if tl.iter().any(|i| i.offered_per_s.is_some()) {
        thr_series.push(Series {
            name: "offered",
            color: GREY,
            dashed: true,
            points: tl
                .iter()
                .filter_map(|i| i.offered_per_s.map(|o| (mid(i), o)))
                .collect(),
        });
    }
    thr_series.push(Series {
        name: "sent",
        color: BLUE,
        dashed: false,
        points: tl.iter().map(|i| (mid(i), i.sent_per_s)).collect(),
    });
    thr_series.push(Series {
        name: "accepted",
        color: PURPLE,
        dashed: false,
        points: tl.iter().map(|i| (mid(i), i.accepted_per_s)).collect(),
    });
    thr_series.push(Series {
        name: "delivered",
        color: GREEN,
        dashed: false,
        points: tl.iter().map(|i| (mid(i), i.delivered_per_s)).collect(),
    });
    if r.groups.is_some() {
        thr_series.push(Series {
            name: "group deliveries",
            color: ORANGE,
            dashed: false,
            points: tl
                .iter()
                .map(|i| (mid(i), i.group_delivered_per_s))
                .collect(),
        });
    }
    let (_, hi) = minmax(thr_series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
    let throughput = Chart {
        title: "Throughput over time",
        x_label: "seconds since the start of the warm-up",
        y_label: "per second",
        x: Axis::linear(0.0, end),
        y: Axis::linear(0.0, hi),
        x_ticks: None,
        bands: bands(r, end),
        series: thr_series,
        bars: false,
    };

    // Errors.
    let err_pts: Vec<(f64, f64)> = tl.iter().map(|i| (mid(i), i.errors as f64)).collect();
    let (_, hi) = minmax(err_pts.iter().map(|p| p.1));
    let errors = Chart {
        title: "Refused or failed requests per interval",
        x_label: "seconds since the start of the warm-up",
        y_label: "errors",
        x: Axis::linear(0.0, end),
        y: Axis::linear(0.0, hi.max(1.0)),
        x_ticks: None,
        bands: bands(r, end),
        series: vec![Series {
            name: "errors",
            color: RED,
            dashed: false,
            points: err_pts,
        }],
        bars: true,
    };

    // Node connections and RSS, when known.
    let node_rows: Vec<_> = tl
        .iter()
        .filter_map(|i| Some((mid(i), i.node_connections?, i.node_rss_bytes?)))
        .collect();
    let node_chart = (!node_rows.is_empty()).then(|| {
        let chart = |title, y_label, name, color, points: Vec<(f64, f64)>| {
            let (_, hi) = minmax(points.iter().map(|p| p.1));
            Chart {
                title,
                x_label: "seconds since the start of the warm-up",
                y_label,
                x: Axis::linear(0.0, end),
                y: Axis::linear(0.0, hi),
                x_ticks: None,
                bands: bands(r, end),
                series: vec![Series {
                    name,
                    color,
                    dashed: false,
                    points,
                }],
                bars: false,
            }
            .svg()
        };
        chart(
            "Node: open connections (/v1/status)",
            "connections",
            "connections",
            BLUE,
            node_rows.iter().map(|p| (p.0, p.1 as f64)).collect(),
        ) + &chart(
            "Node: resident memory (/v1/status)",
            "MiB",
            "RSS",
            TEAL,
            node_rows
                .iter()
                .map(|p| (p.0, p.2 as f64 / 1048576.0))
                .collect(),
        )
    });

    let data = json!({
        "report": r,
        "spectrum": {
            "delivery": spec_d.iter().map(|p| json!({"percentile": p.1 * 100.0, "us": p.2})).collect::<Vec<_>>(),
            "accept": spec_a.iter().map(|p| json!({"percentile": p.1 * 100.0, "us": p.2})).collect::<Vec<_>>(),
            "probe": spec_p.iter().map(|p| json!({"percentile": p.1 * 100.0, "us": p.2})).collect::<Vec<_>>(),
        },
    });
    let data = data.to_string().replace("</", "<\\/");

    let mut h = String::new();
    let title = format!("hearth-loadgen: {} ({})", r.scenario, r.mode);
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{CSS}</style></head><body>",
        esc(&title)
    );
    let verdict = if r.passed { "PASS" } else { "FAIL" };
    let _ = write!(
        h,
        "<header><h1>{}</h1><span class=\"verdict {}\">{verdict}</span></header>",
        esc(&title),
        verdict.to_lowercase()
    );
    if r.is_closed_loop() {
        let _ = write!(
            h,
            "<p class=\"warn\">{CLOSED_LOOP_LABEL}: latency is from the actual send time and hides queueing.</p>"
        );
    }
    if r.self_check.generator_saturated {
        let _ = write!(
            h,
            "<p class=\"warn\">GENERATOR SATURATED: its own delays are part of the latency figures and the achieved rate may be below the offered one. {}</p>",
            esc(&r.self_check.reasons.join("; "))
        );
    }
    let _ = write!(
        h,
        "<p class=\"sub\">target {} {} · {} devices · mix {} · payload {} · {:.1} s steady after {:.1} s warm-up and {:.1} s ramp · settled in {:.2} s</p>",
        esc(&r.target),
        esc(&r.durability.as_ref().map(|d| format!("(durability {d})")).unwrap_or_default()),
        r.devices,
        esc(&r.mix),
        esc(&r.size),
        r.duration_s,
        r.warmup_s,
        r.ramp_s,
        r.settle_s
    );
    h.push_str("<section class=\"cards\">");
    let offered = r.offered_per_s.map_or(CLOSED_LOOP_LABEL.to_string(), |o| {
        format!("{}/s", fmt_num(o))
    });
    for (k, v) in [
        ("offered", offered),
        ("sent", format!("{}/s", fmt_num(r.sent_per_s))),
        ("delivered", format!("{}/s", fmt_num(r.delivered_per_s))),
        ("p50", format!("{:.2} ms", ms(r.latency_us.p50))),
        ("p99", format!("{:.2} ms", ms(r.latency_us.p99))),
        ("p99.9", format!("{:.2} ms", ms(r.latency_us.p999))),
        ("lost", r.lost.to_string()),
        ("errors", r.errors.values().sum::<u64>().to_string()),
    ] {
        let _ = write!(
            h,
            "<div class=\"card\"><div class=\"k\">{k}</div><div class=\"v\">{}</div></div>",
            esc(&v)
        );
    }
    h.push_str("</section>");
    if !r.slo.is_empty() {
        h.push_str("<h2>Objectives and checks</h2><table><tr><th></th><th>objective</th><th>actual</th><th>kind</th></tr>");
        for s in &r.slo {
            let _ = write!(
                h,
                "<tr class=\"{}\"><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                if s.passed { "pass" } else { "fail" },
                if s.passed { "PASS" } else { "FAIL" },
                esc(&s.slo),
                s.actual
                    .map_or("n/a".to_string(), |a| format!("{} {}", fmt_num(a), s.unit)),
                if s.implicit { "check" } else { "slo" }
            );
        }
        h.push_str("</table>");
    }
    let _ = write!(h, "<h2>Latency</h2>{}", latency.svg());
    let _ = write!(h, "{}", spectrum_chart.svg());
    h.push_str(&latency_table(r));
    let _ = write!(
        h,
        "<h2>Throughput and errors</h2>{}{}",
        throughput.svg(),
        errors.svg()
    );
    if let Some(n) = node_chart {
        let _ = write!(h, "<h2>Node</h2>{n}");
    }
    h.push_str(&details(r));
    let _ = write!(
        h,
        "<script type=\"application/json\" id=\"hearth-data\">{data}</script></body></html>"
    );
    h
}

fn minmax(v: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    for x in v {
        if x > 0.0 {
            lo = lo.min(x);
        }
        hi = hi.max(x);
    }
    if !lo.is_finite() {
        lo = 0.01;
    }
    (lo, hi.max(lo))
}

fn latency_table(r: &Report) -> String {
    let mut rows: Vec<(String, Latency)> = vec![("delivery (online)".into(), r.latency_us)];
    for (k, l) in &r.latency_by_kind {
        rows.push((format!("  {k}"), *l));
    }
    rows.push(("accept (to ACCEPTED)".into(), r.accept_latency_us));
    if let Some(p) = r.probe_latency_us {
        rows.push(("probe".into(), p));
    }
    if let Some(o) = &r.offline {
        rows.push(("offline drain".into(), o.latency_us));
    }
    let ms = |us: u64| format!("{:.3}", us as f64 / 1e3);
    let mut h = String::from(
        "<table><tr><th>latency (ms)</th><th>n</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>",
    );
    for (k, l) in rows {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&k),
            l.count,
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.max)
        );
    }
    h.push_str("</table>");
    h
}

fn details(r: &Report) -> String {
    let mut rows: Vec<(String, String)> = vec![
        (
            "sent / accepted / delivered (measured)".into(),
            format!("{} / {} / {}", r.sent, r.accepted, r.delivered),
        ),
        (
            "all sends (warm-up included)".into(),
            r.total_sent.to_string(),
        ),
        ("lost".into(), r.lost.to_string()),
        ("duplicated".into(), r.duplicated.to_string()),
        (
            "of which without a reconnect".into(),
            r.unexpected_duplicates.to_string(),
        ),
        ("reordered".into(), r.reordered.to_string()),
        ("late sends (> 1 ms)".into(), r.late_sends.to_string()),
        ("unanswered".into(), r.unanswered.to_string()),
    ];
    if let (Some(g), Some(f)) = (&r.groups, &r.fanout) {
        rows.push((
            "groups".into(),
            format!(
                "{} groups of {}..={} members (mean {:.1})",
                g.count, g.min_size, g.max_size, g.mean_size
            ),
        ));
        rows.push((
            "group deliveries".into(),
            format!("{}/s", fmt_num(r.group_deliveries_per_s)),
        ));
        rows.push((
            "fan-out check".into(),
            format!(
                "{} messages, {} complete, {} incomplete; {} of {} pairs, {} missing, {} duplicates, {} unexpected",
                f.messages, f.complete, f.incomplete, f.received, f.expected, f.missing, f.duplicates, f.unexpected
            ),
        ));
        let c = &f.completion_us;
        rows.push((
            "fan-out completion (intended send to last member)".into(),
            format!(
                "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} messages",
                c.p50 as f64 / 1e3,
                c.p99 as f64 / 1e3,
                c.max as f64 / 1e3,
                c.count
            ),
        ));
    }
    if let Some(o) = &r.offline {
        rows.push((
            "offline devices".into(),
            format!(
                "{} came back and drained {} envelopes",
                o.devices, o.delivered
            ),
        ));
    }
    let c = &r.connections;
    rows.push((
        "connections".into(),
        format!(
            "{} online, setup {:.1} s, {} reconnects, {} failed attempts, {} source address(es)",
            c.online, c.setup_s, c.reconnects, c.connect_failures, c.source_ips
        ),
    ));
    if let Some(n) = &r.node {
        rows.push((
            "node".into(),
            format!(
                "{} connections, RSS {:.1} MiB, {} per connection{}",
                n.connections,
                n.rss_bytes as f64 / 1048576.0,
                n.rss_per_connection_bytes
                    .map_or("n/a".into(), |b| format!("{:.1} KiB", b as f64 / 1024.0)),
                if n.includes_generator {
                    " (embedded: includes the generator)"
                } else {
                    ""
                }
            ),
        ));
    }
    let sc = &r.self_check;
    rows.push((
        "self-check".into(),
        format!(
            "{}: scheduler lag p99 {:.2} ms, runtime lag p99 {:.2} ms, generator {:.2} cores, node {:.2} cores, machine {:.2} of {} cores busy",
            if sc.generator_saturated { "SATURATED" } else { "ok" },
            sc.scheduler_lag_p99_us as f64 / 1e3,
            sc.runtime_lag_p99_us as f64 / 1e3,
            sc.generator_cpu_cores,
            sc.node_cpu_cores,
            sc.machine_cpu_cores,
            sc.cores
        ),
    ));
    let errors = if r.errors.is_empty() {
        "none".to_string()
    } else {
        r.errors
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    rows.push(("errors".into(), errors));
    let mut h = String::from("<h2>Details</h2><table>");
    for (k, v) in rows {
        let _ = write!(h, "<tr><td>{}</td><td>{}</td></tr>", esc(&k), esc(&v));
    }
    h.push_str("</table>");
    h
}

const CSS: &str = "body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#111827;\
margin:24px auto;max-width:1140px;padding:0 16px}header{display:flex;align-items:center;gap:16px}\
h1{font-size:22px;margin:0}h2{font-size:17px;margin:28px 0 8px}.sub{color:#4b5563}\
.verdict{font-weight:700;padding:3px 12px;border-radius:6px;color:#fff}.verdict.pass{background:#16a34a}\
.verdict.fail{background:#dc2626}.warn{background:#fef2f2;border:1px solid #fecaca;padding:8px 12px;\
border-radius:6px;color:#991b1b}.cards{display:grid;grid-template-columns:repeat(8,1fr);gap:8px}\
.card{border:1px solid #e5e7eb;border-radius:8px;padding:8px 10px}.card .k{color:#6b7280;font-size:12px}\
.card .v{font-size:17px;font-weight:600}table{border-collapse:collapse;margin:8px 0}\
td,th{border-bottom:1px solid #e5e7eb;padding:4px 12px;text-align:left}th{color:#6b7280;font-weight:500}\
tr.pass td:first-child{color:#16a34a;font-weight:700}tr.fail td:first-child{color:#dc2626;font-weight:700}\
.chart{display:block;margin:6px 0 14px;max-width:100%;height:auto}.chart .title{font-weight:600;font-size:14px}\
.chart .tick{font-size:11px;fill:#4b5563}.chart .axis{font-size:12px;fill:#374151}\
.chart .legend{font-size:12px;fill:#374151}.chart .band{font-size:11px;fill:#6b7280}\
.chart .grid{stroke:#e5e7eb;stroke-width:1}.chart .frame{fill:none;stroke:#9ca3af}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_have_round_ticks() {
        let a = Axis::linear(0.0, 37.0);
        assert_eq!(a.ticks(), vec![0.0, 10.0, 20.0, 30.0, 40.0]);
        let l = Axis::log(0.3, 40.0);
        assert_eq!((l.min, l.max), (0.1, 100.0));
        assert_eq!(l.ticks()[..3], [0.1, 0.2, 0.5]);
        assert_eq!(fmt_num(25_000.0), "25k");
        assert_eq!(fmt_num(0.25), "0.25");
        assert_eq!(fmt_num(3.0), "3");
    }

    #[test]
    fn the_spectrum_stops_at_the_resolution_of_the_data() {
        let mut h = crate::stats::latency_histogram();
        for v in 1..=1000u64 {
            h.record(v).unwrap();
        }
        let s = spectrum(&h);
        assert_eq!(s[0].1, 0.0);
        assert_eq!(s.last().unwrap().2, h.max());
        // 1000 values: nothing finer than 99.9% but the max.
        assert!(s.iter().rev().skip(1).all(|p| p.1 <= 0.999 + 1e-12));
        assert!(s.windows(2).all(|w| w[0].2 <= w[1].2));
    }
}
