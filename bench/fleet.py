"""Fleet-scale and fairness modes of bench/run (issue 21), run by bench.py
with `--only NAME`:

- fairness:   a victim system's 64-byte round trip (p50/p99) on an idle relay
              and while another system runs `--fair-streams` bulk iperf3
              streams flat out through the same relay.
- idle:       N idle devices (`--idle-devices`, at most `--burst` connecting
              at once): relay memory per device (RssAnon+VmPTE), time until
              all are registered, new stream first byte p50 at N vs at 10.
- restart:    N devices held by the load generator with `--rejoin`; the relay
              is killed (SIGKILL) and started again on the same port and data:
              the time until every device is registered again, refusals.
- handshakes: logins per second (key exchange + public-key auth) per core of
              relay CPU, Warren with curve25519-sha256 and with
              mlkem768x25519-sha256, against sshd (its own choice of
              exchange with this client: curve25519-sha256).

Each mode appends records to results[MODE] and lines to the markdown.
"""

import json
import os
import shlex
import statistics
import time
from pathlib import Path

# bench.py's own module (its process list, helpers), set by bench.py before
# a mode runs: importing it here would make a second copy of its globals.
B = None


def add_arguments(ap, quick):
    ap.add_argument("--fair-streams", type=int, default=8, help="bulk streams of the noisy system")
    ap.add_argument("--fair-nice", type=int, default=0,
                    help="nice value for the noisy system's own processes (its ssh -L, agent, iperf3 client "
                         "and server; the relay and the victim's processes stay at 0): separates what the "
                         "relay does from the OS sharing 2 cores between the load generators")
    ap.add_argument("--fair-idle", action="store_true",
                    help="run the noisy system's own processes (as --fair-nice) under SCHED_IDLE instead: they "
                         "get a core only when the relay and the victim's processes leave one free, the closest "
                         "one machine comes to those processes being on other hosts")
    ap.add_argument("--fair-rate", default=None,
                    help="bandwidth limit set on the noisy system for the bulk run (as `system set --rate`, e.g. 100M)")
    ap.add_argument("--fair-seconds", type=int, default=5 if quick else 15,
                    help="seconds the bulk streams run (the victim's probe runs inside)")
    ap.add_argument("--idle-devices", type=int, nargs="+", default=[500] if quick else [19000])
    ap.add_argument("--restart-devices", type=int, default=500 if quick else 19000)
    ap.add_argument("--handshake-seconds", type=float, default=5 if quick else 20)
    ap.add_argument("--handshake-concurrency", type=int, default=8)


def percentiles(rec):
    return f"p50 {rec['p50_us']:.0f} µs p99 {rec['p99_us']:.0f} µs" if "p50_us" in rec else f"FAILED {rec['error']}"


# --------------------------------------------------------------- fairness

def victim_world(b):
    """System `victim` on the shared Warren relay: its own device (agent,
    echo target) and a controller `ssh -L` to it."""
    r = b.wrelay
    r.admin("system", "add", "victim")
    # A key belongs to one system: the victim's controller has its own.
    ckey = b.work / "victim_user_key"
    B.keygen(ckey, "victim")
    r.admin("key", "add", "--system", "victim", "--role", "controller", "--name", "carol", f"{ckey}.pub")
    key = b.work / "victim_dev_key"
    B.run([b.a.warren, "keygen", key])
    r.admin("key", "add", "--system", "victim", "--role", "device", "--name", "vdev", f"{key}.pub")
    toml = b.work / "victim_agent.toml"
    toml.write_text(
        f'relay = "127.0.0.1:{r.port}"\nsystem = "victim"\nname = "vdev"\n'
        f'key = "{key}"\nrelay_host_key = "{r.fingerprint}"\n'
        f'allow = ["7=127.0.0.1:{b.echo_port}"]\n'
    )
    agent = B.Proc("victim_agent", [b.a.warren, "agent", "--config", toml], b.logs)
    agent.wait_for("online: registered", 30)
    lport = B.free_port()
    argv = b.ssh("-N", "-v", "-i", ckey, "-o", "ExitOnForwardFailure=yes", "-L", f"127.0.0.1:{lport}:vdev:7",
                 "-p", r.port, "victim@127.0.0.1")
    ctl = B.Proc("victim_controller", argv, b.logs)
    ctl.wait_for(rf"Local forwarding listening on 127\.0\.0\.1 port {lport}", 30)
    ctl.lport = lport
    return agent, ctl


