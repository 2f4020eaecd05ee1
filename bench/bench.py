#!/usr/bin/env python3
"""Warren vs an OpenSSH relay on loopback. Started by bench/run (which builds first).

Both relays run side by side in one run; every figure is measured --reps
times (3 by default), alternating the systems and rotating which goes first.
The OpenSSH relay is a stock sshd; its device is `ssh -N -R`; the controller
for both is stock `ssh -N -L` (and `warren forward` for Warren, if the build
has that command: otherwise it is skipped with the reason printed).

  1. throughput through the relay (iperf3 behind the device), 1 and 8
     parallel streams, both directions, with the ssh default cipher and with
     each --ciphers cipher forced on the client legs; relay CPU seconds per
     GiB relayed (utime+stime from /proc over the run);
  2. round trip of 64-byte messages on one established stream (p50, p99),
     through `ssh -L` to an echo target behind the device
     (examples/bench_probe.rs);
  3. new stream to first byte (p50, p99): a new TCP connection to the
     established `ssh -L` port until the target's greeting byte arrives;
     full `ssh -J ... true` logins to the device's sshd: time of one, and
     logins per second with several clients at once;
  4. idle devices (examples/bench_devices.rs holds them from one process), on
     a fresh relay per run: relay RssAnon+VmPTE before/after per device (at
     1,000 and 10,000 for Warren; OpenSSH at 1,000), growth over a hold
     period, time until all are registered when they connect at the same
     moment, and new-stream latency with that many idle devices;
  5. a perf profile of the Warren relay under iperf3 (if perf is installed).

Writes results.json (every run, commands, versions, ciphers, load average)
and results.md (the table). Everything binds 127.0.0.1 only, on ports found
free by binding 127.0.0.1:0. Stdlib only.
"""

import argparse
import atexit
import json
import os
import re
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import datapath
import fleet

CLK_TCK = os.sysconf("SC_CLK_TCK")
fleet.B = sys.modules[__name__]
datapath.B = sys.modules[__name__]
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


# What any relay that decrypts and re-encrypts must pay per byte: the cipher
# (aws-lc is linked into the binary: all of its symbols count, glue included)
# and the kernel's copies between socket buffers and user memory (with the
# hardened-usercopy checks that go with them).
CIPHER_SYMBOL = re.compile(r"aws_lc|aes|gcm|ghash|chacha|poly1305", re.I)
COPY_SYMBOL = re.compile(r"^(rep_movs_alternative|\w*copy_user\w*|_copy_to_iter|_copy_from_iter|"
                         r"copy_page_(to|from)_iter|__check_object_size|check_heap_object)$")


def floor_shares(data):
    """Shares of a perf.data's samples: cipher, kernel copies, the rest of
    the kernel, and everything else (Warren, its runtime, libc); None when
    the file has no samples (perf failed)."""
    argv = ["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "dso,symbol",
            "--percent-limit", "0", "-g", "none"]
    rep = run(argv, check=False, timeout=600)
    acc = {"cipher_pct": 0.0, "copies_pct": 0.0, "other_kernel_pct": 0.0, "other_user_pct": 0.0}
    seen = False
    for ln in rep.stdout.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[([.k])\]\s+(\S+)", ln)
        if not m:
            continue
        seen = True
        pct, kind, sym = float(m.group(1)), m.group(3), m.group(4)
        if kind == "k":
            acc["copies_pct" if COPY_SYMBOL.match(sym) else "other_kernel_pct"] += pct
        elif CIPHER_SYMBOL.search(sym):
            acc["cipher_pct"] += pct
        else:
            acc["other_user_pct"] += pct
    if not seen:
        return None
    acc = {k: round(v, 1) for k, v in acc.items()}
    acc["command"] = shlex.join(map(str, argv))
    return acc


