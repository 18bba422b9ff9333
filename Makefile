# gradwatch: every target does its own set-up on a fresh Debian machine. `make help` prints this list.
#   make demo           the daemon on the embedded reference model and sample, with a corruption schedule
#   make test           fmt + clippy + the whole test suite (needs no ../shared)
#   make help           this list
#   make deps           the Debian packages the build and the tests need (scripts/apt-install.sh)
#   make ort            ONNX Runtime's shared library into .ort/host (scripts/fetch-onnxruntime.sh)
#   make build          the release binary, target/release/gradwatch (also: make release)
#   make lint           cargo fmt --check, clippy -D warnings and rustdoc -D warnings (part of make test)
#   make rules          promtool checks and unit tests of the shipped Prometheus rules (part of make test)
#   make bench          the gradient graph's criterion micro-benchmark (benches/gradient.rs)
#   make bench-daemon   fps, latency and memory of the daemon (docs/results/daemon-bench.md)
#   make bench-rtsp     CPU, drops and latency of one 640x480 30 fps H.264 RTSP camera (docs/results/rtsp-bench.md)
#   make bench-alarms   false alarms per hour and detection delays of the alert policies (docs/results/alarms.md)
#   make bench-presets  AUROC of the feature subsets the presets choose from (docs/results/presets.md)
#   make bench-detectors  targets, inputs and ensembles of the calibration's detector (docs/results/detector-ablation.md)
#   make bench-quality  what the image-quality measures add to that detector (docs/results/quality.md)
#   make test-time      make test from fresh clones of TEST_TIME_REVS (default: issue #26's baseline and HEAD), side by side (docs/results/test-time.md)
#   make status-screenshot  the status page in headless Chromium, checked, into docs/results/status-page.png
#   make aarch64        the Jetson (aarch64, glibc 2.31) binary, without Docker (docs/guide/jetson.md)
#   make aarch64-check  that binary under qemu-user vs the x86-64 one, on the same job
#   make fuzz           every cargo-fuzz target for FUZZ_SECONDS each (default 600; docs/guide/fuzzing.md)
#   make chaos          kill -9, full disk, broker outages, SIGHUPs for CHAOS_SECONDS (600); every event accounted for (docs/guide/reliability.md)
#   make clean          cargo clean
SHELL := /bin/bash
CARGO ?= cargo
ORT_DIR := .ort/host
export ORT_DYLIB_PATH ?= $(CURDIR)/$(ORT_DIR)/libonnxruntime.so
# Debian packages the build and the tests need (bindgen for v4l, the MQTT test broker, the
# system's OpenH264 that the default `h264-system` feature loads, GStreamer's RTSP server and
# encoders for the rtsp source's tests, promtool from prometheus for the shipped alert rules).
APT_PACKAGES := libclang-dev pkg-config mosquitto python3-pip unzip libopenh264-7 \
	python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
	gstreamer1.0-plugins-ugly gstreamer1.0-plugins-bad prometheus

.PHONY: help deps ort build release test test-time lint rules demo bench bench-daemon bench-rtsp bench-alarms bench-presets bench-detectors bench-quality clean aarch64 aarch64-check status-screenshot fuzz chaos

# Every target with one line each: the comment block at the top of this file.
help:
	@sed -n 's/^#   make /make /p' $(firstword $(MAKEFILE_LIST))

deps:
	@scripts/apt-install.sh $(APT_PACKAGES)

ort: deps
	scripts/fetch-onnxruntime.sh

build: ort
	$(CARGO) build --release --locked

release: build

# lint and test share the `ci` profile (Cargo.toml: release at opt-level 1, no debug info), so
# the dependencies' build scripts and proc macros are built once for both.
lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --profile ci --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --locked --no-deps --quiet

# --lib --bins --tests: the examples are not linked again (clippy above has checked they
# compile) and there are no runnable doc tests. The integration tests mostly wait on real
# processes, sockets and timers (50 s of CPU in 65 s at two threads), so they run 8 at a time.
TEST_THREADS ?= 8
test: ort lint rules
	$(CARGO) test --locked --profile ci --lib --bins --tests -- --test-threads $(TEST_THREADS)

