//! Scenario files: the cluster, the load, the faults with their times and targets, and
//! the invariants with their bounds. TOML; unknown keys are refused.
//!
//! ```toml
//! name = "kill-session-host"
//! description = "SIGKILL the node hosting the most sessions, restart it 8 s later"
//!
//! [cluster]
//! driver = "local"          # local | netns | docker
//! nodes = 3
//! serve-args = ["--heartbeat-interval", "1s"]
//!
//! [load]
//! duration = "20s"
//! args = ["--connections", "300", "--publish-rate", "200/s"]
//!
//! [[fault]]
//! at = "6s"                 # after the load starts publishing
//! action = "kill"           # then restart after `for`
//! target = "session-host"
//! for = "8s"
//!
//! [invariants]
//! convergence = "6.2s"
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// A duration written `250ms`, `5s` or `2m` (a bare number is seconds; `6.2s` works).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

/// The text is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: expected e.g. 250ms, 5s, 6.2s, 2m")]
pub struct InvalidDur(String);

impl FromStr for Dur {
    type Err = InvalidDur;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: f64 = num.parse().map_err(|_| InvalidDur(s.into()))?;
        let secs = match unit {
            "ms" => n / 1000.0,
            "" | "s" => n,
            "m" => n * 60.0,
            _ => return Err(InvalidDur(s.into())),
        };
        Duration::try_from_secs_f64(secs)
            .map(Dur)
            .map_err(|_| InvalidDur(s.into()))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Where the nodes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DriverKind {
    /// Node processes on loopback that the tool starts.
    #[default]
    Local,
    /// Each node in its own network namespace, joined by veth pairs to a bridge in a
    /// namespace of the tool's own (root only): partitions and loss are real.
    Netns,
    /// Containers of the `concord` image on a private Docker network.
    Docker,
}

impl DriverKind {
    /// Whether this driver can apply `action`.
    pub fn supports(self, action: Action) -> bool {
        match action {
            Action::Kill | Action::Stop | Action::Drain => true,
            Action::Partition => matches!(self, DriverKind::Netns | DriverKind::Docker),
            Action::PartitionInbound | Action::Loss | Action::Latency => self == DriverKind::Netns,
        }
    }

    /// The name in scenario files.
    pub fn as_str(self) -> &'static str {
        match self {
            DriverKind::Local => "local",
            DriverKind::Netns => "netns",
            DriverKind::Docker => "docker",
        }
    }
}

/// `[cluster]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterSpec {
    /// The driver (the command line may override it).
    pub driver: DriverKind,
    /// How many nodes (n1..nN).
    pub nodes: u8,
    /// More `concord serve` flags for every node.
    pub serve_args: Vec<String>,
    /// The image the `docker` driver runs.
    pub image: String,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            driver: DriverKind::Local,
            nodes: 3,
            serve_args: Vec::new(),
            image: "concord:latest".into(),
        }
    }
}

/// `[load]`: a `concord-loadtest run` against every node.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct LoadSpec {
    /// How long it publishes; fault times count from its start.
    pub duration: Dur,
    /// More `concord-loadtest run` flags (not `--targets`, `--api`, `--duration`,
    /// `--report`: the tool sets those).
    pub args: Vec<String>,
    /// The nodes whose APIs take the publishes (`["n2"]`) [default: every node].
    pub api_nodes: Vec<String>,
}

impl Default for LoadSpec {
    fn default() -> Self {
        LoadSpec {
            duration: Dur(Duration::from_secs(20)),
            args: Vec::new(),
            api_nodes: Vec::new(),
        }
    }
}

/// What a fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// SIGKILL; with `for`, start it again (same id, same addresses) after that long.
    Kill,
    /// SIGSTOP (a gray failure); SIGCONT after `for`.
    Stop,
    /// `POST /admin/drain`, wait for the node to exit; with `for`, start it again.
    Drain,
    /// Cut the node off from the other nodes both ways (clients still reach it); heal
    /// after `for`.
    Partition,
    /// The node hears nothing from the other nodes but can still send to them.
    PartitionInbound,
    /// Drop `percent` % of the packets the node receives.
    Loss,
    /// Delay every packet the node sends by `delay` (tc netem).
    Latency,
}

