//! Text that lets stock tools reach devices by name: `Host` blocks for
//! `~/.ssh/config` (`warren ssh-config`), and `connect.sh` / `connect.bat`
//! for one device (`warren connect-script`). All of them go through
//! `warren proxy`, so the relay's host key stays pinned.

use std::path::Path;

use super::{ClientSettings, shell_quote};
use crate::protocol::Name;

/// How ssh should know a device's host key: device names repeat across
/// systems, so each (device, system) gets its own `known_hosts` entry.
pub fn host_key_alias(device: &Name, system: &Name) -> String {
    format!("{device}.{system}.warren")
}

/// `warren proxy …` with every setting spelled out, so the line works
/// without a client.toml (ssh runs it through a shell).
pub fn proxy_command(exe: &Path, s: &ClientSettings) -> String {
    let mut words = vec![
        shell_quote(&exe.to_string_lossy()),
        "proxy".into(),
        "--relay".into(),
        shell_quote(&s.relay),
        "--system".into(),
        shell_quote(s.system.as_str()),
        "--key".into(),
        shell_quote(&s.key_path.to_string_lossy()),
        "--relay-host-key".into(),
        shell_quote(&s.relay_host_key),
    ];
    if let Some(ca) = &s.relay_ca {
        words.push("--ca".into());
        words.push(shell_quote(&ca.to_string_lossy()));
    }
    words.push("%h".into());
    words.push("%p".into());
    words.join(" ")
}

/// What goes into each `Host` block.
pub struct ConfigOptions<'a> {
    pub exe: &'a Path,
    pub user: Option<&'a str>,
    /// Prepended to each `Host` alias (`tau-` gives `ssh tau-dev1`).
    pub prefix: &'a str,
}

/// `Host` blocks for `devices`, one each.
pub fn render_config(s: &ClientSettings, devices: &[Name], o: &ConfigOptions) -> String {
    let mut out = format!(
        "# Warren: devices of system {} through relay {} (written by `warren ssh-config`)\n",
        s.system, s.relay
    );
    let proxy = proxy_command(o.exe, s);
    for d in devices {
        out.push_str(&format!("Host {}{d}\n", o.prefix));
        out.push_str(&format!("    HostName {d}\n"));
        if let Some(u) = o.user {
            out.push_str(&format!("    User {u}\n"));
        }
        out.push_str(&format!(
            "    HostKeyAlias {}\n",
            host_key_alias(d, &s.system)
        ));
        out.push_str(&format!("    ProxyCommand {proxy}\n"));
    }
    out
}

/// `connect.sh`: `./connect.sh [ssh options or a command]`.
pub fn render_sh(s: &ClientSettings, device: &Name, user: Option<&str>, exe: &Path) -> String {
    let dest = match user {
        Some(u) => format!("{u}@{device}"),
        None => device.to_string(),
    };
    format!(
        "#!/bin/sh\n\
         # Connect to device {device} (system {system}) through the Warren relay {relay}.\n\
         # Written by `warren connect-script`. Arguments go to ssh after the destination,\n\
         # e.g. ./connect.sh uptime   or   ./connect.sh -L 8080:localhost:80\n\
         WARREN_RELAY={relay_q}\n\
         WARREN_SYSTEM={system_q}\n\
         WARREN_KEY={key_q}\n\
         WARREN_RELAY_HOST_KEY={fp_q}\n\
         export WARREN_RELAY WARREN_SYSTEM WARREN_KEY WARREN_RELAY_HOST_KEY\n\
         exec ssh -o {proxy_q} -o HostKeyAlias={alias} {dest_q} \"$@\"\n",
        system = s.system,
        relay = s.relay,
        relay_q = shell_quote(&s.relay),
        system_q = shell_quote(s.system.as_str()),
        key_q = shell_quote(&s.key_path.to_string_lossy()),
        fp_q = shell_quote(&s.relay_host_key),
        proxy_q = shell_quote(&format!(
            "ProxyCommand={} proxy %h %p",
            shell_quote(&exe.to_string_lossy())
        )),
        alias = host_key_alias(device, &s.system),
        dest_q = shell_quote(&dest),
    )
}