def floor_line(f, who="relay"):
    """One sentence: how far above its floor (cipher + copies) a process runs,
    and what it would cost with no code of its own (cipher + the kernel)."""
    base = f["cipher_pct"] + f["copies_pct"]
    kernel = base + f["other_kernel_pct"]
    text = (f"cipher {f['cipher_pct']:.1f}%, the kernel's copies {f['copies_pct']:.1f}%, the rest of the kernel "
            f"{f['other_kernel_pct']:.1f}%, Warren, its runtime and libc {f['other_user_pct']:.1f}% of the {who}'s CPU")
    if base > 0:
        text += f": the {who} runs at {100 / base:.2f}× its floor (cipher and copies)"
        s = f.get("s_per_gib_while_profiled")
        if s:
            text += (f"; {s:.2f} s/GiB while profiled, of which the floor is {s * base / 100:.2f} and cipher plus "
                     f"the whole kernel {s * kernel / 100:.2f}")
    return text


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
    def __init__(self, name, work, warren, extra=(), env=None):
        self.warren = warren
        self.data = Path(work) / name
        self.port = free_port()
        self.proc = Proc(
            name,
            [warren, "relay", "--listen", f"127.0.0.1:{self.port}", "--data", self.data, *extra],
            work,
            env=env,
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
# ---------------------------------------------------------------- the benchmark

GIB = 1024 ** 3
SYSTEM_NAMES = {"warren": "Warren (ssh -L)", "openssh": "OpenSSH (ssh -L)",
                "warren_forward": "Warren (warren forward)"}


def loadavg():
    return Path("/proc/loadavg").read_text().split()[:3]


def rotate(seq, k):
    k %= len(seq)
    return list(seq[k:]) + list(seq[:k])


class Bench:
    def __init__(self, a):
        self.a = a
        self.work = Path(a.work)
        self.logs = self.work / "logs"
        self.logs.mkdir()
        self.user = run(["id", "-un"]).stdout.strip()
        self.agent_logs = []  # agents replaced after a failed run
        cpu = Path("/proc/cpuinfo").read_text()
        model = re.search(r"^model name\s*:\s*(.*)$", cpu, re.M)
        flags = re.search(r"^flags\s*:\s*(.*)$", cpu, re.M)
        flags = flags.group(1).split() if flags else []
        code = run(["git", "log", "-1", "--format=%H %cI %s", "--", "src", "Cargo.toml", "Cargo.lock"],
                   check=False).stdout.strip()
        self.results = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "quick": a.quick,
            "machine": {
                "nproc": os.cpu_count(),
                "cpu": model.group(1) if model else "unknown",
                "aes_ni": "aes" in flags,
                # Which AES-GCM code the cryptography library can pick (its
                # AVX-512 code or the older AVX one): it changes what share of
                # the relay's CPU the cipher is, so compare runs on like hosts.
                "avx512f": "avx512f" in flags,
                "vaes": "vaes" in flags,
                "uname": " ".join(os.uname()),
                "mem_total": re.search(r"MemTotal:\s+(\d+ kB)", Path("/proc/meminfo").read_text()).group(1),
                "nofile_limit": run(["sh", "-c", "ulimit -n"]).stdout.strip(),
                "loadavg_start": loadavg(),
            },
            "versions": {
                "ssh -V": run(["ssh", "-V"]).stderr.strip(),
                "sshd": SSHD,
                "iperf3": run(["iperf3", "--version"]).stdout.splitlines()[0],
                "warren": run([a.warren, "--version"]).stdout.strip(),
                "git_head": run(["git", "rev-parse", "HEAD"], check=False).stdout.strip(),
                "git_dirty": bool(run(["git", "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"],
                                      check=False).stdout.strip()),
                "code_commit": code,
                "python": sys.version.split()[0],
            },
            "settings": {k: v for k, v in vars(a).items() if k not in ("work", "pids", "out", "md")},
            "commands": {},
            "ciphers": {},
            "skipped": [],
            "throughput": [],
            "rtt": [],
            "rtt_floor": [],
            "first_byte": [],
            "login": [],
            "login_rate": [],
            "scale": [],
            "notes": [],
        }

    def skip(self, what, reason):
        log(f"SKIP {what}: {reason}")
        self.results["skipped"].append({"what": what, "reason": reason})

    # --- shared world: keys, device sshd, iperf3, echo, Warren relay + agent, OpenSSH relay

    def setup(self):
        w = self.work
        log("setting up keys, sshds, iperf3, echo target, relays")
        self.ukey = w / "user_key"
        keygen(self.ukey, "controller")
        # The device's own sshd: the login target, the same for both relays.
        self.dev_sshd = Sshd("device_sshd", w, f"{self.ukey}.pub")
        # The OpenSSH relay.
        self.orelay = Sshd("openssh_relay", w, f"{self.ukey}.pub", "MaxStartups 100:30:200\n")
        # iperf3 behind the device: one server per system (same settings), so
        # that a test stuck in one system cannot make the other's server busy.
        self.iperf = {}
        for system in ("warren", "openssh", "warren_forward"):
            self.start_iperf(system, free_port())
        # The echo target for the latency probes (greeting byte, then echo).
        self.echo = Proc("echo_target", [self.a.probe_bin, "echo", "--listen", "127.0.0.1:0"], self.logs)
        self.echo_port = int(self.echo.wait_for(r"^listening (\d+)", 20)[0].group(1))

        # Warren relay, system, controller key (same key as for OpenSSH) and device key.
        # The fairness mode reads the relay's own delay for the victim system's
        # messages (WARREN_TRACE_SYSTEM) from its metrics.
        fair = "fairness" in self.a.only
        # The data path mode reads its packet counters there too.
        metrics = fair or "datapath" in self.a.only
        self.wrelay_metrics = free_port() if metrics else None
        self.wrelay = WarrenRelay("warren_relay", w, self.a.warren,
                                  ["--metrics", f"127.0.0.1:{self.wrelay_metrics}"] if metrics else (),
                                  env=dict(os.environ, WARREN_TRACE_SYSTEM="victim") if fair else None)
        self.wrelay.admin("system", "add", SYSTEM)
        self.wrelay.admin("key", "add", "--system", SYSTEM, "--role", "controller", "--name", "alice", f"{self.ukey}.pub")
        self.devkey = w / "dev1_key"
        run([self.a.warren, "keygen", self.devkey])
        self.wrelay.admin("key", "add", "--system", SYSTEM, "--role", "device", "--name", "dev1", f"{self.devkey}.pub")
        self.agent_toml = self.write_agent_toml(w / "agent.toml", self.wrelay, {
            22: self.dev_sshd.port, 5201: self.iperf["warren"].port,
            5202: self.iperf["warren_forward"].port, 7: self.echo_port})
        self.start_agent()

        # Ports the OpenSSH relay will listen on for the agentless device (ssh -R).
        self.r22, self.r5201, self.r7 = free_port(), free_port(), free_port()

        self.known = w / "known_hosts"
        self.known.write_text(
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
            f"  StrictHostKeyChecking yes\n  UserKnownHostsFile {self.known}\n"
            "  GlobalKnownHostsFile /dev/null\n  UpdateHostKeys no\n  CheckHostIP no\n"
            "  ControlMaster no\n  ControlPath none\n  AddressFamily inet\n  ConnectTimeout 20\n"
        )
        self.results["ports"] = {
            "warren_relay": self.wrelay.port,
            "openssh_relay": self.orelay.port,
            "device_sshd": self.dev_sshd.port,
            "echo_target": self.echo_port,
            **{f"iperf3_{s}": p.port for s, p in self.iperf.items()},
            "openssh_relay_forward_22": self.r22,
            "openssh_relay_forward_5201": self.r5201,
            "openssh_relay_forward_7": self.r7,
        }
        self.results["files"] = {
            "ssh_config": self.cfg.read_text(),
            "agent.toml": self.agent_toml.read_text(),
            "openssh_relay_sshd_config": self.orelay.config.read_text(),
            "device_sshd_config": self.dev_sshd.config.read_text(),
        }
        self.results["commands"]["setup"] = {
            "warren_relay": shlex.join(self.wrelay.proc.argv),
            "warren_agent": shlex.join(self.agent.argv),
            "openssh_relay": shlex.join(self.orelay.proc.argv),
            "device_sshd": shlex.join(self.dev_sshd.proc.argv),
            "echo_target": shlex.join(self.echo.argv),
            **{f"iperf3_server_{s}": shlex.join(p.argv) for s, p in self.iperf.items()},
        }
        # `warren forward` is measured only if this build has it.
        r = run([self.a.warren, "forward", "--help"], check=False)
        self.has_forward = r.returncode == 0
        if not self.has_forward:
            why = (r.stderr or r.stdout).strip().splitlines()
            self.skip("warren forward (controller side)",
                      f"not in this build: `warren forward --help` exited {r.returncode}"
                      + (f" ({why[0]})" if why else ""))

    def write_agent_toml(self, path, relay, allow):
        path.write_text(
            f'relay = "127.0.0.1:{relay.port}"\nsystem = "{SYSTEM}"\nname = "dev1"\n'
            f'key = "{self.devkey}"\nrelay_host_key = "{relay.fingerprint}"\n'
            f'allow = [{", ".join(f"{chr(34)}{p}=127.0.0.1:{t}{chr(34)}" for p, t in allow.items())}]\n'
            f'keepalive_timeout = "{self.a.agent_keepalive}"\n'
        )
        return path

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
        # The SSH library logs the negotiated algorithms at debug: that is how
        # the agent leg's cipher is known.
        env = dict(os.environ, WARREN_LOG="info,warren::ssh::proto::conn=debug")
        self.agent = Proc("warren_agent", [self.a.warren, "agent", "--config", self.agent_toml], self.logs, env=env)
        self.agent.wait_for("online: registered", 30)

    def restart(self, proc):
        proc.stop()
        PROCS.remove(proc)

    def recover(self, system, cipher, ctl, dev):
        """After a failed run: new controller connection, new device side
        (agent or ssh -R) and a fresh iperf3 server, so that one stuck run
        does not fail the following ones. Returns the new device side."""
        log(f"  {system}: failed run; restarting its controller, device side and iperf3 server")
        self.results.setdefault("bench_restarts", []).append(
            {"system": system, "cipher": cipher or "default", "at": time.strftime("%H:%M:%S")})
        self.restart(ctl[system])
        port = self.iperf[system].port
        self.restart(self.iperf[system])
        self.start_iperf(system, port)
        if system.startswith("warren"):
            self.agent_logs.append(self.agent)
            self.restart(self.agent)
            self.start_agent()
        else:
            self.restart(dev)
            dev = self.openssh_device(cipher)
        ctl[system] = self.controller(system, cipher, free_port(), "iperf")
        return dev

    def ssh(self, *args):
        return ["ssh", "-F", self.cfg, *args]

    def openssh_device(self, cipher):
        """The agentless device: ssh -R to the OpenSSH relay (sshd, iperf3, echo)."""
        c = ["-c", cipher] if cipher else []
        argv = self.ssh(
            "-N", "-v", "-o", "ExitOnForwardFailure=yes", *c,
            "-R", f"127.0.0.1:{self.r5201}:127.0.0.1:{self.iperf['openssh'].port}",
            "-R", f"127.0.0.1:{self.r22}:127.0.0.1:{self.dev_sshd.port}",
            "-R", f"127.0.0.1:{self.r7}:127.0.0.1:{self.echo_port}",
            "-p", self.orelay.port, f"{self.user}@127.0.0.1",
        )
        p = Proc(f"openssh_device_{cipher or 'default'}", argv, self.logs)
        p.wait_for(r"remote forward success for: listen", 30, count=3)
        p.wait_for(r"all expected forwarding replies received", 30)
        return p

    # --- controllers

    def controller(self, system, cipher, lport, target):
        """A controller connection with a local forward to the iperf3 server
        ("iperf") or the echo target ("echo") behind the device."""
        c = ["-c", cipher] if cipher else []
        if system == "warren":
            port = 5201 if target == "iperf" else 7
            argv = self.ssh(
                "-N", "-v", "-o", "ExitOnForwardFailure=yes", *c,
                "-L", f"127.0.0.1:{lport}:dev1:{port}",
                "-p", self.wrelay.port, f"{SYSTEM}@127.0.0.1",
            )
        elif system == "openssh":
            port = self.r5201 if target == "iperf" else self.r7
            argv = self.ssh(
                "-N", "-v", "-o", "ExitOnForwardFailure=yes", *c,
                "-L", f"127.0.0.1:{lport}:127.0.0.1:{port}",
                "-p", self.orelay.port, f"{self.user}@127.0.0.1",
            )
        else:  # warren_forward
            port = 5202 if target == "iperf" else 7
            argv = [self.a.warren, "forward", "--relay", f"127.0.0.1:{self.wrelay.port}", "--system", SYSTEM,
                    "--key", self.ukey, "--relay-host-key", self.wrelay.fingerprint,
                    f"dev1:{port}=127.0.0.1:{lport}"]
        p = Proc(f"{system}_controller_{target}_{cipher or 'default'}", argv, self.logs)
        if system == "warren_forward":
            p.wait_for(rf"127\.0\.0\.1:{lport}\b", 30)
        else:
            p.wait_for(rf"Local forwarding listening on 127\.0\.0\.1 port {lport}", 30)
        p.lport = lport
        return p

    def systems(self, cipher=None):
        return ["warren", "openssh"] + (["warren_forward"] if self.has_forward and cipher is None else [])

    # --- 1. throughput and relay CPU per GiB

    def cpu_groups(self, system, ctl, dev):
        """Processes whose CPU time a throughput run is charged to."""
        if system.startswith("warren"):
            return {
                "relay": ([self.wrelay.proc.pid], False),
                "device_side": ([self.agent.pid], False),
                "controller": ([ctl.pid], False),
                "iperf3_server": ([self.iperf[system].pid], False),
            }
        return {
            "relay": ([self.orelay.proc.pid], True),
            "device_side": ([dev.pid], False),
            "controller": ([ctl.pid], False),
            "iperf3_server": ([self.iperf[system].pid], False),
        }

    def iperf_once(self, system, cipher, streams, direction, ctl, dev):
        reverse = direction == "device_to_controller"
        argv = [
            "iperf3", "-c", "127.0.0.1", "-p", str(ctl.lport), "-t", str(self.a.iperf_seconds),
            "-O", "1", "-J", "--connect-timeout", "10000", "-P", str(streams),
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
            # The iperf3 client shares the two cores too: its CPU comes from
            # this process's reaped children (subprocess.run waits for it).
            reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.monotonic()
            try:
                r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                   timeout=self.a.iperf_seconds + 20)
                out = json.loads(r.stdout or "{}")
            except (subprocess.TimeoutExpired, json.JSONDecodeError) as e:
                out = {"error": str(e)}
            wall = time.monotonic() - t0
            after = {k: cpu_ticks(p, t) for k, (p, t) in groups.items()}
            now = resource.getrusage(resource.RUSAGE_CHILDREN)
            client_s = (now.ru_utime + now.ru_stime) - (reaped.ru_utime + reaped.ru_stime)
            if "busy" in str(out.get("error", "")) and time.monotonic() < deadline:
                busy_retries += 1
                time.sleep(0.25)
                continue
            break
        cpu = {k: (after[k] - before[k]) / CLK_TCK for k in groups}
        cpu["iperf3_client"] = round(client_s, 3)
        rec = {
            "system": system,
            "cipher": cipher or "default",
            "streams": streams,
            "direction": direction,
            "command": shlex.join(argv),
            "controller_command": shlex.join(ctl.argv),
            "wall_s": round(wall, 3),
            "cpu_s": cpu,
            "cpu_pct_of_wall": {k: round(100 * v / wall, 1) for k, v in cpu.items()},
            "busy_retries": busy_retries,
            "loadavg": loadavg(),
        }
        if "error" in out or "end" not in out:
            rec["error"] = out.get("error", "no result")
            rec["mbit_s"] = None
            log(f"  {system:14} P{streams} {direction:21} FAILED: {rec['error']}")
        else:
            recv = out["end"]["sum_received"]
            rec["mbit_s"] = recv["bits_per_second"] / 1e6
            rec["bytes"] = recv["bytes"]
            # CPU over the whole iperf3 run (setup and the omitted first
            # second included) divided by every byte moved in it, the
            # omitted second's too (before stop 27 only the counted seconds'
            # bytes were: CPU per GiB read about 20% high, for both systems).
            omitted = sum(i["sum"].get("bytes", 0) for i in out.get("intervals", [])
                          if i.get("sum", {}).get("omitted"))
            rec["omitted_bytes"] = omitted
            moved = recv["bytes"] + omitted
            rec["cpu_s_per_gib"] = {k: round(v / (moved / GIB), 3) for k, v in cpu.items()}
            log(f"  {system:14} P{streams} {direction:21} {rec['mbit_s']:8.0f} Mbit/s  relay "
                f"{rec['cpu_s_per_gib']['relay']:.2f} s/GiB  cpu% "
                + " ".join(f"{k}={v}" for k, v in rec["cpu_pct_of_wall"].items()))
        if system.startswith("warren") and rec["mbit_s"]:
            rec["relay_logged_data_streams_closed"] = self.wait_data_stream_closed(closed_before, streams)
        self.results["throughput"].append(rec)
        return rec["mbit_s"] is not None

    def agent_cipher(self):
        """The agent-relay leg's cipher, from the agent's debug line."""
        found = self.agent.find(r"negotiated ciphers.*")
        if not found:
            return "unknown"
        m = re.search(r"client_to_server=(\S+)", found[-1].group(0))
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
            r'result=closed .*target_addr="dev1:520[12]" bytes_up=(\d+) bytes_down=(\d+)')
        return [m for m in closed if max(int(m.group(1)), int(m.group(2))) > 1_000_000]

    def wait_data_stream_closed(self, before, streams, timeout=3.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.data_streams_closed()) >= before + streams:
                return True
            time.sleep(0.05)
        return False

    def stream_health(self):
        """What the Warren relay and agent logs say about the throughput runs."""
        recs = self.results["throughput"]
        ok_runs = [r for r in recs if r["system"].startswith("warren") and r["mbit_s"]]
        stuck = [r for r in ok_runs if not r.get("relay_logged_data_streams_closed")]
        h = {
            "warren_successful_runs": len(ok_runs),
            "warren_failed_runs": sum(1 for r in recs if r["system"].startswith("warren") and not r["mbit_s"]),
            "openssh_failed_runs": sum(1 for r in recs if r["system"] == "openssh" and not r["mbit_s"]),
            "relay_data_streams_not_closed_3s_after_run": len(stuck),
            "stuck_runs": [f"{r['system']} {r['cipher']} P{r['streams']} {r['direction']}" for r in stuck],
            "relay_refusals": [m.group(0) for m in self.wrelay.proc.find(r'result="refused".*')],
            "agent_reconnects": [m.group(0) for a in self.agent_logs + [self.agent] for m in a.find(r"offline: .*")],
            "bench_restarts_after_failed_runs": self.results.get("bench_restarts", []),
        }
        self.results["warren_stream_health"] = h
        log(f"  Warren: {len(stuck)} of {len(ok_runs)} successful runs left a data stream open at the "
            f"relay; {len(h['relay_refusals'])} refusals; {len(h['agent_reconnects'])} agent reconnects")

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
        ciphers = [None]
        for c in self.a.ciphers:
            acc = self.cipher_accepted(c)
            self.results["ciphers"][f"accepted:{c}"] = acc
            if acc.get("warren") and acc.get("openssh"):
                ciphers.append(c)
            else:
                # Not a skip of a figure: a cipher one relay refuses has no
                # same-cipher comparison. Recorded as such.
                note = f"cipher {c} not measured: accepted by {acc}"
                log(note)
                self.results["notes"].append(note)
        dirs = ("device_to_controller", "controller_to_device")
        for cipher in ciphers:
            name = cipher or "default"
            log(f"throughput and relay CPU, client-leg cipher {name}")
            dev = self.openssh_device(cipher)
            systems = self.systems(cipher)
            ctl = {s: self.controller(s, cipher, free_port(), "iperf") for s in systems}
            self.results["notes"].append(
                f"client legs {name}: for OpenSSH both client legs (controller ssh -L and device ssh -R) use "
                f"{'the ssh default' if cipher is None else cipher}; for Warren only the controller leg does, the "
                "agent-relay leg negotiates the agent's own preference (see ciphers)")
            self.results["ciphers"][name] = {
                "warren_controller_leg": kex_ciphers(ctl["warren"]),
                "warren_agent_leg": self.agent_cipher(),
                "openssh_controller_leg": kex_ciphers(ctl["openssh"]),
                "openssh_device_leg": kex_ciphers(dev),
            }
            self.results["commands"][f"throughput_{name}"] = {
                **{f"{s}_controller": shlex.join(ctl[s].argv) for s in systems},
                "openssh_device": shlex.join(dev.argv),
                "iperf3_client": f"iperf3 -c 127.0.0.1 -p LPORT -t {self.a.iperf_seconds} -O 1 -J "
                                 "--connect-timeout 10000 -P STREAMS [-R for device → controller]",
            }

            def successes(system, streams, direction):
                return sum(1 for r in self.results["throughput"] if r["system"] == system and r["cipher"] == name
                           and r["streams"] == streams and r["direction"] == direction and r["mbit_s"])

            # Alternate the systems (and which goes first); top up with at
            # most two extra rounds for figures that had failed runs.
            for rnd in range(self.a.reps + 2):
                for streams in self.a.streams:
                    for direction in dirs:
                        for system in rotate(systems, rnd):
                            if rnd >= self.a.reps and successes(system, streams, direction) >= self.a.reps:
                                continue
                            if not self.iperf_once(system, cipher, streams, direction, ctl[system], dev):
                                dev = self.recover(system, cipher, ctl, dev)
            for p in list(ctl.values()) + [dev]:
                self.restart(p)
        self.stream_health()

    # --- 2, 3a. round trip of 64-byte messages; new stream to first byte

    def probe(self, kind, lport, count, warmup):
        argv = [self.a.probe_bin, kind, "--connect", f"127.0.0.1:{lport}", "--count", count, "--warmup", warmup]
        if kind == "rtt":
            argv += ["--size", self.a.rtt_size]
        r = run(argv, timeout=600, check=False, env=dict(os.environ, RUST_BACKTRACE="0", RUST_LIB_BACKTRACE="0"))
        if r.returncode != 0:
            return {"error": (r.stderr or r.stdout).strip()[:800], "command": shlex.join(map(str, argv))}
        out = json.loads(r.stdout.strip().splitlines()[-1])
        out["command"] = shlex.join(map(str, argv))
        return out

    def latency(self):
        log(f"latency: {self.a.rtt_count} round trips of {self.a.rtt_size} bytes on one stream; "
            f"{self.a.fb_count} new streams to first byte")
        dev = self.openssh_device(None)
        systems = self.systems()
        ctl = {s: self.controller(s, None, free_port(), "echo") for s in systems}
        self.results["commands"]["latency"] = {
            **{f"{s}_controller": shlex.join(ctl[s].argv) for s in systems},
            "openssh_device": shlex.join(dev.argv),
        }
        for rnd in range(self.a.reps):
            for system in rotate(systems, rnd):
                rec = self.probe("rtt", ctl[system].lport, self.a.rtt_count, 100)
                rec.update(system=system, round=rnd, loadavg=loadavg())
                self.results["rtt"].append(rec)
                log(f"  rtt        {system:14} " + (f"p50 {rec['p50_us']:.0f} µs p99 {rec['p99_us']:.0f} µs"
                                                     if "p50_us" in rec else f"FAILED {rec['error']}"))
            # The floor: the probe straight to the echo target, two process
            # hops per round trip (a relayed round trip has eight or ten).
            rec = self.probe("rtt", self.echo_port, self.a.rtt_count, 100)
            rec.update(system="floor", round=rnd, loadavg=loadavg())
            self.results["rtt_floor"].append(rec)
            log(f"  rtt        {'floor':14} " + (f"p50 {rec['p50_us']:.0f} µs p99 {rec['p99_us']:.0f} µs"
                                                 if "p50_us" in rec else f"FAILED {rec['error']}"))
            for system in rotate(systems, rnd + 1):
                rec = self.probe("first-byte", ctl[system].lport, self.a.fb_count, 5)
                rec.update(system=system, round=rnd, loadavg=loadavg())
                self.results["first_byte"].append(rec)
                log(f"  first byte {system:14} " + (f"p50 {rec['p50_us']:.0f} µs p99 {rec['p99_us']:.0f} µs"
                                                     if "p50_us" in rec else f"FAILED {rec['error']}"))
        for p in list(ctl.values()) + [dev]:
            self.restart(p)

    # --- 3b. ssh -J logins: time of one, and logins per second

    def logins(self):
        log("ssh -J logins")
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
        systems = ("warren", "openssh", "direct")
        for rnd in range(self.a.reps):
            for i in range(self.a.logins):
                for system in rotate(systems, rnd * self.a.logins + i):
                    t0 = time.perf_counter()
                    r = subprocess.run([str(a) for a in cmds[system]], capture_output=True, text=True,
                                       stdin=subprocess.DEVNULL, timeout=60)
                    dt = time.perf_counter() - t0
                    self.results["login"].append({
                        "system": system, "round": rnd, "ok": r.returncode == 0,
                        "ms": round(dt * 1000, 2),
                        **({} if r.returncode == 0 else {"stderr": r.stderr[-500:]}),
                    })
            for s in systems:
                ms = [x["ms"] for x in self.results["login"] if x["system"] == s and x["round"] == rnd and x["ok"]]
                log(f"  round {rnd}: {s:7} one login: median {statistics.median(ms):.0f} ms (n={len(ms)})" if ms
                    else f"  round {rnd}: {s:7} all logins failed")
            # Logins per second: `login_concurrency` clients in a loop.
            for system in rotate(systems, rnd):
                rec = self.login_rate(system, cmds[system])
                rec["round"] = rnd
                self.results["login_rate"].append(rec)
                log(f"  round {rnd}: {system:7} {rec['per_s']:.1f} logins/s "
                    f"({rec['ok']} ok, {rec['failed']} failed, {self.a.login_concurrency} at a time)")
        self.restart(dev)

    def login_rate(self, system, argv):
        argv = [str(a) for a in argv]
        stop = time.monotonic() + self.a.login_seconds
        counts = {"ok": 0, "failed": 0}
        lock = threading.Lock()

        def worker():
            while time.monotonic() < stop:
                r = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
                with lock:
                    counts["ok" if r.returncode == 0 else "failed"] += 1

        t0 = time.monotonic()
        threads = [threading.Thread(target=worker) for _ in range(self.a.login_concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        return {"system": system, "ok": counts["ok"], "failed": counts["failed"], "seconds": round(elapsed, 3),
                "per_s": counts["ok"] / elapsed, "concurrency": self.a.login_concurrency, "loadavg": loadavg()}

    # --- 4. idle devices: memory, flatness, connect burst, new stream with N idle

    def hold(self, pid, tree, n):
        """Samples the relay's memory over the hold period."""
        samples = []
        t0 = time.monotonic()
        step = max(1.0, self.a.hold / max(1, self.a.hold_samples - 1))
        while True:
            m = memory(pid, tree)
            samples.append({"t_s": round(time.monotonic() - t0, 1), "RssAnon": m["RssAnon"], "VmPTE": m["VmPTE"],
                            "Anonymous": m["Anonymous"]})
            if time.monotonic() - t0 >= self.a.hold:
                break
            time.sleep(min(step, max(0.0, self.a.hold - (time.monotonic() - t0))))
        first, last = samples[0], samples[-1]
        tot = [s["RssAnon"] + s["VmPTE"] for s in samples]
        return {
            "seconds": samples[-1]["t_s"],
            "samples": samples,
            "growth_kib": (last["RssAnon"] + last["VmPTE"]) - (first["RssAnon"] + first["VmPTE"]),
            "growth_kib_per_device": round(((last["RssAnon"] + last["VmPTE"]) - (first["RssAnon"] + first["VmPTE"])) / n, 3),
            "range_kib": max(tot) - min(tot),
        }

    def scale_world(self, system, name):
        """A fresh relay with dev1 (echo only) and a controller `ssh -L` to it."""
        procs = []
        if system == "warren":
            relay = WarrenRelay(name, self.work, self.a.warren)
            procs.append(relay.proc)
            relay.admin("system", "add", SYSTEM)
            relay.admin("key", "add", "--system", SYSTEM, "--role", "controller", "--name", "alice", f"{self.ukey}.pub")
            relay.admin("key", "add", "--system", SYSTEM, "--role", "device", "--name", "dev1", f"{self.devkey}.pub")
            toml = self.write_agent_toml(self.work / f"{name}_agent.toml", relay, {7: self.echo_port})
            agent = Proc(f"{name}_agent", [self.a.warren, "agent", "--config", toml], self.logs)
            procs.append(agent)
            agent.wait_for("online: registered", 30)
            known = self.work / f"{name}_known_hosts"
            known.write_text(f"[127.0.0.1]:{relay.port} {' '.join(relay.host_pub)}\n")
            lport = free_port()
            ctl_argv = self.ssh("-N", "-v", "-o", f"UserKnownHostsFile={known}", "-o", "ExitOnForwardFailure=yes",
                                "-L", f"127.0.0.1:{lport}:dev1:7", "-p", relay.port, f"{SYSTEM}@127.0.0.1")
            pid, tree = relay.proc.pid, False
            gen_args = ["--data", relay.data, "--host-key", relay.fingerprint]
            port = relay.port
            device_cmd = shlex.join(agent.argv)
            relay_cmd = shlex.join(relay.proc.argv)
        else:
            burst = self.a.burst
            sshd = Sshd(name, self.work, f"{self.ukey}.pub",
                        f"MaxStartups {burst}:30:{2 * burst}\nMaxSessions 10\nLogLevel ERROR\n")
            procs.append(sshd.proc)
            known = self.work / f"{name}_known_hosts"
            known.write_text(sshd.known(f"[127.0.0.1]:{sshd.port}") + "\n")
            r7 = free_port()
            dev = Proc(f"{name}_device", self.ssh(
                "-N", "-v", "-o", f"UserKnownHostsFile={known}", "-o", "ExitOnForwardFailure=yes",
                "-R", f"127.0.0.1:{r7}:127.0.0.1:{self.echo_port}", "-p", sshd.port, f"{self.user}@127.0.0.1"),
                self.logs)
            procs.append(dev)
            dev.wait_for(r"all expected forwarding replies received", 30)
            lport = free_port()
            ctl_argv = self.ssh("-N", "-v", "-o", f"UserKnownHostsFile={known}", "-o", "ExitOnForwardFailure=yes",
                                "-L", f"127.0.0.1:{lport}:127.0.0.1:{r7}", "-p", sshd.port, f"{self.user}@127.0.0.1")
            pid, tree = sshd.proc.pid, True
            gen_args = ["--host-key", sshd.fingerprint, "--openssh-key", self.ukey, "--user", self.user]
            port = sshd.port
            device_cmd = shlex.join(dev.argv)
            relay_cmd = shlex.join(sshd.proc.argv) + "  # sshd_config: " + sshd.config.read_text().replace("\n", "; ")
        ctl = Proc(f"{name}_controller", ctl_argv, self.logs)
        procs.append(ctl)
        ctl.wait_for(rf"Local forwarding listening on 127\.0\.0\.1 port {lport}", 30)
        return {"procs": procs, "pid": pid, "tree": tree, "lport": lport, "gen_args": gen_args, "port": port,
                "commands": {"relay": relay_cmd, "device": device_cmd, "controller": shlex.join(map(str, ctl_argv))},
                "relay": relay if system == "warren" else None}

    def scale_once(self, system, n, rep):
        name = f"scale_{system}_{n}_{rep}"
        world = self.scale_world(system, name)
        try:
            # The first streams through the new relay: retried for a few
            # seconds (each failure is recorded), so that one refused stream
            # right after start-up is visible but does not lose the run.
            warm_errors = []
            deadline = time.monotonic() + 10
            while True:
                warm = self.probe("first-byte", world["lport"], 3, 0)
                if "error" not in warm:
                    break
                warm_errors.append(warm["error"])
                log(f"  {name}: warm-up stream failed: {warm['error'].splitlines()[0] if warm['error'] else '?'}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name}: the echo target is not reachable: {warm_errors}")
                time.sleep(0.5)
            conc = min(n, self.a.burst)
            argv = [self.a.devices_bin, "--relay", f"127.0.0.1:{world['port']}", *world["gen_args"], "--n", n,
                    "--wait-go", "--concurrency", conc, "--attempts", self.a.attempts, "--retry-ms", self.a.retry_ms,
                    "--sources", self.a.sources]
            gen = Proc(f"{name}_devices", argv, self.logs, stdin=True)
            world["procs"].append(gen)
            gen.wait_for(r"^keys-registered", 1800)
            # Let the relay's store watcher see the new keys before the baseline.
            before = self.settle(world["pid"], world["tree"], 2.0)
            gen_before = memory(gen.pid)
            gen.send("go\n")
            up = gen.wait_for(r"^all-up (\d+) ([\d.]+) failed (\d+) retries (\d+) p50 ([\d.]+) p99 ([\d.]+)",
                              1800)[0]
            after = self.settle(world["pid"], world["tree"], 3.0)
            gen_after = memory(gen.pid)
            held = self.hold(world["pid"], world["tree"], n)
            fb = self.probe("first-byte", world["lport"], self.a.fb_count, 5)
            per = {k: round((after[k] - before[k]) / n, 2) for k in ("RssAnon", "VmPTE", "Anonymous")}
            per["RssAnon+VmPTE"] = round(per["RssAnon"] + per["VmPTE"], 2)
            rec = {
                "system": system, "n": n, "rep": rep, "concurrency": conc,
                "before_kib": before, "after_kib": after, "kib_per_device": per,
                "up": int(up.group(1)), "failed": int(up.group(3)), "retries": int(up.group(4)),
                "all_registered_s": float(up.group(2)) if int(up.group(3)) == 0 else None,
                "register_p50_s": float(up.group(5)), "register_p99_s": float(up.group(6)),
                "hold": held, "first_byte": fb,
                "load_generator_kib_per_device": {
                    k: round((gen_after[k] - gen_before[k]) / n, 2) for k in ("RssAnon", "VmPTE", "Anonymous")},
                "command": shlex.join(map(str, argv)), "world": world["commands"], "loadavg": loadavg(),
                "errors": [m.group(0) for m in gen.find(r"^failed: .*")[:5]],
                "warmup_stream_errors": warm_errors,
            }
            if system == "warren":
                online = json.loads(world["relay"].admin("ls", "--json").stdout)
                rec["devices_online_in_store"] = sum(1 for d in online if d.get("online") is True)
            gen.close_stdin()
            m = gen.wait_for(r"^still-open (\d+)", 60)[0]
            rec["still_open_after_hold"] = int(m.group(1))
            log(f"  {system:7} n={n:<6} rep {rep}: {per['RssAnon+VmPTE']:.1f} KiB/device; "
                f"{rec['up']} up in {float(up.group(2)):.2f}s ({rec['failed']} failed, {rec['retries']} retries); "
                f"hold {held['seconds']:.0f}s growth {held['growth_kib']} KiB; new stream "
                + (f"p50 {fb['p50_us']:.0f} µs p99 {fb['p99_us']:.0f} µs" if "p50_us" in fb else f"FAILED {fb['error']}"))
            return rec
        finally:
            for p in reversed(world["procs"]):
                if p in PROCS:
                    self.restart(p)

    def settle(self, pid, tree, seconds):
        time.sleep(seconds)
        return memory(pid, tree)

    def scale(self):
        sizes = sorted(set(self.a.warren_devices) | set(self.a.openssh_devices))
        log(f"idle devices: Warren at {self.a.warren_devices}, OpenSSH at {self.a.openssh_devices}; "
            f"at most {self.a.burst} connecting at once; hold {self.a.hold}s")
        for n in sizes:
            systems = [s for s, lst in (("warren", self.a.warren_devices), ("openssh", self.a.openssh_devices))
                       if n in lst]
            for rep in range(self.a.reps):
                for system in rotate(systems, rep):
                    try:
                        self.results["scale"].append(self.scale_once(system, n, rep))
                    except RuntimeError as e:
                        log(f"  {system} n={n} rep {rep} FAILED: {e}")
                        self.results["scale"].append({"system": system, "n": n, "rep": rep, "error": str(e)[-2000:]})
        big = max(self.a.warren_devices)
        if big not in self.a.openssh_devices:
            per = [m["kib_per_device"]["RssAnon+VmPTE"] for m in self.results["scale"]
                   if m["system"] == "openssh" and "kib_per_device" in m]
            need = f"about {statistics.median(per) * big / 1024 / 1024:.0f} GiB and " if per else ""
            mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) / 1024 / 1024
            self.results["notes"].append(
                f"OpenSSH relay not run at {big:,} devices (--openssh-devices): by its own per-device figure it "
                f"would need {need}one sshd process per device, on a machine with {mem:.0f} GiB shared with other "
                f"builds; add {big} to --openssh-devices on a larger host")
        procs = [(m["after_kib"]["processes"] - m["before_kib"]["processes"]) / m["n"]
                 for m in self.results["scale"] if m["system"] == "openssh" and "after_kib" in m]
        if procs:
            self.results["notes"].append(
                f"OpenSSH relay: {statistics.median(procs):.2f} sshd processes per device "
                f"(devices log in as {self.user}; sshd skips the post-auth privsep child for root, so a "
                "non-root relay account would add a process per device)")

    # --- 5. a CPU profile of the relay under throughput

    def profile(self):
        cipher = None if self.a.profile_cipher == "default" else self.a.profile_cipher
        reverse = self.a.profile_direction == "device_to_controller"
        log(f"profile: perf record of the Warren relay, {self.a.profile}s of iperf3{' -R' if reverse else ''} "
            f"through it ({cipher or 'the ssh default'}, {self.a.profile_direction})")
        dev = self.openssh_device(cipher)
        ctl = self.controller("warren", cipher, free_port(), "iperf")
        out = self.work / "relay.perf.data"
        # DWARF call graphs: release builds have no frame pointers.
        perf = Proc("perf_record", ["perf", "record", "-e", "cpu-clock", "-F", "499", "--call-graph", "dwarf,32768",
                                    "-o", out, "-p", self.wrelay.proc.pid], self.logs)
        # The agent too, flat (no call graphs): its floor is one cipher and
        # the copies on both of its sockets.
        agent_out = self.work / "agent.perf.data"
        agent_perf = Proc("perf_record_agent", ["perf", "record", "-e", "cpu-clock", "-F", "499", "-o", agent_out,
                                                "-p", self.agent.pid], self.logs)
        time.sleep(0.5)
        argv = ["iperf3", "-c", "127.0.0.1", "-p", ctl.lport, "-t", self.a.profile, "-J"] + (["-R"] if reverse else [])
        pids = {"relay": self.wrelay.proc.pid, "agent": self.agent.pid}
        before = {who: cpu_ticks([pid]) for who, pid in pids.items()}
        r = run(argv, timeout=self.a.profile + 30, check=False)
        ticks = {who: cpu_ticks([pid]) - before[who] for who, pid in pids.items()}
        try:
            end = json.loads(r.stdout)["end"]["sum_received"]
            mbit, moved = end["bits_per_second"] / 1e6, end["bytes"]
        except (json.JSONDecodeError, KeyError):
            mbit, moved = None, None
        for pr in (perf, agent_perf):
            pr.p.send_signal(signal.SIGINT)
            pr.p.wait(120)
        floor, agent_floor = floor_shares(out), floor_shares(agent_out)
        for f, who in ((floor, "relay"), (agent_floor, "agent")):
            if f is None:
                log(f"  profile: no samples of the {who} (see the perf_record logs)")
            elif moved:
                # CPU per GiB while perf samples it (DWARF unwinding adds some).
                f["s_per_gib_while_profiled"] = ticks[who] / CLK_TCK / (moved / 2**30)
        flat = run(["perf", "report", "-i", out, "--stdio", "--no-children", "--sort", "dso,symbol",
                    "--percent-limit", "1", "-g", "none"], check=False, timeout=600)
        lines = [ln.rstrip() for ln in flat.stdout.splitlines() if ln.strip() and not ln.startswith("#")]
        # Inclusive time of the SSH library's and Warren's own frames, and who
        # calls the copies, the zeroing and the page faults.
        tree = run(["perf", "report", "-i", out, "--stdio", "--children", "--sort", "symbol",
                    "--percent-limit", "2", "-g", "none"], check=False, timeout=600)
        keep = re.compile(r"warren::|aws_lc_rs::|aws_lc_0_\d+_\d+_\d+_|ssh_encoding|\[k\] (tcp_sendmsg|tcp_recvmsg|exc_page_fault)$")
        incl = [ln.rstrip() for ln in tree.stdout.splitlines()
                if ln.strip() and not ln.startswith("#") and "(inlined)" not in ln and keep.search(ln.rstrip())]
        callers = run(["perf", "report", "-i", out, "--stdio", "--no-children", "--sort", "symbol",
                       "--symbols", "__memset_avx512_unaligned_erms,__memmove_avx512_unaligned_erms,exc_page_fault,"
                       "__memset_evex_unaligned_erms,__memmove_evex_unaligned_erms,__memcpy_avx_unaligned_erms",
                       "-g", "caller,0.5,callee,function,percent"], check=False, timeout=600)
        frames = re.compile(r"%|warren::|ssh_encoding|from_elem|extend_from_slice|to_vec|resize")
        callers_lines = [ln.rstrip() for ln in callers.stdout.splitlines()
                         if ln.strip() and not ln.startswith("#") and frames.search(ln) and "tokio::" not in ln]
        self.results["profile"] = {
            "command": f"{shlex.join(map(str, perf.argv))}  (while: {shlex.join(map(str, argv))})",
            "direction": self.a.profile_direction,
            "iperf3_mbit_s_while_profiled": mbit,
            "report_command": shlex.join(map(str, flat.args)),
            "top": lines[:40],
            "inclusive_command": shlex.join(map(str, tree.args)),
            "inclusive": incl[:60],
            "callers_command": shlex.join(map(str, callers.args)),
            "callers": callers_lines[:120],
            "floor": floor,
            "agent_floor": agent_floor,
        }
        for f, who in ((floor, "relay"), (agent_floor, "agent")):
            if f:
                log("  " + floor_line(f, who))
        for ln in lines[:15]:
            log(f"  {ln}")
        for p in (ctl, dev, perf, agent_perf):
            if p in PROCS:
                self.restart(p)

    # --- report

    def figures(self):
        """Every figure: the values per run for each system, the ratio of
        medians Warren/OpenSSH, and the target if the issue sets one."""
        R = self.results
        figs = []

        def add(fid, label, unit, better, values, target=None, check=None, digits=0):
            sums = {s: summary(v) for s, v in values.items()}
            w, o = sums.get("warren"), sums.get("openssh")
            ratio = (w["median"] / o["median"]) if w and o and o["median"] else None
            fig = {"id": fid, "label": label, "unit": unit, "better": better, "digits": digits,
                   "values": {s: v for s, v in values.items()}, "summary": sums, "ratio": ratio}
            if target:
                fig["target"] = target
                fig["met"] = bool(check(w, ratio)) if w else False
            figs.append(fig)
            # `warren forward` as a second Warren row.
            if sums.get("warren_forward"):
                wf = sums["warren_forward"]
                f2 = {"id": fid + ":warren_forward", "label": label + " — Warren via `warren forward`", "unit": unit,
                      "better": better, "digits": digits, "values": {"warren": values["warren_forward"],
                                                                     "openssh": values.get("openssh", [])},
                      "summary": {"warren": wf, "openssh": o},
                      "ratio": (wf["median"] / o["median"]) if o and o["median"] else None}
                if target:
                    f2["target"] = target
                    f2["met"] = bool(check(wf, f2["ratio"]))
                figs.append(f2)

        tp = {}
        for rec in R["throughput"]:
            tp.setdefault((rec["cipher"], rec["streams"], rec["direction"]), {}).setdefault(rec["system"], []).append(rec)
        for (cipher, streams, direction), by in sorted(tp.items(), key=lambda kv: (kv[0][0] != "default",) + kv[0]):
            d = direction.replace("_to_", " → ").replace("_", " ")
            st = f"{streams} stream" + ("s" if streams > 1 else "")
            add(f"throughput:{cipher}:{streams}:{direction}", f"Throughput, {st}, {d}, client legs {cipher}",
                "Mbit/s", "higher", {s: [r["mbit_s"] for r in v] for s, v in by.items()},
                "≥ 2× OpenSSH", lambda w, r: r is not None and r >= 2)
        for (cipher, streams, direction), by in sorted(tp.items(), key=lambda kv: (kv[0][0] != "default",) + kv[0]):
            d = direction.replace("_to_", " → ").replace("_", " ")
            st = f"{streams} stream" + ("s" if streams > 1 else "")
            add(f"relay_cpu:{cipher}:{streams}:{direction}", f"Relay CPU per GiB, {st}, {d}, client legs {cipher}",
                "s/GiB", "lower",
                {s: [r["cpu_s_per_gib"]["relay"] for r in v if r.get("cpu_s_per_gib")] for s, v in by.items()},
                "≤ 0.35× OpenSSH", lambda w, r: r is not None and r <= 0.35, digits=2)

        def by_system(recs, key):
            out = {}
            for r in recs:
                out.setdefault(r["system"], []).append(r.get(key))
            return out

        if R["rtt"]:
            p50 = by_system(R["rtt"], "p50_us")
            add("rtt:p50", f"Round trip, {self.a.rtt_size}-byte messages, one stream, p50", "µs", "lower", p50,
                "≤ 0.7× OpenSSH", lambda w, r: r is not None and r <= 0.7)
            w50 = summary(p50.get("warren", []))
            add("rtt:p99", f"Round trip, {self.a.rtt_size}-byte messages, one stream, p99", "µs", "lower",
                by_system(R["rtt"], "p99_us"), "≤ 2× p50",
                lambda w, r: w50 is not None and w["median"] <= 2 * w50["median"])
        if R["first_byte"]:
            add("first_byte:p50", "New stream (new connection to `ssh -L`) to first byte, p50", "µs", "lower",
                by_system(R["first_byte"], "p50_us"), "≤ 1000 µs", lambda w, r: w["median"] <= 1000)
            add("first_byte:p99", "New stream to first byte, p99", "µs", "lower",
                by_system(R["first_byte"], "p99_us"))
        if R["login"]:
            per_round = {}
            for x in R["login"]:
                if x["ok"]:
                    per_round.setdefault(x["system"], {}).setdefault(x["round"], []).append(x["ms"])
            add("login:ms", "One `ssh -J … true` login (median per round)", "ms", "lower",
                {s: [statistics.median(v) for v in rounds.values()] for s, rounds in per_round.items()})
        if R["login_rate"]:
            add("login:rate", f"`ssh -J … true` logins per second, {self.a.login_concurrency} clients at a time",
                "logins/s", "higher", by_system(R["login_rate"], "per_s"), digits=1)
        ok = [m for m in R["scale"] if "kib_per_device" in m]
        for n in sorted({m["n"] for m in ok}):
            at = [m for m in ok if m["n"] == n]
            mem = {}
            for m in at:
                mem.setdefault(m["system"], []).append(m["kib_per_device"]["RssAnon+VmPTE"])
            big = n == max(self.a.warren_devices)
            add(f"memory:{n}", f"Relay memory per idle device at {n:,} devices (RssAnon+VmPTE)", "KiB", "lower", mem,
                "≤ 32 KiB" if big else None, (lambda w, r: w["median"] <= 32) if big else None, digits=1)
        for n in sorted({m["n"] for m in ok}):
            at = [m for m in ok if m["n"] == n]
            grow = {}
            for m in at:
                grow.setdefault(m["system"], []).append(m["hold"]["growth_kib_per_device"])
            add(f"memory_growth:{n}", f"Relay memory growth over a {self.a.hold:.0f} s idle hold at {n:,} devices",
                "KiB/device", "lower", grow, "flat: no growth (≤ 1 KiB/device)",
                lambda w, r: w["median"] <= 1, digits=2)
        for n in sorted({m["n"] for m in ok}):
            at = [m for m in R["scale"] if m["n"] == n]
            t = {}
            for m in at:
                t.setdefault(m["system"], []).append(m.get("all_registered_s"))
            conc = min(n, self.a.burst)
            label = (f"{n:,} devices connecting at the same moment: time until all registered" if conc == n
                     else f"{n:,} devices connecting, {conc:,} at a time: time until all registered")
            tgt = n == 1000 and conc == n
            add(f"connect_all:{n}", label, "s", "lower", t, "≤ 10 s" if tgt else None,
                (lambda w, r: w["median"] <= 10) if tgt else None, digits=2)
        base = {}
        for n in sorted({m["n"] for m in ok}):
            at = [m for m in ok if m["n"] == n and "p50_us" in m["first_byte"]]
            fb = {}
            for m in at:
                fb.setdefault(m["system"], []).append(m["first_byte"]["p50_us"])
            if n == min(self.a.warren_devices):
                base = summary(fb.get("warren", []))
            same = base and n == max(self.a.warren_devices) and n != min(self.a.warren_devices)
            add(f"first_byte_idle:{n}", f"New stream to first byte, p50, with {n:,} idle devices", "µs", "lower", fb,
                f"same as with {min(self.a.warren_devices)} (≤ 1.25×)" if same else None,
                (lambda w, r, b=base: w["median"] <= 1.25 * b["median"]) if same else None)
        R["figures"] = figs
        return figs

    def table(self):
        R = self.results
        figs = self.figures()

        def num(x, digits):
            if x is None:
                return "—"
            x = round(x, digits)
            return f"{x + 0.0 if x else 0:,.{digits}f}"

        def cell(s, digits, values):
            if not values:
                return "not measured"
            if not s:
                return f"failed ({len(values)} runs)"
            failed = sum(1 for v in values if v is None)
            out = f"{num(s['median'], digits)} ({num(s['min'], digits)}–{num(s['max'], digits)})"
            return out + (f"; {failed} of {len(values)} runs failed" if failed else "")

        out = ["| Figure | Unit | Warren median (min–max) | OpenSSH median (min–max) | Warren/OpenSSH | Target | Met |",
               "|---|---|---|---|---|---|---|"]
        for f in figs:
            w = cell(f["summary"].get("warren"), f["digits"], f["values"].get("warren"))
            o = cell(f["summary"].get("openssh"), f["digits"], f["values"].get("openssh"))
            ratio = f"{f['ratio']:.2f}" if f["ratio"] is not None else "—"
            met = ("yes" if f["met"] else "**no**") if "target" in f else ""
            out.append(f"| {f['label']} | {f['unit']} ({f['better']} is better) | {w} | {o} | {ratio} | "
                       f"{f.get('target', '')} | {met} |")

        cores = R["machine"].get("nproc") or 1
        cpu_rows = ["", "CPU seconds per GiB relayed, per process (median over runs; relay = all sshd processes "
                        "for OpenSSH). Bound: the throughput these processes allow on this machine's "
                        f"{cores} cores, {cores} / (their sum) GiB/s in Mbit/s (runs from before stop 32 did "
                        "not record the iperf3 client's CPU: a dash, and the bound leaves it out):", "",
                    "| System | Cipher | Streams | Direction | relay | device side | controller | iperf3 server "
                    "| iperf3 client | bound Mbit/s |",
                    "|---|---|---|---|---|---|---|---|---|---|"]
        seen = {}
        for rec in R["throughput"]:
            if rec.get("cpu_s_per_gib"):
                seen.setdefault((rec["system"], rec["cipher"], rec["streams"], rec["direction"]), []).append(
                    rec["cpu_s_per_gib"])
        for (s, c, n, d), lst in sorted(seen.items()):
            med = {k: statistics.median(x[k] for x in lst) for k in lst[0]}
            client = med.get("iperf3_client")
            total = med['relay'] + med['device_side'] + med['controller'] + med['iperf3_server'] + (client or 0)
            bound = f"{cores / total * 8 * 2**30 / 1e6:,.0f}" if total > 0 else "—"
            cpu_rows.append(f"| {s} | {c} | {n} | {d.replace('_to_', '→')} | {med['relay']:.2f} | "
                            f"{med['device_side']:.2f} | {med['controller']:.2f} | {med['iperf3_server']:.2f} | "
                            f"{'—' if client is None else f'{client:.2f}'} | {bound} |")
        h = R.get("warren_stream_health")
        if h:
            cpu_rows += ["", f"Failed throughput runs: Warren {h['warren_failed_runs']}, OpenSSH "
                             f"{h['openssh_failed_runs']} (restarts after failed runs: "
                             f"{len(h['bench_restarts_after_failed_runs'])}). Warren runs whose data streams the relay "
                             f"had not logged as closed 3 s after iperf3 finished: "
                             f"{h['relay_data_streams_not_closed_3s_after_run']} of {h['warren_successful_runs']}. "
                             f"Agent reconnects: {len(h['agent_reconnects'])}."]
        tail = [""] + [f"Skipped: {x['what']}: {x['reason']}." for x in R["skipped"]]
        floor = [r["p50_us"] for r in R.get("rtt_floor", []) if "p50_us" in r]
        if floor:
            f50 = statistics.median(floor)
            tail += ["", f"Round-trip floor: the probe straight to the echo target (two process hops, no relay, "
                         f"no ssh), p50 {f50:,.0f} µs (median of {len(floor)}), about {f50 / 2:,.0f} µs per hop. "
                         "A round trip through `ssh -L` and Warren's relay and agent crosses eight process hops, "
                         "through the OpenSSH relay ten (`ssh -L`, two `sshd`, `ssh -R`)."]
        tail += [f"Not measured: {n}." for n in R["notes"] if n.startswith("cipher ")]
        R["table_markdown"] = "\n".join(out + cpu_rows + tail)
        return R["table_markdown"]

    def markdown(self):
        R = self.results
        v = R["versions"]
        m = R["machine"]
        lines = [
            "# Warren vs an OpenSSH relay: benchmark results", "",
            f"- Run: {R['started']} ({'BENCH_QUICK smoke run' if R['quick'] else 'full run'}, "
            f"{R.get('elapsed_s', 0):.0f} s); command: `{R['command']}`",
            f"- Code measured: `{v['code_commit']}` (last commit touching src/ or Cargo.*; HEAD `{v['git_head']}`"
            + (", with uncommitted changes in src/" if v["git_dirty"] else "") + ")",
            f"- Machine: {m['nproc']} cores, {m['cpu']}, AES-NI {'yes' if m['aes_ni'] else 'no'}, "
            f"AVX-512 {'yes' if m.get('avx512f') else 'no'}, VAES {'yes' if m.get('vaes') else 'no'}, {m['mem_total']}, "
            f"`{m['uname']}`; open-file limit {m['nofile_limit']}",
            f"- Load average at start {' '.join(m['loadavg_start'])}, at end {' '.join(m.get('loadavg_end', []))} "
            "(the machine is shared: other builds may run during the benchmark; each record in the JSON has the "
            "load average at its time)",
            f"- Versions: {v['ssh -V']}; {v['iperf3']}; {v['warren']}",
            f"- Settings: {R['settings']['reps']} runs per figure, alternating the systems (the first system "
            f"rotates each round); iperf3 {R['settings']['iperf_seconds']} s (+1 s omitted); "
            f"{R['settings']['rtt_count']} round trips; {R['settings']['fb_count']} new streams; "
            f"logins/s over {R['settings']['login_seconds']} s; idle hold {R['settings']['hold']} s",
            "",
            "## Figures", "",
            R.get("table_markdown", ""), "",
        ]
        issue21 = fleet.markdown(R)
        if issue21:
            lines += ["## Fleet and fairness (bench/fleet.py)", "", *issue21, ""]
        dp = datapath.markdown(R)
        if dp:
            lines += ["## Data path per GiB (bench/datapath.py)", "", *dp, ""]
        lines += [
            "## Ciphers", "",
        ]
        for k, c in R["ciphers"].items():
            lines.append(f"- {k}: `{json.dumps(c)}`")
        lines += ["", "## Commands", "", "```"]

        def walk(prefix, d):
            for k, val in d.items():
                if isinstance(val, dict):
                    walk(f"{prefix}{k}.", val)
                else:
                    lines.append(f"# {prefix}{k}\n{val}")
        walk("", R["commands"])
        for rec in (R["rtt"][:1] + R["first_byte"][:1]):
            lines.append(f"# probe {rec.get('probe', '')} ({rec['system']})\n{rec.get('command')}")
        seen = set()
        for rec in R["scale"]:
            if "command" in rec and (rec["system"], rec["n"]) not in seen:
                seen.add((rec["system"], rec["n"]))
                lines.append(f"# idle devices, {rec['system']}, n={rec['n']}: load generator\n{rec['command']}")
                for k, c in rec["world"].items():
                    lines.append(f"# idle devices, {rec['system']}, n={rec['n']}: {k}\n{c}")
        lines += ["```", ""]
        if R.get("profile"):
            P = R["profile"]
            lines += ["## Relay profile under throughput", "", f"`{P['command']}`", "",
                      f"Self time: `{P['report_command']}`", "", "```", *P["top"][:30], "```", "",
                      f"Inclusive time, SSH library and Warren frames: `{P['inclusive_command']}` (filtered)", "",
                      "```", *P["inclusive"][:40], "```", "",
                      f"Who calls the copies, zeroing and page faults: `{P['callers_command']}` (filtered)", "",
                      "```", *P["callers"][:80], "```", ""]
            for key, who in (("floor", "relay"), ("agent_floor", "agent")):
                if P.get(key):
                    lines += [f"The {who}'s floor (`{P[key]['command']}`, every symbol): {floor_line(P[key], who)}", ""]
        if R["skipped"] or R["notes"]:
            lines += ["## Skipped and notes", ""]
            lines += [f"- skipped: {s['what']}: {s['reason']}" for s in R["skipped"]]
            lines += [f"- {n}" for n in R["notes"]]
        return "\n".join(lines) + "\n"


def render(path, md):
    """Rewrites the table and markdown of an existing results.json (after a
    change to the report code), without measuring anything."""
    b = Bench.__new__(Bench)
    b.results = json.loads(Path(path).read_text())
    b.a = argparse.Namespace(**b.results["settings"])
    b.table()
    Path(path).write_text(json.dumps(b.results, indent=2, default=str) + "\n")
    Path(md).write_text(b.markdown())


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--render":
        render(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description="Warren vs an OpenSSH relay on loopback (started by bench/run)")
    ap.add_argument("--work", required=True)
    ap.add_argument("--pids")
    ap.add_argument("--warren", required=True)
    ap.add_argument("--devices", dest="devices_bin", required=True)
    ap.add_argument("--sources", type=int, default=254,
                    help="loopback source addresses the load generator spreads devices over (127.0.0.2-...; 0: all from 127.0.0.1)")
    ap.add_argument("--probe", dest="probe_bin", required=True)
    ap.add_argument("--out", required=True, help="JSON result file")
    ap.add_argument("--md", required=True, help="markdown result file")
    quick = os.environ.get("BENCH_QUICK") == "1"
    hold_env = os.environ.get("BENCH_HOLD")
    ap.add_argument("--reps", type=int, default=1 if quick else 3, help="runs per figure")
    ap.add_argument("--iperf-seconds", type=int, default=2 if quick else 5)
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 8], help="iperf3 parallel streams (-P)")
    ap.add_argument("--ciphers", nargs="*", default=["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"],
                    help="client-leg ciphers measured besides the ssh default")
    ap.add_argument("--rtt-count", type=int, default=300 if quick else 3000)
    ap.add_argument("--rtt-size", type=int, default=64)
    ap.add_argument("--fb-count", type=int, default=30 if quick else 200)
    ap.add_argument("--logins", type=int, default=3 if quick else 10, help="sequential logins per round")
    ap.add_argument("--login-seconds", type=float, default=3 if quick else 10)
    ap.add_argument("--login-concurrency", type=int, default=4)
    ap.add_argument("--warren-devices", type=int, nargs="+", default=[10, 200, 1000] if quick else [10, 1000, 10000])
    ap.add_argument("--openssh-devices", type=int, nargs="*", default=[10, 200] if quick else [10, 1000])
    ap.add_argument("--burst", type=int, default=1000, help="devices connecting at the same moment (at most)")
    ap.add_argument("--attempts", type=int, default=400, help="connection attempts per idle device")
    ap.add_argument("--retry-ms", type=int, default=250, help="retry delay for idle devices (jitter: half to full)")
    ap.add_argument("--hold", type=float, default=float(hold_env) if hold_env else (5 if quick else 30),
                    help="seconds to hold the idle devices while sampling the relay's memory (BENCH_HOLD=3600 for 1 h)")
    ap.add_argument("--hold-samples", type=int, default=13)
    ap.add_argument("--profile", type=int, default=0 if quick else 10,
                    help="seconds of perf record on the relay under iperf3 (0: none)")
    ap.add_argument("--profile-cipher", default="aes256-gcm@openssh.com",
                    help="client-leg cipher during the profile (both relays must accept it; default: the ssh default)")
    ap.add_argument("--profile-direction", default="device_to_controller",
                    choices=["device_to_controller", "controller_to_device"],
                    help="which way iperf3 sends during the profile")
    ap.add_argument("--agent-keepalive", default="10s",
                    help="agent keepalive_timeout: how soon a wedged agent connection is replaced")
    ap.add_argument("--only", nargs="*", default=["throughput", "latency", "login", "scale", "profile"],
                    help="modes: throughput latency login scale profile, and (issue 21, bench/fleet.py) "
                         "fairness idle restart handshakes, (bench/datapath.py) datapath")
    fleet.add_arguments(ap, quick)
    a = ap.parse_args()
    a.quick = quick
    for attr in ("warren", "devices_bin", "probe_bin"):
        setattr(a, attr, str(Path(getattr(a, attr)).resolve()))

    global PIDFILE
    PIDFILE = a.pids
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    atexit.register(stop_all)

    b = Bench(a)
    b.results["command"] = os.environ.get("BENCH_COMMAND", "bash bench/run")
    t0 = time.monotonic()
    try:
        b.setup()
        if "throughput" in a.only:
            b.throughput()
        if "latency" in a.only:
            b.latency()
        if "login" in a.only:
            b.logins()
        if "scale" in a.only:
            b.scale()
        for mode, run_mode in {**fleet.MODES, **datapath.MODES}.items():
            if mode in a.only:
                run_mode(b)
        if "profile" in a.only and a.profile > 0:
            if run(["sh", "-c", "command -v perf"], check=False).returncode == 0:
                b.profile()
            else:
                b.skip("relay profile", "perf is not installed (apt-get install linux-perf)")
    finally:
        b.results["elapsed_s"] = round(time.monotonic() - t0, 1)
        b.results["machine"]["loadavg_end"] = loadavg()
        stop_all()
        table = b.table()
        Path(a.out).write_text(json.dumps(b.results, indent=2, default=str) + "\n")
        Path(a.md).write_text(b.markdown())
    print(Path(a.md).read_text())
    print(f"results: {a.md} (table, commands, versions, ciphers) and {a.out} (every run); "
          f"run took {b.results['elapsed_s']:.0f}s")


if __name__ == "__main__":
    main()
