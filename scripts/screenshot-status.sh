#!/usr/bin/env bash
# The status page (`/` of the metrics server) in a real headless Chromium: runs the demo
# (config/demo.toml: the reference model through a corruption schedule) with the metrics
# server on a free 127.0.0.1 port and a second stream whose name needs HTML escaping, waits
# for an alert, checks the page as Chromium parsed it (one card per stream, the score plots,
# the name escaped, no script), and takes a screenshot.
#
#   scripts/screenshot-status.sh [OUT.png]     # default docs/results/status-page.png
#
# Needs Debian's `chromium` (installed here with scripts/apt-install.sh when missing) and a
# release build (`make build`). With [snapshots] available in this build, snapshots and heat
# maps go to a temporary directory and show on the page.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/results/status-page.png}
bin=${GRADWATCH:-target/release/gradwatch}
[ -x "$bin" ] || { echo "screenshot-status: $bin missing; run make build" >&2; exit 1; }
command -v chromium >/dev/null || NO_RECOMMENDS=1 scripts/apt-install.sh chromium
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/.ort/host/libonnxruntime.so}

tmp=$(mktemp -d)
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# The demo config, with the paths made absolute, the metrics server on, a second stream.
sed -e "s|\"\.\./|\"$PWD/|" -e "s|^enabled = false|bind = \"127.0.0.1:$port\"|" config/demo.toml >"$tmp/demo.toml"
cat >>"$tmp/demo.toml" <<EOF

[[stream]]
name = 'gate "north" <2>'
kind = "replay"
path = "$PWD/models/samples/gtsrb-test-sample.npy"
fps = 4
seed = 1
EOF
# Snapshots, when this build has them (a build without [snapshots] refuses the key).
cp "$tmp/demo.toml" "$tmp/with-snaps.toml"
printf '\n[snapshots]\ndir = "%s/snapshots"\n' "$tmp" >>"$tmp/with-snaps.toml"
mkdir -p "$tmp/snapshots"
if "$bin" check-config "$tmp/with-snaps.toml" >/dev/null 2>&1; then
  mv "$tmp/with-snaps.toml" "$tmp/demo.toml"
fi

RUST_LOG=warn "$bin" run --config "$tmp/demo.toml" >"$tmp/events.jsonl" 2>"$tmp/stderr.log" &
pid=$!
url="http://127.0.0.1:$port/"
t0=$(date +%s)
# Wait until the demo is in its last corrupted window (the third alert is open).
until [ "$(grep -c '"event":"alert_start"' "$tmp/events.jsonl" || true)" -ge 3 ] \
  && curl -sf "$url" | grep -q 'Open alert'; do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "screenshot-status: the demo ended before its third alert" >&2
    cat "$tmp/stderr.log" >&2
    exit 1
  fi
  if [ $(($(date +%s) - t0)) -gt 180 ]; then
    echo "screenshot-status: no third alert within 180 s" >&2
    exit 1
  fi
  sleep 0.5
done
sleep 1.5   # a little of the window on the plot

chrome=(chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run
  --disable-background-networking --window-size=1280,600 --virtual-time-budget=3000)
dom=$("${chrome[@]}" --dump-dom "$url" 2>"$tmp/chromium.log")
"${chrome[@]}" --screenshot="$tmp/page.png" "$url" 2>>"$tmp/chromium.log"

fail() {
  echo "screenshot-status: $*" >&2
  exit 1
}
cards=$(grep -o '<section class="card' <<<"$dom" | wc -l)
[ "$cards" -eq 2 ] || fail "$cards cards in Chromium's DOM, want 2"
[ "$(grep -o '<svg' <<<"$dom" | wc -l)" -eq 2 ] || fail "want one plot per card"
grep -q 'class="threshold"' <<<"$dom" || fail "no threshold line"
grep -q 'gate "north" &lt;2&gt;' <<<"$dom" || fail "the stream name is not shown as text"
! grep -q '<script' <<<"$dom" || fail "a script in the page"
[ -s "$tmp/page.png" ] || fail "Chromium wrote no screenshot"
cp "$tmp/page.png" "$out"
echo "status page OK in $(chromium --version 2>/dev/null | head -1): $cards cards; screenshot $out"
