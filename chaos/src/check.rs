//! The checker, sans IO: what the run observed against the scenario's [`Invariants`].
//! Event invariants come from what the clients saw (the load tester's report); ring
//! agreement from the nodes' `/cluster`; memory from their `/metrics`.

use std::time::Duration;

use crate::scenario::Invariants;

/// What one run observed.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Observed {
    /// Acknowledged events some subscribed client never received (the load tester's gaps).
    pub lost: u64,
    /// Events received twice.
    pub duplicates: u64,
    /// Events received after a later one of their guild.
    pub reordered: u64,
    /// Resumes that failed.
    pub resume_failures: u64,
    /// Sessions that could not even identify.
    pub connections_failed: u64,
    /// Per fault step that took a node out: how long until every session was connected
    /// again (`None`: never, within the run).
    pub recoveries: Vec<Timed>,
    /// Per step that changed membership: how long until the nodes that should be in
    /// agreed on a ring of exactly them (`None`: not within the wait).
    pub convergences: Vec<Timed>,
    /// Per node that ran the whole time: RSS when the load began and at the end.
    pub memory: Vec<Memory>,
    /// Whether the load tester finished and reported.
    pub load_finished: bool,
    /// `concord_resumes_total` by outcome, summed over the nodes at the end (for the
    /// report; the verdicts come from the clients).
    pub resume_outcomes: std::collections::BTreeMap<String, u64>,
    /// Each node's non-zero `concord_peer_*_total` counters at the end (for the report).
    pub node_counters: std::collections::BTreeMap<String, std::collections::BTreeMap<String, f64>>,
}

/// A measured time after one step.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Timed {
    /// What it is after (e.g. `kill n2 at 6s`).
    pub after: String,
    /// Seconds, if it happened.
    pub secs: Option<f64>,
}

/// One node's memory over the run.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Memory {
    /// The node.
    pub node: String,
    /// RSS bytes when the load began.
    pub first: u64,
    /// RSS bytes at the end.
    pub last: u64,
}

/// One invariant's verdict.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Verdict {
    /// The invariant.
    pub name: &'static str,
    /// The bound, as written.
    pub bound: String,
    /// What was seen.
    pub observed: String,
    /// Whether it holds.
    pub pass: bool,
}

fn count(name: &'static str, seen: u64, max: u64) -> Verdict {
    Verdict {
        name,
        bound: format!("<= {max}"),
        observed: seen.to_string(),
        pass: seen <= max,
    }
}

fn within(name: &'static str, timed: &[Timed], bound: Duration) -> Verdict {
    let worst = timed
        .iter()
        .map(|t| t.secs.unwrap_or(f64::INFINITY))
        .fold(0.0_f64, f64::max);
    let missing: Vec<&str> = timed
        .iter()
        .filter(|t| t.secs.is_none_or(|s| s > bound.as_secs_f64()))
        .map(|t| t.after.as_str())
        .collect();
    Verdict {
        name,
        bound: format!("<= {:.1} s after each fault", bound.as_secs_f64()),
        observed: if timed.is_empty() {
            "no fault to measure".into()
        } else if missing.is_empty() {
            format!("worst {worst:.2} s over {}", timed.len())
        } else {
            format!("over the bound after: {}", missing.join(", "))
        },
        pass: missing.is_empty(),
    }
}

/// Every invariant's verdict, in a fixed order.
pub fn check(inv: &Invariants, seen: &Observed) -> Vec<Verdict> {
    let mut v = vec![
        Verdict {
            name: "load finished",
            bound: "the load tester reports".into(),
            observed: if seen.load_finished {
                "yes"
            } else {
                "no report"
            }
            .into(),
            pass: seen.load_finished,
        },
        count("acknowledged events lost", seen.lost, inv.lost),
        count("duplicates", seen.duplicates, inv.duplicates),
        count("out of order", seen.reordered, inv.reordered),
        count(
            "failed resumes and identifies",
            seen.resume_failures + seen.connections_failed,
            inv.resume_failures,
        ),
        within("sessions back", &seen.recoveries, inv.resume_within.0),
        within("ring agreement", &seen.convergences, inv.convergence.0),
    ];
    let growth = seen
        .memory
        .iter()
        .filter(|m| m.first > 0)
        .map(|m| (m.node.as_str(), m.last as f64 / m.first as f64))
        .fold(None::<(&str, f64)>, |worst, (n, g)| match worst {
            Some((_, w)) if w >= g => worst,
            _ => Some((n, g)),
        });
    v.push(Verdict {
        name: "memory growth",
        bound: format!("<= {:.2}x", inv.memory_growth),
        observed: growth.map_or_else(
            || "no node ran throughout".into(),
            |(n, g)| format!("{g:.2}x ({n})"),
        ),
        pass: growth.is_none_or(|(_, g)| g <= inv.memory_growth),
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timed(after: &str, secs: Option<f64>) -> Timed {
        Timed {
            after: after.into(),
            secs,
        }
    }

    #[test]
    fn a_clean_run_passes_everything() {
        let seen = Observed {
            recoveries: vec![timed("kill n2 at 5s", Some(3.1))],
            convergences: vec![
                timed("kill n2 at 5s", Some(2.9)),
                timed("restart n2 at 13s", Some(0.4)),
            ],
            memory: vec![Memory {
                node: "n1".into(),
                first: 100,
                last: 150,
            }],
            load_finished: true,
            ..Observed::default()
        };
        let v = check(&Invariants::default(), &seen);
        assert!(v.iter().all(|v| v.pass), "{v:#?}");
        assert_eq!(v[6].observed, "worst 2.90 s over 2");
    }

    #[test]
    fn each_broken_invariant_fails_alone() {
        let ok = Observed {
            load_finished: true,
            ..Observed::default()
        };
        let cases: Vec<(Observed, &str)> = vec![
            (
                Observed {
                    lost: 1,
                    ..ok.clone()
                },
                "acknowledged events lost",
            ),
            (
                Observed {
                    duplicates: 2,
                    ..ok.clone()
                },
                "duplicates",
            ),
            (
                Observed {
                    reordered: 1,
                    ..ok.clone()
                },
                "out of order",
            ),
            (
                Observed {
                    connections_failed: 1,
                    ..ok.clone()
                },
                "failed resumes and identifies",
            ),
            (
                Observed {
                    recoveries: vec![timed("kill n1 at 2s", None)],
                    ..ok.clone()
                },
                "sessions back",
            ),
            (
                Observed {
                    convergences: vec![timed("stop n3 at 2s", Some(9.0))],
                    ..ok.clone()
                },
                "ring agreement",
            ),
            (
                Observed {
                    memory: vec![Memory {
                        node: "n2".into(),
                        first: 100,
                        last: 300,
                    }],
                    ..ok.clone()
                },
                "memory growth",
            ),
            (Observed::default(), "load finished"),
        ];
        for (seen, name) in cases {
            let failed: Vec<&str> = check(&Invariants::default(), &seen)
                .iter()
                .filter(|v| !v.pass)
                .map(|v| v.name)
                .collect();
            assert_eq!(failed, vec![name]);
        }
    }
}
