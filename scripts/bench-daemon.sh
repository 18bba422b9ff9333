#!/usr/bin/env bash
# The daemon benchmark of issue #5: `make bench-daemon` (or scripts/bench-daemon.sh [OUT.md]).
#
# Runs the real daemon (`gradwatch run`) on the reference model with `replay` sources over the
# committed GTSRB sample and reads its end-of-run summary:
#   1. throughput: 1 and 4 streams replayed as fast as possible (queue policy `block`, nothing
#      can drop), frames per second scored;
#   2. real time: streams paced at a fixed rate with the production queue policy `drop_oldest`
#      for PACED_S seconds: frames dropped, and p50/p99/max latency from capture to verdict.
#      Rates: one stream at 30 fps (the goal), and 1 and 4 streams at 90 % of the measured
#      throughput (rounded down to a whole fps);
#   3. soak: one stream at full speed for SOAK_S seconds (default 600), resident memory (VmRSS)
#      sampled every 5 s; reported: RSS after the first minute, at the end, min/max after the
#      first minute, and the change.
# Writes a markdown report to OUT.md (default docs/results/daemon-bench.md) and stdout, and the soak's
# RSS samples to OUT without .md + -rss.csv. Nothing else may run on the machine meanwhile: the
# numbers are the machine's, not the code's alone.
#
# Environment: PACED_S (default 60), SOAK_S (default 600; 0 skips the soak), MAX_BATCH (8),
# MAX_WAIT_MS (20), PRESET (full or fast; the calibration models/gtsrb-resnet18[.fast].calib.toml),
# LATENCY_TARGET_MS (150; 0 = fixed max_batch/max_wait_ms), SCORE_FPS (per stream; default unset =
# every frame), CPU_ARENA (true/false, ONNX Runtime's CPU arena), STREAMS (stream counts, default "1 4"), PACED (0 skips the paced runs), PACED_RUNS (paced runs as STREAMSxFPS; "auto" = each stream count at 90 % of its throughput; default "1x30 auto"), THREADS (0 = ORT default), PROVIDERS (default cpu; e.g. tensorrt,cuda,cpu on
# a Jetson), TRT_CACHE (TensorRT engine cache, default out/trt-cache), GRADWATCH (binary; default
# target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
OUT="${1:-docs/results/daemon-bench.md}"
PACED_S="${PACED_S:-60}"
SOAK_S="${SOAK_S:-600}"
MAX_BATCH="${MAX_BATCH:-8}"
MAX_WAIT_MS="${MAX_WAIT_MS:-20}"
PRESET="${PRESET:-full}"
LATENCY_TARGET_MS="${LATENCY_TARGET_MS:-150}"
CPU_ARENA="${CPU_ARENA:-true}"
CALIB="$ROOT/models/gtsrb-resnet18.calib.toml"
[ "$PRESET" = full ] || CALIB="$ROOT/models/gtsrb-resnet18.$PRESET.calib.toml"
SCORE_FPS_LINE=""
[ -z "${SCORE_FPS:-}" ] || SCORE_FPS_LINE="score_fps = $SCORE_FPS"
THREADS="${THREADS:-0}"
PROVIDERS="${PROVIDERS:-cpu}"
PROVIDERS_TOML="$(sed 's/[^,][^,]*/"&"/g; s/,/, /g' <<<"$PROVIDERS")"
TRT_CACHE="${TRT_CACHE:-$ROOT/out/trt-cache}"
BIN="${GRADWATCH:-$ROOT/target/release/gradwatch}"
SAMPLE="$ROOT/models/samples/gtsrb-test-sample.npy"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gradwatch-bench.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

[ -n "${GRADWATCH:-}" ] || cargo build --release --locked --bin gradwatch >&2
[ -x "$BIN" ] || { echo "bench-daemon: $BIN missing" >&2; exit 1; }

