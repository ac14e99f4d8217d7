//! A short load against an in-process node: every published event reaches every member
//! session, with no gaps, duplicates or errors, and the report says so.

mod common;

use concord_loadtest::run::{RunArgs, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_load_is_delivered_exactly_once() {
    let (node, config) = common::node().await;
    let args = RunArgs {
        connections: 60,
        ramp: "600/s".into(),
        guilds: 1,
        guild_size: "uniform".into(),
        publish_rate: "60/s".into(),
        duration: "2s".into(),
        compress: "zstd-stream".into(),
        payload_bytes: 50,
        pids: vec![std::process::id()],
        metrics: vec![format!("http://{}", node.admin_addr)],
        ..common::args_for(&node, &config)
    };
    let report = run(args).await.unwrap();
    assert_eq!(report.connections.established, 60);
    assert_eq!(report.connections.failed, 0);
    assert_eq!((report.gaps, report.duplicates, report.errors), (0, 0, 0));
    // 60/s for 2 s is 120 events, each to all 60 members of the one guild.
    assert_eq!(
        report.deliveries.total,
        120 * 60,
        "{}",
        report.to_json_pretty()
    );
    assert!(report.latency_ms.p50 > 0.0);
    assert!(!report.timeline.is_empty());
    // One figure from the node's /metrics (RSS over its own sessions), one from /proc.
    assert_eq!(report.server.len(), 2);
    assert!(report.server.iter().all(|s| s.rss_bytes > 0));
    assert!(
        report.server[0].rss_bytes_per_session > 0.0,
        "{:?}",
        report.server
    );
    node.drain();
    node.wait().await;
}

/// The real binary, with two worker processes and a preset overridden down to a small
/// load: the coordinator adds up what the workers saw, and tail losses would show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_processes_add_up() {
    let (node, config) = common::node().await;
    let dir = std::env::temp_dir().join(format!("concord-lt-workers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report_path = dir.join("report.json");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_concord-loadtest"))
        .args([
            "run",
            "--preset",
            "fanout",
            "--connections",
            "40",
            "--ramp",
            "400/s",
        ])
        .args([
            "--publish-rate",
            "50/s",
            "--duration",
            "2s",
            "--workers",
            "2",
        ])
        .args(["--compress", "zstd-dict", "--targets", &node.public_url])
        .args(["--api", &format!("http://{}", node.api_addr)])
        .args(["--token-secret", &config.token_secret])
        .args(["--publish-secret", &config.publish_secret])
        .args(["--assert", "gaps==0,duplicates==0,errors==0"])
        .arg("--report")
        .arg(&report_path)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(120), output)
        .await
        .expect("the run ends on its own")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("expands to: concord-loadtest run --guilds=1"),
        "{stderr}"
    );
    assert!(stderr.contains("over 2 worker processes"), "{stderr}");
    let report = concord_loadtest::report::Report::from_json(
        &std::fs::read_to_string(&report_path).unwrap(),
    )
    .unwrap();
    assert_eq!(report.connections.established, 40);
    // 50/s for 2 s into the one guild everybody is in.
    assert_eq!(report.published, 100);
    assert_eq!(
        report.deliveries.total,
        100 * 40,
        "{}",
        report.to_json_pretty()
    );
    assert!(report.latency_ms.p99 > 0.0);
    let _ = std::fs::remove_dir_all(&dir);
    node.drain();
    node.wait().await;
}
