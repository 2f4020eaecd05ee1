//! Bandwidth limits as the console shows them: a device's own and its
//! system's (issue 21), from the device JSON the API returns.

use std::collections::BTreeMap;

use serde_json::Value;

use super::esc;
use crate::protocol::rate::Rate;

/// A limit in the device JSON (`rate`, `system_rate`), as `ls` writes it.
fn text(v: &Value) -> Option<String> {
    serde_json::from_value::<Rate>(v.clone())
        .ok()
        .map(|r| r.to_string())
}

/// The devices table's cell: `1M/s`, `system 10M/s`, both, or `-`.
pub(super) fn cell(d: &Value) -> String {
    let parts: Vec<String> = [
        text(&d["rate"]),
        text(&d["system_rate"]).map(|s| format!("system {s}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() {
        return "-".into();
    }
    esc(&parts.join(" · "))
}

/// The device page's block: its limit and its system's.
pub(super) fn block(d: &Value) -> String {
    let none = || "none".to_string();
    format!(
        "<h2>Bandwidth</h2><table><tr><th style=\"width:140px\">Device limit<td>{}</tr>\
<tr><th>System limit<td>{}</tr></table><p class=mut>A limited device takes no direct path: its streams stay relayed, paced.</p>",
        esc(&text(&d["rate"]).unwrap_or_else(none)),
        esc(&text(&d["system_rate"]).unwrap_or_else(none)),
    )
}

/// Each system's limit, for the overview's system cards.
pub(super) fn per_system(devices: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for d in devices.as_array().into_iter().flatten() {
        if let (Some(sys), Some(rate)) = (d["system"].as_str(), text(&d["system_rate"])) {
            out.insert(sys.to_string(), rate);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_read_as_ls_writes_them() {
        let r = serde_json::to_value(Rate::new(10_000_000).unwrap()).unwrap();
        let d = serde_json::json!({"system": "tau", "rate": null, "system_rate": r});
        assert_eq!(cell(&d), "system 10M/s");
        assert!(block(&d).contains("<td>none</tr>"));
        assert!(block(&d).contains("<td>10M/s</tr>"));
        assert_eq!(per_system(&serde_json::json!([d]))["tau"], "10M/s");
        assert_eq!(cell(&serde_json::json!({})), "-");
    }
}
