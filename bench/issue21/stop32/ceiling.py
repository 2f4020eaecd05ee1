#!/usr/bin/env python3
"""Stop 32: the most each Warren throughput row could reach on these 2 cores
if the relay and the agent ran no code of their own (only the cipher and the
kernel), from the throughput run's CPU per GiB per process and the profiles'
shares (floor/*/results.json), against 2x OpenSSH's rate in the same run; and the relay CPU per GiB
the relay would spend with no code of its own, against 0.35x OpenSSH's.

    python3 bench/issue21/stop32/ceiling.py [THROUGHPUT_DIR] [FLOOR_DIR]
"""
import json
import statistics
import sys
from pathlib import Path

here = Path(__file__).parent
tp = Path(sys.argv[1]) if len(sys.argv) > 1 else here / "throughput"
fl = Path(sys.argv[2]) if len(sys.argv) > 2 else here / "floor"
R = json.loads((tp / "results.json").read_text())
cores = R["machine"].get("nproc") or 2

own = {}  # (cipher, direction) -> share of relay / agent CPU that is Warren's own code
for d in sorted(fl.iterdir()):
    f = d / "results.json"
    if not f.exists():
        continue
    F = json.loads(f.read_text())
    P, cipher = F["profile"], F["settings"]["profile_cipher"]
    own[(cipher, P["direction"])] = (P["floor"]["other_user_pct"] / 100, P["agent_floor"]["other_user_pct"] / 100)

rows = {}
for rec in R["throughput"]:
    if rec.get("cpu_s_per_gib") and rec.get("mbit_s"):
        rows.setdefault((rec["system"], rec["cipher"], rec["streams"], rec["direction"]), []).append(rec)



def warren_rows():
    """Each Warren row that has a profile: its key, runs, and OpenSSH's runs."""
    for (s, c, n, d), lst in sorted(rows.items()):
        if s == "warren" and (c, d) in own:
            yield c, n, d, lst, rows[("openssh", c, n, d)]


print("| Cipher | Streams | Direction | OpenSSH Mbit/s | 2× | Warren Mbit/s | Warren's bound | "
      "bound with no relay/agent code of their own | its ratio to OpenSSH |")
print("|---|---|---|---|---|---|---|---|---|")
for c, n, d, lst, ossh in warren_rows():
    o = statistics.median(r["mbit_s"] for r in ossh)
    w = statistics.median(r["mbit_s"] for r in lst)
    med = {k: statistics.median(r["cpu_s_per_gib"][k] for r in lst) for k in lst[0]["cpu_s_per_gib"]}
    total = sum(med.values())
    ru, au = own[(c, d)]
    least = total - med["relay"] * ru - med["device_side"] * au
    mbit = lambda s_per_gib: cores / s_per_gib * 8 * 2**30 / 1e6
    print(f"| {c} | {n} | {d.replace('_to_', '→')} | {o:,.0f} | {2 * o:,.0f} | {w:,.0f} | {mbit(total):,.0f} | "
          f"{mbit(least):,.0f} | {mbit(least) / o:.2f}× |")

print()
print("| Cipher | Streams | Direction | OpenSSH relay s/GiB | 0.35× | Warren relay s/GiB | "
      "its cipher and kernel alone | their ratio to OpenSSH |")
print("|---|---|---|---|---|---|---|---|")
for c, n, d, lst, ossh in warren_rows():
    o = statistics.median(r["cpu_s_per_gib"]["relay"] for r in ossh)
    w = statistics.median(r["cpu_s_per_gib"]["relay"] for r in lst)
    least = w * (1 - own[(c, d)][0])
    print(f"| {c} | {n} | {d.replace('_to_', '→')} | {o:.2f} | {0.35 * o:.2f} | {w:.2f} | {least:.2f} | "
          f"{least / o:.2f}× |")
