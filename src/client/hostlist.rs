//! Host ranges in the usual hostlist syntax: `node[01-10]`, `a[1,3,5-7]`,
//! `rack[1-2]-gpu[0-1]`. Zero padding of the lower bound is kept (`[01-10]`
//! gives `01` … `10`), and a malformed range is an error that says where.

use anyhow::{Result, bail};

/// Largest number of names one pattern may expand to: a typo like
/// `node[1-1000000]` should fail clearly, not allocate forever.
pub const MAX_EXPANSION: usize = 10_000;

/// Expands `pattern` into names, in order.
pub fn expand(pattern: &str) -> Result<Vec<String>> {
    let mut out = vec![String::new()];
    let mut rest = pattern;
    while !rest.is_empty() {
        match rest.find(['[', ']']) {
            None => {
                push_all(&mut out, &[rest.to_string()]);
                break;
            }
            Some(i) if rest.as_bytes()[i] == b']' => {
                bail!("host range {pattern:?}: ']' without '['");
            }
            Some(i) => {
                push_all(&mut out, &[rest[..i].to_string()]);
                let Some(close) = rest[i..].find(']') else {
                    bail!("host range {pattern:?}: '[' without ']'");
                };
                let inner = &rest[i + 1..i + close];
                if inner.contains('[') {
                    bail!("host range {pattern:?}: nested '['");
                }
                let items =
                    bracket(inner).map_err(|e| anyhow::anyhow!("host range {pattern:?}: {e}"))?;
                if out.len().saturating_mul(items.len()) > MAX_EXPANSION {
                    bail!("host range {pattern:?} gives more than {MAX_EXPANSION} names");
                }
                push_all(&mut out, &items);
                rest = &rest[i + close + 1..];
            }
        }
    }
    Ok(out)
}

fn push_all(out: &mut Vec<String>, suffixes: &[String]) {
    if suffixes.len() == 1 {
        for s in out.iter_mut() {
            s.push_str(&suffixes[0]);
        }
        return;
    }
    *out = out
        .iter()
        .flat_map(|p| suffixes.iter().map(move |s| format!("{p}{s}")))
        .collect();
}

/// The inside of one `[…]`: comma-separated numbers and `LO-HI` ranges.
fn bracket(inner: &str) -> Result<Vec<String>, String> {
    if inner.is_empty() {
        return Err("empty '[]'".into());
    }
    let mut items = Vec::new();
    for part in inner.split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo, hi),
            None => (part, part),
        };
        let num = |s: &str| -> Result<u64, String> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.len() > 18 {
                return Err(format!("{part:?} is not a number or LO-HI range"));
            }
            s.parse::<u64>().map_err(|e| e.to_string())
        };
        let (a, b) = (num(lo)?, num(hi)?);
        if a > b {
            return Err(format!("range {part:?} goes backwards"));
        }
        if (b - a) as usize >= MAX_EXPANSION || items.len() + ((b - a) as usize) >= MAX_EXPANSION {
            return Err(format!("more than {MAX_EXPANSION} names"));
        }
        // `[01-10]` pads to the width of the lower bound, as written.
        let width = if lo.len() > 1 && lo.starts_with('0') {
            lo.len()
        } else {
            0
        };
        for n in a..=b {
            items.push(format!("{n:0width$}"));
        }
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_ranges_lists_and_padding() {
        assert_eq!(expand("dev1").unwrap(), vec!["dev1"]);
        assert_eq!(
            expand("red00[1-3]").unwrap(),
            vec!["red001", "red002", "red003"]
        );
        let nodes = expand("node[01-10]").unwrap();
        assert_eq!(nodes.len(), 10);
        assert_eq!((nodes[0].as_str(), nodes[9].as_str()), ("node01", "node10"));
        assert_eq!(
            expand("a[1,3,5-7]").unwrap(),
            vec!["a1", "a3", "a5", "a6", "a7"]
        );
        assert_eq!(
            expand("r[1-2]-g[0-1].x").unwrap(),
            vec!["r1-g0.x", "r1-g1.x", "r2-g0.x", "r2-g1.x"]
        );
        assert_eq!(expand("[8-9]n").unwrap(), vec!["8n", "9n"]);
    }

    #[test]
    fn malformed_ranges_are_clear_errors() {
        for (bad, says) in [
            ("node[1-3", "without ']'"),
            ("node1-3]", "without '['"),
            ("node[]", "empty"),
            ("node[a-c]", "not a number"),
            ("node[3-1]", "backwards"),
            ("node[1-]", "not a number"),
            ("node[1,,2]", "not a number"),
            ("n[[1-2]]", "nested"),
            ("n[1-99999999]", "more than"),
            ("n[1-200]m[1-200]", "more than"),
        ] {
            let err = expand(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
            assert!(
                err.contains(bad),
                "{bad}: error should quote the pattern: {err}"
            );
        }
    }
}