# How long CI's `make test` takes, against the revision issue #26 was filed on (488a73d: its
# 5 min 37 s was measured on another day's CPU, so only revisions timed in one run compare).
# About 10 minutes per revision; keep the machine idle.
TEST_TIME_REVS ?= 488a73d HEAD
test-time: ort
	scripts/time-make-test.sh --out docs/results/test-time.md $(TEST_TIME_REVS)

# The shipped Prometheus rules: syntax, then their unit tests (deploy/prometheus/).
rules: deps
	promtool check rules deploy/prometheus/gradwatch-rules.yml
	cd deploy/prometheus && promtool test rules gradwatch-rules.test.yml

demo: build
	./target/release/gradwatch run --config config/demo.toml

status-screenshot: build
	scripts/screenshot-status.sh docs/results/status-page.png

bench: ort
	$(CARGO) bench --locked --bench gradient

# The daemon end to end: fps and drops for 1 and 4 streams, capture-to-verdict latency, a
# 10-minute memory soak; writes docs/results/daemon-bench.md (about 15 minutes; keep the machine idle).
bench-daemon: build
	scripts/bench-daemon.sh

# One RTSP camera (GStreamer's server on this machine) at 30 fps, score_fps = 5, for 5 minutes,
# twice (I/P frames, then with B-frames): CPU, drops, latency; writes docs/results/rtsp-bench.md.
bench-rtsp: build deps
	scripts/bench-rtsp.sh

# The alert policies on hours of camera-like GTSRB test tracks: runs every distinct frame once
# through the gradient graph into out/bench-alarms/ (features, logits and image-quality measures
# of 81,004 frames from the half of GTSRB test the calibrations never saw, the 3,990 frames of the
# training tracks the model never trained on and 75,600 corrupted ones, and the classifier's
# accuracy on 500 more test signs and on those 133 tracks per corruption and level: about 30 min
# of both cores; delete the folder to rebuild),
# then scores them with the calibration and replays k-of-n and cusum over 2 h of clean frame
# time, onsets and ramps (seconds). Writes docs/results/alarms.md.
GTSRB ?= ../shared/data/gtsrb
bench-alarms: build
	nice -n 10 ./target/release/gradwatch bench-alarms --data $(GTSRB) --cache out/bench-alarms --out docs/results/alarms.md --hours 2

# The feature-preset ablation: 300 GTSRB test images, 300 CIFAR-10 images and the paper's 8
# corruption types at levels 3-5 of the same images, once through the full graph into
# out/presets-cache/ (7,800 images: about 30 min of both cores under load; delete the folder to
# rebuild), then the paper's detector on 12 feature subsets x 3 split seeds (minutes). Writes
# docs/results/presets.md and presets.csv.
DATA ?= ../shared/data
bench-presets: build
	nice -n 10 ./target/release/gradwatch bench-presets --data $(DATA) --cache out/presets-cache --per-set 300 --seeds 3

# The detector ablation on bench-presets' cache (built when missing): 249 trainings of 5-member
# ensembles (targets x inputs x left-out types x 3 seeds). Writes docs/results/detector-ablation.md
# and detector-ablation.csv.
bench-detectors: build
	nice -n 10 ./target/release/gradwatch bench-detectors --data $(DATA) --cache out/presets-cache --per-set 300 --seeds 3

# What the image-quality measures add to the camera-health detector, on bench-presets' cache
# (built when missing): 135 trainings of 5-member ensembles (5 inputs x left-out types x 3
# seeds). Writes docs/results/quality.md and quality.json.
bench-quality: build
	nice -n 10 ./target/release/gradwatch bench-quality --data $(DATA) --cache out/presets-cache --per-set 300 --seeds 3

aarch64:
	scripts/aarch64-build.sh

aarch64-check:
	scripts/aarch64-check.sh

# The fuzz targets in fuzz/, one after the other (stable Rust via RUSTC_BOOTSTRAP; installs g++
# and cargo-fuzz). Not part of `make test`. FUZZ_TARGETS="npy config_parse" picks some.
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?=
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh $(FUZZ_TARGETS)

# The chaos test (not part of `make test`; needs root for a tmpfs): the daemon for CHAOS_SECONDS
# under kill -9, a full disk, broker outages and SIGHUPs, then every event_id accounted for.
CHAOS_SECONDS ?= 600
chaos: ort
	CHAOS_SECONDS=$(CHAOS_SECONDS) scripts/chaos.sh

clean:
	$(CARGO) clean
