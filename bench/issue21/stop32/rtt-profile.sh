#!/usr/bin/env bash
# Stop 32: where the relay's and the agent's CPU goes in the 64-byte round
# trip, by kind of code. Runs Warren's round-trip probe (bench/run --only
# latency, long), samples the relay and the agent with perf for 4 s, and sums
# each one's self time: the kernel; libc, the vDSO and libm; the cipher
# (aws-lc, as in bench.py's floor_shares); tokio and mio; Warren's own
# functions; the rest (std, alloc, future glue). Then the top 25 symbols.
#
#   bash bench/issue21/stop32/rtt-profile.sh > bench/issue21/stop32/rtt-profile.txt
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=$(mktemp -d /tmp/rtt-profile.XXXXXX)
BENCH_OUT="$out/bench" bash bench/run --only latency --reps 1 --rtt-count 60000 --fb-count 10 > "$out/bench.log" 2>&1 &
bench=$!
trap 'kill $bench 2>/dev/null || true' EXIT
for _ in $(seq 1 6000); do
  grep -q "round trips of" "$out/bench.log" 2>/dev/null && break
  kill -0 "$bench" 2>/dev/null || { echo "the benchmark ended early; see $out/bench.log" >&2; exit 1; }
  sleep 0.2
done
sleep 2
relay=$(pgrep -f 'warren relay --listen 127.0.0.1:[0-9]* --data /tmp/warren-bench' | paste -sd,)
agent=$(pgrep -f 'warren agent --config /tmp/warren-bench' | paste -sd,)
perf record -F 4999 -p "$relay" -o "$out/relay.data" -- sleep 4 >/dev/null 2>&1 &
r=$!
perf record -F 4999 -p "$agent" -o "$out/agent.data" -- sleep 4 >/dev/null 2>&1 &
a=$!
wait $r $a
echo "# $(date -u '+%F %H:%M UTC'), code $(git rev-parse --short HEAD): bash bench/issue21/stop32/rtt-profile.sh"
for w in relay agent; do
  perf report -i "$out/$w.data" --stdio --no-children --sort dso,symbol -g none --percent-limit 0 2>/dev/null > "$out/$w.txt"
  python3 - "$w" "$out/$w.txt" <<'PY'
import re, sys
acc = {}
for ln in open(sys.argv[2]):
    m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[([.k])\]\s+(\S+)", ln)
    if not m:
        continue
    pct, dso, kind, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4)
    if kind == "k":
        c = "kernel"
    elif dso in ("libc.so.6", "[vdso]", "libm.so.6"):
        c = "libc/vdso/libm"
    elif re.search(r"aws_lc|aes|gcm|ghash|chacha|poly1305", sym, re.I):
        c = "cipher"
    elif re.search(r"tokio::|mio::", sym):
        c = "tokio/mio"
    elif re.search(r"warren::", sym):
        c = "warren"
    else:
        c = "other user"
    acc[c] = acc.get(c, 0) + pct
print(f"{sys.argv[1]}: " + ", ".join(f"{k} {v:.1f}%" for k, v in sorted(acc.items(), key=lambda x: -x[1])))
PY
  echo "top 25 symbols, $w:"
  awk '/%/ && n++ < 25' "$out/$w.txt" | cut -c1-150
done
kill $bench 2>/dev/null || true
wait $bench 2>/dev/null || true
trap - EXIT
rm -rf "$out"
