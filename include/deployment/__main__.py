"""``python -m include.deployment stop``: stop this state dir's model servers and edge (`make stop`)."""

import sys

from include.deployment.release import stop_all

if __name__ == "__main__":
    if sys.argv[1:] != ["stop"]:
        raise SystemExit("usage: python -m include.deployment stop")
    print("stopped:", ", ".join(stop_all()) or "nothing was serving")