# config NAME STREAMS FPS POLICY FRAMES: writes $WORK/NAME.toml (FRAMES per stream).
config() {
  local name="$1" streams="$2" fps="$3" policy="$4" frames="$5" f="$WORK/$1.toml"
  cat >"$f" <<EOF
[model]
path = "$ROOT/models/gtsrb-resnet18.onnx"
calibration = "$CALIB"
preset = "$PRESET"
[runtime]
providers = [$PROVIDERS_TOML]
threads = $THREADS
cpu_arena = $CPU_ARENA
[pipeline]
max_batch = $MAX_BATCH
max_wait_ms = $MAX_WAIT_MS
latency_target_ms = $LATENCY_TARGET_MS
[runtime.tensorrt]
engine_cache_dir = "$TRT_CACHE"
[metrics]
enabled = false
[[sink]]
kind = "file"
path = "$WORK/$name.events.jsonl"
fsync = false
EOF
  for ((i = 0; i < streams; i++)); do
    cat >>"$f" <<EOF
[[stream]]
name = "s$i"
kind = "replay"
path = "$SAMPLE"
fps = $fps
seed = $((i * 100000))
queue = { size = 8, policy = "$policy" }
$SCORE_FPS_LINE
schedule = [{ frames = $frames }]
EOF
  done
}

# run NAME: runs the daemon on $WORK/NAME.toml to its end; the summary lands in $WORK/NAME.err.
# With SAMPLE_RSS=1 also samples VmRSS every 5 s into $WORK/NAME.rss ("seconds kB" lines).
run() {
  local name="$1" pid t0
  RUST_LOG=warn "$BIN" run --config "$WORK/$name.toml" >/dev/null 2>"$WORK/$name.err" &
  pid=$!
  if [ "${SAMPLE_RSS:-0}" = 1 ]; then
    t0=$(date +%s)
    while kill -0 $pid 2>/dev/null; do
      awk -v t=$(($(date +%s) - t0)) '/^VmRSS:/ {print t, $2}' /proc/$pid/status 2>/dev/null >>"$WORK/$name.rss" || true
      sleep 5
    done
  fi
  wait $pid || { echo "bench-daemon: run $name failed:" >&2; cat "$WORK/$name.err" >&2; exit 1; }
}

# stats NAME: "scored dropped fps p50 p99 max" summed/averaged over the run's streams.
stats() {
  python3 - "$WORK/$1.err" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
streams = re.findall(r"stream \S+: (\d+) captured, (\d+) scored, (\d+) dropped, (\d+) bad, ([\d.]+) fps", text)
lat = re.findall(r"p50 ([\d.]+) ms, p99 ([\d.]+) ms, max ([\d.]+) ms", text)
if not streams or len(lat) != len(streams):
    sys.exit(f"no summary in {sys.argv[1]}:\n{text[-2000:]}")
scored = sum(int(s[1]) for s in streams)
dropped = sum(int(s[2]) for s in streams)
fps = sum(float(s[4]) for s in streams)
p50 = max(float(l[0]) for l in lat)
p99 = max(float(l[1]) for l in lat)
mx = max(float(l[2]) for l in lat)
print(scored, dropped, f"{fps:.1f}", p50, p99, mx)
PY
}

ROWS=()
row() { ROWS+=("$1"); echo "$1" >&2; }

echo "==> throughput (queue policy block, full speed)" >&2
declare -A TPUT
for s in ${STREAMS:-1 4}; do
  config "max$s" $s 0 block $((960 / s))
  run "max$s"
  read -r scored dropped fps _ <<<"$(stats "max$s")"
  TPUT[$s]=$fps
  row "| $s | full speed (block) | $fps | $scored | $dropped | - | - | - |"
done

