"""Exit 0 when the mongod that FiftyOne would start can run on this machine, else 1."""

import subprocess
import sys


def main() -> int:
    """Locate mongod the way FiftyOne does and run ``mongod --version``."""
    try:
        from fiftyone.core.service import DatabaseService

        mongod = DatabaseService.find_mongod()
    except Exception as err:  # fiftyone-db absent, or its build could not download mongod
        print(f"check_mongod: no mongod: {err}", file=sys.stderr)
        return 1
    try:
        out = subprocess.run([mongod, "--version"], capture_output=True, timeout=60)
    except Exception as err:
        print(f"check_mongod: cannot run {mongod}: {err}", file=sys.stderr)
        return 1
    if out.returncode != 0:
        print(f"check_mongod: {mongod} failed: {out.stderr.decode(errors='replace')[:300]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
