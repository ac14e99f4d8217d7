//! Short chaos scenarios against real node processes, asserting their invariants: a
//! session host SIGKILLed under load and restarted 8 s later on the `local` driver, and a
//! SIGKILLed host that stays down on the `netns` driver (real namespaces, veth pairs and a bridge the test makes and removes; skipped,
//! saying why, where this is not root or `ip netns` is missing). Each is bounded: the
//! load runs 15 s, the tool stops it 2 minutes past that at the latest.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `concord` and `concord-loadtest` from the same target directory as this test's
/// `concord-chaos` (a workspace `cargo test` builds every binary first).
fn bins() -> (PathBuf, PathBuf) {
    let chaos = PathBuf::from(env!("CARGO_BIN_EXE_concord-chaos"));
    let dir = chaos.parent().map(Path::to_path_buf).unwrap_or_default();
    let concord = dir.join("concord");
    let loadtest = dir.join("concord-loadtest");
    assert!(
        concord.is_file() && loadtest.is_file(),
        "build the node and the load tester first: cargo build -p concord-gateway -p concord-loadtest ({})",
        dir.display()
    );
    (concord, loadtest)
}

fn run(scenario: &str, driver: &str) -> serde_json::Value {
    let (concord, loadtest) = bins();
    let out = std::env::temp_dir().join(format!(
        "concord-chaos-test-{driver}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&out);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new(env!("CARGO_BIN_EXE_concord-chaos"))
        .arg("run")
        .arg("--scenario")
        .arg(root.join("scenarios").join(scenario))
        .args(["--driver", driver])
        .arg("--out")
        .arg(&out)
        .env("CONCORD_BIN", &concord)
        .env("CONCORD_LOADTEST_BIN", &loadtest)
        .status()
        .expect("concord-chaos runs");
    let report = std::fs::read_to_string(out.join("report.json")).expect("a report");
    let report: serde_json::Value = serde_json::from_str(&report).expect("JSON");
    assert!(
        status.success(),
        "{scenario} on {driver} failed its invariants: {:#}\nlogs in {}",
        report["verdicts"],
        out.display()
    );
    report
}

#[test]
fn a_killed_session_host_loses_nothing_on_local_and_netns() {
    let r = run("kill-session-host.toml", "local");
    assert_eq!(r["pass"], true);
    assert_eq!(r["observed"]["lost"], 0);
    assert!(
        r["observed"]["resume_outcomes"]["promoted"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{r:#}"
    );

    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    });
    let has_ip = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !(root && has_ip) {
        eprintln!("netns scenario SKIPPED: needs root and iproute2 (ip netns)");
        return;
    }
    let r = run("kill-host-stays-down.toml", "netns");
    assert_eq!(r["pass"], true);
    // The driver's namespaces are `cc<pid>h` and `cc<pid>n<k>`: none may be left.
    let spaces = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let left: Vec<String> = String::from_utf8_lossy(&spaces.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| {
            n.strip_prefix("cc").is_some_and(|rest| {
                rest.trim_end_matches(|c: char| c.is_ascii_digit() || c == 'h' || c == 'n')
                    .is_empty()
            })
        })
        .map(str::to_owned)
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}
