//! `concord-loadtest`: drive a Concord cluster with real sessions and report what users feel.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use concord_loadtest::run::{self, RunArgs};
use concord_loadtest::{assert, fleet, html, preset};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "concord-loadtest",
    version,
    about = "Load generator and reporter for Concord",
    after_help = "Presets (concord-loadtest run --preset NAME): idle, fanout, chat; each prints the command it expands to."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open sessions, publish at a fixed rate for a while, and report.
    Run(Box<RunArgs>),
    /// Run sessions for a coordinating `run` (started by it; reads its plan on stdin).
    #[command(hide = true)]
    Worker,
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}

fn real_main() -> anyhow::Result<ExitCode> {
    let argv: Vec<String> = std::env::args().collect();
    let expanded = preset::expand(&argv, |p| std::fs::read_to_string(p))?;
    if expanded.expanded {
        eprintln!("expands to: {}", expanded.command());
    }
    let args = match Cli::parse_from(&expanded.argv).command {
        Command::Worker => {
            runtime()?.block_on(fleet::worker_main())?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Run(args) => *args,
    };
    // Parse bounds before spending minutes on a run.
    let bounds = match &args.assert {
        Some(text) => assert::parse(text).context("invalid --assert")?,
        None => Vec::new(),
    };
    let report = runtime()?.block_on(run::run(args.clone()))?;
    let json = report.to_json_pretty();
    if let Some(path) = &args.report {
        std::fs::write(path, &json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.html {
        std::fs::write(path, html::render(&report))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("{json}");
    let value: serde_json::Value = serde_json::from_str(&json)?;
    let violations = assert::check(&bounds, &value);
    for v in &violations {
        eprintln!("assert failed: {v}");
    }
    Ok(if violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