/// `connect.bat` for Windows' OpenSSH client and `warren.exe`. `key` is the
/// key's path on the Windows machine (environment variables like
/// `%USERPROFILE%` expand when the script runs).
pub fn render_bat(s: &ClientSettings, device: &Name, user: Option<&str>, key: &str) -> String {
    let dest = match user {
        Some(u) => format!("{u}@{device}"),
        None => device.to_string(),
    };
    // In a .bat file a literal % is written %%: ssh must see %h and %p.
    let lines = [
        "@echo off".to_string(),
        format!(
            "rem Connect to device {device} (system {}) through the Warren relay {}.",
            s.system, s.relay
        ),
        "rem Written by `warren connect-script`. Needs warren.exe on PATH and Windows' OpenSSH client.".into(),
        "setlocal".into(),
        format!("set \"WARREN_RELAY={}\"", s.relay),
        format!("set \"WARREN_SYSTEM={}\"", s.system),
        format!("set \"WARREN_KEY={key}\""),
        format!("set \"WARREN_RELAY_HOST_KEY={}\"", s.relay_host_key),
        format!(
            "ssh -o \"ProxyCommand=warren.exe proxy %%h %%p\" -o HostKeyAlias={} {dest} %*",
            host_key_alias(device, &s.system)
        ),
    ];
    let mut out = lines.join("\r\n");
    out.push_str("\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssh::keys;
    use std::path::PathBuf;
    use std::sync::Arc;

    fn settings() -> ClientSettings {
        ClientSettings {
            relay: "relay.example:2222".into(),
            system: Name::parse("tau").unwrap(),
            key_path: PathBuf::from("/home/a b/.ssh/id"),
            key: Arc::new(keys::generate_ed25519().unwrap()),
            relay_host_key: format!("SHA256:{}", "A".repeat(43)),
            socks_auth: None,
            relay_ca: None,
        }
    }

    #[test]
    fn host_blocks_name_each_device() {
        let s = settings();
        let devices = [Name::parse("dev1").unwrap(), Name::parse("dev2").unwrap()];
        let o = ConfigOptions {
            exe: Path::new("/usr/bin/warren"),
            user: Some("root"),
            prefix: "tau-",
        };
        let text = render_config(&s, &devices, &o);
        assert!(text.contains("Host tau-dev1\n    HostName dev1\n    User root\n    HostKeyAlias dev1.tau.warren\n"), "{text}");
        assert!(text.contains("Host tau-dev2\n"), "{text}");
        assert!(text.contains(
            "    ProxyCommand /usr/bin/warren proxy --relay relay.example:2222 --system tau --key '/home/a b/.ssh/id' --relay-host-key SHA256:"
        ), "{text}");
        assert!(text.trim_end().ends_with("%h %p"), "{text}");
        let o = ConfigOptions {
            user: None,
            prefix: "",
            ..o
        };
        assert!(!render_config(&s, &devices, &o).contains("User"));
    }

    #[test]
    fn tls_relays_carry_their_ca_into_the_proxy_command() {
        let mut s = settings();
        s.relay = "tls://relay.example:443".into();
        s.relay_ca = Some(PathBuf::from("/etc/warren/ca.pem"));
        let line = proxy_command(Path::new("/usr/bin/warren"), &s);
        assert!(
            line.contains("--relay tls://relay.example:443 ")
                && line.ends_with(" --ca /etc/warren/ca.pem %h %p"),
            "{line}"
        );
    }

    #[test]
    fn bat_escapes_percent_and_uses_crlf() {
        let s = settings();
        let text = render_bat(
            &s,
            &Name::parse("dev1").unwrap(),
            Some("pi"),
            r"%USERPROFILE%\.ssh\id_ed25519",
        );
        assert!(
            text.contains("\"ProxyCommand=warren.exe proxy %%h %%p\""),
            "{text}"
        );
        assert!(text.contains(r#"set "WARREN_KEY=%USERPROFILE%\.ssh\id_ed25519""#));
        assert!(
            text.contains("HostKeyAlias=dev1.tau.warren pi@dev1 %*\r\n"),
            "{text}"
        );
        assert!(
            text.split_terminator('\n').all(|l| l.ends_with('\r')),
            "{text:?}"
        );
    }
}
