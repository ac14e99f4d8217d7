//! `--assert` bounds: parse `latency_ms.p99<50,gaps==0,duplicates==0` once, before the
//! run, and check them against the JSON report afterwards.
//!
//! A bound is `PATH OP NUMBER`: `PATH` is a dotted path into the report (a numeric
//! segment indexes a list, as in `server.0.rss_bytes`), `OP` is one of `<`, `<=`, `>`,
//! `>=`, `==`, `!=`. Bounds are comma-separated; whitespace around the parts is ignored.
//! A path that is missing from the report, or not a number there, fails the bound.

use std::fmt;

use serde_json::Value;

/// Why `--assert` text was rejected. Nothing ran yet; permanent until the text is fixed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssertError {
    /// No bounds at all.
    #[error("no bounds given; write e.g. latency_ms.p99<50,gaps==0")]
    Empty,
    /// Two commas with nothing between, or a trailing comma.
    #[error("bound {index} is empty (stray comma?)")]
    EmptyBound {
        /// 1-based position of the bound.
        index: usize,
    },
    /// No comparison operator in the bound.
    #[error("bound {bound:?} has no operator; use one of < <= > >= == !=")]
    MissingOperator {
        /// The bound as written.
        bound: String,
    },
    /// Nothing before the operator.
    #[error("bound {bound:?} has an empty path")]
    EmptyPath {
        /// The bound as written.
        bound: String,
    },
    /// A path with an empty segment or whitespace inside.
    #[error("bound {bound:?} has an invalid path {path:?}; write dotted keys like latency_ms.p99")]
    BadPath {
        /// The bound as written.
        bound: String,
        /// The path as written.
        path: String,
    },
    /// Operator characters that are not one of the six operators.
    #[error("bound {bound:?} has unknown operator {op:?}; use one of < <= > >= == !=")]
    UnknownOperator {
        /// The bound as written.
        bound: String,
        /// The operator as written.
        op: String,
    },
    /// The value is not a finite number.
    #[error("bound {bound:?} compares with {value:?}, which is not a number")]
    BadNumber {
        /// The bound as written.
        bound: String,
        /// The value as written.
        value: String,
    },
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

