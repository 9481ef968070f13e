"""A region instance that logs its own life: `start` when it runs, `stop` on SIGTERM.

Each line is `start|stop SERVICE REGION INSTANCE WALLCLOCK`, appended in one write to
the file named by its argument, so the fault tests can tell from the instances
themselves (not from the API) whether a singleton ever ran twice at once.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def log(path: str, what: str) -> None:
    env = os.environ
    line = (
        f"{what} {env.get('FEDERATION_SERVICE')} {env.get('FEDERATION_REGION')} "
        f"{env.get('FEDERATION_INSTANCE')} {time.time():.3f}\n"
    )
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def main() -> None:
    path = sys.argv[1]

    def stop(*_: object) -> None:
        log(path, "stop")
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    log(path, "start")
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
