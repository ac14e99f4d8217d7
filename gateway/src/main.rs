//! `concord`: run a node, or mint a client token.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use concord_gateway::ServeArgs;
use concord_gateway::config::{Config, HumanDuration};
use concord_protocol::token::{self, Claims};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "concord", version, about = "Concord gateway node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (embedded, in-memory; no external services needed).
    Serve(Box<ServeArgs>),
    /// Mint a client token.
    Token(TokenArgs),
    /// zstd-dict dictionaries: build a corpus, train, benchmark.
    Dict {
        #[command(subcommand)]
        command: concord_gateway::dict_cli::DictCommand,
    },
}

#[derive(Args)]
struct TokenArgs {
    /// The node's token secret.
    #[arg(long, env = "CONCORD_TOKEN_SECRET", hide_env_values = true)]
    secret: String,
    /// The user's id.
    #[arg(long)]
    user_id: u64,
    /// The user's name.
    #[arg(long)]
    username: String,
    /// Guild ids, comma-separated.
    #[arg(long, value_delimiter = ',')]
    guilds: Vec<u64>,
    /// How long the token is valid.
    #[arg(long, default_value = "24h")]
    ttl: HumanDuration,
    /// Mark the user as a bot.
    #[arg(long)]
    bot: bool,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Token(args) => {
            println!(
                "{}",
                mint(
                    &args.secret,
                    args.user_id,
                    &args.username,
                    args.guilds,
                    args.ttl.0,
                    args.bot
                )
            );
            Ok(())
        }
        Command::Dict { command } => concord_gateway::dict_cli::run(command),
        Command::Serve(args) => {
            let config = (*args).with_file()?.resolve()?;
            init_tracing(&config.log);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the tokio runtime")?
                .block_on(serve(config))
        }
    }
}

fn mint(
    secret: &str,
    user_id: u64,
    username: &str,
    guilds: Vec<u64>,
    ttl: Duration,
    bot: bool,
) -> String {
    let now = concord_gateway::conn::unix_now();
    let claims = Claims {
        uid: user_id,
        name: username.to_owned(),
        guilds,
        exp: now + ttl.as_secs(),
        bot,
    };
    token::mint(secret.as_bytes(), &claims)
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listeners = concord_gateway::Listeners::bind(&config).await?;
    let dev_mode = config.dev_mode;
    let token_secret = config.token_secret.clone();
    let publish_secret = config.publish_secret.clone();
    let node = concord_gateway::start(config, listeners).await?;
    tracing::info!(
        client = %node.public_url,
        api = %format!("http://{}", node.api_addr),
        admin = %format!("http://{}", node.admin_addr),
        "concord node ready"
    );
    if dev_mode {
        tracing::warn!(
            "DEV MODE: no --token-secret/--publish-secret set; using well-known dev secrets. Do not expose this node."
        );
        let dev_token = mint(
            &token_secret,
            1,
            "dev",
            vec![1],
            Duration::from_secs(86_400),
            true,
        );
        // Printing must never take the node down (stdout may be a closed pipe).
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "dev token (user 1, guild 1): {dev_token}");
        let _ = writeln!(
            out,
            "publish:  curl -X POST http://{}/v1/guilds/1/events -H 'Authorization: Bearer {publish_secret}' -d '{{\"t\":\"MESSAGE_CREATE\",\"d\":{{\"content\":\"hi\"}}}}'",
            node.api_addr
        );
        let _ = out.flush();
    }
    let drain = node.drain_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received, draining");
        drain.cancel();
    });
    node.wait().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
