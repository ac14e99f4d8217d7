//! `concord-chaos`: run a fault scenario, or explore a seeded random one, against a
//! Concord cluster under load. Exit code 0: every invariant held; 1: one failed; 2: the
//! run itself could not be done.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use concord_chaos::driver::{Bins, Driver};
use concord_chaos::run::{RunReport, exercise};
use concord_chaos::scenario::{DriverKind, Dur, Scenario};
use concord_chaos::{report, schedule};

#[derive(Parser)]
#[command(
    name = "concord-chaos",
    version,
    about = "Fault injection for Concord clusters under load"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario file.
    Run {
        /// The scenario (TOML), e.g. chaos/scenarios/kill-session-host.toml.
        #[arg(long)]
        scenario: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Draw a random fault schedule from a seed and run it (the same seed, the same
    /// schedule; the report names the seed).
    Explore {
        /// The seed.
        #[arg(long)]
        seed: u64,
        /// How long the load runs; faults fill it.
        #[arg(long, default_value = "5m")]
        duration: Dur,
        /// Nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u8,
        /// Print the schedule and exit.
        #[arg(long)]
        dry_run: bool,
        /// More `concord-loadtest run` flags, after `--`.
        #[arg(last = true)]
        load_args: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
    /// One admin request; prints the status, a newline and the body (the netns driver
    /// runs it inside its hub namespace).
    #[command(hide = true)]
    HttpGet {
        #[arg(long, default_value = "GET")]
        method: String,
        addr: std::net::SocketAddr,
        path: String,
    },
}

#[derive(Args)]
struct Common {
    /// The driver, overriding the scenario's.
    #[arg(long, value_enum)]
    driver: Option<DriverKind>,
    /// Where logs and reports go [default: a new directory under the system temp dir].
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<bool> {
    match command {
        Command::HttpGet { method, addr, path } => {
            let (status, body) = concord_chaos::driver::http(addr, &method, &path).await?;
            println!("{status}\n{body}");
            Ok(true)
        }
        Command::Run { scenario, common } => {
            let text = std::fs::read_to_string(&scenario)
                .with_context(|| format!("cannot read {}", scenario.display()))?;
            let s: Scenario = toml_scenario(&text, common.driver)
                .with_context(|| scenario.display().to_string())?;
            run_one(s, &common).await
        }
        Command::Explore {
            seed,
            duration,
            nodes,
            dry_run,
            load_args,
            common,
        } => {
            let driver = common.driver.unwrap_or_default();
            let faults = schedule::explore(seed, duration.0, nodes, driver);
            let mut s: Scenario =
                toml_scenario(&format!("name = \"explore-{seed}\""), Some(driver))?;
            s.description = format!(
                "a random schedule of {} faults drawn from seed {seed}",
                faults.len()
            );
            s.cluster.nodes = nodes;
            s.cluster.serve_args = vec!["--heartbeat-interval".into(), "1s".into()];
            s.load.duration = duration;
            s.load.args = load_args;
            s.faults = faults;
            s.seed = seed;
            s.validate(driver)?;
            if dry_run {
                println!("{}", serde_json::to_string_pretty(&s.faults)?);
                return Ok(true);
            }
            run_one(s, &common).await
        }
    }
}

fn toml_scenario(text: &str, driver: Option<DriverKind>) -> anyhow::Result<Scenario> {
    let mut s: Scenario =
        toml::from_str(text).map_err(|e| anyhow::anyhow!("invalid scenario: {e}"))?;
    if let Some(d) = driver {
        s.cluster.driver = d;
    }
    s.validate(s.cluster.driver)?;
    Ok(s)
}

async fn run_one(scenario: Scenario, common: &Common) -> anyhow::Result<bool> {
    let bins = Bins::find()?;
    let dir = match &common.out {
        Some(d) => d.clone(),
        None => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            std::env::temp_dir()
                .join("concord-chaos")
                .join(format!("{}-{stamp}", scenario.name))
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    eprintln!(
        "[chaos] {} on {} ({} nodes, load {}), logs in {}",
        scenario.name,
        scenario.cluster.driver.as_str(),
        scenario.cluster.nodes,
        scenario.load.duration,
        dir.display()
    );
    let mut driver = Driver::start(scenario.cluster.driver, &scenario.cluster, &bins, &dir).await?;
    // Whatever happens next, the driver is torn down: Ctrl-C and SIGTERM included.
    let outcome = tokio::select! {
        r = exercise(&scenario, &mut driver, &bins, &dir) => r,
        () = interrupted() => Err(anyhow::anyhow!("interrupted")),
    };
    eprintln!("[chaos] tearing down");
    driver.teardown().await;
    let r = outcome?;
    write_reports(&r, &dir)?;
    Ok(r.pass)
}

async fn interrupted() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn write_reports(r: &RunReport, dir: &std::path::Path) -> anyhow::Result<()> {
    let json = dir.join("report.json");
    let html = dir.join("report.html");
    std::fs::write(&json, serde_json::to_string_pretty(r)?)?;
    std::fs::write(&html, report::html(r))?;
    for v in &r.verdicts {
        eprintln!(
            "[chaos] {:<5} {:<30} {:<28} {}",
            if v.pass { "ok" } else { "FAIL" },
            v.name,
            v.bound,
            v.observed
        );
    }
    for s in r.steps.iter().filter(|s| s.error.is_some()) {
        eprintln!(
            "[chaos] FAIL  fault not applied: {:?} {}: {}",
            s.op,
            s.node,
            s.error.as_deref().unwrap_or("")
        );
    }
    eprintln!(
        "[chaos] {} (seed {}): {} in {:.0} s; {} and {}",
        r.scenario,
        r.seed,
        if r.pass { "PASS" } else { "FAIL" },
        r.wall_secs,
        json.display(),
        html.display()
    );
    Ok(())
}
