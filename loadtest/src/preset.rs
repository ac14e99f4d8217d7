//! Presets and scenario files: both turn into `run` flags before the command line is
//! parsed, so every option means the same wherever it comes from.
//!
//! Precedence is flag > scenario file > preset > default. Expansion puts the preset's and
//! the scenario's options first, as `--name=value` tokens, and drops any of them the
//! user also gave on the command line; [`Expanded::command`] is the resulting command,
//! printed so a run can be repeated without the preset.

use clap::Args as _;

/// Errors expanding a preset or scenario. Nothing ran; permanent for this input.
#[derive(Debug, thiserror::Error)]
pub enum PresetError {
    /// Not `idle`, `fanout` or `chat`.
    #[error("unknown preset {0:?}; use idle, fanout or chat")]
    UnknownPreset(String),
    /// `--preset` or `--scenario` without a value.
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    /// The scenario file could not be read.
    #[error("cannot read scenario {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The scenario is not valid TOML, or a value has a type no flag takes.
    #[error("scenario {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// The presets, tuned for the 2-core box `BENCHMARKS.md` was measured on.
pub const PRESETS: &[(&str, &str, &[&str])] = &[
    (
        "idle",
        "the most sessions this box can hold, heartbeating, nothing published",
        &[
            "--connections=100000",
            "--ramp=4000/s",
            "--guilds=1000",
            "--guild-size=zipf:1.1",
            "--publish-rate=0/s",
            "--duration=60s",
        ],
    ),
    (
        "fanout",
        "one guild of 10,000 sessions, every publish to all of them",
        &[
            "--connections=10000",
            "--ramp=4000/s",
            "--guilds=1",
            "--guild-size=uniform",
            "--publish-rate=20/s",
            "--duration=30s",
            "--payload-bytes=200",
        ],
    ),
    (
        "chat",
        "50,000 sessions in 10,000 Zipf-sized guilds; busy guilds publish more",
        &[
            "--connections=50000",
            "--ramp=4000/s",
            "--guilds=10000",
            "--guild-size=zipf:1.1",
            "--publish-rate=30/s",
            "--duration=60s",
            "--payload=corpus",
        ],
    ),
];

/// A `run` command line with its preset and scenario expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expanded {
    /// The arguments to parse (program name first).
    pub argv: Vec<String>,
    /// Whether a preset or scenario was expanded (so the command is worth printing).
    pub expanded: bool,
}

impl Expanded {
    /// The command line, shell-quoted where needed.
    pub fn command(&self) -> String {
        let quote = |a: &String| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_=./:,@%+".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        };
        let mut parts: Vec<String> = self.argv.iter().map(quote).collect();
        if let Some(first) = parts.first_mut() {
            first.clone_from(&"concord-loadtest".to_owned());
        }
        parts.join(" ")
    }
}

/// Expands `--preset` and `--scenario` in a `concord-loadtest run ...` command line;
/// other command lines come back unchanged. `read` reads the scenario file.
pub fn expand(
    argv: &[String],
    read: impl Fn(&str) -> std::io::Result<String>,
) -> Result<Expanded, PresetError> {
    let unchanged = Expanded {
        argv: argv.to_vec(),
        expanded: false,
    };
    if argv.get(1).map(String::as_str) != Some("run") {
        return Ok(unchanged);
    }
    let user = &argv[2..];
    let mut front = Vec::new();
    if let Some(name) = flag_value(user, "--preset")? {
        let (_, _, args) = PRESETS
            .iter()
            .find(|(n, _, _)| *n == name)
            .ok_or_else(|| PresetError::UnknownPreset(name.clone()))?;
        front.extend(args.iter().map(|a| (*a).to_owned()));
    }
    if let Some(path) = flag_value(user, "--scenario")? {
        let text = read(&path).map_err(|source| PresetError::Read {
            path: path.clone(),
            source,
        })?;
        front.extend(
            scenario_args(&text).map_err(|message| PresetError::Invalid {
                path: path.clone(),
                message,
            })?,
        );
    }
    if front.is_empty() {
        return Ok(unchanged);
    }
    // A flag the user gave replaces every earlier mention, list-valued ones included.
    let given: Vec<&str> = user
        .iter()
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a))
        .collect();
    // The scenario overrides the preset the same way.
    let mut kept: Vec<String> = Vec::new();
    for (i, a) in front.iter().enumerate() {
        let name = flag_name(a);
        let overridden = front[i + 1..].iter().any(|b| flag_name(b) == name);
        if !given.contains(&name) && !overridden {
            kept.push(a.clone());
        }
    }
    let mut out = vec![argv[0].clone(), "run".to_owned()];
    out.extend(kept);
    out.extend(user.iter().cloned());
    Ok(Expanded {
        argv: out,
        expanded: true,
    })
}

