#!/usr/bin/env bash
# Run samseg's test suite (creates or reuses the virtual environment first). Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$SAMSEG_ROOT"
exec python -m pytest -q "$@" tests
