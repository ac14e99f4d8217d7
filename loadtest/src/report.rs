//! The JSON report schema and the machine-readable line printed once per interval.
//!
//! Field names are a contract: `--assert` bounds, dashboards and `BENCHMARKS.md` read
//! them by dotted path. [`REQUIRED_PATHS`] lists every one, and a test walks a serialised
//! report for each, so the schema cannot drift silently.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::track::LatencyMs;

/// Errors reading a report or an interval line back.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The text is not a report (or line) of this schema. Nothing changed; permanent for
    /// this text.
    #[error("not a concord-loadtest report: {0}")]
    Parse(#[from] serde_json::Error),
}

/// Every dotted path a report must contain.
pub const REQUIRED_PATHS: &[&str] = &[
    "target",
    "connections.established",
    "connections.failed",
    "connect_rate_per_sec",
    "ready_latency_ms.p50",
    "ready_latency_ms.p99",
    "deliveries.total",
    "deliveries.per_sec",
    "latency_ms.p50",
    "latency_ms.p90",
    "latency_ms.p99",
    "latency_ms.p999",
    "latency_ms.max",
    "bytes_received_per_delivery",
    "gaps",
    "duplicates",
    "reordered",
    "resumes.ok",
    "resumes.failed",
    "errors",
    "published",
    "server",
    "config",
    "timeline",
];

/// Fields every `server` entry has.
pub const SERVER_FIELDS: &[&str] = &["node", "rss_bytes", "rss_bytes_per_session"];

/// Fields every `timeline` sample (and every interval line) has.
pub const TIMELINE_FIELDS: &[&str] = &[
    "t_sec",
    "connections",
    "deliveries_per_sec",
    "p50_ms",
    "p99_ms",
    "errors",
    "resumes",
];

/// The result of one run against one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// What was measured: `concord`, `redis` or `nats`.
    pub target: String,
    /// Sessions opened.
    pub connections: Connections,
    /// Sessions established per second of ramp.
    pub connect_rate_per_sec: f64,
    /// Connect-to-READY time.
    pub ready_latency_ms: ReadyLatency,
    /// Published events received by sessions.
    pub deliveries: Deliveries,
    /// Publish-to-receive latency.
    pub latency_ms: LatencyMs,
    /// Wire bytes received divided by deliveries (compression shows here).
    pub bytes_received_per_delivery: f64,
    /// Events that never arrived (publisher sequence) plus `s` discontinuities.
    pub gaps: u64,
    /// Events received more than once.
    pub duplicates: u64,
    /// Events of a guild received after a later one of the same guild.
    #[serde(default)]
    pub reordered: u64,
    /// Resumes attempted.
    pub resumes: Resumes,
    /// Protocol, decode, publish and zombie-connection errors.
    pub errors: u64,
    /// Events the API (or the peer) accepted.
    #[serde(default)]
    pub published: u64,
    /// Server memory, one entry per node.
    pub server: Vec<ServerNode>,
    /// The options the run used, echoed back.
    pub config: Value,
    /// One sample per interval.
    pub timeline: Vec<TimelineSample>,
    /// The same load through each `--peer` (Redis, NATS), in the same run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<Report>,
}

/// `connections.*`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connections {
    /// Sessions that reached the gateway at least once.
    pub established: u64,
    /// Sessions that never did.
    pub failed: u64,
}

/// `ready_latency_ms.*`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ReadyLatency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// `deliveries.*`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Deliveries {
    /// Published events received, summed over sessions.
    pub total: u64,
    /// `total` over the publishing window.
    pub per_sec: f64,
}

/// `resumes.*`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resumes {
    /// Answered with RESUMED.
    pub ok: u64,
    /// Answered with an invalid session.
    pub failed: u64,
}

/// One node's memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerNode {
    /// The node: a `/metrics` URL or `pid:N`.
    pub node: String,
    /// Resident set size.
    pub rss_bytes: u64,
    /// `rss_bytes` over the sessions this node held.
    pub rss_bytes_per_session: f64,
}

/// One interval of the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TimelineSample {
    /// Seconds since the run started.
    pub t_sec: f64,
    /// Sessions connected at the end of the interval.
    pub connections: u64,
    /// Deliveries in the interval, per second.
    pub deliveries_per_sec: f64,
    /// Median latency in the interval.
    pub p50_ms: f64,
    /// 99th-percentile latency in the interval.
    pub p99_ms: f64,
    /// Errors so far.
    pub errors: u64,
    /// Resumes so far.
    pub resumes: u64,
}

impl Report {
    /// The report as indented JSON.
    pub fn to_json_pretty(&self) -> String {
        match serde_json::to_string_pretty(self) {
            Ok(s) => s,
            // Only maps with non-string keys fail to serialise; this schema has none, and
            // `config` is a `Value`, whose keys are strings.
            Err(e) => format!("{{\"error\": {:?}}}", e.to_string()),
        }
    }

