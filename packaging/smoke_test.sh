#!/usr/bin/env bash
# Smoke-test the built application offline (called by `make package-test`):
# --version, demo, train, export (with its ONNX verification), dataset-export + predict, the exported
# bundle's predict.py (same answers as the app), and the GUI offscreen with a project for a few
# seconds, failing on any Python traceback. It runs without a network: in a fresh network namespace
# (`unshare -rn`) where the system allows it, otherwise with proxies pointing nowhere.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
APP="${SORTLAB_APP:-$ROOT/dist/sortlab/sortlab}"
BUNDLE_PYTHON="${BUNDLE_PYTHON:-$ROOT/.venv/bin/python}"  # any Python with onnxruntime, numpy, Pillow
GUI_SECONDS="${GUI_SECONDS:-8}"
if [ ! -x "$APP" ]; then
    echo "smoke_test.sh: $APP not found; run 'make package' first." >&2
    exit 2
fi
APP="$(cd "$(dirname "$APP")" && pwd)/$(basename "$APP")"  # the tests run in a temporary folder

# Re-run this script inside a network namespace with no interfaces but loopback, when possible.
if [ -z "${SORTLAB_SMOKE_OFFLINE:-}" ] && command -v unshare >/dev/null && unshare -rn true 2>/dev/null; then
    echo "== offline: running in a network namespace without network (unshare -rn)"
    SORTLAB_SMOKE_OFFLINE=namespace exec unshare -rn bash "$0" "$@"
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

# No proxy, no hub downloads; a fresh HOME so nothing cached on the developer's machine helps
# (no ONNX cache either: the app must use the copies it ships).
export HOME="$WORK/home" XDG_CACHE_HOME="$WORK/home/.cache" TORCH_HOME="$WORK/home/.torch"
export HF_HUB_OFFLINE=1 NO_PROXY='' http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9
export PYTHONNOUSERSITE=1
mkdir -p "$HOME"
unset PYTHONPATH VIRTUAL_ENV SORTLAB_CACHE_DIR SORTLAB_ONNX_MODELS SORTLAB_RUNTIME

step() { echo "== $*"; }
fail() { echo "smoke_test.sh: FAILED: $*" >&2; exit 1; }

step "--version"
"$APP" --version | tee version.txt
grep -q "Sortlab" version.txt || fail "--version did not name Sortlab"

step "demo P.sortlab"
"$APP" demo P.sortlab

step "train P.sortlab (quick: logistic regression)"
"$APP" train P.sortlab

step "export P.sortlab OUT"
"$APP" export P.sortlab OUT
for file in model.onnx model.json predict.py README.md; do
    test -s "OUT/$file" || fail "export is missing $file"
done

step "dataset-export, then predict one class folder with the app and with the bundle's predict.py"
"$APP" dataset-export P.sortlab DS
folder="$(find DS -mindepth 1 -maxdepth 1 -type d | sort | head -1)"
test -n "$folder" || fail "dataset-export wrote no class folder"
"$APP" predict P.sortlab "$folder" --csv > app.csv
if [ -x "$BUNDLE_PYTHON" ]; then
    "$BUNDLE_PYTHON" -I OUT/predict.py "$folder" --csv > bundle.csv
    cut -d, -f1,2 app.csv | sort > app-classes.csv
    cut -d, -f1,2 bundle.csv | sort > bundle-classes.csv
    rows=$(($(wc -l < app-classes.csv) - 1))
    [ "$rows" -gt 0 ] || fail "the app predicted no images"
    diff -q app-classes.csv bundle-classes.csv >/dev/null || {
        diff app-classes.csv bundle-classes.csv | head >&2; fail "predict.py and the app disagree"; }
    echo "predict.py and the app agree on all $rows images"
else
    echo "(no $BUNDLE_PYTHON: predict.py not run)"
fi

step "GUI offscreen with P.sortlab for $GUI_SECONDS seconds"
set +e
QT_QPA_PLATFORM=offscreen timeout "$GUI_SECONDS" "$APP" P.sortlab 2> gui-stderr.txt
status=$?
set -e
if [ "$status" -ne 124 ]; then
    cat gui-stderr.txt >&2
    fail "the GUI exited with status $status before the $GUI_SECONDS-second timeout (expected it to keep running)"
fi
if grep -q "Traceback" gui-stderr.txt; then
    cat gui-stderr.txt >&2
    fail "the GUI printed a Python traceback"
fi
echo "smoke test passed"
