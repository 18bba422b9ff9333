#!/usr/bin/env bash
# The RTSP source's cost (issue #27): `make bench-rtsp` (or scripts/bench-rtsp.sh [OUT.md]).
#
# One 640x480 H.264 camera at 30 fps, served by GStreamer's RTSP server
# (tests/fixtures/rtsp_server.py: videotestsrc, x264enc ultrafast/zerolatency, key frame every
# 15 frames), read by the real daemon (`kind = "rtsp"`, TCP, `score_fps = 5`) on the reference
# model, for DURATION_S seconds (default 300). Reported from the daemon alone: CPU time as % of
# one core (utime + stime from /proc/PID/stat over the run, the server's own encoding excluded),
# frames captured / scored / skipped / dropped, and capture-to-verdict latency, from its
# /metrics at the end of the run. A second run with B-frames (x264 bframes=2, which are disposable) shows
# the decoding that `score_fps` saves. Writes OUT.md (default docs/results/rtsp-bench.md) and stdout.
#
# A third run with `[runtime] spin = true` (ONNX Runtime's default: idle threads spin-wait)
# shows what the daemon's default `spin = false` saves.
#
# Environment: DURATION_S (300), BFRAMES_S (the B-frame run's length, default DURATION_S; 0
# skips it), SPIN_S (the spinning run's length, default DURATION_S; 0 skips it), GRADWATCH (binary;
# default target/release/gradwatch, built if unset).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
OUT="${1:-docs/results/rtsp-bench.md}"
DURATION_S="${DURATION_S:-300}"
BIN="${GRADWATCH:-$ROOT/target/release/gradwatch}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gradwatch-rtsp-bench.XXXXXX")"
SERVER_PID=""
cleanup() {
  [ -z "$SERVER_PID" ] || kill "$SERVER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

[ -n "${GRADWATCH:-}" ] || cargo build --release --locked --bin gradwatch >&2
[ -x "$BIN" ] || { echo "bench-rtsp: $BIN missing" >&2; exit 1; }
TICKS=$(getconf CLK_TCK)
PORT=$((20000 + RANDOM % 20000))
MPORT=$((PORT + 1))

# cpu_ticks PID: utime + stime of the process (all threads).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run NAME BFRAMES SECONDS [SPIN]: one measured run; prints "cpu% captured scored skipped dropped bad p50 p99 mean".
run() {
  local name="$1" bframes="$2" seconds="$3" spin="${4:-false}" pid t0 c0 t1 c1
  /usr/bin/python3 tests/fixtures/rtsp_server.py --port "$PORT" --width 640 --height 480 --fps 30 \
    --bframes "$bframes" >"$WORK/$name.server" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do grep -q ready "$WORK/$name.server" 2>/dev/null && break; sleep 0.1; done
  cat >"$WORK/$name.toml" <<EOF
[model]
path = "$ROOT/models/gtsrb-resnet18.onnx"
calibration = "$ROOT/models/gtsrb-resnet18.calib.toml"
[runtime]
spin = $spin
[metrics]
bind = "127.0.0.1:$MPORT"
[[sink]]
kind = "file"
path = "$WORK/$name.events.jsonl"
fsync = false
[[stream]]
name = "cam"
kind = "rtsp"
url = "rtsp://127.0.0.1:$PORT/cam"
score_fps = 5
EOF
  RUST_LOG=info "$BIN" run --config "$WORK/$name.toml" >/dev/null 2>"$WORK/$name.err" &
  pid=$!
  # Measure from the first frame on (model loading is not the camera's cost).
  for _ in $(seq 600); do grep -q "stream_up\|first frame" "$WORK/$name.events.jsonl" 2>/dev/null && break; sleep 0.1; done
  t0=$(date +%s.%N)
  c0=$(cpu_ticks $pid)
  sleep "$seconds"
  c1=$(cpu_ticks $pid)
  t1=$(date +%s.%N)
  curl -sf "http://127.0.0.1:$MPORT/metrics" >"$WORK/$name.metrics"
  kill -TERM $pid
  wait $pid || { echo "bench-rtsp: daemon failed:" >&2; cat "$WORK/$name.err" >&2; exit 1; }
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  python3 - "$WORK/$name.metrics" "$c0" "$c1" "$t0" "$t1" "$TICKS" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
c0, c1, t0, t1, ticks = map(float, sys.argv[2:])
def v(name):
    m = re.search(r"^gradwatch_%s\{[^}]*stream=\"cam\"\} (\S+)$" % name, text, re.M)
    return int(float(m.group(1)))
captured, scored, skipped, dropped, bad = (v(n + "_total") for n in ["frames_captured", "frames_scored", "frames_skipped", "frames_dropped", "frames_bad"])
# Capture-to-verdict: the smallest bucket bound holding 50 % / 99 % of verdicts, and the mean.
buckets = [(float(le), float(n)) for le, n in re.findall(r'^gradwatch_capture_to_verdict_seconds_bucket\{[^}]*le="([^"]+)"\} (\S+)$', text, re.M)]
total = buckets[-1][1]
q = lambda f: next(le for le, n in buckets if n >= f * total) * 1000
s = float(re.search(r"^gradwatch_capture_to_verdict_seconds_sum\S* (\S+)$", text, re.M).group(1))
cpu = 100.0 * (c1 - c0) / ticks / (t1 - t0)
print(f"{cpu:.1f}", captured, scored, skipped, dropped, bad, f"<={q(0.5):g}", f"<={q(0.99):g}", f"{1000 * s / total:.1f}")
PY
}

# row LABEL NAME BFRAMES SECONDS [SPIN]: one measured run as a table row (echoed to stderr too).
row() {
  local label="$1" cpu cap sc sk dr bad p50 p99 mx
  shift
  read -r cpu cap sc sk dr bad p50 p99 mx <<<"$(run "$@")"
  echo "| $label | $cpu | $cap | $sc | $sk | $dr | $bad | $p50 | $p99 | $mx |" | tee /dev/stderr
}

LOAD0="$(cut -d' ' -f1-3 /proc/loadavg)"
echo "==> I/P frames only (most cameras), ${DURATION_S} s" >&2
ROW_IP="$(row "I and P frames (x264 zerolatency)" ip 0 "$DURATION_S")"
ROW_B=""
BFRAMES_S="${BFRAMES_S:-$DURATION_S}"
if [ "$BFRAMES_S" != 0 ]; then
  echo "==> with B-frames (bframes=2, disposable), ${BFRAMES_S} s" >&2
  ROW_B="$(row "I, P and 2 B-frames (disposable)" bframes 2 "$BFRAMES_S")"
fi
ROW_S=""
SPIN_S="${SPIN_S:-$DURATION_S}"
if [ "$SPIN_S" != 0 ]; then
  echo "==> I/P frames, spin = true (ONNX Runtime's default), ${SPIN_S} s" >&2
  ROW_S="$(row "I and P frames, \`spin = true\` (ONNX Runtime's default)" spin 0 "$SPIN_S" true)"
fi

LOAD1="$(cut -d' ' -f1-3 /proc/loadavg)"
{
  cat <<EOF
# RTSP source: one 640x480 H.264 camera at 30 fps

Regenerate: \`make bench-rtsp\` (scripts/bench-rtsp.sh; DURATION_S=$DURATION_S). Machine:
$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), no GPU, a noisy
shared VM; measured $(date -u +%Y-%m-%d). Load average (1, 5, 15 min) at the start: $LOAD0, at
the end: $LOAD1 (a load over 2 means other jobs competed for the 2 cores).

The camera is GStreamer's RTSP server (tests/fixtures/rtsp_server.py) on the same machine:
videotestsrc at 640x480, 30 fps, x264enc ultrafast/zerolatency, a key frame every 15 frames,
RTP over the RTSP TCP connection. The daemon reads it with \`kind = "rtsp"\` and
\`score_fps = 5\` on the reference model (models/gtsrb-resnet18.onnx, full preset), file sink,
for ${DURATION_S} s from the first frame. CPU is the daemon's own utime + stime over the run as
% of one core (the server's encoding is not counted). Skipped = captured and released unscored
(\`score_fps\`; with B-frames most are not even decoded). Latency is capture (the decoded frame
handed to the pipeline) to verdict, from the daemon's \`gradwatch_capture_to_verdict_seconds\`
histogram at the end of the run: p50 and p99 are the histogram's bucket bounds that hold 50 %
and 99 % of the verdicts (buckets 1, 2.5, 5, 10, 25, 50, 100, 250 ms ...), the mean is exact.
Counts are the daemon's frame counters (captured includes the frames not decoded).

| stream | CPU % of one core | captured | scored | skipped | dropped | bad | p50 ms | p99 ms | mean ms |
|---|---|---|---|---|---|---|---|---|---|
$ROW_IP
$ROW_B
$ROW_S

The daemon's default is \`[runtime] spin = false\`: ONNX Runtime's intra-op threads sleep between
parallel sections instead of spin-waiting for the next one. At 5 scored frames a second the
pool is idle most of the time, and a spinning pool burns CPU through much of that idle time;
the \`spin = true\` row (ONNX Runtime's default) is the same camera with the threads spinning. Rows run one after the other, so compare them as a ratio.

Targets (issue #27): under 60 % of one core, 0 scored frames dropped over 5 minutes,
capture-to-verdict p99 under 250 ms.
EOF
} | tee "$OUT"
