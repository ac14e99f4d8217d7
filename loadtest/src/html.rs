//! The HTML report: one self-contained page (no CDN, no JavaScript) with the summary
//! table and three inline SVG line charts drawn from the report's `timeline`:
//! connections, deliveries per second, and latency p50/p99 over time.

use std::fmt::Write as _;

use crate::report::Report;

/// Renders `report` as a complete HTML document.
pub fn render(report: &Report) -> String {
    let mut page = String::with_capacity(16 * 1024);
    let title = format!("concord-loadtest: {}", report.target);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    );
    page.push_str(&summary_table(report));
    page.push_str(&peer_table(report));
    page.push_str(&server_table(report));

    let t: Vec<f64> = report.timeline.iter().map(|s| s.t_sec).collect();
    let series = |name: &'static str, color: &'static str, ys: Vec<f64>| Series {
        name,
        color,
        points: t.iter().copied().zip(ys).collect(),
    };
    let tl = &report.timeline;
    page.push_str("<h2>Over time</h2>\n<div class=\"charts\">\n");
    page.push_str(&line_chart(
        "Connections",
        "sessions",
        &[series(
            "connections",
            BLUE,
            tl.iter().map(|s| s.connections as f64).collect(),
        )],
    ));
    page.push_str(&line_chart(
        "Deliveries per second",
        "deliveries/s",
        &[series(
            "deliveries/s",
            GREEN,
            tl.iter().map(|s| s.deliveries_per_sec).collect(),
        )],
    ));
    page.push_str(&line_chart(
        "Latency percentiles",
        "ms",
        &[
            series("p50", BLUE, tl.iter().map(|s| s.p50_ms).collect()),
            series("p99", RED, tl.iter().map(|s| s.p99_ms).collect()),
        ],
    ));
    page.push_str("</div>\n");

    let config = serde_json::to_string_pretty(&report.config).unwrap_or_default();
    let _ = write!(
        page,
        "<h2>Configuration</h2>\n<pre>{}</pre>\n</body>\n</html>\n",
        escape(&config)
    );
    page
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin-bottom:1.5em}\
td,th{border:1px solid #ccc;padding:.3em .8em;text-align:left}\
td.n{text-align:right;font-variant-numeric:tabular-nums}\
.charts{display:flex;flex-wrap:wrap;gap:1em}\
pre{background:#f5f5f5;padding:1em}";

const BLUE: &str = "#1f77b4";
const GREEN: &str = "#2ca02c";
const RED: &str = "#d62728";

/// Concord next to each `--peer`, one row per target; empty without peers.
fn peer_table(r: &Report) -> String {
    if r.peers.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "<h2>Compared with peers (same load, same box)</h2>\n<table>\n<tr><th>target</th><th>deliveries/s</th><th>p50 ms</th><th>p99 ms</th><th>p999 ms</th><th>bytes/delivery</th><th>gaps</th><th>duplicates</th><th>errors</th></tr>\n",
    );
    for t in std::iter::once(r).chain(&r.peers) {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(&t.target),
            num(t.deliveries.per_sec),
            num(t.latency_ms.p50),
            num(t.latency_ms.p99),
            num(t.latency_ms.p999),
            num(t.bytes_received_per_delivery),
            t.gaps,
            t.duplicates,
            t.errors
        );
    }
    out.push_str("</table>\n");
    out
}

