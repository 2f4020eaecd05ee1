"""The relay's data path per GiB, per direction (issue 21, `--only datapath`).

For each client-leg cipher (--ciphers; aes128-gcm by default when run alone)
and each --streams count, both directions through Warren (stock `ssh -L` →
relay → agent → iperf3), one iperf3 run each while:

- the relay's /metrics counters give channel data packets received and sent
  (warren_ssh_data_packets_total): controller → device, "in" is the
  controller leg and "out" the agent leg; device → controller the reverse;
- `perf stat -p` counts the relay's and the agent's context switches and
  read/write system calls (recvfrom/sendto/readv/writev included);
- /proc gives the relay's and the agent's CPU seconds.

Everything is divided by the GiB iperf3 received. Stdlib only; started by
bench.py (which sets B to itself).
"""

import json
import re
import shlex
import shutil
import subprocess
import time
import urllib.request

B = None

EVENTS = ["context-switches"] + [f"syscalls:sys_enter_{c}" for c in
                                 ("read", "write", "readv", "writev", "recvfrom", "sendto", "futex",
                                  "epoll_wait")]


def metric_counts(b):
    """The relay's data packet and byte counters, by direction."""
    with urllib.request.urlopen(f"http://127.0.0.1:{b.wrelay_metrics}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for m in re.finditer(r'^warren_ssh_data_(packets|bytes)_total\{direction="(in|out)"\} (\d+)', text, re.M):
        out[f"{m.group(1)}_{m.group(2)}"] = int(m.group(3))
    return out


def perf_stat(pid, seconds, path):
    argv = ["perf", "stat", "-x", ",", "-o", str(path), "-e", ",".join(EVENTS), "-p", str(pid),
            "--", "sleep", str(seconds)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), argv


def read_perf(path):
    counts = {}
    for line in path.read_text().splitlines():
        f = line.split(",")
        if len(f) > 2 and f[0].strip().isdigit():
            counts[f[2].replace("syscalls:sys_enter_", "")] = int(f[0])
    return counts


def one(b, cipher, streams, direction, ctl):
    reverse = direction == "device_to_controller"
    secs = b.a.iperf_seconds
    argv = ["iperf3", "-c", "127.0.0.1", "-p", str(ctl.lport), "-t", str(secs), "-J",
            "--connect-timeout", "10000", "-P", str(streams)] + (["-R"] if reverse else [])
    b.wait_iperf_idle("warren")
    pids = {"relay": b.wrelay.proc.pid, "agent": b.agent.pid}
    before_m = metric_counts(b)
    before_cpu = {k: B.cpu_ticks([p], False) for k, p in pids.items()}
    iperf = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL)
    time.sleep(0.5)  # past the connection setup: the counts cover the bulk phase
    perf = shutil.which("perf") is not None
    stats = {k: perf_stat(p, max(1, secs - 1), b.work / f"perf-{k}-{streams}-{direction}.csv")
             for k, p in pids.items()} if perf else {}
    out, _ = iperf.communicate(timeout=secs + 30)
    for proc, _ in stats.values():
        proc.wait(timeout=30)
    after_m = metric_counts(b)
    after_cpu = {k: B.cpu_ticks([p], False) for k, p in pids.items()}
    res = json.loads(out or "{}")
    rec = {"cipher": cipher, "streams": streams, "direction": direction, "command": shlex.join(argv),
           "perf_command": shlex.join(stats["relay"][1]) if perf else None, "loadavg": B.loadavg()}
    if "end" not in res:
        rec["error"] = res.get("error", "no result")
        B.log(f"  datapath P{streams} {direction}: FAILED {rec['error']}")
        return rec
    got = res["end"]["sum_received"]["bytes"]
    gib = got / B.GIB
    # perf counted over secs-1 of the run's secs seconds (iperf3's bytes):
    # scale its counts to the whole run before dividing.
    scale = secs / max(1, secs - 1)
    rec["gib"] = round(gib, 3)
    rec["mbit_s"] = round(res["end"]["sum_received"]["bits_per_second"] / 1e6)
    delta = {k: after_m.get(k, 0) - before_m.get(k, 0) for k in after_m}
    legs = ("controller", "agent") if not reverse else ("agent", "controller")
    rec["packets_per_gib"] = {legs[0]: round(delta["packets_in"] / gib), legs[1]: round(delta["packets_out"] / gib)}
    rec["mean_packet"] = {legs[0]: delta["bytes_in"] // max(1, delta["packets_in"]),
                          legs[1]: delta["bytes_out"] // max(1, delta["packets_out"])}
    rec["cpu_s_per_gib"] = {k: round((after_cpu[k] - before_cpu[k]) / B.CLK_TCK / gib, 3) for k in pids}
    for k in pids:
        c = read_perf(b.work / f"perf-{k}-{streams}-{direction}.csv") if perf else {}
        rec[f"{k}_per_gib"] = {e: round(v * scale / gib) for e, v in c.items()}
    B.log(f"  datapath P{streams} {direction:21} {rec['mbit_s']} Mbit/s  cpu s/GiB {rec['cpu_s_per_gib']}  "
          f"packets/GiB {rec['packets_per_gib']} mean {rec['mean_packet']}")
    B.log(f"    relay/GiB {rec['relay_per_gib']}")
    B.log(f"    agent/GiB {rec['agent_per_gib']}")
    return rec


def datapath(b):
    if not getattr(b, "wrelay_metrics", None):
        b.skip("datapath", "the relay was started without --metrics")
        return
    ciphers = b.a.ciphers or [None]
    if shutil.which("perf") is None:
        b.skip("datapath system calls and context switches", "perf is not installed (apt-get install linux-perf)")
    b.results["datapath"] = []
    for cipher in ciphers:
        B.log(f"data path per GiB, client-leg cipher {cipher or 'default'}")
        ctl = b.controller("warren", cipher, B.free_port(), "iperf")
        for _ in range(b.a.reps):
            for streams in b.a.streams:
                for direction in ("controller_to_device", "device_to_controller"):
                    b.results["datapath"].append(one(b, cipher or "default", streams, direction, ctl))
        b.restart(ctl)


def markdown(results):
    recs = [r for r in results.get("datapath", []) if "gib" in r]
    if not recs:
        return []
    lines = ["| cipher | streams | direction | Mbit/s | relay CPU s/GiB | agent CPU s/GiB | packets/GiB "
             "(mean size) | relay ctx switches/GiB | relay read+write calls/GiB |", "|" + "---|" * 9]
    for r in recs:
        calls = sum(v for k, v in r["relay_per_gib"].items() if k not in ("context-switches", "futex", "epoll_wait"))
        pk = ", ".join(f"{leg} {n} ({r['mean_packet'][leg]} B)" for leg, n in r["packets_per_gib"].items())
        lines.append(f"| {r['cipher']} | {r['streams']} | {r['direction']} | {r['mbit_s']} | "
                     f"{r['cpu_s_per_gib']['relay']} | {r['cpu_s_per_gib']['agent']} | {pk} | "
                     f"{r['relay_per_gib'].get('context-switches', 0)} | {calls} |")
    return lines


MODES = {"datapath": datapath}