impl Action {
    /// The name in scenario files.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Kill => "kill",
            Action::Stop => "stop",
            Action::Drain => "drain",
            Action::Partition => "partition",
            Action::PartitionInbound => "partition-inbound",
            Action::Loss => "loss",
            Action::Latency => "latency",
        }
    }
}

/// Which node a fault hits, decided when it starts.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(into = "String")]
pub enum Target {
    /// A node by id (`n2`).
    Node(String),
    /// The ring owner of the load's busiest guild (the load tester's first guild).
    BusiestGuildOwner,
    /// The node hosting the most sessions.
    SessionHost,
    /// A live node drawn from the run's seed.
    Random,
}

impl From<Target> for String {
    fn from(t: Target) -> String {
        match t {
            Target::Node(id) => id,
            Target::BusiestGuildOwner => "busiest-guild-owner".into(),
            Target::SessionHost => "session-host".into(),
            Target::Random => "random".into(),
        }
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "busiest-guild-owner" => Target::BusiestGuildOwner,
            "session-host" => Target::SessionHost,
            "random" => Target::Random,
            _ => Target::Node(s),
        })
    }
}

/// One `[[fault]]`.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Fault {
    /// When, from the start of publishing.
    #[serde(serialize_with = "ser_dur")]
    pub at: Dur,
    /// What.
    pub action: Action,
    /// Whom.
    pub target: Target,
    /// How long until it is reverted (restart, SIGCONT, heal, clear); none: never, for
    /// `kill` and `drain` (the node stays gone).
    #[serde(default, rename = "for", serialize_with = "ser_opt_dur")]
    pub duration: Option<Dur>,
    /// `loss`: the percentage of packets dropped.
    #[serde(default)]
    pub percent: Option<u8>,
    /// `latency`: the delay.
    #[serde(default, serialize_with = "ser_opt_dur")]
    pub delay: Option<Dur>,
}

fn ser_dur<S: serde::Serializer>(d: &Dur, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&d.to_string())
}

fn ser_opt_dur<S: serde::Serializer>(d: &Option<Dur>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&d.to_string()),
        None => s.serialize_none(),
    }
}

/// `[invariants]`: the bounds the verdict checks. The defaults are the guarantees.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Invariants {
    /// Acknowledged events that some subscribed client never received.
    pub lost: u64,
    /// Events a client received twice.
    pub duplicates: u64,
    /// Events of a guild a client received after a later one.
    pub reordered: u64,
    /// Resumes that failed (op 9, or no node answered).
    pub resume_failures: u64,
    /// After each fault, every session is connected again within this.
    #[serde(serialize_with = "ser_dur")]
    pub resume_within: Dur,
    /// After each fault, the nodes that should be in agree on the ring within this
    /// (the documented bound: 4.2 s for a death at 3 nodes, plus 2 s to settle a join).
    #[serde(serialize_with = "ser_dur")]
    pub convergence: Dur,
    /// No node that ran the whole time ends with more than this times its RSS when the
    /// load began.
    pub memory_growth: f64,
}

impl Default for Invariants {
    fn default() -> Self {
        Invariants {
            lost: 0,
            duplicates: 0,
            reordered: 0,
            resume_failures: 0,
            resume_within: Dur(Duration::from_secs(15)),
            convergence: Dur(Duration::from_millis(6200)),
            memory_growth: 2.0,
        }
    }
}

/// A whole scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Scenario {
    /// Its name, in reports.
    pub name: String,
    /// What it does, in one sentence.
    #[serde(default)]
    pub description: String,
    /// The cluster.
    #[serde(default)]
    pub cluster: ClusterSpec,
    /// The load.
    #[serde(default)]
    pub load: LoadSpec,
    /// The faults.
    #[serde(default, rename = "fault")]
    pub faults: Vec<Fault>,
    /// The bounds.
    #[serde(default)]
    pub invariants: Invariants,
    /// Seeds `random` targets (explore sets it).
    #[serde(default)]
    pub seed: u64,
}

/// Why a scenario cannot run. Nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Not TOML of this schema.
    #[error("invalid scenario: {0}")]
    Parse(#[from] Box<toml::de::Error>),
    /// A value that cannot work.
    #[error("invalid scenario: {0}")]
    Invalid(String),
}