def fairness(b):
    n, secs = b.a.fair_streams, b.a.fair_seconds
    B.log(f"fairness: victim round trips idle, then while system {B.SYSTEM} runs {n} iperf3 streams for {secs}s")
    agent, victim = victim_world(b)
    bulk = b.controller("warren", None, B.free_port(), "iperf")
    count = b.a.rtt_count
    try:
        for rnd in range(b.a.reps):
            before = snapshot(b, victim, agent)
            idle = b.probe("rtt", victim.lport, count, 100)
            idle.update(inside(b, before, snapshot(b, victim, agent)))
            argv = ["iperf3", "-c", "127.0.0.1", "-p", str(bulk.lport), "-t", str(secs), "-P", str(n),
                    "-J", "--connect-timeout", "10000", "-R"]
            b.wait_iperf_idle("warren")
            if b.a.fair_rate:
                b.wrelay.admin("system", "set", B.SYSTEM, "--rate", b.a.fair_rate)
            load = B.subprocess.Popen(argv, stdout=B.subprocess.PIPE, stderr=B.subprocess.PIPE, text=True)
            noisy = [bulk.pid, b.agent.pid, b.iperf["warren"].pid, load.pid]
            renice(noisy, b.a.fair_nice)
            if b.a.fair_idle:
                set_idle(noisy, True)
            # The bulk streams ramp up for a second before the probe starts;
            # threads started meanwhile (per stream) get the same priority.
            time.sleep(1.0)
            renice(noisy, b.a.fair_nice)
            if b.a.fair_idle:
                set_idle(noisy, True)
            before = snapshot(b, victim, agent)
            busy = b.probe("rtt", victim.lport, count, 20)
            busy.update(inside(b, before, snapshot(b, victim, agent)))
            out, _ = load.communicate(timeout=secs + 30)
            renice(noisy[:3], 0)
            if b.a.fair_idle:
                set_idle(noisy[:3], False)
            if b.a.fair_rate:
                b.wrelay.admin("system", "set", B.SYSTEM, "--rate", "none")
            try:
                mbit = json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6
            except (ValueError, KeyError):
                mbit = None
            rec = {"round": rnd, "idle": idle, "busy": busy, "bulk_streams": n, "bulk_mbit_s": mbit,
                   "time_slices_us": {"relay": time_slices([b.wrelay.proc.pid]),
                                      "victim": time_slices([victim.pid, agent.pid, b.echo.pid]),
                                      "noisy": time_slices(noisy[:3])},
                   "noisy_nice": b.a.fair_nice, "noisy_idle": b.a.fair_idle, "noisy_rate": b.a.fair_rate,
                   "relay_bulk_nice": os.environ.get("WARREN_BULK_NICE", "default"),
                   "bulk_command": shlex.join(argv), "victim_controller": shlex.join(victim.argv),
                   "loadavg": B.loadavg()}
            if "p99_us" in idle and "p99_us" in busy:
                rec["p99_ratio"] = round(busy["p99_us"] / idle["p99_us"], 2)
                rec["p50_ratio"] = round(busy["p50_us"] / idle["p50_us"], 2)
            b.results.setdefault("fairness", []).append(rec)
            B.log(f"  round {rnd}: victim idle {percentiles(idle)}; under {n} bulk streams "
                  f"({mbit or 0:.0f} Mbit/s) {percentiles(busy)}; p99 ×{rec.get('p99_ratio', '?')}")
            for label, r in (("idle", idle), ("busy", busy)):
                B.log(f"    {label}: {split_line(r)}")
            B.log(f"    time slices (µs): {rec['time_slices_us']}")
    finally:
        for p in (bulk, victim, agent):
            b.restart(p)


# The relay's own delay for a victim message, from its read on one connection
# to its write on the other (histogram warren_traced_relay_delay_seconds,
# recorded for the system named by WARREN_TRACE_SYSTEM), and the time the
# relay's threads and the victim's processes spent runnable but waiting for
# a core (/proc/PID/task/TID/schedstat: run-queue wait and time slices).

DELAY = "warren_traced_relay_delay_seconds"


