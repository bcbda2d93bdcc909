#!/usr/bin/env bash
# Creates .venv (if missing) and installs vrseg with the pinned stack. Idempotent: a stamp records the
# hash of pyproject.toml, so a second call costs nothing. torch comes from the wheels on local disk
# (pip's constraint file pins torch<=2.14.1); sam2 is built from source without CUDA and without
# build isolation, so its build uses the torch already installed instead of downloading another one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -f "$VENV/.vrseg-stamp" ] && [ "$(cat "$VENV/.vrseg-stamp")" = "$want" ]; then
  exit 0
fi
PIP="$VENV/bin/pip --disable-pip-version-check"
$PIP install -q --upgrade pip setuptools wheel
$PIP install -q "torch==2.14.1" "torchvision==0.29.1"
if ! "$VENV/bin/python" -c "import sam2" >/dev/null 2>&1; then
  SAM2_BUILD_CUDA=0 SAM2_BUILD_ALLOW_ERRORS=0 $PIP install -q --no-build-isolation "sam2==1.1.0"
fi
$PIP install -q -e ".[test]"
echo "$want" > "$VENV/.vrseg-stamp"