impl Op {
    fn parse(text: &str) -> Option<Op> {
        Some(match text {
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "==" => Op::Eq,
            "!=" => Op::Ne,
            _ => return None,
        })
    }

    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }

    /// Whether `found OP wanted` holds.
    pub fn holds(self, found: f64, wanted: f64) -> bool {
        match self {
            Op::Lt => found < wanted,
            Op::Le => found <= wanted,
            Op::Gt => found > wanted,
            Op::Ge => found >= wanted,
            Op::Eq => found == wanted,
            Op::Ne => found != wanted,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One bound: `path op value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Bound {
    /// Dotted path into the report.
    pub path: String,
    /// The comparison.
    pub op: Op,
    /// The number to compare with.
    pub value: f64,
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.path, self.op, self.value)
    }
}

/// What the report held at a bound's path.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    /// A number that missed the bound.
    Number(f64),
    /// Nothing at the path.
    Missing,
    /// Something other than a number: `null`, `a string`, `a list`, ...
    NotNumber(&'static str),
}

/// A bound the report missed.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// The bound.
    pub bound: Bound,
    /// What was there instead.
    pub found: Found,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Bound { path, op, value } = &self.bound;
        match &self.found {
            Found::Number(x) => write!(f, "{path} = {x}, wanted {op} {value}"),
            Found::Missing => write!(f, "{path} is not in the report, wanted {op} {value}"),
            Found::NotNumber(kind) => {
                write!(f, "{path} is {kind}, not a number, wanted {op} {value}")
            }
        }
    }
}

const OP_CHARS: &[char] = &['<', '>', '=', '!'];

/// Parses comma-separated bounds.
pub fn parse(text: &str) -> Result<Vec<Bound>, AssertError> {
    if text.trim().is_empty() {
        return Err(AssertError::Empty);
    }
    text.split(',')
        .enumerate()
        .map(|(i, raw)| parse_one(i + 1, raw.trim()))
        .collect()
}

fn parse_one(index: usize, bound: &str) -> Result<Bound, AssertError> {
    if bound.is_empty() {
        return Err(AssertError::EmptyBound { index });
    }
    let owned = || bound.to_owned();
    let start = bound
        .find(OP_CHARS)
        .ok_or_else(|| AssertError::MissingOperator { bound: owned() })?;
    let (path, rest) = bound.split_at(start);
    let op_len = rest.find(|c| !OP_CHARS.contains(&c)).unwrap_or(rest.len());
    let (op_text, value_text) = rest.split_at(op_len);
    let path = path.trim();
    if path.is_empty() {
        return Err(AssertError::EmptyPath { bound: owned() });
    }
    if path
        .split('.')
        .any(|seg| seg.is_empty() || seg.contains(char::is_whitespace))
    {
        return Err(AssertError::BadPath {
            bound: owned(),
            path: path.to_owned(),
        });
    }
    let op = Op::parse(op_text).ok_or_else(|| AssertError::UnknownOperator {
        bound: owned(),
        op: op_text.to_owned(),
    })?;
    let value_text = value_text.trim();
    let value = value_text
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| AssertError::BadNumber {
            bound: owned(),
            value: value_text.to_owned(),
        })?;
    Ok(Bound {
        path: path.to_owned(),
        op,
        value,
    })
}

/// The bounds `report` misses, in the order given.
pub fn check(bounds: &[Bound], report: &Value) -> Vec<Violation> {
    bounds
        .iter()
        .filter_map(|bound| {
            let found = match lookup(report, &bound.path) {
                None => Found::Missing,
                Some(v) => match v.as_f64() {
                    Some(x) if bound.op.holds(x, bound.value) => return None,
                    Some(x) => Found::Number(x),
                    None => Found::NotNumber(kind(v)),
                },
            };
            Some(Violation {
                bound: bound.clone(),
                found,
            })
        })
        .collect()
}

/// Follows a dotted path; numeric segments index lists.
fn lookup<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(root, |v, seg| match v {
        Value::Object(map) => map.get(seg),
        Value::Array(list) => list.get(seg.parse::<usize>().ok()?),
        _ => None,
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let b = parse("latency_ms.p99<50,gaps==0,duplicates==0").unwrap();
        assert_eq!(
            b,
            vec![
                Bound {
                    path: "latency_ms.p99".into(),
                    op: Op::Lt,
                    value: 50.0
                },
                Bound {
                    path: "gaps".into(),
                    op: Op::Eq,
                    value: 0.0
                },
                Bound {
                    path: "duplicates".into(),
                    op: Op::Eq,
                    value: 0.0
                },
            ]
        );
    }

    #[test]
    fn parses_every_operator_and_whitespace() {
        let b = parse(" a < 1 , b<=2,c >3,d>= 4.5 ,e == -1, f!=1e3 ").unwrap();
        let ops: Vec<Op> = b.iter().map(|b| b.op).collect();
        assert_eq!(ops, [Op::Lt, Op::Le, Op::Gt, Op::Ge, Op::Eq, Op::Ne]);
        let values: Vec<f64> = b.iter().map(|b| b.value).collect();
        assert_eq!(values, [1.0, 2.0, 3.0, 4.5, -1.0, 1000.0]);
        assert_eq!(b[3].path, "d");
        assert_eq!(b[0].to_string(), "a<1");
    }

    #[test]
    fn rejects_bad_text_clearly() {
        assert_eq!(parse(""), Err(AssertError::Empty));
        assert_eq!(parse("  "), Err(AssertError::Empty));
        assert_eq!(parse("gaps==0,"), Err(AssertError::EmptyBound { index: 2 }));
        assert_eq!(
            parse("gaps==0,,a<1"),
            Err(AssertError::EmptyBound { index: 2 })
        );
        assert!(matches!(parse("<5"), Err(AssertError::EmptyPath { .. })));
        assert!(matches!(
            parse("  == 5"),
            Err(AssertError::EmptyPath { .. })
        ));
        assert!(matches!(
            parse("gaps"),
            Err(AssertError::MissingOperator { .. })
        ));
        assert!(matches!(
            parse("gaps 0"),
            Err(AssertError::MissingOperator { .. })
        ));
        for op in ["=", "=<", "<>", "!", "===", "=>"] {
            match parse(&format!("gaps{op}0")) {
                Err(AssertError::UnknownOperator { op: got, .. }) => assert_eq!(got, op),
                other => panic!("{op}: {other:?}"),
            }
        }
        for value in ["", "fifty", "5ms", "NaN", "inf", "1,5"] {
            let text = format!("latency_ms.p99<{value}");
            // "1,5" splits into a bound and a stray "5" with no operator.
            assert!(parse(&text).is_err(), "{text:?} parsed");
        }
        assert!(matches!(
            parse("latency_ms.p99<fifty"),
            Err(AssertError::BadNumber { value, .. }) if value == "fifty"
        ));
        assert!(matches!(parse("a..b<1"), Err(AssertError::BadPath { .. })));
        assert!(matches!(parse(".a<1"), Err(AssertError::BadPath { .. })));
        assert!(matches!(
            parse("latency ms<1"),
            Err(AssertError::BadPath { .. })
        ));
        let msg = parse("gaps=0").unwrap_err().to_string();
        assert!(msg.contains("\"=\"") && msg.contains("=="), "{msg}");
    }

    fn report() -> Value {
        json!({
            "latency_ms": {"p50": 2.5, "p99": 73.2},
            "gaps": 0,
            "duplicates": 4,
            "target": "concord",
            "server": [{"node": "pid:1", "rss_bytes": 1000}],
            "nothing": null,
        })
    }

    #[test]
    fn check_passes_met_bounds() {
        let b =
            parse("latency_ms.p50<3,gaps==0,duplicates>=4,duplicates!=5,server.0.rss_bytes<=1000")
                .unwrap();
        assert_eq!(check(&b, &report()), vec![]);
        assert_eq!(check(&[], &report()), vec![]);
    }

    #[test]
    fn check_reports_missed_bounds_in_order() {
        let b = parse("latency_ms.p99<50,gaps==0,duplicates==0").unwrap();
        let v = check(&b, &report());
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].to_string(), "latency_ms.p99 = 73.2, wanted < 50");
        assert_eq!(v[1].to_string(), "duplicates = 4, wanted == 0");
    }

    #[test]
    fn missing_and_non_numbers_are_violations() {
        let b =
            parse("latency_ms.p100<1,target<1,server<1,nothing==0,server.3.rss_bytes<1,gaps.x<1")
                .unwrap();
        let v = check(&b, &report());
        let found: Vec<&Found> = v.iter().map(|v| &v.found).collect();
        assert_eq!(
            found,
            [
                &Found::Missing,
                &Found::NotNumber("a string"),
                &Found::NotNumber("a list"),
                &Found::NotNumber("null"),
                &Found::Missing,
                &Found::Missing,
            ]
        );
        assert_eq!(
            v[0].to_string(),
            "latency_ms.p100 is not in the report, wanted < 1"
        );
        assert_eq!(
            v[1].to_string(),
            "target is a string, not a number, wanted < 1"
        );
    }
}
