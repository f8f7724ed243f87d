#!/usr/bin/env bash
# samseg's main job: a demo dataset in the demo's own database (a private mongod), the pipeline, a summary.
# Creates or reuses the virtual environment first. Extra arguments go to scripts/demo.py (see --help).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$SAMSEG_ROOT"
exec python scripts/demo.py "$@"
