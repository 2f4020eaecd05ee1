//! What an agent tells the relay about itself: its version and labels. It
//! travels as one exec command right after login, before `tcpip-forward`:
//!
//! ```text
//! device-info version=0.1.0 on-demand label=site=lab3 label=gpu=a100
//! ```
//!
//! `on-demand`: the agent sleeps on an MQTT broker between uses, so the
//! relay lists it as `asleep` rather than `offline` and may wake it.
//!
//! Words without spaces or quotes, so it reads well in logs and needs no
//! escaping. Devices on stock `ssh -R` send nothing and show no version.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::limits::{MAX_LABEL_LEN, MAX_LABELS};

pub const COMMAND: &str = "device-info";

/// The word that marks an on-demand agent.
pub const ON_DEMAND: &str = "on-demand";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub version: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// An on-demand agent (woken over MQTT).
    #[serde(default)]
    pub on_demand: bool,
}

fn label_key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= MAX_LABEL_LEN
        && k.starts_with(|c: char| c.is_ascii_alphanumeric())
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

fn label_value_ok(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= MAX_LABEL_LEN
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:+@".contains(c))
}

/// Checks a label set as an agent config declares it.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!("at most {MAX_LABELS} labels"));
    }
    for (k, v) in labels {
        check_label_key(k)?;
        if !label_value_ok(v) {
            return Err(format!(
                "label {k} = {v:?}: values use letters, digits and -_./:+@ (1 to {MAX_LABEL_LEN} characters)"
            ));
        }
    }
    Ok(())
}

/// Checks a label key (as an agent's, or one an admin removes).
pub fn check_label_key(k: &str) -> Result<(), String> {
    if label_key_ok(k) {
        return Ok(());
    }
    Err(format!(
        "label key {k:?}: use letters, digits, '-', '_', '.', '/' (at most {MAX_LABEL_LEN}), starting with a letter or digit"
    ))
}

/// Parses `KEY=VALUE` (a label, or a `--label` filter).
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("label {s:?}: expected KEY=VALUE"))?;
    let one = BTreeMap::from([(k.to_string(), v.to_string())]);
    check_labels(&one)?;
    Ok((k.to_string(), v.to_string()))
}

impl DeviceInfo {
    /// This agent's info.
    pub fn ours(labels: BTreeMap<String, String>) -> DeviceInfo {
        DeviceInfo {
            version: Some(env!("CARGO_PKG_VERSION").to_string()),
            labels,
            on_demand: false,
        }
    }

    pub fn to_command(&self) -> String {
        let mut words = vec![COMMAND.to_string()];
        if let Some(v) = &self.version {
            words.push(format!("version={v}"));
        }
        if self.on_demand {
            words.push(ON_DEMAND.to_string());
        }
        for (k, v) in &self.labels {
            words.push(format!("label={k}={v}"));
        }
        words.join(" ")
    }

    /// Parses the words after `device-info`.
    pub fn parse(words: &[&str]) -> Result<DeviceInfo, String> {
        let mut info = DeviceInfo::default();
        for w in words {
            if let Some(v) = w.strip_prefix("version=") {
                if !label_value_ok(v) {
                    return Err(format!("bad version {v:?}"));
                }
                info.version = Some(v.to_string());
            } else if *w == ON_DEMAND {
                info.on_demand = true;
            } else if let Some(l) = w.strip_prefix("label=") {
                let (k, v) = parse_label(l)?;
                info.labels.insert(k, v);
            } else {
                return Err(format!("unknown device-info field {w:?}"));
            }
        }
        check_labels(&info.labels)?;
        Ok(info)
    }

    /// Whether every `(key, value)` in `want` is among the labels.
    pub fn matches(labels: &BTreeMap<String, String>, want: &[(String, String)]) -> bool {
        want.iter()
            .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_bad_labels() {
        let info = DeviceInfo::ours(BTreeMap::from([
            ("site".into(), "lab3".into()),
            ("gpu".into(), "a100".into()),
        ]));
        let cmd = info.to_command();
        assert!(cmd.starts_with("device-info version="));
        let words: Vec<&str> = cmd.split_whitespace().skip(1).collect();
        assert_eq!(DeviceInfo::parse(&words).unwrap(), info);
        assert!(!info.on_demand);
        let sleeper = DeviceInfo {
            on_demand: true,
            ..info.clone()
        };
        let cmd = sleeper.to_command();
        assert!(cmd.contains(" on-demand "), "{cmd}");
        let words: Vec<&str> = cmd.split_whitespace().skip(1).collect();
        assert_eq!(DeviceInfo::parse(&words).unwrap(), sleeper);
        assert!(DeviceInfo::parse(&["label=a b"]).is_err());
        assert!(DeviceInfo::parse(&["label=noequals"]).is_err());
        assert!(DeviceInfo::parse(&["colour=red"]).is_err());
        assert!(parse_label("gpu=").is_err());
        assert!(parse_label("=a100").is_err());
        assert_eq!(
            parse_label("gpu=a100").unwrap(),
            ("gpu".into(), "a100".into())
        );
        assert!(DeviceInfo::matches(
            &info.labels,
            &[("gpu".into(), "a100".into())]
        ));
        assert!(!DeviceInfo::matches(
            &info.labels,
            &[("gpu".into(), "h100".into())]
        ));
    }
}