impl Scenario {
    /// Parses and checks a scenario file's text.
    ///
    /// # Errors
    /// [`ScenarioError`] saying what is wrong.
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(Box::new)?;
        s.validate(s.cluster.driver)?;
        Ok(s)
    }

    /// Checks that `driver` can run every fault and that targets and times make sense.
    ///
    /// # Errors
    /// [`ScenarioError::Invalid`] naming the first problem.
    pub fn validate(&self, driver: DriverKind) -> Result<(), ScenarioError> {
        let bad = |m: String| Err(ScenarioError::Invalid(m));
        if !(1..=9).contains(&self.cluster.nodes) {
            return bad(format!(
                "cluster.nodes must be 1 to 9, got {}",
                self.cluster.nodes
            ));
        }
        for (i, f) in self.faults.iter().enumerate() {
            let n = i + 1;
            if !driver.supports(f.action) {
                return bad(format!(
                    "fault {n} ({}) needs the {} driver, not {}",
                    f.action.as_str(),
                    if f.action == Action::Partition {
                        "netns or docker"
                    } else {
                        "netns"
                    },
                    driver.as_str()
                ));
            }
            if let Target::Node(id) = &f.target {
                let known = id
                    .strip_prefix('n')
                    .and_then(|k| k.parse::<u8>().ok())
                    .is_some_and(|k| (1..=self.cluster.nodes).contains(&k));
                if !known {
                    return bad(format!(
                        "fault {n}: target {id:?} is not n1..n{}, busiest-guild-owner, session-host or random",
                        self.cluster.nodes
                    ));
                }
            }
            if f.at >= self.load.duration {
                return bad(format!(
                    "fault {n} at {} is not within the load's {}",
                    f.at, self.load.duration
                ));
            }
            if f.action == Action::Loss && !f.percent.is_some_and(|p| (1..=100).contains(&p)) {
                return bad(format!("fault {n}: loss needs percent = 1..100"));
            }
            if f.action == Action::Latency && f.delay.is_none() {
                return bad(format!("fault {n}: latency needs delay, e.g. \"50ms\""));
            }
            let revertible_only = matches!(
                f.action,
                Action::Stop
                    | Action::Partition
                    | Action::PartitionInbound
                    | Action::Loss
                    | Action::Latency
            );
            if revertible_only && f.duration.is_none() {
                return bad(format!(
                    "fault {n}: {} needs `for` (how long until it is reverted)",
                    f.action.as_str()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            "250ms".parse::<Dur>().unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!(
            "6.2s".parse::<Dur>().unwrap().0,
            Duration::from_millis(6200)
        );
        assert_eq!("2m".parse::<Dur>().unwrap().0, Duration::from_secs(120));
        assert_eq!("3".parse::<Dur>().unwrap().0, Duration::from_secs(3));
        assert!("3h".parse::<Dur>().is_err());
        assert!("-1s".parse::<Dur>().is_err());
        assert_eq!(Dur(Duration::from_millis(6200)).to_string(), "6200ms");
    }

    #[test]
    fn a_scenario_parses_and_is_checked_against_its_driver() {
        let text = r#"
            name = "t"
            [cluster]
            nodes = 3
            [load]
            duration = "20s"
            [[fault]]
            at = "5s"
            action = "kill"
            target = "session-host"
            for = "8s"
            [[fault]]
            at = "15s"
            action = "stop"
            target = "n2"
            for = "3s"
        "#;
        let s = Scenario::parse(text).unwrap();
        assert_eq!(s.faults.len(), 2);
        assert_eq!(s.faults[0].target, Target::SessionHost);
        assert_eq!(s.invariants.lost, 0);
        let partition = text.replace("action = \"stop\"", "action = \"partition\"");
        let err = Scenario::parse(&partition).unwrap_err().to_string();
        assert!(err.contains("netns or docker"), "{err}");
        let s: Scenario = toml::from_str(&partition).unwrap();
        assert!(s.validate(DriverKind::Netns).is_ok());
        for (from, to, says) in [
            ("target = \"n2\"", "target = \"n7\"", "not n1..n3"),
            ("at = \"15s\"", "at = \"25s\"", "not within"),
            ("for = \"3s\"", "", "needs `for`"),
            ("nodes = 3", "nodes = 3\nbogus = 1", "unknown field"),
        ] {
            let err = Scenario::parse(&text.replace(from, to))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{from} -> {to}: {err}");
        }
    }
}