fn flag_name(token: &str) -> &str {
    let t = token.trim_start_matches("--");
    t.split('=').next().unwrap_or(t)
}

/// The value of `--name v` or `--name=v`, if given.
fn flag_value(args: &[String], name: &'static str) -> Result<Option<String>, PresetError> {
    for (i, a) in args.iter().enumerate() {
        if a == name {
            return args
                .get(i + 1)
                .cloned()
                .map(Some)
                .ok_or(PresetError::MissingValue(name));
        }
        if let Some(v) = a.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            return Ok(Some(v.to_owned()));
        }
    }
    Ok(None)
}

/// Turns a scenario file into `--name=value` tokens. Keys are the long flag names
/// (`publish-rate` or `publish_rate`); arrays become comma-separated lists.
pub fn scenario_args(text: &str) -> Result<Vec<String>, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    let command = crate::run::RunArgs::augment_args(clap::Command::new("run"));
    let known: Vec<String> = command
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_owned))
        .collect();
    let mut out = Vec::new();
    for (key, value) in table {
        let name = key.replace('_', "-");
        if !known.contains(&name) || name == "scenario" {
            return Err(format!("unknown option {key:?}"));
        }
        let text = match &value {
            toml::Value::Array(items) => items
                .iter()
                .map(|v| scalar(&key, v))
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
            v => scalar(&key, v)?,
        };
        out.push(format!("--{name}={text}"));
    }
    Ok(out)
}

fn scalar(key: &str, v: &toml::Value) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        _ => Err(format!(
            "{key:?} must be a string, a number or a list of them"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    fn no_file(_: &str) -> std::io::Result<String> {
        Err(std::io::Error::other("no files here"))
    }

    #[test]
    fn a_preset_comes_first_and_flags_override_it() {
        let e = expand(
            &argv("concord-loadtest run --preset chat --connections 2000"),
            no_file,
        )
        .unwrap();
        assert!(e.expanded);
        assert!(e.argv.contains(&"--guilds=10000".to_owned()));
        assert!(!e.argv.iter().any(|a| a == "--connections=50000"));
        let cmd = e.command();
        assert!(
            cmd.starts_with("concord-loadtest run --ramp=4000/s"),
            "{cmd}"
        );
        assert!(cmd.ends_with("--preset chat --connections 2000"), "{cmd}");
        // The expansion parses.
        let args = parse(&e.argv);
        assert_eq!((args.connections, args.guilds), (2000, 10_000));
    }

    fn parse(argv: &[String]) -> crate::run::RunArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(subcommand)]
            cmd: Cmd,
        }
        #[derive(clap::Subcommand)]
        enum Cmd {
            Run(crate::run::RunArgs),
        }
        let Cmd::Run(a) = Cli::try_parse_from(argv).unwrap().cmd;
        a
    }

    #[test]
    fn scenario_sits_between_preset_and_flags() {
        let file = |_: &str| {
            Ok("connections = 300\ntargets = [\"ws://127.0.0.1:1\", \"ws://127.0.0.1:2\"]\npublish_rate = \"5/s\"\n".to_owned())
        };
        let e = expand(
            &argv("x run --preset fanout --scenario s.toml --publish-rate 7/s"),
            file,
        )
        .unwrap();
        let args = parse(&e.argv);
        assert_eq!(args.connections, 300, "scenario beats preset");
        assert_eq!(args.publish_rate, "7/s", "flag beats scenario");
        assert_eq!(args.targets.len(), 2);
        assert_eq!(args.guilds, 1, "from the preset");
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        assert!(matches!(
            expand(&argv("x run --preset huge"), no_file),
            Err(PresetError::UnknownPreset(_))
        ));
        assert!(matches!(
            expand(&argv("x run --scenario"), no_file),
            Err(PresetError::MissingValue("--scenario"))
        ));
        assert!(matches!(
            expand(&argv("x run --scenario f.toml"), no_file),
            Err(PresetError::Read { .. })
        ));
        assert!(
            scenario_args("bogus = 1")
                .unwrap_err()
                .contains("unknown option")
        );
        assert!(scenario_args("connections = true").is_err());
        assert!(scenario_args("connections = [").is_err());
        // Without a preset or scenario nothing changes.
        let plain = argv("x run --connections 5");
        assert_eq!(expand(&plain, no_file).unwrap().argv, plain);
    }
}
