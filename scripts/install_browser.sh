#!/usr/bin/env bash
# Install Debian's Chromium for the real-browser App test when it is missing (needs root and apt).
set -uo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "samseg: chromium not installed and cannot install it here; the browser test will be skipped" >&2
    exit 0
fi
echo "samseg: installing chromium for the browser test" >&2
(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "samseg: chromium install failed; the browser test will be skipped" >&2
exit 0
