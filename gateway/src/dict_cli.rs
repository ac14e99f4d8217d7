//! `concord dict ...`: build a corpus, train a dictionary, and measure every transport
//! mode on it. The logic lives in `concord_protocol::{corpus, zstd_dict}`; this is the
//! file-system shell around it.

use std::fs;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use concord_protocol::corpus::{Corpus, CorpusEvent, parse_capture};
use concord_protocol::zstd_dict::{self, report};

/// `concord dict` subcommands.
#[derive(Subcommand, Debug)]
pub enum DictCommand {
    /// Write a gateway event corpus, one `{"t":..,"d":..}` per line, to OUT/events.jsonl.
    Corpus {
        /// How many events to generate.
        #[arg(long, default_value_t = 200_000)]
        events: usize,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Generator seed (the same seed gives the same corpus).
        #[arg(long, default_value_t = zstd_dict::DEFAULT_TRAINING_SEED)]
        seed: u64,
        /// Use a real capture (one JSON event per line) instead of generating one.
        #[arg(long)]
        capture: Option<PathBuf>,
    },
    /// Train a dictionary on every *.jsonl file in CORPUS; writes OUT/<id>.zdict.
    Train {
        /// Corpus directory.
        #[arg(long)]
        corpus: PathBuf,
        /// Dictionary size, e.g. 64KiB or 65536.
        #[arg(long, default_value = "64KiB")]
        size: String,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Measure bytes, CPU and memory of every transport mode on a generated corpus.
    Bench {
        /// A smaller corpus that runs in seconds.
        #[arg(long)]
        quick: bool,
    },
}

/// Runs a `concord dict` subcommand.
pub fn run(command: DictCommand) -> anyhow::Result<()> {
    match command {
        DictCommand::Corpus {
            events,
            out,
            seed,
            capture,
        } => {
            let events = match capture {
                Some(path) => {
                    let text = fs::read_to_string(&path)
                        .with_context(|| format!("cannot read capture {}", path.display()))?;
                    parse_capture(&text)
                        .with_context(|| format!("invalid capture {}", path.display()))?
                }
                None => Corpus::generate(seed, events),
            };
            fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
            let path = out.join("events.jsonl");
            write_corpus(&path, &events)?;
            println!("wrote {} events to {}", events.len(), path.display());
        }
        DictCommand::Train { corpus, size, out } => {
            let size = parse_size(&size)?;
            let events = read_corpus(&corpus)?;
            if events.is_empty() {
                bail!("no events in {}/*.jsonl", corpus.display());
            }
            // Train on what the node compresses: the envelope without `s`.
            let samples: Vec<Vec<u8>> = events
                .iter()
                .filter_map(|e| zstd_dict::body_json(0, Some(&e.t), &e.d).ok())
                .collect();
            let dict = zstd_dict::train(&samples, size).context("training failed")?;
            fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
            let path = out.join(format!("{}.zdict", dict.id()));
            fs::write(&path, dict.bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!(
                "trained dictionary {} ({} bytes) on {} events: {}\nserve it with: concord serve --dict {}",
                dict.id(),
                dict.bytes().len(),
                samples.len(),
                path.display(),
                path.display()
            );
        }
        DictCommand::Bench { quick } => {
            let config = if quick {
                report::Config::quick()
            } else {
                report::Config::default()
            };
            println!("{}", report::run(&config).context("benchmark failed")?);
        }
    }
    Ok(())
}

fn write_corpus(path: &Path, events: &[CorpusEvent]) -> anyhow::Result<()> {
    let file =
        fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = BufWriter::new(file);
    for e in events {
        w.write_all(br#"{"t":""#)?;
        w.write_all(e.t.as_bytes())?;
        w.write_all(br#"","d":"#)?;
        w.write_all(&e.d)?;
        w.write_all(b"}\n")?;
    }
    w.flush()?;
    Ok(())
}

fn read_corpus(dir: &Path) -> anyhow::Result<Vec<CorpusEvent>> {
    let mut events = Vec::new();
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot read corpus directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    for path in files {
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        events.extend(
            parse_capture(&text)
                .with_context(|| format!("invalid corpus file {}", path.display()))?,
        );
    }
    Ok(events)
}

/// `64KiB`, `64K`, `1MiB` or plain bytes.
pub fn parse_size(s: &str) -> anyhow::Result<usize> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num.parse().with_context(|| format!("invalid size {s:?}"))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        _ => bail!("invalid size unit in {s:?}; use e.g. 64KiB"),
    };
    Ok(n * mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB").unwrap(), 65_536);
        assert_eq!(parse_size("112k").unwrap(), 114_688);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12 parsecs").is_err());
    }

    #[test]
    fn corpus_then_train_round_trip() {
        let dir = std::env::temp_dir().join(format!("concord-dict-cli-{}", std::process::id()));
        run(DictCommand::Corpus {
            events: 3000,
            out: dir.clone(),
            seed: 7,
            capture: None,
        })
        .unwrap();
        let events = read_corpus(&dir).unwrap();
        assert_eq!(events.len(), 3000);
        run(DictCommand::Train {
            corpus: dir.clone(),
            size: "16KiB".into(),
            out: dir.clone(),
        })
        .unwrap();
        let trained = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .find(|e| e.path().extension().is_some_and(|x| x == "zdict"))
            .unwrap();
        let bytes = fs::read(trained.path()).unwrap();
        assert!(bytes.len() <= 16 * 1024);
        assert!(zstd_dict::Dictionary::from_bytes(bytes).is_ok());
        let _ = fs::remove_dir_all(dir);
    }
}
