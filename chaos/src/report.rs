//! The HTML timeline of a run: the faults as bands over sessions connected,
//! deliveries/s and p99 latency, then each invariant's verdict. One self-contained file
//! (inline SVG, no scripts).

use std::fmt::Write as _;

use crate::run::RunReport;
use crate::schedule::Op;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const W: f64 = 900.0;
const H: f64 = 120.0;
const LEFT: f64 = 70.0;

/// One plot of `values` (seconds, value) with the fault bands behind it.
fn plot(
    title: &str,
    unit: &str,
    points: &[(f64, f64)],
    bands: &[(f64, f64, String)],
    span: f64,
) -> String {
    let max = points.iter().map(|p| p.1).fold(0.0_f64, f64::max).max(1e-9);
    let x = |t: f64| LEFT + (t / span).clamp(0.0, 1.0) * (W - LEFT - 10.0);
    let y = |v: f64| 10.0 + (1.0 - v / max) * (H - 30.0);
    let mut svg = format!(
        r#"<h3>{}</h3><svg width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{}">"#,
        esc(title),
        esc(title)
    );
    for (from, to, label) in bands {
        let _ = write!(
            svg,
            r##"<rect x="{:.1}" y="5" width="{:.1}" height="{:.1}" fill="#f4b6b6" opacity="0.6"><title>{}</title></rect>"##,
            x(*from),
            (x(*to) - x(*from)).max(2.0),
            H - 25.0,
            esc(label)
        );
    }
    let path: Vec<String> = points
        .iter()
        .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
        .collect();
    let _ = write!(
        svg,
        r##"<polyline fill="none" stroke="#1f5fa8" stroke-width="1.5" points="{}"/>"##,
        path.join(" ")
    );
    let _ = write!(
        svg,
        r##"<text x="4" y="16" font-size="11">{max:.0} {unit}</text><text x="4" y="{:.0}" font-size="11">0</text><text x="{:.0}" y="{:.0}" font-size="11">{span:.0} s</text></svg>"##,
        H - 20.0,
        W - 40.0,
        H - 4.0
    );
    svg
}

/// The whole page.
pub fn html(r: &RunReport) -> String {
    let span = r.timeline.iter().map(|s| s.at).fold(1.0_f64, f64::max);
    // A band from each fault to its revert (or to the end).
    let mut bands = Vec::new();
    for (i, step) in r.steps.iter().enumerate() {
        if matches!(step.op, Op::Restart | Op::Cont | Op::Heal) {
            continue;
        }
        let end = r.steps[i + 1..]
            .iter()
            .find(|s| s.fault == step.fault)
            .map_or(span, |s| s.at);
        bands.push((
            step.at,
            end,
            format!("{:?} {} at {:.1}s", step.op, step.node, step.at),
        ));
    }
    let series = |f: fn(&crate::run::Sample) -> f64| -> Vec<(f64, f64)> {
        r.timeline.iter().map(|s| (s.at, f(s))).collect()
    };
    let mut page = format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>concord-chaos: {name}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:960px}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}.pass{{color:#176b1a}}.fail{{color:#b00020;font-weight:bold}}</style></head><body>
<h1>{name}: <span class="{cls}">{verdict}</span></h1><p>{desc}</p><p>driver <b>{driver}</b>, seed <b>{seed}</b>, {nodes} nodes, {wall:.0} s; logs in <code>{dir}</code></p>"#,
        name = esc(&r.scenario),
        cls = if r.pass { "pass" } else { "fail" },
        verdict = if r.pass { "PASS" } else { "FAIL" },
        desc = esc(&r.description),
        driver = r.driver,
        seed = r.seed,
        nodes = r.nodes.len(),
        wall = r.wall_secs,
        dir = esc(&r.dir.display().to_string()),
    );
    page += &plot(
        "Sessions connected",
        "",
        &series(|s| s.connections as f64),
        &bands,
        span,
    );
    page += &plot(
        "Deliveries per second",
        "/s",
        &series(|s| s.deliveries_per_sec),
        &bands,
        span,
    );
    page += &plot("Latency p99", "ms", &series(|s| s.p99_ms), &bands, span);
    page += "<h2>Invariants</h2><table><tr><th>invariant</th><th>bound</th><th>observed</th><th>verdict</th></tr>";
    for v in &r.verdicts {
        let _ = write!(
            page,
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td class="{}">{}</td></tr>"#,
            esc(v.name),
            esc(&v.bound),
            esc(&v.observed),
            if v.pass { "pass" } else { "fail" },
            if v.pass { "pass" } else { "FAIL" }
        );
    }
    page += "</table><h2>Faults applied</h2><table><tr><th>at</th><th>op</th><th>node</th><th>result</th></tr>";
    for s in &r.steps {
        let _ = write!(
            page,
            "<tr><td>{:.1} s</td><td>{:?}</td><td>{}</td><td>{}</td></tr>",
            s.at,
            s.op,
            esc(&s.node),
            esc(s.error.as_deref().unwrap_or("applied"))
        );
    }
    page += "</table></body></html>\n";
    page
}
