#!/usr/bin/env bash
# Exporter CI: create or reuse the Python environment of tools/export_onnx.py and run its tests.
#
# The venv lives outside the repository (default /root/.cache/conjure-py, override with CONJURE_PY_VENV) so
# consecutive runs on one machine reuse it: torch from PyPI brings ~3 GB of CUDA libraries (there is no
# CPU-only torch wheel on PyPI). Requirements are (re)installed only when tools/requirements.txt changed
# since the last successful install (a hash stamp in the venv); pip reuses its cache as usual.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${CONJURE_PY_VENV:-${HOME:-/root}/.cache/conjure-py}"
REQ=tools/requirements.txt
start=$(date +%s)

if [ ! -x "$VENV/bin/python" ]; then
    echo "ci_exporter: creating venv $VENV"
    python3 -m venv "$VENV"
fi
want=$(sha256sum "$REQ" | cut -d' ' -f1)
have=$(cat "$VENV/.conjure-requirements.sha256" 2>/dev/null || true)
if [ "$want" != "$have" ]; then
    echo "ci_exporter: installing $REQ into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ"
    echo "$want" > "$VENV/.conjure-requirements.sha256"
else
    echo "ci_exporter: $VENV is up to date with $REQ"
fi
echo "ci_exporter: environment ready in $(( $(date +%s) - start )) s"

# Deterministic, quiet, CPU only; a bounded thread count keeps the run predictable on a shared machine.
export PYTHONHASHSEED=0 CUDA_VISIBLE_DEVICES="" PYTHONDONTWRITEBYTECODE=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tools/tests
echo "ci_exporter: total $(( $(date +%s) - start )) s"
