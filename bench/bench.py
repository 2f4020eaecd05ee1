#!/usr/bin/env python3
"""Warren vs OpenSSH on loopback. Started by bench/run (which builds first).

Figures, each measured several times, alternating Warren and OpenSSH:
  1. iperf3 throughput through the relay, one stream, both directions, with
     the client legs on the default cipher and on a forced AEAD cipher;
  2. wall time of a full stock `ssh -J ... true` login to a device's sshd
     (and, as a baseline, a direct login to the same sshd);
  3. relay memory per idle connected device (1,000 devices), from
     /proc/PID/status (RssAnon, VmPTE) and /proc/PID/smaps_rollup (Anonymous).
     The load generator is examples/bench_devices.rs; against sshd it holds
     the same number of connections, each with an `ssh -R 0:…`-style forward.

Each throughput run also charges CPU time (utime+stime from /proc) to the
relay, the device side, the controller's ssh and the iperf3 server, and, for
Warren, checks that the relay logged the data stream as closed afterwards
(results.json: warren_stream_health). A failed run is recorded, the
controller connection is restarted, and the figure is topped up with at most
two extra rounds.

Everything binds 127.0.0.1 only, on ports found free by binding 127.0.0.1:0.
Stdlib only.
"""

import argparse
import atexit
import json
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
SSHD = "/usr/sbin/sshd"
SYSTEM = "tau"

# ---------------------------------------------------------------- processes

PROCS = []
PIDFILE = None
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A started process whose stdout/stderr are drained by threads into
    log files and kept in memory, so waiters can look for a line."""

    def __init__(self, name, argv, logdir, stdin=False, env=None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.lines = []
        self.cond = threading.Condition()
        self.log = open(Path(logdir) / f"{name}.log", "a", buffering=1)
        self.log.write(f"$ {shlex.join(self.argv)}\n")
        self.p = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            bufsize=1,
        )
        self.pid = self.p.pid
        PROCS.append(self)
        if PIDFILE:
            with open(PIDFILE, "a") as f:
                f.write(f"{self.pid}\n")
        for stream in (self.p.stdout, self.p.stderr):
            threading.Thread(target=self._drain, args=(stream,), daemon=True).start()

    def _drain(self, stream):
        for line in stream:
            line = ANSI.sub("", line.rstrip("\n"))
            self.log.write(line + "\n")
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_for(self, pattern, timeout=30.0, count=1):
        """Waits until `count` lines match `pattern`; returns the matches."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                hits = [m for m in map(rx.search, self.lines) if m]
                if len(hits) >= count:
                    return hits
                if self.p.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited ({self.p.returncode}) before printing {pattern!r}:\n"
                        + "\n".join(self.lines[-20:])
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(
                        f"{self.name} did not print {pattern!r} within {timeout}s:\n"
                        + "\n".join(self.lines[-20:])
                    )
                self.cond.wait(min(left, 0.5))

    def find(self, pattern):
        rx = re.compile(pattern)
        with self.cond:
            return [m for m in map(rx.search, self.lines) if m]

    def send(self, text):
        self.p.stdin.write(text)
        self.p.stdin.flush()

    def close_stdin(self):
        try:
            self.p.stdin.close()
        except Exception:
            pass

    def stop(self, grace=3.0):
        """Terminates the process and its descendants (by pid)."""
        if self.p.poll() is None:
            tree = descendants(self.pid)
            for pid in [self.pid] + tree:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                pass
            for pid in [self.pid] + tree:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                self.p.wait(2)
            except subprocess.TimeoutExpired:
                pass


def stop_all():
    for proc in reversed(PROCS):
        try:
            proc.stop(grace=2.0)
        except Exception as e:  # keep stopping the others
            log(f"stopping {proc.name}: {e}")
    PROCS.clear()


