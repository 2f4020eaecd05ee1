#!/usr/bin/env bash
# Relay memory per idle device, quickly (README, "Relay memory per idle
# device"): a release relay, N idle devices from bench_devices, and the
# relay's RssAnon+VmPTE before connecting and SETTLE seconds (default 3)
# after the last registered. `HEAPTRACK=1`: the relay runs under heaptrack,
# is killed at the end (SIGKILL), and `heaptrack_print --print-leaks 1` on
# the file named shows what each connection still held.
#
#   cargo build --release --locked --bin warren
#   cargo build --release --locked --example bench_devices
#   bash bench/idle_memory.sh 2000 [CONCURRENCY [SOURCES]]
set -euo pipefail
N=${1:?usage: idle_memory.sh N [CONCURRENCY [SOURCES]]}
CONC=${2:-32}
SOURCES=${3:-254}
BIN="$(cd "$(dirname "$0")/.." && pwd)/target/release"
D=$(mktemp -d /tmp/warren-idle.XXXXXX)
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
ulimit -n "$(ulimit -Hn)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
if [ "${HEAPTRACK:-}" = 1 ]; then
  heaptrack -o "$D/ht" "$BIN/warren" relay --listen "127.0.0.1:$PORT" --data "$D/data" >"$D/relay.log" 2>&1 &
else
  "$BIN/warren" relay --listen "127.0.0.1:$PORT" --data "$D/data" >"$D/relay.log" 2>&1 &
fi
WRAP=$!
PIDS+=("$WRAP")
for _ in $(seq 300); do grep -q "relay listening" "$D/relay.log" && break; sleep 0.2; done
RELAY=$(pgrep -n -f "warren relay --listen 127.0.0.1:$PORT " || echo "$WRAP")
PIDS+=("$RELAY")
mem() { awk '/RssAnon|VmPTE/{s+=$2} END{print s}' "/proc/$RELAY/status"; }
FP=$("$BIN/warren" admin --data "$D/data" host-key)
mkfifo "$D/in"
sleep 100000 >"$D/in" &
PIDS+=("$!")
"$BIN/examples/bench_devices" --relay "127.0.0.1:$PORT" --data "$D/data" --host-key "$FP" --n "$N" \
  --concurrency "$CONC" --sources "$SOURCES" --attempts 1000 --wait-go <"$D/in" >"$D/gen.log" 2>&1 &
PIDS+=("$!")
until grep -q keys-registered "$D/gen.log"; do sleep 0.5; done
BEFORE=$(mem)
echo go >"$D/in" &
until grep -q all-up "$D/gen.log"; do sleep 0.2; done
sleep "${SETTLE:-3}"
AFTER=$(mem)
grep all-up "$D/gen.log"
echo "relay RssAnon+VmPTE: before $BEFORE KiB, after $AFTER KiB, $(python3 -c "print(round(($AFTER-$BEFORE)/$N,2))") KiB per device"
kill -KILL "$RELAY"
[ "${HEAPTRACK:-}" = 1 ] && { wait "$WRAP" 2>/dev/null || true; echo "heaptrack file: $(ls "$D"/ht*)"; }
echo "logs: $D"
