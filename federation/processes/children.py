"""Starting and stopping child processes so that none outlives its parent."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path


def with_parent_death(argv: list[str]) -> list[str]:
    """`argv`, run so the child gets SIGKILL when the process that started it dies (a
    killed test run or `federation up` cannot leave an etcd or a server behind).

    Done with util-linux's `setpriv --pdeathsig` rather than a `preexec_fn`: Python code
    between fork and exec crashes the child when gRPC threads are running (seen as
    SIGSEGV in tests that hold an etcd connection)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", *argv] if setpriv else argv


def launch(argv: list[str], *, log: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """Start `argv` in a session of its own (a Ctrl-C meant for us does not reach it;
    it is stopped in order instead), with `env` on top of ours, its output appended to
    `log`, and killed if we die."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            with_parent_death(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env},
            start_new_session=True,
        )


def stop_processes(procs: Sequence[subprocess.Popen[bytes]], *, timeout: float = 10.0) -> None:
    """SIGTERM every process still running, then wait for each, SIGKILL after `timeout`
    (all are signalled first, so they stop side by side)."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
