#!/usr/bin/env bash
# Installs everything Prism needs on a fresh Debian machine (also what CI runs).
# System packages: ffmpeg (decode), espeak-ng (test speech), chromium (report screenshots), npm (IAM simulator).
# Python: a local venv with the CPU build of torch; GPU containers install the CUDA build instead.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
need=()
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v chromium >/dev/null || need+=(chromium)
command -v npm >/dev/null || need+=(nodejs npm)  # the offline IAM simulator the CDK tests use (tools/iam)
if [ ${#need[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[dev]"
# tests/cdk/iam_harness.py: @cloud-copilot/iam-simulate, pinned by tools/iam/package-lock.json
npm ci --prefix tools/iam --no-audit --no-fund --silent
echo "setup done: $(.venv/bin/prism version)"