fn summary_table(r: &Report) -> String {
    let rows: [(&str, String); 19] = [
        (
            "connections.established",
            r.connections.established.to_string(),
        ),
        ("connections.failed", r.connections.failed.to_string()),
        ("connect_rate_per_sec", num(r.connect_rate_per_sec)),
        ("ready_latency_ms.p50", num(r.ready_latency_ms.p50)),
        ("ready_latency_ms.p99", num(r.ready_latency_ms.p99)),
        ("deliveries.total", r.deliveries.total.to_string()),
        ("deliveries.per_sec", num(r.deliveries.per_sec)),
        ("latency_ms.p50", num(r.latency_ms.p50)),
        ("latency_ms.p90", num(r.latency_ms.p90)),
        ("latency_ms.p99", num(r.latency_ms.p99)),
        ("latency_ms.p999", num(r.latency_ms.p999)),
        ("latency_ms.max", num(r.latency_ms.max)),
        (
            "bytes_received_per_delivery",
            num(r.bytes_received_per_delivery),
        ),
        ("gaps", r.gaps.to_string()),
        ("duplicates", r.duplicates.to_string()),
        ("reordered", r.reordered.to_string()),
        ("resumes.ok", r.resumes.ok.to_string()),
        ("resumes.failed", r.resumes.failed.to_string()),
        ("errors", r.errors.to_string()),
    ];
    let mut out =
        String::from("<h2>Summary</h2>\n<table>\n<tr><th>field</th><th>value</th></tr>\n");
    for (name, value) in rows {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"n\">{}</td></tr>",
            escape(name),
            escape(&value)
        );
    }
    out.push_str("</table>\n");
    out
}

fn server_table(r: &Report) -> String {
    if r.server.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "<h2>Server</h2>\n<table>\n<tr><th>node</th><th>rss_bytes</th><th>rss_bytes_per_session</th></tr>\n",
    );
    for n in &r.server {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(&n.node),
            n.rss_bytes,
            escape(&num(n.rss_bytes_per_session))
        );
    }
    out.push_str("</table>\n");
    out
}

