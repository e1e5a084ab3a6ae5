#!/usr/bin/env bash
# Build the one-folder Sortlab application into dist/sortlab/ (called by `make package`).
#
#   packaging/build.sh                  # CPU edition (default)
#   SORTLAB_EDITION=gpu packaging/build.sh
#
# Prints the bundle size and the build time at the end and writes them to dist/sortlab-build.txt.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-.venv}"
PYTHON="$VENV/bin/python"
EDITION="${SORTLAB_EDITION:-cpu}"

if [ ! -x "$PYTHON" ]; then
    echo "build.sh: $PYTHON not found; run 'make setup' first." >&2
    exit 2
fi

echo "== installing PyInstaller (the 'package' extra)"
"$PYTHON" -m pip install --quiet -e ".[package]"

started=$(date +%s)
echo "== building the $EDITION edition (this takes several minutes)"
rm -rf dist/sortlab build/pyinstaller
SORTLAB_EDITION="$EDITION" "$VENV/bin/pyinstaller" --noconfirm --log-level WARN \
    --distpath dist --workpath build/pyinstaller packaging/sortlab.spec
finished=$(date +%s)

size_human=$(du -sh dist/sortlab | cut -f1)
size_bytes=$(du -sb dist/sortlab | cut -f1)
seconds=$((finished - started))
summary="edition=$EDITION size=$size_human bytes=$size_bytes build_seconds=$seconds"
echo "$summary" | tee dist/sortlab-build.txt
echo "== largest parts:"
du -sh dist/sortlab/_internal/* 2>/dev/null | sort -rh | head -12 || true
