#!/usr/bin/env bash
# Smoke-test the built application offline (called by `make package-test`):
# --version, demo, train, export (with its ONNX verification), and the GUI offscreen for a few seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
APP="${SORTLAB_APP:-$ROOT/dist/sortlab/sortlab}"
if [ ! -x "$APP" ]; then
    echo "smoke_test.sh: $APP not found; run 'make package' first." >&2
    exit 2
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

# Offline: no proxy, no hub downloads; a fresh HOME so nothing cached from the developer's machine helps.
export HOME="$WORK/home" XDG_CACHE_HOME="$WORK/home/.cache" TORCH_HOME="$WORK/home/.torch"
export HF_HUB_OFFLINE=1 NO_PROXY='*' http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9
export PYTHONNOUSERSITE=1
mkdir -p "$HOME"
unset PYTHONPATH VIRTUAL_ENV

step() { echo "== $*"; }

step "--version"
"$APP" --version | tee version.txt
grep -q "Sortlab" version.txt

step "demo P.sortlab"
"$APP" demo P.sortlab

step "train P.sortlab"
"$APP" train P.sortlab

step "export P.sortlab OUT"
"$APP" export P.sortlab OUT
for file in model.onnx model.json predict.py README.md; do
    test -s "OUT/$file" || { echo "export is missing $file" >&2; exit 1; }
done

step "GUI offscreen for 8 seconds"
set +e
QT_QPA_PLATFORM=offscreen timeout 8 "$APP"
status=$?
set -e
if [ "$status" -ne 124 ]; then
    echo "the GUI exited with status $status before the 8-second timeout (expected it to keep running)" >&2
    exit 1
fi
echo "smoke test passed"