def delay_buckets(b):
    """Cumulative bucket counts {le: count} of the relay's traced delay."""
    import urllib.request
    if not getattr(b, "wrelay_metrics", None):
        return {}
    with urllib.request.urlopen(f"http://127.0.0.1:{b.wrelay_metrics}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for m in B.re.finditer(DELAY + r'_bucket\{le="([^"]+)"\} (\d+)', text):
        out[float(m.group(1))] = int(m.group(2))
    return out


def bucket_quantile(diff, q):
    """The q-quantile (µs) of a cumulative bucket diff, interpolated inside
    its bucket (the upper bound of the last finite bucket if beyond it)."""
    bounds = sorted(diff)
    total = diff[bounds[-1]] if bounds else 0
    if total == 0:
        return None
    want, lo, below = q * total, 0.0, 0
    for le in bounds:
        if diff[le] >= want:
            if le == float("inf"):
                return lo * 1e6
            inside = diff[le] - below
            return (lo + (le - lo) * ((want - below) / inside if inside else 1.0)) * 1e6
        lo, below = le, diff[le]
    return lo * 1e6


def threads(pids):
    """The /proc task directories of every thread of `pids` (gone ones skipped)."""
    for pid in pids:
        try:
            yield from Path(f"/proc/{pid}/task").iterdir()
        except OSError:
            continue


def sched(pids):
    """Sum over every thread of `pids` of (run-queue wait ns, time slices)."""
    wait = slices = 0
    for t in threads(pids):
        try:
            f = (t / "schedstat").read_text().split()
        except OSError:
            continue
        wait, slices = wait + int(f[1]), slices + int(f[2])
    return wait, slices


def time_slices(pids):
    """The distinct scheduler time slices (µs) of every thread of `pids`
    (`se.slice` in /proc/PID/task/TID/sched), e.g. [100] for a relay whose
    threads asked for 0.1 ms (see `warren relay --thread-slice`)."""
    out = set()
    for t in threads(pids):
        try:
            m = B.re.search(r"^se\.slice\s*:\s*(\d+)", (t / "sched").read_text(), B.re.M)
        except OSError:
            continue
        if m:
            out.add(int(m.group(1)) // 1000)
    return sorted(out)


VICTIM_PARTS = ("ssh", "agent", "echo")


def snapshot(b, victim, agent):
    parts = dict(zip(VICTIM_PARTS, (victim.pid, agent.pid, b.echo.pid)))
    snap = {"t": time.monotonic(), "delay": delay_buckets(b), "relay": sched([b.wrelay.proc.pid]),
            "victim": sched(list(parts.values()))}
    for name, pid in parts.items():
        snap[f"victim_{name}"] = sched([pid])
    return snap


def inside(b, before, after):
    """What happened between two snapshots: the relay's delay for the victim's
    messages (p50/p99, each direction counted), and the run-queue wait of the
    relay's threads and of the victim's processes per second."""
    out = {}
    diff = {le: after["delay"].get(le, 0) - before["delay"].get(le, 0) for le in after["delay"]}
    if diff and max(diff.values()) > 0:
        out["relay_delay"] = {"count": max(diff.values()), "p50_us": round(bucket_quantile(diff, 0.5), 1),
                              "p99_us": round(bucket_quantile(diff, 0.99), 1)}
    secs = max(after["t"] - before["t"], 1e-6)
    for who in ("relay", "victim") + tuple(f"victim_{p}" for p in VICTIM_PARTS):
        (w0, s0), (w1, s1) = before[who], after[who]
        # Sums over live threads: one that ended in between can make it fall.
        wait, slices = max(w1 - w0, 0), max(s1 - s0, 1)
        out[f"{who}_runqueue"] = {"wait_ms_per_s": round(wait / 1e6 / secs, 1),
                                  "mean_wait_us": round(wait / 1e3 / slices, 1)}
    return out


def split_line(r):
    d = r.get("relay_delay")
    rd = f"relay's own delay per message p50 {d['p50_us']:.0f} µs p99 {d['p99_us']:.0f} µs" if d else "no relay delay"
    rq, vq = r.get("relay_runqueue", {}), r.get("victim_runqueue", {})
    return (f"{rd}; run-queue wait: relay threads {rq.get('wait_ms_per_s')} ms/s "
            f"(mean {rq.get('mean_wait_us')} µs), victim's processes {vq.get('wait_ms_per_s')} ms/s "
            f"(mean {vq.get('mean_wait_us')} µs: "
            + ", ".join(f"{p} {r.get(f'victim_{p}_runqueue', {}).get('wait_ms_per_s')}" for p in VICTIM_PARTS)
            + ")")


def renice(pids, value):
    """Sets the nice value of every thread of each process in `pids` (gone
    ones skipped). On Linux a nice value belongs to a thread: renicing a
    process id alone leaves the other threads of a multi-threaded process
    (the agent's runtime workers) where they were."""
    for t in threads(pids):
        try:
            os.setpriority(os.PRIO_PROCESS, int(t.name), value)
        except (ProcessLookupError, ValueError, PermissionError):
            pass


def set_idle(pids, idle):
    """Puts every thread of each process in `pids` under SCHED_IDLE (or back
    under SCHED_OTHER); gone ones skipped."""
    policy = os.SCHED_IDLE if idle else os.SCHED_OTHER
    for t in threads(pids):
        try:
            os.sched_setscheduler(int(t.name), policy, os.sched_param(0))
        except (ProcessLookupError, ValueError, PermissionError):
            pass


# --------------------------------------------------------------- idle devices

def idle(b):
    """The scale measurement for Warren alone, at 10 and at each N."""
    sizes = sorted(set([10] + b.a.idle_devices))
    B.log(f"idle: Warren at {sizes} devices, at most {b.a.burst} connecting at once")
    recs = {}
    for n in sizes:
        for rep in range(b.a.reps):
            try:
                rec = b.scale_once("warren", n, rep)
            except RuntimeError as e:
                rec = {"system": "warren", "n": n, "rep": rep, "error": str(e)[-2000:]}
            b.results.setdefault("idle", []).append(rec)
            recs.setdefault(n, []).append(rec)

    def fb50(n):
        v = [r["first_byte"]["p50_us"] for r in recs.get(n, []) if "p50_us" in r.get("first_byte", {})]
        return statistics.median(v) if v else None

    base = fb50(10)
    for n in b.a.idle_devices:
        if base and fb50(n):
            b.results.setdefault("idle_first_byte_ratio", {})[str(n)] = round(fb50(n) / base, 2)


# --------------------------------------------------------------- restart

def restart(b):
    n = b.a.restart_devices
    B.log(f"restart: {n} devices, relay killed and started again")
    name = f"restart_{n}"
    relay = B.WarrenRelay(name, b.work, b.a.warren)
    gen = None
    try:
        conc = min(n, b.a.burst)
        argv = [b.a.devices_bin, "--relay", f"127.0.0.1:{relay.port}", "--data", relay.data,
                "--host-key", relay.fingerprint, "--n", n, "--wait-go", "--concurrency", conc,
                "--attempts", b.a.attempts, "--retry-ms", b.a.retry_ms, "--rejoin", "--sources", b.a.sources]
        gen = B.Proc(f"{name}_devices", argv, b.logs, stdin=True)
        gen.wait_for(r"^keys-registered", 1800)
        time.sleep(2.0)  # the relay's store watcher sees the new keys
        gen.send("go\n")
        up = gen.wait_for(r"^all-up (\d+) ([\d.]+) failed (\d+)", 1800)[0]
        killed = time.monotonic()
        relay.proc.p.kill()
        relay.proc.p.wait()
        B.PROCS.remove(relay.proc)
        again = B.Proc(f"{name}_again", relay.proc.argv, b.logs)
        again.wait_for("relay listening", 60)
        listening_s = time.monotonic() - killed
        m = gen.wait_for(r"^rejoined (\d+) ([\d.]+) refused (\d+) p50 ([\d.]+) p99 ([\d.]+)", 1800)[0]
        rec = {"n": n, "up_before": int(up.group(1)), "registered_s": float(up.group(2)),
               "failed_before": int(up.group(3)), "relay_listening_again_s": round(listening_s, 3),
               "rejoined": int(m.group(1)), "all_back_s": float(m.group(2)), "refused": int(m.group(3)),
               "back_p50_s": float(m.group(4)), "back_p99_s": float(m.group(5)),
               "command": shlex.join(map(str, argv)), "relay": shlex.join(map(str, relay.proc.argv)),
               "loadavg": B.loadavg()}
        b.results.setdefault("restart", []).append(rec)
        B.log(f"  {n} devices: listening again after {listening_s:.2f}s; all {rec['rejoined']} back after "
              f"{rec['all_back_s']:.2f}s (p50 {rec['back_p50_s']:.2f}s), {rec['refused']} attempts refused")
        gen.close_stdin()
        b.restart(again)
    finally:
        for p in (gen, relay.proc):
            if p is not None and p in B.PROCS:
                b.restart(p)


# --------------------------------------------------------------- handshakes

def ticks_with_reaped(pid):
    """utime+stime of `pid` and of its children it reaped (cutime+cstime):
    sshd's per-login children are gone by the time anyone looks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15])

def handshake_rate(b, label, relay_pid, gen_args, port):
    c = b.a.handshake_concurrency
    argv = [b.a.devices_bin, "--relay", f"127.0.0.1:{port}", *gen_args, "--n", c,
            "--concurrency", c, "--handshakes", b.a.handshake_seconds]
    before = ticks_with_reaped(relay_pid)
    r = B.run(argv, timeout=b.a.handshake_seconds + 600)
    after = ticks_with_reaped(relay_pid)
    m = B.re.search(r"handshakes (\d+) failed (\d+) seconds ([\d.]+)", r.stdout)
    cpu_s = (after - before) / B.CLK_TCK
    done, failed, secs = int(m.group(1)), int(m.group(2)), float(m.group(3))
    rec = {"relay": label, "handshakes": done, "failed": failed, "seconds": secs,
           "per_s": round(done / secs, 1), "relay_cpu_s": round(cpu_s, 2),
           "per_cpu_s": round(done / cpu_s, 1) if cpu_s else None,
           "command": shlex.join(map(str, argv)), "loadavg": B.loadavg()}
    b.results.setdefault("handshakes", []).append(rec)
    B.log(f"  {label:34} {rec['per_s']:7.1f} logins/s, {rec['per_cpu_s']} per relay CPU-second "
          f"({failed} failed)")


def handshakes(b):
    B.log(f"handshakes: {b.a.handshake_concurrency} clients logging in again and again for "
          f"{b.a.handshake_seconds}s; relay CPU counted")
    for kex in ("curve25519-sha256", "mlkem768x25519-sha256"):
        name = f"hs_{kex.split('-')[0]}"
        relay = B.WarrenRelay(name, b.work, b.a.warren, ["--kex-algorithms", kex])
        try:
            # Registers the keys; the load generator does not register names.
            gen_args = ["--data", relay.data, "--host-key", relay.fingerprint]
            time.sleep(0.5)
            handshake_rate(b, f"warren {kex}", relay.proc.pid, gen_args, relay.port)
        finally:
            b.restart(relay.proc)
    sshd = B.Sshd("hs_sshd", b.work, f"{b.ukey}.pub", "MaxStartups 100:30:200\nLogLevel ERROR\n")
    try:
        gen_args = ["--host-key", sshd.fingerprint, "--openssh-key", b.ukey, "--user", b.user]
        handshake_rate(b, "sshd (curve25519-sha256)", sshd.proc.pid, gen_args, sshd.port)
    finally:
        b.restart(sshd.proc)


MODES = {"fairness": fairness, "idle": idle, "restart": restart, "handshakes": handshakes}


def markdown(results):
    """Lines for the results file: one per record of these modes."""
    out = []
    for rec in results.get("fairness", []):
        i, s = rec["idle"], rec["busy"]
        if "p50_us" in i and "p50_us" in s:
            nice = f" (noisy system's processes at nice {rec['noisy_nice']})" if rec.get("noisy_nice") else ""
            if rec.get("noisy_rate"):
                nice += f" (noisy system limited to {rec['noisy_rate']}/s)"
            out.append(f"- Fairness{nice}, round {rec['round']}: victim 64-byte RTT idle p50 {i['p50_us']:.0f} µs / "
                       f"p99 {i['p99_us']:.0f} µs; under {rec['bulk_streams']} bulk streams of another system "
                       f"({rec['bulk_mbit_s'] or 0:.0f} Mbit/s) p50 {s['p50_us']:.0f} µs / p99 {s['p99_us']:.0f} µs "
                       f"(p99 ×{rec['p99_ratio']})")
            for label, r in (("idle", i), ("under load", s)):
                out.append(f"  - {label}: {split_line(r)}")
            if rec.get("time_slices_us"):
                sl = rec["time_slices_us"]
                out.append(f"  - scheduler time slices (µs): relay threads {sl['relay']}, victim's processes "
                           f"{sl['victim']}, noisy system's processes {sl['noisy']}")
    for rec in results.get("idle", []):
        if "kib_per_device" in rec:
            fb = rec["first_byte"]
            out.append(f"- Idle, {rec['n']} devices: {rec['kib_per_device']['RssAnon+VmPTE']} KiB/device, "
                       f"all registered in {rec['all_registered_s']} s ({rec['failed']} failed), new stream "
                       f"first byte p50 {fb.get('p50_us', 0):.0f} µs")
    for n, ratio in results.get("idle_first_byte_ratio", {}).items():
        out.append(f"- First byte p50 at {n} devices / at 10: ×{ratio}")
    for rec in results.get("restart", []):
        out.append(f"- Restart, {rec['n']} devices: relay listening again after {rec['relay_listening_again_s']} s; "
                   f"all {rec['rejoined']} back after {rec['all_back_s']} s; {rec['refused']} attempts refused")
    for rec in results.get("handshakes", []):
        out.append(f"- Handshakes, {rec['relay']}: {rec['per_s']} logins/s, {rec['per_cpu_s']} per relay "
                   f"CPU-second ({rec['failed']} failed)")
    return out