paced() {
  local s=$1 rate=$2 name="paced${1}x${2}"
  config "$name" "$s" "$rate" drop_oldest $((rate * PACED_S))
  run "$name"
  read -r scored dropped fps p50 p99 mx <<<"$(stats "$name")"
  row "| $s | $rate fps each (drop_oldest) | $fps | $scored | $dropped | $p50 | $p99 | $mx |"
}
if [ "${PACED:-1}" != 0 ]; then
  echo "==> real time (queue policy drop_oldest, ${PACED_S} s)" >&2
  for r in ${PACED_RUNS:-1x30 auto}; do
    if [ "$r" != auto ]; then
      paced "${r%x*}" "${r#*x}"
      continue
    fi
    for s in ${STREAMS:-1 4}; do
      rate=$(python3 -c "import math; print(max(1, math.floor(0.9 * ${TPUT[$s]} / $s)))")
      [ "$s" = 1 ] && [ "$rate" = 30 ] && continue
      paced "$s" "$rate"
    done
  done
fi

SOAK=""
if [ "$SOAK_S" -gt 0 ]; then
  echo "==> soak: one stream at full speed for ${SOAK_S} s, VmRSS every 5 s" >&2
  frames=$(python3 -c "print(int(${TPUT[1]} * $SOAK_S))")
  config soak 1 0 block "$frames"
  SAMPLE_RSS=1 run soak
  read -r scored dropped fps _ <<<"$(stats soak)"
  RSS_CSV="${OUT%.md}-rss.csv"
  { echo "seconds,vmrss_kib"; tr ' ' ',' <"$WORK/soak.rss"; } >"$RSS_CSV"
  SOAK="$(python3 - "$WORK/soak.rss" "$scored" "$fps" "$RSS_CSV" <<'PY'
import sys
rows = [tuple(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
end = rows[-1][0]
late = [(t, kb) for t, kb in rows if t >= 60] or [rows[-1]]
first = late[0][1]
change = 100.0 * (rows[-1][1] - first) / first
kbs = [kb for _, kb in late]
spread = 100.0 * (max(kbs) - min(kbs)) / first
mean = sum(kbs) / len(kbs)
# Least-squares trend after the first minute, in % of the mean per 10 minutes.
n = len(late)
tm = sum(t for t, _ in late) / n
var = sum((t - tm) ** 2 for t, _ in late)
slope = sum((t - tm) * (kb - mean) for t, kb in late) / var if var > 0 else 0.0
trend = 100.0 * slope * 600 / mean
print(f"- soak: {sys.argv[2]} frames in {end} s at {sys.argv[3]} fps; VmRSS {rows[0][1] / 1024:.1f} MiB at {rows[0][0]} s, "
      f"{first / 1024:.1f} MiB at 60 s, {rows[-1][1] / 1024:.1f} MiB at {end} s: change {change:+.2f} %; "
      f"least-squares trend after the first minute {trend:+.2f} % per 10 minutes; "
      f"min {min(kbs) / 1024:.1f}, max {max(kbs) / 1024:.1f} MiB (spread {spread:.2f} % of the 60 s value); "
      f"{len(rows)} samples in `{sys.argv[4]}`")
PY
)"
  echo "$SOAK" >&2
fi

{
  echo "# Daemon benchmark"
  echo
  echo "Generated by \`scripts/bench-daemon.sh\` (\`make bench-daemon\`); do not edit by hand."
  echo
  echo "- machine: $(nproc) CPU(s), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
  echo "- gradwatch $("$BIN" --version | awk '{print $2}'), ONNX Runtime $(cat "$ROOT/.ort/host/VERSION" 2>/dev/null || echo '?') (providers $PROVIDERS), reference model, preset $PRESET, max_batch $MAX_BATCH, max_wait_ms $MAX_WAIT_MS, latency_target_ms $LATENCY_TARGET_MS, score_fps ${SCORE_FPS:-all}, cpu_arena $CPU_ARENA, threads $THREADS"
  echo "- source: \`replay\` of models/samples/gtsrb-test-sample.npy (32x32 frames), clean schedule; queue size 8"
  echo "- fps: frames scored per second over the stream's span, summed over streams; latency: capture to verdict, the worst stream's quantile (1 % resolution)"
  echo
  echo "| streams | rate | fps scored | frames | dropped | p50 ms | p99 ms | max ms |"
  echo "|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  if [ -n "$SOAK" ]; then echo "$SOAK"; fi
} | tee "$OUT"
