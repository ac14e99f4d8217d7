//! The fault schedule, sans IO: a scenario's faults become timed [`Step`]s (each fault and
//! its revert), and [`explore`] draws a whole schedule from a seed. The same seed always
//! gives the same schedule, so a failing exploration is replayed by its seed.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};

use crate::scenario::{Action, DriverKind, Dur, Fault, Target};

/// What a step does to its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// SIGKILL.
    Kill,
    /// Start the node again (same id and addresses).
    Restart,
    /// SIGSTOP.
    Stop,
    /// SIGCONT.
    Cont,
    /// Drain through the admin port and wait for the exit.
    Drain,
    /// Cut it off from the other nodes (both ways, or only inbound).
    Partition {
        /// Only what it receives from them.
        inbound_only: bool,
    },
    /// Undo a partition, loss or latency.
    Heal,
    /// Drop this percentage of received packets.
    Loss(u8),
    /// Delay sent packets by this many milliseconds.
    Latency(u32),
}

impl Op {
    /// Whether the node leaves the ring the others should agree on.
    pub fn takes_node_out(self) -> bool {
        matches!(self, Op::Kill | Op::Stop | Op::Drain | Op::Partition { .. })
    }

    /// Whether it brings a node back into the ring.
    pub fn brings_node_back(self) -> bool {
        matches!(self, Op::Restart | Op::Cont | Op::Heal)
    }
}

/// One timed step of a schedule.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Step {
    /// When, from the start of publishing.
    pub at: Duration,
    /// The fault (index into the scenario's faults) it belongs to.
    pub fault: usize,
    /// What it does.
    pub op: Op,
}

/// Every step of `faults`, in time order (a fault's revert after the fault itself).
pub fn expand(faults: &[Fault]) -> Vec<Step> {
    let mut steps = Vec::new();
    for (i, f) in faults.iter().enumerate() {
        let (first, revert) = match f.action {
            Action::Kill => (Op::Kill, Op::Restart),
            Action::Stop => (Op::Stop, Op::Cont),
            Action::Drain => (Op::Drain, Op::Restart),
            Action::Partition => (
                Op::Partition {
                    inbound_only: false,
                },
                Op::Heal,
            ),
            Action::PartitionInbound => (Op::Partition { inbound_only: true }, Op::Heal),
            Action::Loss => (Op::Loss(f.percent.unwrap_or(5)), Op::Heal),
            Action::Latency => (
                Op::Latency(
                    f.delay
                        .map_or(50, |d| u32::try_from(d.0.as_millis()).unwrap_or(u32::MAX)),
                ),
                Op::Heal,
            ),
        };
        steps.push(Step {
            at: f.at.0,
            fault: i,
            op: first,
        });
        if let Some(d) = f.duration {
            steps.push(Step {
                at: f.at.0 + d.0,
                fault: i,
                op: revert,
            });
        }
    }
    // Stable: equal times keep the scenario's order (a fault before its own revert).
    steps.sort_by_key(|s| s.at);
    steps
}

/// A random schedule for `duration` of load on `nodes` nodes, drawn from `seed`: one
/// fault at a time, each reverted before the next begins (so at most one node is out and
/// every invariant stays strict), on explicit node ids (so the schedule does not depend
/// on what the cluster does).
pub fn explore(seed: u64, duration: Duration, nodes: u8, driver: DriverKind) -> Vec<Fault> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let actions: Vec<Action> = [
        Action::Kill,
        Action::Stop,
        Action::Drain,
        Action::Partition,
        Action::PartitionInbound,
        Action::Loss,
    ]
    .into_iter()
    .filter(|a| driver.supports(*a))
    .collect();
    let mut faults = Vec::new();
    let mut t = Duration::from_secs(rng.random_range(3..=6));
    loop {
        let action = actions[rng.random_range(0..actions.len())];
        // Long enough for the failure detector (suspect timeout 2 s) to act.
        let hold = Duration::from_millis(rng.random_range(3_000..=8_000));
        // Quiet time after the revert: the node rejoins, sessions settle.
        let quiet = Duration::from_millis(rng.random_range(6_000..=10_000));
        if t + hold + quiet > duration {
            break;
        }
        let node = rng.random_range(1..=nodes.max(1));
        faults.push(Fault {
            at: Dur(t),
            action,
            target: Target::Node(format!("n{node}")),
            duration: Some(Dur(hold)),
            percent: (action == Action::Loss).then(|| rng.random_range(5..=30)),
            delay: None,
        });
        t += hold + quiet;
    }
    faults
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn fault(at: u64, action: Action, duration: Option<u64>) -> Fault {
        Fault {
            at: Dur(Duration::from_secs(at)),
            action,
            target: Target::Node("n1".into()),
            duration: duration.map(|d| Dur(Duration::from_secs(d))),
            percent: None,
            delay: None,
        }
    }

    #[test]
    fn faults_expand_to_steps_in_time_order_with_their_reverts() {
        let steps = expand(&[
            fault(10, Action::Stop, Some(3)),
            fault(2, Action::Kill, Some(20)),
            fault(12, Action::Drain, None),
        ]);
        let got: Vec<(u64, usize, Op)> = steps
            .iter()
            .map(|s| (s.at.as_secs(), s.fault, s.op))
            .collect();
        assert_eq!(
            got,
            vec![
                (2, 1, Op::Kill),
                (10, 0, Op::Stop),
                (12, 2, Op::Drain),
                (13, 0, Op::Cont),
                (22, 1, Op::Restart),
            ]
        );
    }

    #[test]
    fn exploring_is_a_function_of_the_seed() {
        let d = Duration::from_secs(300);
        let a = explore(7, d, 3, DriverKind::Netns);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&explore(7, d, 3, DriverKind::Netns)).unwrap()
        );
        assert_ne!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&explore(8, d, 3, DriverKind::Netns)).unwrap()
        );
        assert!(a.len() >= 10, "{} faults in 5 minutes", a.len());
    }

    #[test]
    fn explored_faults_never_overlap_and_fit_the_driver_and_the_run() {
        for seed in 0..200 {
            for driver in [DriverKind::Local, DriverKind::Docker, DriverKind::Netns] {
                let d = Duration::from_secs(120);
                let faults = explore(seed, d, 3, driver);
                let mut free_at = Duration::ZERO;
                for f in &faults {
                    assert!(
                        driver.supports(f.action),
                        "{seed}: {:?} on {driver:?}",
                        f.action
                    );
                    assert!(f.at.0 >= free_at, "seed {seed}: overlapping faults");
                    let end = f.at.0 + f.duration.unwrap().0;
                    assert!(end < d, "seed {seed}: a fault outlives the run");
                    free_at = end;
                    assert!(
                        matches!(&f.target, Target::Node(id) if ["n1", "n2", "n3"].contains(&id.as_str()))
                    );
                }
            }
        }
    }
}
