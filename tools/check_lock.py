"""Check that requirements.txt, constraints.txt and the installed venv agree.

Fails (exit 1) when a direct pin is missing from the lock or differs from it, or when an
installed distribution differs from the lock (a stale venv).
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        m = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*==\s*([^\s;]+)", line)
        if not m:
            raise SystemExit(f"{path.name}: not an exact pin: {line!r}")
        out[canon(m.group(1))] = m.group(3)
    return out


def main() -> int:
    req, lock = pins(ROOT / "requirements.txt"), pins(ROOT / "constraints.txt")
    problems = []
    for name, version in req.items():
        if name not in lock:
            problems.append(f"{name}=={version} is in requirements.txt but not in constraints.txt")
        elif lock[name] != version:
            problems.append(f"{name}: requirements.txt pins {version}, constraints.txt locks {lock[name]}")
    if "--no-installed" not in sys.argv:
        for name, version in lock.items():
            try:
                have = metadata.version(name)
            except metadata.PackageNotFoundError:
                problems.append(f"{name}=={version} is locked but not installed")
                continue
            if have != version:
                problems.append(f"{name}: locked {version}, installed {have}")
    for p in problems:
        print(f"lock check: {p}", file=sys.stderr)
    if not problems:
        print(f"lock check: {len(req)} direct pins and {len(lock)} locked packages agree")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
