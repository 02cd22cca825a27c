"""``python -m include.serving.supervise -- CMD ...``: keep a local model server running.

The embedded mode's counterpart of Docker's restart policy: when the server process dies (a crash,
an OOM kill, kill -9), it is started again on the same port after a short back-off, while the
gateway serves from the fallback. A server that keeps dying (``MAX_RESTARTS`` within
``WINDOW_S``) is given up on: the supervisor exits non-zero, so the deploy sees it as dead instead
of waiting on a crash loop. SIGTERM stops the server and the supervisor.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

MAX_RESTARTS = 5
WINDOW_S = 60.0


def supervise(cmd: list[str]) -> int:
    child: subprocess.Popen | None = None
    stopping = False

    def stop(signum, frame):  # signal handler signature
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    restarts: list[float] = []
    while True:
        child = subprocess.Popen(cmd)
        code = child.wait()
        if stopping:
            return 0
        now = time.monotonic()
        restarts = [t for t in restarts if now - t < WINDOW_S] + [now]
        if len(restarts) > MAX_RESTARTS:
            print(f"supervise: the server died {len(restarts)} times in {WINDOW_S:.0f}s (last exit {code}); "
                  "giving up", file=sys.stderr, flush=True)
            return 1
        delay = min(5.0, 0.25 * 2 ** (len(restarts) - 1))
        print(f"supervise: the server exited with {code}; restarting in {delay:.2f}s", file=sys.stderr, flush=True)
        time.sleep(delay)


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise SystemExit("usage: python -m include.serving.supervise -- CMD [ARGS ...]")
    sys.exit(supervise(argv))


if __name__ == "__main__":
    main()