/// A number for people: whole numbers without decimals, others with up to three.
fn num(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    if x.fract() == 0.0 && x.abs() < 1e15 {
        return format!("{x:.0}");
    }
    let s = format!("{x:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Escapes text for HTML element content and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One line of a chart.
#[derive(Debug)]
struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

// Chart geometry in SVG user units.
const WIDTH: f64 = 520.0;
const HEIGHT: f64 = 280.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 50.0;

/// An SVG line chart: axes, min/max labels on each, a polyline per series and a legend.
/// Non-finite points are skipped; with no points it says so instead of drawing lines.
fn line_chart(title: &str, y_label: &str, series: &[Series<'_>]) -> String {
    let finite = |&&(x, y): &&(f64, f64)| x.is_finite() && y.is_finite();
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().filter(finite).copied())
        .collect();
    let (x0, x1) = range(all.iter().map(|p| p.0), false);
    let (y0, y1) = range(all.iter().map(|p| p.1), true);
    let (px0, px1, py0, py1) = (LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP);
    let sx = |x: f64| px0 + (x - x0) / (x1 - x0) * (px1 - px0);
    let sy = |y: f64| py0 - (y - y0) / (y1 - y0) * (py0 - py1);

    let mut svg = String::with_capacity(2048);
    let _ = writeln!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{}\" font-family=\"sans-serif\" font-size=\"11\">",
        escape(title)
    );
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">{}</text>",
        WIDTH / 2.0,
        escape(title)
    );
    // Axes.
    let _ = writeln!(
        svg,
        "<path d=\"M{px0} {py1} L{px0} {py0} L{px1} {py0}\" fill=\"none\" stroke=\"#444\"/>"
    );
    // Min/max labels.
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
        px0 - 6.0,
        py0 + 4.0,
        escape(&num(y0)),
        px0 - 6.0,
        py1 + 4.0,
        escape(&num(y1))
    );
    let _ = writeln!(
        svg,
        "<text x=\"{px0}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n<text x=\"{px1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
        py0 + 16.0,
        escape(&num(x0)),
        py0 + 16.0,
        escape(&num(x1))
    );
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">t (s)</text>",
        (px0 + px1) / 2.0,
        py0 + 16.0
    );
    let _ = writeln!(
        svg,
        "<text x=\"14\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 14 {})\">{}</text>",
        (py0 + py1) / 2.0,
        (py0 + py1) / 2.0,
        escape(y_label)
    );
    if all.is_empty() {
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#888\">no samples</text>",
            (px0 + px1) / 2.0,
            (py0 + py1) / 2.0
        );
    }
    for s in series {
        let points: Vec<String> = s
            .points
            .iter()
            .filter(finite)
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        if points.is_empty() {
            continue;
        }
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"><title>{}</title></polyline>",
            escape(s.color),
            points.join(" "),
            escape(s.name)
        );
    }
    // Legend, along the bottom.
    for (i, s) in series.iter().enumerate() {
        let x = px0 + i as f64 * 110.0;
        let y = HEIGHT - 12.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{x}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"3\"/><text x=\"{}\" y=\"{y}\">{}</text>",
            y - 4.0,
            x + 18.0,
            y - 4.0,
            escape(s.color),
            x + 24.0,
            escape(s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The span of `values`, widened so it is never empty; from zero when `from_zero` and all
/// values are positive (counts and rates read better against a zero baseline).
fn range(values: impl Iterator<Item = f64>, from_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    if from_zero && lo > 0.0 {
        lo = 0.0;
    }
    if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
        hi = lo + 1.0;
    }
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;

    #[test]
    fn page_has_three_charts_and_the_summary_numbers() {
        let r = sample_report();
        let page = render(&r);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert_eq!(page.matches("<svg").count(), 3);
        assert_eq!(page.matches("</svg>").count(), 3);
        // One line per series: connections, deliveries/s, p50 and p99.
        assert_eq!(page.matches("<polyline").count(), 4);
        for n in [
            "99990",
            "4998.5",
            "1234567",
            "20576.25",
            "1.75",
            "4.5",
            "12.125",
            "33",
            "61.875",
            "187.5",
            "3.25",
            "41.5",
            "pid:4242",
            "1610612736",
            "16106.25",
        ] {
            assert!(page.contains(&format!(">{n}<")), "page lacks {n}");
        }
        assert!(!page.contains("http://cdn") && !page.contains("<script"));
    }

    #[test]
    fn peers_get_a_comparison_row_each() {
        let mut r = sample_report();
        assert!(!render(&r).contains("Compared with peers"));
        let mut redis = sample_report();
        redis.target = "redis<1>".into();
        r.peers.push(redis);
        let page = render(&r);
        assert!(page.contains("Compared with peers"));
        assert!(page.contains("<td>redis&lt;1&gt;</td>"));
    }

    #[test]
    fn empty_timeline_renders() {
        let mut r = sample_report();
        r.timeline.clear();
        r.server.clear();
        let page = render(&r);
        assert_eq!(page.matches("<svg").count(), 3);
        assert_eq!(page.matches("no samples").count(), 3);
        assert!(!page.contains("NaN"));
    }

    #[test]
    fn single_and_odd_samples_do_not_break_the_scale() {
        let mut r = sample_report();
        r.timeline.truncate(1);
        r.timeline[0].p99_ms = f64::NAN;
        let page = render(&r);
        assert_eq!(page.matches("<svg").count(), 3);
        assert!(!page.contains("NaN"));
    }

    #[test]
    fn text_is_escaped() {
        let mut r = sample_report();
        r.target = "<script>alert('x')</script>".into();
        r.server[0].node = "a&b".into();
        r.config = serde_json::json!({"k": "</pre><b>"});
        let page = render(&r);
        assert!(!page.contains("<script>"));
        assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(page.contains(">a&amp;b<"));
        assert!(!page.contains("</pre><b>"));
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(3.0), "3");
        assert_eq!(num(12.125), "12.125");
        assert_eq!(num(0.5), "0.5");
        assert_eq!(num(1.23456), "1.235");
        assert_eq!(range([5.0, 5.0].into_iter(), false), (5.0, 6.0));
        assert_eq!(range(std::iter::empty(), true), (0.0, 1.0));
        assert_eq!(range([2.0, 4.0].into_iter(), true), (0.0, 4.0));
    }
}
