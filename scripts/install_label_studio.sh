#!/usr/bin/env bash
# Install what the real Label Studio round-trip test needs (tests/test_label_studio.py):
#   1. the Label Studio server, in its own virtual environment outside the clone, keyed by version (its
#      dependencies are many: Django, an older numpy and opencv), so a fresh clone reuses it;
#   2. label-studio-sdk in samseg's venv (FiftyOne's Label Studio backend imports its legacy `Client`), with
#      --no-deps: its declared pins (opencv-python-headless<4.13, hence numpy<2.3) would downgrade samseg's
#      numpy and opencv. What its legacy Client and converter import, beside what samseg has, is added by name.
# Safe to run twice and concurrently (each step waits on a lock and is skipped when done). Prints the path of
# the `label-studio` executable. SAMSEG_LABEL_STUDIO_VENV overrides the server venv, SAMSEG_PYTHON the python.
set -euo pipefail

LABEL_STUDIO_VERSION="1.23.2"
LABEL_STUDIO_SDK_VERSION="2.1.2"  # the newest; its legacy Client is what FiftyOne 1.22's backend uses
SDK_RUNTIME_DEPS=(lxml appdirs "pyjwt>=2.13,<2.14" ijson ujson "nltk>=3.10,<=3.11.0" defusedxml)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON_BIN="${SAMSEG_PYTHON:-python3}"
LS_VENV="${SAMSEG_LABEL_STUDIO_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/samseg/label-studio-$LABEL_STUDIO_VERSION}"

_pip() {  # pip, without this machine's warnings about absent optional index folders
    "$1" -m pip install -q "${@:2}" 2> >(grep -v "is ignored: it is neither" >&2)
}

mkdir -p "$(dirname "$LS_VENV")"
exec 8>"$LS_VENV.lock"
flock 8
if [ ! -f "$LS_VENV/.samseg-ready" ]; then
    echo "samseg: installing label-studio==$LABEL_STUDIO_VERSION into $LS_VENV (about 2 minutes)" >&2
    rm -rf "$LS_VENV"
    "$PYTHON_BIN" -m venv "$LS_VENV"
    _pip "$LS_VENV/bin/python" --upgrade pip
    _pip "$LS_VENV/bin/python" "label-studio==$LABEL_STUDIO_VERSION"
    # not `label-studio --version`: that creates and migrates a database in ~/.local/share/label-studio
    "$LS_VENV/bin/python" -c "import label_studio as ls; assert ls.__version__ == '$LABEL_STUDIO_VERSION', ls.__version__"
    touch "$LS_VENV/.samseg-ready"
fi
flock -u 8
exec 8>&-

# samseg's venv (created by env.sh when missing); env.sh turns on `set -e` and friends, as here
source "$ROOT/scripts/env.sh"
_sdk_ready() {
    python - "$LABEL_STUDIO_SDK_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version

import label_studio_sdk
from label_studio_sdk.converter import Converter, brush  # noqa: F401

assert version("label-studio-sdk") == sys.argv[1]
assert label_studio_sdk.Client
EOF
}
exec 8>"$SAMSEG_VENV.label-studio-sdk.lock"
flock 8
SDK_MARKER="$SAMSEG_VENV/.samseg-label-studio-sdk-$LABEL_STUDIO_SDK_VERSION"
if [ ! -f "$SDK_MARKER" ] || ! _sdk_ready; then
    echo "samseg: installing label-studio-sdk==$LABEL_STUDIO_SDK_VERSION into $SAMSEG_VENV" >&2
    _pip python --no-deps "label-studio-sdk==$LABEL_STUDIO_SDK_VERSION"
    _pip python "${SDK_RUNTIME_DEPS[@]}"
    _sdk_ready || { echo "samseg: label-studio-sdk does not import in $SAMSEG_VENV" >&2; exit 1; }
    touch "$SDK_MARKER"
fi
flock -u 8
exec 8>&-
echo "$LS_VENV/bin/label-studio"
