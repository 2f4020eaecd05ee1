//! Text for people and scripts, shared by every command that prints:
//! aligned tables, times as "when (how long ago)", pretty JSON. Pure text,
//! no I/O beyond `print_json`'s stdout.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde::Serialize;

/// "2026-11-22T10:00:00Z (5m ago)", or "never".
pub fn when(t: Option<u64>) -> String {
    let Some(t) = t else { return "never".into() };
    let at = UNIX_EPOCH + Duration::from_secs(t);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let ago = now.saturating_sub(t);
    format!(
        "{} ({} ago)",
        humantime::format_rfc3339_seconds(at),
        short_duration(ago)
    )
}

/// "42s", "5m", "3h7m", "2d4h".
pub fn short_duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// Left-aligned columns separated by two spaces.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Pretty JSON with a final newline.
pub fn json_text<T: Serialize>(v: &T) -> Result<String> {
    let mut s = serde_json::to_string_pretty(v)?;
    s.push('\n');
    Ok(s)
}

/// Pretty JSON on stdout.
pub fn print_json<T: Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_short() {
        assert_eq!(short_duration(42), "42s");
        assert_eq!(short_duration(300), "5m");
        assert_eq!(short_duration(3600 * 3 + 420), "3h7m");
        assert_eq!(short_duration(86400 * 2 + 3600 * 4), "2d4h");
        assert_eq!(when(None), "never");
    }

    #[test]
    fn tables_align_and_trim() {
        let rows = vec![
            vec!["A".to_string(), "BB".to_string()],
            vec!["ccc".to_string(), "d".to_string()],
        ];
        assert_eq!(table(&rows), "A    BB\nccc  d\n");
    }
}
