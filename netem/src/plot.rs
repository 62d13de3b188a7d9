//! A dependency-free SVG plot of one direction: capacity, offered and delivered rate on
//! top, one-way and queue delay below, one point per interval.

use std::fmt::Write;
use std::time::Duration;

use crate::stats::Interval;

const W: f64 = 900.0;
const PANEL_H: f64 = 220.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const GAP: f64 = 60.0;

fn polyline(out: &mut String, pts: &[(f64, f64)], color: &str, dash: bool) {
    if pts.is_empty() {
        return;
    }
    let mut d = String::new();
    for (x, y) in pts {
        let _ = write!(d, "{x:.1},{y:.1} ");
    }
    let _ = writeln!(
        out,
        r#"<polyline fill="none" stroke="{color}" stroke-width="1.5"{} points="{d}"/>"#,
        if dash {
            r#" stroke-dasharray="6,3""#
        } else {
            ""
        }
    );
}

fn axes(out: &mut String, y0: f64, label: &str, max: f64, t_max: f64) {
    let x1 = W - RIGHT;
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{y0}" width="{}" height="{PANEL_H}" fill="none" stroke="#888"/>"##,
        x1 - LEFT
    );
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{}" font-size="12">{label}</text>"#,
        y0 - 6.0
    );
    for k in 0..=4 {
        let v = max * k as f64 / 4.0;
        let y = y0 + PANEL_H - PANEL_H * k as f64 / 4.0;
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{:.1}" font-size="10" text-anchor="end">{v:.0}</text>"#,
            LEFT - 4.0,
            y + 3.0
        );
    }
    for k in 0..=5 {
        let t = t_max * k as f64 / 5.0;
        let x = LEFT + (x1 - LEFT) * k as f64 / 5.0;
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{:.1}" font-size="10" text-anchor="middle">{t:.0} s</text>"#,
            y0 + PANEL_H + 14.0
        );
    }
}

/// The SVG document for `intervals` of length `len`.
pub fn svg(title: &str, intervals: &[Interval], len: Duration) -> String {
    let t_max = intervals
        .last()
        .map(|iv| iv.t_s + len.as_secs_f64())
        .unwrap_or(1.0)
        .max(0.001);
    let rate_max = intervals
        .iter()
        .flat_map(|iv| {
            [
                iv.capacity_kbps.unwrap_or(0.0),
                iv.offered_kbps(len),
                iv.delivered_kbps(len),
            ]
        })
        .fold(1.0f64, f64::max)
        * 1.1;
    let delay_max = intervals
        .iter()
        .map(|iv| iv.owd_max_ms)
        .fold(1.0f64, f64::max)
        * 1.1;
    let h = TOP + 2.0 * PANEL_H + GAP + 40.0;
    let x = |t: f64| LEFT + (W - RIGHT - LEFT) * t / t_max;
    let y_rate = |v: f64| TOP + PANEL_H - PANEL_H * v / rate_max;
    let y_delay = |v: f64| TOP + PANEL_H + GAP + PANEL_H - PANEL_H * v / delay_max;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" font-family="sans-serif">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="22" font-size="15">{}</text>"#,
        escape(title)
    );
    axes(&mut out, TOP, "kbit/s", rate_max, t_max);
    axes(&mut out, TOP + PANEL_H + GAP, "ms", delay_max, t_max);
    let mid = |iv: &Interval| iv.t_s + len.as_secs_f64() / 2.0;
    let cap: Vec<_> = intervals
        .iter()
        .filter_map(|iv| iv.capacity_kbps.map(|c| (x(iv.t_s), y_rate(c))))
        .collect();
    polyline(&mut out, &cap, "#d62728", true);
    let offered: Vec<_> = intervals
        .iter()
        .map(|iv| (x(mid(iv)), y_rate(iv.offered_kbps(len))))
        .collect();
    polyline(&mut out, &offered, "#aaaaaa", false);
    let delivered: Vec<_> = intervals
        .iter()
        .map(|iv| (x(mid(iv)), y_rate(iv.delivered_kbps(len))))
        .collect();
    polyline(&mut out, &delivered, "#1f77b4", false);
    let owd: Vec<_> = intervals
        .iter()
        .filter(|iv| iv.delivered_pkts > 0)
        .map(|iv| (x(mid(iv)), y_delay(iv.owd_mean_ms)))
        .collect();
    polyline(&mut out, &owd, "#2ca02c", false);
    let q: Vec<_> = intervals
        .iter()
        .filter(|iv| iv.delivered_pkts > 0)
        .map(|iv| (x(mid(iv)), y_delay(iv.queue_mean_ms)))
        .collect();
    polyline(&mut out, &q, "#ff7f0e", false);
    let legend = [
        ("#d62728", "capacity"),
        ("#aaaaaa", "offered"),
        ("#1f77b4", "delivered"),
        ("#2ca02c", "one-way delay (mean)"),
        ("#ff7f0e", "queue delay (mean)"),
    ];
    for (k, (c, name)) in legend.iter().enumerate() {
        let lx = LEFT + 10.0 + k as f64 * 165.0;
        let ly = h - 12.0;
        let _ = writeln!(
            out,
            r#"<rect x="{lx}" y="{}" width="14" height="4" fill="{c}"/><text x="{}" y="{ly}" font-size="11">{name}</text>"#,
            ly - 6.0,
            lx + 18.0
        );
    }
    out.push_str("</svg>\n");
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_are_well_formed() {
        let ivs: Vec<Interval> = (0..10)
            .map(|i| Interval {
                t_s: i as f64 * 0.2,
                capacity_kbps: Some(1000.0),
                offered_bytes: 30_000,
                delivered_bytes: 25_000,
                delivered_pkts: 20,
                owd_mean_ms: 55.0,
                owd_max_ms: 70.0,
                queue_mean_ms: 5.0,
                ..Default::default()
            })
            .collect();
        let s = svg("a -> b <test>", &ivs, Duration::from_millis(200));
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<polyline").count(), 5);
        assert!(s.contains("a -&gt; b &lt;test&gt;"));
    }
}
