//! A short load against an in-process node: every published event reaches every member
//! session, with no gaps, duplicates or errors, and the report says so.

use concord_gateway::{Config, Listeners};
use concord_loadtest::run::{RunArgs, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_load_is_delivered_exactly_once() {
    let config = Config::for_tests();
    let listeners = Listeners::bind(&config).await.unwrap();
    let node = concord_gateway::start(config.clone(), listeners)
        .await
        .unwrap();
    let args = RunArgs {
        targets: vec![node.public_url.clone()],
        api: format!("http://{}", node.api_addr),
        token_secret: config.token_secret.clone(),
        publish_secret: config.publish_secret.clone(),
        connections: 60,
        ramp: "600/s".into(),
        guilds: 1,
        guild_size: "uniform".into(),
        publish_rate: "60/s".into(),
        duration: "2s".into(),
        compress: "zstd-stream".into(),
        payload_bytes: 50,
        pids: vec![std::process::id()],
        report: None,
        html: None,
        assert: None,
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
    assert_eq!(report.server.len(), 1);
    node.drain();
    node.wait().await;
}
