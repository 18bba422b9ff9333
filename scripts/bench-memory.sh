#!/usr/bin/env bash
# Memory of the daemon (issue #14 item 5): `scripts/bench-memory.sh [OUT.md] [CONFIG...]`.
#
# Runs the real daemon (`gradwatch run`) with one `replay` stream of the committed sample at full
# speed (queue policy `block`, FRAMES frames, default 2000) once per configuration and ROUNDS
# times over (default 2), alternating the configurations within each round so that a slow
# minute of a shared machine hits them all alike. Samples VmRSS and VmHWM every second.
# Reports per configuration: VmRSS once the first frames are scored (first sample after 3 s),
# the mean and max VmRSS over the second half of the run, the peak (VmHWM), and frames per
# second as a ratio to the first configuration of the same round (median over rounds).
#
# A configuration is NAME:SETTINGS, SETTINGS a ';'-separated list of `section.key=value` TOML
# settings in [runtime] or [pipeline] (or `env.NAME=VALUE` for the daemon's environment), e.g. 'arena-on:runtime.cpu_arena=true' or
# 'b4:pipeline.max_batch=4;runtime.threads=1'. Without CONFIG arguments, the table of
# docs/results/memory.md. Environment: FRAMES, ROUNDS, PRESET (full), GRADWATCH (binary; default
# target/release, built first).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
OUT="${1:-/dev/null}"
shift || true
FRAMES="${FRAMES:-2000}"
ROUNDS="${ROUNDS:-2}"
PRESET="${PRESET:-full}"
CALIB="$ROOT/models/gtsrb-resnet18.calib.toml"
[ "$PRESET" = full ] || CALIB="$ROOT/models/gtsrb-resnet18.$PRESET.calib.toml"
BIN="${GRADWATCH:-$ROOT/target/release/gradwatch}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gradwatch-mem.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
[ -n "${GRADWATCH:-}" ] || cargo build --release --locked --bin gradwatch >&2

CONFIGS=("$@")
if [ ${#CONFIGS[@]} = 0 ]; then
  CONFIGS=(
    "defaults (arena on, pattern off, batch 8, threads 0):"
    "memory pattern on (the old default):runtime.memory_pattern=true"
    "arena off:runtime.cpu_arena=false"
    "arena off, pattern on:runtime.cpu_arena=false;runtime.memory_pattern=true"
    "max_batch 4:pipeline.max_batch=4"
    "max_batch 2:pipeline.max_batch=2"
    "threads 1:runtime.threads=1"
    "threads 2 (= threads 0 on 2 cores):runtime.threads=2"
  )
fi

# config NAME SETTINGS: writes $WORK/NAME.toml.
config() {
  local f="$WORK/$1.toml" runtime="" pipeline="" kv
  : >"$WORK/$1.env"
  IFS=';' read -ra kvs <<<"$2"
  for kv in "${kvs[@]}"; do
    [ -n "$kv" ] || continue
    case "$kv" in
      runtime.*) runtime+="${kv#runtime.}"$'\n' ;;
      pipeline.*) pipeline+="${kv#pipeline.}"$'\n' ;;
      env.*) echo "${kv#env.}" >>"$WORK/$1.env" ;;
      *) echo "bench-memory: '$kv' is not runtime.*, pipeline.* or env.*" >&2; exit 2 ;;
    esac
  done
  cat >"$f" <<EOF
[model]
path = "$ROOT/models/gtsrb-resnet18.onnx"
calibration = "$CALIB"
preset = "$PRESET"
[runtime]
$runtime
[pipeline]
$pipeline
[metrics]
enabled = false
[snapshots]
enabled = false
[[sink]]
kind = "file"
path = "$WORK/$1.events.jsonl"
fsync = false
[[stream]]
name = "s0"
kind = "replay"
path = "$ROOT/models/samples/gtsrb-test-sample.npy"
fps = 0
seed = 0
queue = { size = 8, policy = "block" }
schedule = [{ frames = $FRAMES }]
EOF
}

# run ID: runs the daemon on $WORK/ID.toml; samples "seconds rss_kib hwm_kib" into $WORK/ID.rss;
# prints "fps" from the summary.
run() {
  local id="$1" pid t=0
  # shellcheck disable=SC2046
  env $(cat "$WORK/$id.env") RUST_LOG=warn "$BIN" run --config "$WORK/$id.toml" >/dev/null 2>"$WORK/$id.err" &
  pid=$!
  : >"$WORK/$id.rss"
  while kill -0 $pid 2>/dev/null; do
    awk -v t=$t '/^VmRSS:/ {r=$2} /^VmHWM:/ {h=$2} END {if (r) print t, r, h}' /proc/$pid/status 2>/dev/null >>"$WORK/$id.rss" || true
    sleep 1
    t=$((t + 1))
  done
  wait $pid || { echo "bench-memory: run $id failed:" >&2; cat "$WORK/$id.err" >&2; exit 1; }
  sed -n 's/.*stream s0: .* scored, .* dropped, .* bad, \([0-9.]*\) fps.*/\1/p' "$WORK/$id.err" | head -1
}

for ((r = 0; r < ROUNDS; r++)); do
  for i in "${!CONFIGS[@]}"; do
    c="${CONFIGS[$i]}"
    config "c$i" "${c#*:}"
    fps="$(run "c$i")"
    cp "$WORK/c$i.rss" "$WORK/c$i.r$r.rss"
    python3 - "$WORK/c$i.rss" "$fps" "$r" "$i" >>"$WORK/rows" <<'PY'
import sys
rows = [tuple(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
end = rows[-1][0]
start = next((kb for t, kb, _ in rows if t >= 3), rows[-1][1])
half = [kb for t, kb, _ in rows if t >= end / 2] or [rows[-1][1]]
print(sys.argv[3], sys.argv[4], sys.argv[2], start, sum(half) / len(half), max(half), rows[-1][2], end)
PY
    echo "round $r: ${c%%:*}: $(tail -1 "$WORK/rows")" >&2
  done
done

python3 - "$WORK/rows" "$FRAMES" "$ROUNDS" "${CONFIGS[@]}" <<'PY' | tee "$OUT"
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
frames, rounds, configs = sys.argv[2], int(sys.argv[3]), sys.argv[4:]
base = {r[0]: float(r[2]) for r in rows if r[1] == "0"}
print(f"One replay stream at full speed, {frames} frames per run, {rounds} round(s), configurations alternated within a round.")
print("VmRSS in MiB: at 3 s (first frames scored), mean and max over the second half of the run; peak = VmHWM.")
print("fps ratio: to the first configuration of the same round, median over rounds.")
print()
print("| configuration | settings | RSS at 3 s | RSS mean | RSS max | peak (VmHWM) | fps | fps ratio |")
print("|---|---|---|---|---|---|---|---|")
mib = lambda v: f"{v / 1024:.0f}"
for i, c in enumerate(configs):
    name, _, settings = c.partition(":")
    mine = [r for r in rows if r[1] == str(i)]
    med = lambda k: statistics.median(float(r[k]) for r in mine)
    ratio = statistics.median(float(r[2]) / base[r[0]] for r in mine)
    print(f"| {name} | `{settings or '-'}` | {mib(med(3))} | {mib(med(4))} | {mib(med(5))} | {mib(med(6))} | {med(2):.1f} | {ratio:.2f} |")
PY
