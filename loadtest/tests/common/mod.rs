//! An in-process node for the load tester's end-to-end tests, and run options aimed at it.

#![allow(clippy::unwrap_used)]

use concord_gateway::{Config, Listeners, Node};
use concord_loadtest::run::RunArgs;

/// Starts a node on loopback port-0 listeners with the test secrets.
pub async fn node() -> (Node, Config) {
    let config = Config::for_tests();
    let listeners = Listeners::bind(&config).await.unwrap();
    let node = concord_gateway::start(config.clone(), listeners)
        .await
        .unwrap();
    (node, config)
}

/// Run options pointed at `node`, every other option at its default.
pub fn args_for(node: &Node, config: &Config) -> RunArgs {
    RunArgs {
        targets: vec![node.public_url.clone()],
        api: vec![format!("http://{}", node.api_addr)],
        token_secret: config.token_secret.clone(),
        publish_secret: config.publish_secret.clone(),
        ..RunArgs::default()
    }
}