    /// Reads a report back (from a file or a worker process).
    pub fn from_json(text: &str) -> Result<Report, ReportError> {
        Ok(serde_json::from_str(text)?)
    }
}

/// The machine-readable progress line for stderr when it is not a TTY: one JSON object per
/// line with the same fields as a [`TimelineSample`]. `Display` writes it without a newline.
#[derive(Debug, Clone, Copy)]
pub struct IntervalLine<'a>(pub &'a TimelineSample);

impl std::fmt::Display for IntervalLine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Compact JSON never contains a raw newline, so one sample stays one line.
        let text = serde_json::to_string(self.0).map_err(|_| std::fmt::Error)?;
        f.write_str(&text)
    }
}

impl IntervalLine<'_> {
    /// Reads a line written by `Display` back into a sample.
    pub fn parse(line: &str) -> Result<TimelineSample, ReportError> {
        Ok(serde_json::from_str(line.trim())?)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_report() -> Report {
        Report {
            target: "concord".into(),
            connections: Connections {
                established: 99_990,
                failed: 10,
            },
            connect_rate_per_sec: 4_998.5,
            ready_latency_ms: ReadyLatency {
                p50: 3.25,
                p99: 41.5,
            },
            deliveries: Deliveries {
                total: 1_234_567,
                per_sec: 20_576.25,
            },
            latency_ms: LatencyMs {
                p50: 1.75,
                p90: 4.5,
                p99: 12.125,
                p999: 33.0,
                max: 61.875,
            },
            bytes_received_per_delivery: 187.5,
            gaps: 0,
            duplicates: 0,
            reordered: 0,
            resumes: Resumes { ok: 7, failed: 1 },
            errors: 3,
            published: 60_000,
            server: vec![ServerNode {
                node: "pid:4242".into(),
                rss_bytes: 1_610_612_736,
                rss_bytes_per_session: 16_106.25,
            }],
            config: serde_json::json!({"connections": 100_000, "compress": "zstd-stream"}),
            timeline: (0..5u32)
                .map(|i| TimelineSample {
                    t_sec: f64::from(i),
                    connections: u64::from(i) * 20_000,
                    deliveries_per_sec: f64::from(i) * 1000.0,
                    p50_ms: 1.5,
                    p99_ms: 9.5 + f64::from(i),
                    errors: 0,
                    resumes: u64::from(i / 2),
                })
                .collect(),
            peers: Vec::new(),
        }
    }

    fn walk<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
        path.split('.').try_fold(v, |v, key| v.get(key))
    }

    #[test]
    fn every_required_path_is_present() {
        let v: Value = serde_json::from_str(&sample_report().to_json_pretty()).unwrap();
        for path in REQUIRED_PATHS {
            assert!(walk(&v, path).is_some(), "report lacks {path}");
        }
        let server = v["server"].as_array().unwrap();
        assert!(!server.is_empty());
        for field in SERVER_FIELDS {
            assert!(server[0].get(field).is_some(), "server entry lacks {field}");
        }
        for field in TIMELINE_FIELDS {
            assert!(
                v["timeline"][0].get(field).is_some(),
                "sample lacks {field}"
            );
        }
        assert_eq!(v["target"], "concord");
        assert_eq!(v["latency_ms"]["p999"], 33.0);
        assert_eq!(v["server"][0]["node"], "pid:4242");
    }

    #[test]
    fn no_field_is_outside_the_schema() {
        // The reverse direction: every leaf of the report is listed, so adding a field
        // means listing (and documenting) it.
        let v: Value = serde_json::to_value(sample_report()).unwrap();
        let Value::Object(top) = &v else {
            panic!("report is not an object")
        };
        for (key, value) in top {
            match value {
                Value::Object(inner) if key != "config" => {
                    for sub in inner.keys() {
                        let path = format!("{key}.{sub}");
                        assert!(REQUIRED_PATHS.contains(&path.as_str()), "unlisted {path}");
                    }
                }
                _ => assert!(REQUIRED_PATHS.contains(&key.as_str()), "unlisted {key}"),
            }
        }
        let server: Vec<&str> = v["server"][0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(server.len(), SERVER_FIELDS.len());
        let sample: Vec<&str> = v["timeline"][0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(sample.len(), TIMELINE_FIELDS.len());
    }

    #[test]
    fn report_round_trips() {
        let r = sample_report();
        assert_eq!(Report::from_json(&r.to_json_pretty()).unwrap(), r);
        assert!(Report::from_json("{\"gaps\": 0}").is_err());
    }

    #[test]
    fn interval_line_is_one_json_line_with_sample_fields() {
        let r = sample_report();
        let s = &r.timeline[3];
        let line = IntervalLine(s).to_string();
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        for field in TIMELINE_FIELDS {
            assert!(v.get(field).is_some(), "line lacks {field}");
        }
        assert_eq!(v.as_object().unwrap().len(), TIMELINE_FIELDS.len());
        assert_eq!(IntervalLine::parse(&format!("{line}\n")).unwrap(), *s);
    }
}