def on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def proc_table():
    """pid -> (ppid, utime+stime ticks) for every process."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        rest = s[s.rfind(")") + 2 :].split()
        out[int(d)] = (int(rest[1]), int(rest[11]) + int(rest[12]))
    return out


def descendants(pid, table=None):
    table = table or proc_table()
    children = {}
    for p, (pp, _) in table.items():
        children.setdefault(pp, []).append(p)
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def cpu_ticks(pids, tree=False):
    """utime+stime (ticks) summed over `pids` (and their descendants)."""
    table = proc_table()
    total = 0
    for pid in pids:
        group = [pid] + (descendants(pid, table) if tree else [])
        total += sum(table[p][1] for p in group if p in table)
    return total


def memory(pid, tree=False):
    """KiB of RssAnon, VmPTE (status) and Anonymous (smaps_rollup), summed
    over the process (and its descendants)."""
    pids = [pid] + (descendants(pid) if tree else [])
    acc = {"RssAnon": 0, "VmPTE": 0, "Anonymous": 0, "processes": 0}
    for p in pids:
        try:
            status = Path(f"/proc/{p}/status").read_text()
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        acc["processes"] += 1
        for key, text in (("RssAnon", status), ("VmPTE", status), ("Anonymous", rollup)):
            m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
            if m:
                acc[key] += int(m.group(1))
    return acc


def run(argv, timeout=60, check=True, **kw):
    argv = [str(a) for a in argv]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


# ---------------------------------------------------------------- stats


def pct(values, p):
    v = sorted(values)
    if not v:
        return None
    k = (len(v) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def summary(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {
        "n": len(vals),
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "p90": pct(vals, 90),
    }


# ---------------------------------------------------------------- setup


def keygen(path, comment="bench"):
    run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-C", comment, "-f", path])


def fingerprint(pub):
    return run(["ssh-keygen", "-lf", pub]).stdout.split()[1]


class Sshd:
    """A stock sshd on a free loopback port with its own keys and config."""

    def __init__(self, name, work, authorized, extra=""):
        self.dir = Path(work) / name
        self.dir.mkdir()
        keygen(self.dir / "host", f"{name}-host")
        (self.dir / "authorized_keys").write_text(Path(authorized).read_text())
        self.port = free_port()
        d = self.dir
        self.config = d / "sshd_config"
        self.config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {d}/host\n"
            f"AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            f"PidFile {d}/sshd.pid\nPermitRootLogin prohibit-password\n"
            "AllowTcpForwarding yes\nGatewayPorts no\nX11Forwarding no\nPrintMotd no\n"
            "UseDNS no\nLogLevel INFO\n" + extra
        )
        os.makedirs("/run/sshd", exist_ok=True)
        self.proc = Proc(name, [SSHD, "-D", "-e", "-f", self.config], work)
        self.proc.wait_for("Server listening on", 20)
        self.host_pub = (d / "host.pub").read_text().split()[:2]
        self.fingerprint = fingerprint(d / "host.pub")

    def known(self, host):
        return f"{host} {' '.join(self.host_pub)}"


class WarrenRelay:
    def __init__(self, name, work, warren):
        self.warren = warren
        self.data = Path(work) / name
        self.port = free_port()
        self.proc = Proc(
            name,
            [warren, "relay", "--listen", f"127.0.0.1:{self.port}", "--data", self.data],
            work,
        )
        self.proc.wait_for("relay listening", 20)
        self.fingerprint = run([warren, "admin", "--data", self.data, "host-key"]).stdout.strip()
        self.host_pub = (self.data / "host_key.pub").read_text().split()[:2]

    def admin(self, *args):
        return run([self.warren, "admin", "--data", self.data, *args])


def kex_ciphers(proc):
    """The ciphers ssh -v reports for each direction."""
    return {
        m.group(1): m.group(2)
        for m in proc.find(r"kex: (server->client|client->server) cipher: (\S+)")
    }


# ---------------------------------------------------------------- the benchmark


class Bench:
    def __init__(self, a):
        self.a = a
        self.work = Path(a.work)
        self.logs = self.work / "logs"
        self.logs.mkdir()
        self.user = run(["id", "-un"]).stdout.strip()
        self.agent_logs = []  # agents replaced after a failed run
        self.results = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {
                "nproc": os.cpu_count(),
                "uname": " ".join(os.uname()),
                "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
            },
            "versions": {
                "ssh -V": run(["ssh", "-V"]).stderr.strip(),
                "sshd": SSHD,
                "iperf3": run(["iperf3", "--version"]).stdout.splitlines()[0],
                "warren": run([a.warren, "--version"]).stdout.strip(),
                "git": run(["git", "rev-parse", "HEAD"], check=False).stdout.strip(),
                "git_dirty": bool(run(["git", "status", "--porcelain"], check=False).stdout.strip()),
            },
            "settings": {
                "iperf_seconds": a.iperf_seconds,
                "iperf_omit": 1,
                "reps": a.reps,
                "logins_per_round": a.logins,
                "login_rounds": a.reps,
                "devices": a.devices,
                "openssh_devices": a.openssh_devices,
                "agent_keepalive_timeout": a.agent_keepalive,
            },
            "commands": {},
            "ciphers": {},
            "throughput": [],
            "login": [],
            "memory": [],
            "notes": [],
        }

    # --- shared world: keys, device sshd, iperf3, Warren relay + agent, OpenSSH relay

    def setup(self):
        w = self.work
        log("setting up keys, sshds, iperf3, relays")
        self.ukey = w / "user_key"
        keygen(self.ukey, "controller")
        # The device's own sshd: the login target, the same for both relays.
        self.dev_sshd = Sshd("device_sshd", w, f"{self.ukey}.pub")
        # The OpenSSH relay.
        self.orelay = Sshd("openssh_relay", w, f"{self.ukey}.pub", "MaxStartups 100:30:200\n")
        # iperf3 behind the device.
        # One iperf3 server per system (same settings), so that a test stuck
        # in one system cannot make the other's server busy.
        self.iperf = {}
        for system in ("warren", "openssh"):
            self.start_iperf(system, free_port())

        # Warren relay, system, controller key (same key as for OpenSSH) and device key.
        self.wrelay = WarrenRelay("warren_relay", w, self.a.warren)
        self.wrelay.admin("system", "add", SYSTEM)
        self.wrelay.admin("key", "add", "--system", SYSTEM, "--role", "controller", "--name", "alice", f"{self.ukey}.pub")
        devkey = w / "dev1_key"
        run([self.a.warren, "keygen", devkey])
        self.wrelay.admin("key", "add", "--system", SYSTEM, "--role", "device", "--name", "dev1", f"{devkey}.pub")
        agent_toml = w / "agent.toml"
        agent_toml.write_text(
            f'relay = "127.0.0.1:{self.wrelay.port}"\nsystem = "{SYSTEM}"\nname = "dev1"\n'
            f'key = "{devkey}"\nrelay_host_key = "{self.wrelay.fingerprint}"\n'
            f'allow = ["22=127.0.0.1:{self.dev_sshd.port}", "5201=127.0.0.1:{self.iperf["warren"].port}"]\n'
            f'keepalive_timeout = "{self.a.agent_keepalive}"\n'
        )
        # russh logs the negotiated algorithms at debug: that is how the agent
        # leg's cipher is known.
        self.agent_toml = agent_toml
        self.start_agent()

        # Ports the OpenSSH relay will listen on for the agentless device (ssh -R).
        self.r22 = free_port()
        self.r5201 = free_port()

        known = w / "known_hosts"
        known.write_text(
            "\n".join(
                [
                    f"[127.0.0.1]:{self.wrelay.port} {' '.join(self.wrelay.host_pub)}",
                    self.orelay.known(f"[127.0.0.1]:{self.orelay.port}"),
                    self.dev_sshd.known("dev1"),
                    self.dev_sshd.known(f"[127.0.0.1]:{self.r22}"),
                    self.dev_sshd.known(f"[127.0.0.1]:{self.dev_sshd.port}"),
                ]
            )
            + "\n"
        )
        # ssh -J does not pass -i to the jump host: everything comes from here.
        self.cfg = w / "ssh_config"
        self.cfg.write_text(
            "Host *\n"
            f"  IdentityFile {self.ukey}\n  IdentitiesOnly yes\n  BatchMode yes\n"
            f"  StrictHostKeyChecking yes\n  UserKnownHostsFile {known}\n"
            "  GlobalKnownHostsFile /dev/null\n  UpdateHostKeys no\n  CheckHostIP no\n"
            "  ControlMaster no\n  ControlPath none\n  AddressFamily inet\n  ConnectTimeout 20\n"
        )
        self.results["ports"] = {
            "warren_relay": self.wrelay.port,
            "openssh_relay": self.orelay.port,
            "device_sshd": self.dev_sshd.port,
            "iperf3_warren": self.iperf["warren"].port,
            "iperf3_openssh": self.iperf["openssh"].port,
            "openssh_relay_forward_22": self.r22,
            "openssh_relay_forward_5201": self.r5201,
        }
        self.results["files"] = {
            "ssh_config": self.cfg.read_text(),
            "agent.toml": agent_toml.read_text(),
            "openssh_relay_sshd_config": self.orelay.config.read_text(),
            "device_sshd_config": self.dev_sshd.config.read_text(),
        }

    def start_iperf(self, system, port):
        p = Proc(
            f"iperf3_server_{system}",
            ["iperf3", "-s", "-B", "127.0.0.1", "-p", port, "--forceflush",
             "--idle-timeout", "20", "--rcv-timeout", "10000"],
            self.logs,
        )
        p.port = port
        p.wait_for("Server listening on", 20)
        self.iperf[system] = p

    def start_agent(self):
        # russh logs the negotiated algorithms at debug: that is how the agent
        # leg's cipher is known.
        env = dict(os.environ, WARREN_LOG="info,russh::client::kex=debug")
        self.agent = Proc("warren_agent", [self.a.warren, "agent", "--config", self.agent_toml], self.logs, env=env)
        self.agent.wait_for("online: registered", 30)

    def restart(self, proc):
        proc.stop()
        PROCS.remove(proc)

    def recover(self, system, cipher, ctl, dev):
        """After a failed run: new controller connection, new device side
        (agent or ssh -R) and a fresh iperf3 server, so that one stuck run
        does not fail the following ones. Returns the new (ctl, dev)."""
        log(f"  {system}: failed run; restarting its controller ssh, device side and iperf3 server")
        self.results.setdefault("bench_restarts", []).append(
            {"system": system, "cipher": cipher or "default", "at": time.strftime("%H:%M:%S")})
        self.restart(ctl[system])
        port = self.iperf[system].port
        self.restart(self.iperf[system])
        self.start_iperf(system, port)
        if system == "warren":
            self.agent_logs.append(self.agent)
            self.restart(self.agent)
            self.start_agent()
        else:
            self.restart(dev)
            dev = self.openssh_device(cipher)
        ctl[system] = self.controller(system, cipher, free_port())
        return dev

    def ssh(self, *args):
        return ["ssh", "-F", self.cfg, *args]

    def openssh_device(self, cipher):
        """The agentless device: ssh -R to the OpenSSH relay (port 22 and iperf3)."""
        c = ["-c", cipher] if cipher else []
        argv = self.ssh(
            "-N", "-v", "-o", "ExitOnForwardFailure=yes", *c,
            "-R", f"127.0.0.1:{self.r5201}:127.0.0.1:{self.iperf['openssh'].port}",
            "-R", f"127.0.0.1:{self.r22}:127.0.0.1:{self.dev_sshd.port}",
            "-p", self.orelay.port, f"{self.user}@127.0.0.1",
        )
        p = Proc(f"openssh_device_{cipher or 'default'}", argv, self.logs)
        p.wait_for(r"remote forward success for: listen", 30, count=2)
        p.wait_for(r"all expected forwarding replies received", 30)
        return p

    # --- 1. throughput

    def controller(self, system, cipher, lport):
        c = ["-c", cipher] if cipher else []
        if system == "warren":
            argv = self.ssh(
                "-N", "-v", "-o", "ExitOnForwardFailure=yes", *c,
                "-L", f"127.0.0.1:{lport}:dev1:5201",
                "-p", self.wrelay.port, f"{SYSTEM}@127.0.0.1",
            )
        else:
            argv = self.ssh(
                "-N", "-v", "-o", "ExitOnForwardFailure=yes", *c,
                "-L", f"127.0.0.1:{lport}:127.0.0.1:{self.r5201}",
                "-p", self.orelay.port, f"{self.user}@127.0.0.1",
            )
        p = Proc(f"{system}_controller_{cipher or 'default'}", argv, self.logs)
        p.wait_for(rf"Local forwarding listening on 127\.0\.0\.1 port {lport}", 30)
        p.lport = lport
        return p

    def cpu_groups(self, system, ctl, dev):
        """Processes whose CPU time a throughput run is charged to."""
        if system == "warren":
            return {
                "relay": ([self.wrelay.proc.pid], False),
                "device_side": ([self.agent.pid], False),
                "controller_ssh": ([ctl.pid], False),
                "iperf3_server": ([self.iperf[system].pid], False),
            }
        return {
            "relay": ([self.orelay.proc.pid], True),
            "device_side": ([dev.pid], False),
            "controller_ssh": ([ctl.pid], False),
            "iperf3_server": ([self.iperf[system].pid], False),
        }

    def iperf_once(self, system, cipher, direction, lport, ctl, dev):
        reverse = direction == "device_to_controller"
        argv = [
            "iperf3", "-c", "127.0.0.1", "-p", str(lport), "-t", str(self.a.iperf_seconds),
            "-O", "1", "-J", "--connect-timeout", "10000",
        ] + (["-R"] if reverse else [])
        groups = self.cpu_groups(system, ctl, dev)
        self.wait_iperf_idle(system)
        closed_before = len(self.data_streams_closed())
        # The iperf3 server may still be finishing the previous test (data in
        # flight through the tunnels): retry "busy" for a while.
        deadline = time.monotonic() + 30
        busy_retries = 0
        while True:
            before = {k: cpu_ticks(p, t) for k, (p, t) in groups.items()}
            t0 = time.monotonic()
            try:
                r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                   timeout=self.a.iperf_seconds + 16)
                out = json.loads(r.stdout or "{}")
            except (subprocess.TimeoutExpired, json.JSONDecodeError) as e:
                out = {"error": str(e)}
            wall = time.monotonic() - t0
            after = {k: cpu_ticks(p, t) for k, (p, t) in groups.items()}
            if "busy" in str(out.get("error", "")) and time.monotonic() < deadline:
                busy_retries += 1
                time.sleep(0.25)
                continue
            break
        cpu = {k: (after[k] - before[k]) / CLK_TCK for k in groups}
        rec = {
            "system": system,
            "cipher": cipher or "default",
            "direction": direction,
            "command": shlex.join(argv),
            "wall_s": round(wall, 3),
            "cpu_s": cpu,
            "cpu_pct_of_wall": {k: round(100 * v / wall, 1) for k, v in cpu.items()},
            "busy_retries": busy_retries,
        }
        if "error" in out or "end" not in out:
            rec["error"] = out.get("error", "no result")
            rec["mbit_s"] = None
            log(f"  {system:7} {direction:21} FAILED: {rec['error']}")
        else:
            recv = out["end"]["sum_received"]
            rec["mbit_s"] = recv["bits_per_second"] / 1e6
            rec["bytes"] = recv["bytes"]
            rec["cpu_s_per_gb"] = {k: round(v / (recv["bytes"] / 1e9), 3) for k, v in cpu.items()}
            log(f"  {system:7} {direction:21} {rec['mbit_s']:8.0f} Mbit/s  cpu% "
                + " ".join(f"{k}={v}" for k, v in rec["cpu_pct_of_wall"].items()))
        if system == "warren" and rec["mbit_s"]:
            rec["relay_logged_data_stream_closed"] = self.wait_data_stream_closed(closed_before)
        self.results["throughput"].append(rec)
        return rec["mbit_s"] is not None

    def agent_cipher(self):
        """The agent-relay leg's cipher, from the agent's russh debug line."""
        found = self.agent.find(r"negotiated algorithms: .*")
        if not found:
            return "unknown"
        m = re.search(r'cipher: Name\("([^"]+)"\)', found[-1].group(0))
        return m.group(1) if m else found[-1].group(0)

    def wait_iperf_idle(self, system, timeout=20.0):
        """Waits until the iperf3 server has finished its last test: it prints
        "Server listening" once at start and again after each test."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listening = len(self.iperf[system].find(r"Server listening on"))
            accepted = len(self.iperf[system].find(r"Accepted connection from"))
            if listening > accepted:
                return True
            time.sleep(0.05)
        self.results["notes"].append(f"{system} iperf3 server still busy after 20 s; ran the next test anyway")
        return False

    def data_streams_closed(self):
        """The Warren relay's audit lines for closed iperf3 data streams."""
        closed = self.wrelay.proc.find(
            r'result="closed".*target="dev1:5201".*bytes_to_device=(\d+) bytes_from_device=(\d+)')
        return [m for m in closed if max(int(m.group(1)), int(m.group(2))) > 10_000_000]

    def wait_data_stream_closed(self, before, timeout=3.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.data_streams_closed()) > before:
                return True
            time.sleep(0.05)
        return False

    def stream_health(self):
        """What the Warren relay and agent logs say about the throughput runs."""
        ok_runs = [r for r in self.results["throughput"] if r["system"] == "warren" and r["mbit_s"]]
        stuck = [r for r in ok_runs if not r.get("relay_logged_data_stream_closed")]
        h = {
            "warren_successful_runs": len(ok_runs),
            "warren_failed_runs": sum(1 for r in self.results["throughput"] if r["system"] == "warren" and not r["mbit_s"]),
            "openssh_failed_runs": sum(1 for r in self.results["throughput"] if r["system"] == "openssh" and not r["mbit_s"]),
            "relay_data_streams_not_closed_3s_after_run": len(stuck),
            "stuck_runs": [f"{r['cipher']} {r['direction']}" for r in stuck],
            "relay_refusals": [m.group(0) for m in self.wrelay.proc.find(r'result="refused".*')],
            "agent_reconnects": [m.group(0) for a in self.agent_logs + [self.agent] for m in a.find(r"offline: .*")],
            "bench_restarts_after_failed_runs": self.results.get("bench_restarts", []),
        }
        self.results["warren_stream_health"] = h
        log(f"  Warren: {len(stuck)} of {len(ok_runs)} successful runs left their data "
            f"stream open at the relay; {len(h['relay_refusals'])} refusals; {len(h['agent_reconnects'])} agent reconnects")

    def cipher_accepted(self, cipher):
        """Whether both relays accept `cipher` from stock ssh."""
        ok = {}
        for system, port, user in (("warren", self.wrelay.port, SYSTEM), ("openssh", self.orelay.port, self.user)):
            r = run(self.ssh("-c", cipher, "-p", port, f"{user}@127.0.0.1", "true" if system == "openssh" else "ls"),
                    check=False, timeout=30)
            ok[system] = r.returncode == 0
            if not ok[system]:
                ok[f"{system}_error"] = r.stderr.strip().splitlines()[-1:] if r.stderr else ""
        return ok

    def throughput(self):
        self.results["commands"]["throughput"] = {
            "iperf3_server_warren": shlex.join(self.iperf["warren"].argv),
            "iperf3_server_openssh": shlex.join(self.iperf["openssh"].argv),
            "warren_agent": shlex.join(self.agent.argv),
            "warren_relay": shlex.join(self.wrelay.proc.argv),
            "openssh_relay": shlex.join(self.orelay.proc.argv),
        }
        ciphers = [None]
        for c in self.a.ciphers:
            acc = self.cipher_accepted(c)
            self.results["ciphers"][f"accepted:{c}"] = acc
            if acc.get("warren") and acc.get("openssh"):
                ciphers.append(c)
            else:
                note = f"cipher {c} skipped: accepted by {acc}"
                log(note)
                self.results["notes"].append(note)
        for cipher in ciphers:
            name = cipher or "default"
            log(f"throughput, client-leg cipher {name}")
            dev = self.openssh_device(cipher)
            ctl = {s: self.controller(s, cipher, free_port()) for s in ("warren", "openssh")}
            self.results["ciphers"][name] = {
                "warren_controller_leg": kex_ciphers(ctl["warren"]),
                "warren_agent_leg": self.agent_cipher(),
                "openssh_controller_leg": kex_ciphers(ctl["openssh"]),
                "openssh_device_leg": kex_ciphers(dev),
            }
            if cipher:
                self.results["notes"].append(
                    f"with -c {cipher}: both OpenSSH client legs (controller and ssh -R device) use it; Warren's "
                    "controller leg uses it but the agent-relay leg stays chacha20-poly1305 (russh default, no option)")
            self.results["commands"]["throughput"][name] = {
                "warren_controller": shlex.join(ctl["warren"].argv),
                "openssh_controller": shlex.join(ctl["openssh"].argv),
                "openssh_device": shlex.join(dev.argv),
            }
            def successes(system, direction):
                return sum(1 for r in self.results["throughput"] if r["system"] == system and
                           r["cipher"] == name and r["direction"] == direction and r["mbit_s"])

            # Alternate the systems (and which goes first); top up with at
            # most two extra rounds for figures that had failed runs.
            for rnd in range(self.a.reps + 2):
                order = ("warren", "openssh") if rnd % 2 == 0 else ("openssh", "warren")
                for direction in ("device_to_controller", "controller_to_device"):
                    for system in order:
                        if rnd >= self.a.reps and successes(system, direction) >= self.a.reps:
                            continue
                        ok = self.iperf_once(system, cipher, direction, ctl[system].lport, ctl[system], dev)
                        if not ok:
                            dev = self.recover(system, cipher, ctl, dev)
            for p in list(ctl.values()) + [dev]:
                p.stop()
                PROCS.remove(p)
        self.stream_health()

    # --- 2. ssh -J login time

    def logins(self):
        log("ssh -J login time")
        dev = self.openssh_device(None)
        cmds = {
            "warren": self.ssh("-J", f"{SYSTEM}@127.0.0.1:{self.wrelay.port}", f"{self.user}@dev1", "true"),
            "openssh": self.ssh("-J", f"{self.user}@127.0.0.1:{self.orelay.port}", "-p", self.r22,
                                f"{self.user}@127.0.0.1", "true"),
            # Baseline: the same login straight to the device's sshd, no relay.
            "direct": self.ssh("-p", self.dev_sshd.port, f"{self.user}@127.0.0.1", "true"),
        }
        self.results["commands"]["login"] = {k: shlex.join(map(str, v)) for k, v in cmds.items()}
        self.results["commands"]["login"]["openssh_device"] = shlex.join(dev.argv)
        # One unmeasured login each (warms caches, checks that both work).
        for system, argv in cmds.items():
            run(argv, timeout=60)
        for rnd in range(self.a.reps):
            for i in range(self.a.logins):
                systems = ("warren", "openssh", "direct")
                k = (rnd * self.a.logins + i) % 3
                for system in systems[k:] + systems[:k]:
                    t0 = time.perf_counter()
                    r = subprocess.run([str(a) for a in cmds[system]], capture_output=True, text=True,
                                       stdin=subprocess.DEVNULL, timeout=60)
                    dt = time.perf_counter() - t0
                    self.results["login"].append({
                        "system": system, "round": rnd, "ok": r.returncode == 0,
                        "ms": round(dt * 1000, 2),
                        **({} if r.returncode == 0 else {"stderr": r.stderr[-500:]}),
                    })
            for s in ("warren", "openssh", "direct"):
                ms = [x["ms"] for x in self.results["login"] if x["system"] == s and x["round"] == rnd and x["ok"]]
                log(f"  round {rnd}: {s:7} median {statistics.median(ms):.0f} ms (n={len(ms)})" if ms
                    else f"  round {rnd}: {s:7} all logins failed")
        dev.stop()
        PROCS.remove(dev)

    # --- 3. memory per idle device

    def settle(self, pid, tree, seconds):
        time.sleep(seconds)
        return memory(pid, tree)

    def memory_warren(self, rep):
        relay = WarrenRelay(f"mem_warren_relay_{rep}", self.work, self.a.warren)
        n = self.a.devices
        argv = [
            self.a.devices_bin, "--relay", f"127.0.0.1:{relay.port}", "--data", relay.data,
            "--host-key", relay.fingerprint, "--n", n, "--wait-go", "--concurrency", "32",
        ]
        gen = Proc(f"mem_warren_devices_{rep}", argv, self.logs, stdin=True)
        gen.wait_for(r"^keys-registered", 300)
        # Let the relay's store watcher see the new keys before the baseline.
        before = self.settle(relay.proc.pid, False, 2.0)
        gen_before = memory(gen.pid)
        gen.send("go\n")
        up = gen.wait_for(r"^all-up (\d+) ([\d.]+)", 300)[0]
        after = self.settle(relay.proc.pid, False, 3.0)
        gen_after = memory(gen.pid)
        online = json.loads(relay.admin("ls", "--json").stdout)
        n_online = sum(1 for d in online if d.get("online") is True)
        gen.close_stdin()
        gen.wait_for(r"^still-open", 30)
        rec = self.mem_record("warren", rep, n, before, after, float(up.group(2)), shlex.join(map(str, argv)))
        rec["devices_online_in_store"] = n_online
        rec["load_generator_kib_per_device"] = {
            k: round((gen_after[k] - gen_before[k]) / n, 2) for k in ("RssAnon", "VmPTE", "Anonymous")
        }
        rec["still_open"] = gen.find(r"^still-open.*")[0].group(0)
        gen.stop()
        relay.proc.stop()
        PROCS.remove(gen)
        PROCS.remove(relay.proc)
        return rec

    def memory_openssh(self, rep):
        sshd = Sshd(f"mem_openssh_relay_{rep}", self.work, f"{self.ukey}.pub",
                    "MaxStartups 100:30:200\nLogLevel ERROR\n")
        n = self.a.openssh_devices
        argv = [
            self.a.devices_bin, "--relay", f"127.0.0.1:{sshd.port}", "--host-key", sshd.fingerprint,
            "--n", n, "--wait-go", "--concurrency", "8", "--openssh-key", self.ukey, "--user", self.user,
        ]
        gen = Proc(f"mem_openssh_devices_{rep}", argv, self.logs, stdin=True)
        gen.wait_for(r"^keys-registered", 60)
        before = self.settle(sshd.proc.pid, True, 1.0)
        gen.send("go\n")
        up = gen.wait_for(r"^all-up (\d+) ([\d.]+)", 600)[0]
        after = self.settle(sshd.proc.pid, True, 3.0)
        gen.close_stdin()
        gen.wait_for(r"^still-open", 30)
        rec = self.mem_record("openssh", rep, n, before, after, float(up.group(2)), shlex.join(map(str, argv)))
        rec["still_open"] = gen.find(r"^still-open.*")[0].group(0)
        gen.stop()
        sshd.proc.stop()
        PROCS.remove(gen)
        PROCS.remove(sshd.proc)
        return rec

    def mem_record(self, system, rep, n, before, after, up_s, command):
        per = {k: round((after[k] - before[k]) / n, 2) for k in ("RssAnon", "VmPTE", "Anonymous")}
        per["RssAnon+VmPTE"] = round(per["RssAnon"] + per["VmPTE"], 2)
        rec = {
            "system": system, "rep": rep, "n": n, "before_kib": before, "after_kib": after,
            "kib_per_device": per, "connect_all_s": up_s, "command": command,
        }
        log(f"  {system:7} rep {rep}: {per['RssAnon+VmPTE']:.1f} KiB/device (RssAnon+VmPTE), "
            f"{per['Anonymous']:.1f} KiB Anonymous; {after['processes']} processes; "
            f"{n} up in {up_s:.1f}s")
        return rec

    def memory(self):
        log(f"relay memory per idle device ({self.a.devices} Warren, {self.a.openssh_devices} OpenSSH)")
        for rep in range(self.a.reps):
            order = (self.memory_warren, self.memory_openssh) if rep % 2 == 0 else (self.memory_openssh, self.memory_warren)
            for f in order:
                self.results["memory"].append(f(rep))
        procs = [m["after_kib"]["processes"] - m["before_kib"]["processes"] for m in self.results["memory"]
                 if m["system"] == "openssh"]
        if procs:
            self.results["notes"].append(
                f"OpenSSH relay: {statistics.median(procs) / self.a.openssh_devices:.2f} sshd processes per device "
                f"(devices log in as {self.user}; sshd skips the post-auth privsep child for root, so a "
                "non-root relay account would add a process per device)")

    # --- report

    def table(self):
        R = self.results
        rows = []

        def fmt(s, unit, digits=0):
            if not s:
                return "failed"
            def num(x):
                x = round(x, digits)
                return f"{x + 0.0 if x else 0:.{digits}f}"  # no "-0"
            return f"{num(s['median'])}{unit} ({num(s['min'])}–{num(s['max'])})"

        def ratio(w, o):
            if not w or not o or w["median"] <= 0 or o["median"] <= 0:
                return "n/a"
            return f"{w['median'] / o['median']:.2f}"

        figures = {}
        for rec in R["throughput"]:
            key = ("throughput", rec["cipher"], rec["direction"])
            figures.setdefault(key, {"warren": [], "openssh": []})[rec["system"]].append(rec["mbit_s"])
        def failed(vals):
            n = sum(1 for x in vals if x is None)
            return f"; {n} of {len(vals)} runs failed" if n else ""

        for (_, cipher, direction), v in figures.items():
            w, o = summary(v["warren"]), summary(v["openssh"])
            label = direction.replace("_to_", " → ").replace("_", " ")
            rows.append((f"Throughput {label}, client legs {cipher} (Mbit/s, higher is better)",
                         fmt(w, "", 0) + failed(v["warren"]), fmt(o, "", 0) + failed(v["openssh"]), ratio(w, o)))
        for stat in ("median", "p90"):
            vals = {}
            for s in ("warren", "openssh"):
                ms = [x["ms"] for x in R["login"] if x["system"] == s and x["ok"]]
                rounds = [
                    pct([x["ms"] for x in R["login"] if x["system"] == s and x["ok"] and x["round"] == r], 50 if stat == "median" else 90)
                    for r in range(self.a.reps)
                ]
                rounds = [r for r in rounds if r is not None]
                vals[s] = {"median": pct(ms, 50 if stat == "median" else 90), "min": min(rounds), "max": max(rounds)} if ms else None
            n = sum(1 for x in R["login"] if x["system"] == "warren")
            rows.append((f"`ssh -J … true` login, {stat} of {n} (ms; range = per-round {stat}s; lower is better)",
                         fmt(vals["warren"], "", 0), fmt(vals["openssh"], "", 0), ratio(vals["warren"], vals["openssh"])))
        # What the relay adds: login time minus a direct login to the same sshd.
        def login_ms(s, r=None):
            return [x["ms"] for x in R["login"] if x["system"] == s and x["ok"] and (r is None or x["round"] == r)]
        if login_ms("direct"):
            base = statistics.median(login_ms("direct"))
            over = {}
            for s in ("warren", "openssh"):
                per_round = [statistics.median(login_ms(s, r)) - statistics.median(login_ms("direct", r))
                             for r in range(self.a.reps) if login_ms(s, r) and login_ms("direct", r)]
                over[s] = ({"median": statistics.median(login_ms(s)) - base, "min": min(per_round), "max": max(per_round)}
                           if login_ms(s) and per_round else None)
            rows.append((f"Login time the relay adds: median minus a direct `ssh … true` to the same sshd "
                         f"(direct median {base:.0f} ms; range = per round)",
                         fmt(over["warren"], "", 0), fmt(over["openssh"], "", 0), ratio(over["warren"], over["openssh"])))
        for key, label in (("RssAnon+VmPTE", "RssAnon+VmPTE"), ("Anonymous", "smaps_rollup Anonymous")):
            w = summary([m["kib_per_device"][key] for m in R["memory"] if m["system"] == "warren"])
            o = summary([m["kib_per_device"][key] for m in R["memory"] if m["system"] == "openssh"])
            rows.append((f"Relay memory per idle device, {label} (KiB, lower is better)",
                         fmt(w, "", 1), fmt(o, "", 1), ratio(w, o)))
        out = ["| Figure | Warren median (min–max) | OpenSSH median (min–max) | Warren/OpenSSH |",
               "|---|---|---|---|"]
        out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]

        # CPU per GB moved, per process, median over runs.
        cpu_rows = ["", "CPU seconds per GB moved (median over runs; relay = all sshd processes for OpenSSH):", "",
                    "| System | Cipher | Direction | relay | device side | controller ssh | iperf3 server |",
                    "|---|---|---|---|---|---|---|"]
        seen = {}
        for rec in R["throughput"]:
            if rec.get("cpu_s_per_gb"):
                seen.setdefault((rec["system"], rec["cipher"], rec["direction"]), []).append(rec["cpu_s_per_gb"])
        for (s, c, d), lst in sorted(seen.items()):
            med = {k: statistics.median(x[k] for x in lst) for k in lst[0]}
            cpu_rows.append(f"| {s} | {c} | {d.replace('_to_', '→')} | {med['relay']:.2f} | {med['device_side']:.2f} | "
                            f"{med['controller_ssh']:.2f} | {med['iperf3_server']:.2f} |")
        h = R.get("warren_stream_health")
        if h:
            restarts = h["bench_restarts_after_failed_runs"]
            cpu_rows += ["", f"Failed throughput runs: Warren {h['warren_failed_runs']}, OpenSSH {h['openssh_failed_runs']} "
                         f"(the bench restarted the failed system's controller, device side and iperf3 server "
                         f"{len(restarts)} times). Warren runs whose data stream the relay had not logged as closed "
                         f"3 s after iperf3 finished: {h['relay_data_streams_not_closed_3s_after_run']} of "
                         f"{h['warren_successful_runs']} successful runs. Agent reconnects: {len(h['agent_reconnects'])}."]
        R["table_markdown"] = "\n".join(out + cpu_rows)
        return R["table_markdown"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--pids")
    ap.add_argument("--warren", required=True)
    ap.add_argument("--devices", dest="devices_bin", required=True)
    ap.add_argument("--out", required=True)
    quick = os.environ.get("BENCH_QUICK") == "1"
    ap.add_argument("--reps", type=int, default=1 if quick else 3)
    ap.add_argument("--iperf-seconds", type=int, default=2 if quick else 5)
    ap.add_argument("--logins", type=int, default=3 if quick else 10)
    ap.add_argument("--n-devices", dest="n_devices", type=int, default=100 if quick else 1000)
    ap.add_argument("--openssh-devices", type=int, default=None)
    ap.add_argument("--ciphers", nargs="*", default=["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"])
    ap.add_argument("--agent-keepalive", default="10s",
                    help="agent keepalive_timeout: how soon a wedged agent connection is replaced")
    ap.add_argument("--only", nargs="*", default=["throughput", "login", "memory"])
    a = ap.parse_args()
    a.devices = a.n_devices
    if a.openssh_devices is None:
        a.openssh_devices = a.devices
    a.warren = str(Path(a.warren).resolve())
    a.devices_bin = str(Path(a.devices_bin).resolve())

    global PIDFILE
    PIDFILE = a.pids
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    atexit.register(stop_all)

    b = Bench(a)
    t0 = time.monotonic()
    try:
        b.setup()
        if "throughput" in a.only:
            b.throughput()
        if "login" in a.only:
            b.logins()
        if "memory" in a.only:
            b.memory()
    finally:
        b.results["elapsed_s"] = round(time.monotonic() - t0, 1)
        b.results["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        stop_all()
        table = b.table()
        Path(a.out).write_text(json.dumps(b.results, indent=2, default=str) + "\n")
    print(table)
    print(f"\nraw numbers, commands, versions and ciphers: {a.out} (run took {b.results['elapsed_s']:.0f}s)")


if __name__ == "__main__":
    main()
