#!/usr/bin/env bash
# Build the one-folder Sortlab application into dist/sortlab/ (called by `make package`).
#
#   packaging/build.sh                  # CPU edition (default): no PyTorch, under 1 GB
#   EDITION=full packaging/build.sh     # full edition: PyTorch with its CUDA libraries
#
# Both editions ship verified ONNX copies of the EfficientNet-Lite backbones, made here from the
# development venv's torch (python -m engine.features.onnx_backend ship build/onnx_models); the CPU edition
# computes features with them and never imports torch.
# Prints the bundle size and the build time at the end and writes them to dist/sortlab-build.txt.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-.venv}"
PYTHON="$VENV/bin/python"
EDITION="${EDITION:-${SORTLAB_EDITION:-cpu}}"
case "$EDITION" in
    cpu|full) ;;
    gpu) EDITION=full ;;
    *) echo "build.sh: EDITION must be cpu or full, not '$EDITION'." >&2; exit 2 ;;
esac
DIST="${DIST:-dist}"
ONNX_MODELS="$ROOT/build/onnx_models"

if [ ! -x "$PYTHON" ]; then
    echo "build.sh: $PYTHON not found; run 'make setup' first." >&2
    exit 2
fi

started=$(date +%s)
echo "== installing PyInstaller (the 'package' extra)"
"$PYTHON" -m pip install --quiet -e ".[package]"

echo "== THIRD_PARTY_LICENSES of the packages being bundled -> build/THIRD_PARTY_LICENSES"
mkdir -p build
"$PYTHON" packaging/third_party_licenses.py --output build/THIRD_PARTY_LICENSES

echo "== verified ONNX copies of the bundled backbones -> $ONNX_MODELS"
# Made with the venv's torch and checked against it (max abs difference <= 1e-3); reused when present.
"$PYTHON" -m engine.features.onnx_backend ship "$ONNX_MODELS"

echo "== building the $EDITION edition (this takes several minutes)"
rm -rf "$DIST/sortlab" build/pyinstaller
SORTLAB_EDITION="$EDITION" SORTLAB_SHIPPED_ONNX="$ONNX_MODELS" "$VENV/bin/pyinstaller" --noconfirm \
    --log-level WARN --distpath "$DIST" --workpath build/pyinstaller packaging/sortlab.spec
cp build/THIRD_PARTY_LICENSES "$DIST/sortlab/THIRD_PARTY_LICENSES"  # beside the executable, where users look
finished=$(date +%s)

size_human=$(du -sh "$DIST/sortlab" | cut -f1)
size_bytes=$(du -sb "$DIST/sortlab" | cut -f1)
seconds=$((finished - started))
summary="edition=$EDITION size=$size_human bytes=$size_bytes build_seconds=$seconds"
echo "$summary" | tee "$DIST/sortlab-build.txt"
echo "== largest parts:"
du -sh "$DIST/sortlab/_internal/"* 2>/dev/null | sort -rh | head -12 || true
if [ "$EDITION" = cpu ] && [ "$size_bytes" -ge 1000000000 ]; then
    echo "build.sh: the CPU edition is $size_human, over the 1 GB goal." >&2
    exit 1
fi
