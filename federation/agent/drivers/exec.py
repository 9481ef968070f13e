"""The exec driver: the raw process driver's instances, each isolated by bubblewrap
and limited by cgroups.

Health checks, crash restarts, adoption after an agent restart, fencing and reports
are the raw driver's (this is a subclass); what differs is how an instance is started:

    /bin/sh -c 'echo $$ > cgroup.procs...; /usr/bin/bwrap ... -- [setpriv ...] command'

- The shell puts itself into the instance's cgroups (memory, cpu, cpuacct, pids; v2
  where /sys/fs/cgroup/cgroup.controllers exists), so bwrap and the service are
  limited from their first instruction. It stays bwrap's parent, in its own session
  and not the agent's child for long: bwrap's `--die-with-parent` then ties the
  sandbox to the shell (killing the group kills all of it), not to the agent, so
  an instance survives an agent restart and is adopted.
- bwrap gives new PID, IPC and mount namespaces, a read-only view of the host's
  system directories and Python install, a private /tmp, the instance's own
  directory at /instance (its cwd), and nothing of the agent's state directory or
  other instances. `--clearenv`: the instance sees only the service's env, the
  FEDERATION_* instance variables, PORT, PATH and HOME.
- Secrets' values reach the sandbox's environment through `bwrap --args FD`: NUL-
  separated `--setenv` arguments in an anonymous in-memory file (memfd), so they are
  on no command line (which every user of the host can read in /proc) and on no disk.
  With `secret_files`, each is also a file in /run/secrets, a tmpfs of the sandbox's
  own (copied from a memfd by `bwrap --file`), seen by no other process.
- As root, the agent runs instances as `run_as` (setpriv inside the sandbox, with
  no_new_privs), and refuses to run them as root unless `allow_root_instances`.

The network is the host's: an instance serves a port the agent health-checks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import federation
from federation.agent.drivers.process import Instance, ProcessDriver

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids")
PIDS_MAX = 256
CFS_PERIOD_US = 100_000
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
INSTANCE_DIR = "/instance"  # where the instance's own directory appears inside
SECRETS_DIR = "/run/secrets"  # a tmpfs inside, holding the secrets with `secret_files`


class DriverUnavailable(RuntimeError):
    """The host lacks what the driver needs; the agent must not start (no fallback)."""


def _v2() -> bool:
    return (CGROUP_ROOT / "cgroup.controllers").exists()


def _writable(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK)


def preflight(bwrap: str | None, cgroup_root: Path = CGROUP_ROOT) -> list[str]:
    """What this host lacks for the exec driver, as sentences; empty when nothing."""
    missing = []
    if bwrap is None or not os.access(bwrap, os.X_OK):
        missing.append(
            f"bubblewrap ({bwrap or 'bwrap'} not found or not executable; "
            "install the Debian package `bubblewrap`)"
        )
    if (cgroup_root / "cgroup.controllers").exists():
        controllers = (cgroup_root / "cgroup.controllers").read_text().split()
        lacking = [c for c in ("memory", "cpu", "pids") if c not in controllers]
        if lacking or not _writable(cgroup_root):
            missing.append(
                f"a writable cgroup v2 hierarchy at {cgroup_root} with memory, cpu and pids "
                f"(lacking: {', '.join(lacking) or 'write access'})"
            )
    else:
        lacking = [c for c in V1_CONTROLLERS if not _writable(cgroup_root / c)]
        if lacking:
            missing.append(
                f"writable cgroup v1 controllers under {cgroup_root} "
                f"(lacking: {', '.join(lacking)})"
            )
    return missing


class Cgroups:
    """One instance's cgroups: made before it starts, read for reports, removed after."""

    def __init__(self, root: Path, region: str, instance: str) -> None:
        self.v2 = (root / "cgroup.controllers").exists()
        rel = Path("federation") / region / instance
        if self.v2:
            self.dirs = {"unified": root / rel}
        else:
            self.dirs = {c: root / c / rel for c in V1_CONTROLLERS}
        self.root = root

    def procs_files(self) -> list[Path]:
        # v1 cpu and cpuacct may be one hierarchy (symlinks): write each once.
        return sorted({(d / "cgroup.procs").resolve() for d in self.dirs.values()})

    def create(self, *, memory_mb: int, cpu: float) -> None:
        limit = memory_mb * 1024 * 1024
        quota = max(1000, int(cpu * CFS_PERIOD_US))
        if self.v2:
            self._enable_v2(self.dirs["unified"])
            d = self.dirs["unified"]
            d.mkdir(parents=True, exist_ok=True)
            (d / "memory.max").write_text(str(limit))
            with contextlib.suppress(OSError):  # no swap accounting: nothing to close
                (d / "memory.swap.max").write_text("0")
            (d / "cpu.max").write_text(f"{quota} {CFS_PERIOD_US}")
            (d / "pids.max").write_text(str(PIDS_MAX))
            return
        for d in self.dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        mem = self.dirs["memory"]
        (mem / "memory.limit_in_bytes").write_text(str(limit))
        with contextlib.suppress(OSError):  # only with swap accounting
            (mem / "memory.memsw.limit_in_bytes").write_text(str(limit))
        with contextlib.suppress(OSError):
            (mem / "memory.swappiness").write_text("0")  # over the limit is killed, not swapped
        (self.dirs["cpu"] / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
        (self.dirs["cpu"] / "cpu.cfs_quota_us").write_text(str(quota))
        (self.dirs["pids"] / "pids.max").write_text(str(PIDS_MAX))

    def _enable_v2(self, leaf: Path) -> None:
        # Controllers must be enabled in every ancestor's subtree_control.
        node = self.root
        for part in leaf.relative_to(self.root).parts:
            with contextlib.suppress(OSError):
                (node / "cgroup.subtree_control").write_text("+memory +cpu +pids")
            node = node / part
            node.mkdir(exist_ok=True)

    def oom_killed(self) -> bool:
        try:
            if self.v2:
                text = (self.dirs["unified"] / "memory.events").read_text()
            else:
                text = (self.dirs["memory"] / "memory.oom_control").read_text()
        except OSError:
            return False
        counts = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
        return int(counts.get("oom_kill", "0")) > 0

    def usage(self) -> dict[str, Any]:
        """Measured CPU seconds and memory bytes, for the instance's report."""
        out: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            if self.v2:
                d = self.dirs["unified"]
                stat = dict(line.split() for line in (d / "cpu.stat").read_text().splitlines())
                out["cpu_seconds"] = int(stat["usage_usec"]) / 1e6
                out["memory_bytes"] = int((d / "memory.current").read_text())
            else:
                ns = int((self.dirs["cpuacct"] / "cpuacct.usage").read_text())
                out["cpu_seconds"] = ns / 1e9
                mem = self.dirs["memory"] / "memory.usage_in_bytes"
                out["memory_bytes"] = int(mem.read_text())
        return out

    def remove(self) -> None:
        """Kill whatever is still in the cgroups (a process that left the group with
        setsid is still here) and remove them; the kernel frees a pid namespace's last
        processes asynchronously, hence the short wait."""
        end = time.monotonic() + 2.0
        for d in self.dirs.values():
            while d.exists():
                with contextlib.suppress(OSError, ValueError):
                    for pid in (d / "cgroup.procs").read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
                with contextlib.suppress(OSError):
                    d.rmdir()
                if time.monotonic() > end:
                    log.warning("could not remove cgroup %s", d)
                    break
                if d.exists():
                    time.sleep(0.02)


class ExecDriver(ProcessDriver):
    """Runs instances isolated by bubblewrap and cgroups; see the module docstring."""

    secret_files = True

    def __init__(
        self,
        *,
        region: str,
        state_dir: Path,
        run_as: str | None = None,
        allow_root_instances: bool = False,
        bwrap: str | None = None,
        cgroup_root: Path = CGROUP_ROOT,
        stop_timeout_s: float = 5.0,
        health_tick_s: float = 0.5,
    ) -> None:
        super().__init__(
            region=region,
            state_dir=state_dir,
            stop_timeout_s=stop_timeout_s,
            health_tick_s=health_tick_s,
        )
        self.bwrap = bwrap if bwrap is not None else shutil.which("bwrap")
        self._fds: dict[str, list[int]] = {}  # secrets' memfds, from _command to _launch
        self.cgroup_root = cgroup_root
        missing = preflight(self.bwrap, cgroup_root)
        if missing:
            raise DriverUnavailable(
                "the exec driver cannot isolate instances on this host; missing: "
                + "; ".join(missing)
            )
        self.user: pwd.struct_passwd | None = None
        if run_as is not None:
            try:
                self.user = pwd.getpwnam(run_as)
            except KeyError:
                raise DriverUnavailable(f"--run-as {run_as}: no such user") from None
        if self.user is not None and os.geteuid() not in (0, self.user.pw_uid):
            raise DriverUnavailable(f"--run-as {run_as} needs an agent running as root")
        uid = self.user.pw_uid if self.user else os.geteuid()
        if uid == 0 and not allow_root_instances:
            given = f" (--run-as {run_as})" if run_as else ""
            raise DriverUnavailable(
                f"instances would run as root{given}: give --run-as USER, a user other "
                "than root (or --allow-root-instances to accept root instances)"
            )

    def _cgroups(self, instance_id: str) -> Cgroups:
        return Cgroups(self.cgroup_root, self.region, instance_id)

    def _instance_dir(self, instance_id: str) -> Path:
        return self.state_dir / "instances" / instance_id

    def _sandbox_binds(self) -> list[str]:
        """Read-only binds: system directories, the Python install and the federation
        package (so `{python} -m ...` services run), each at its own path."""
        paths = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc"]
        paths += [sys.prefix, sys.base_prefix, str(Path(federation.__file__).parent)]
        args: list[str] = []
        seen: set[str] = {"/tmp"}  # already there: the private tmpfs
        for p in paths:
            if p in seen or not os.path.exists(p):
                continue
            seen.add(p)
            # bwrap makes missing parents 0700 (root's): the run-as user could not
            # reach /work/app/.venv. Made explicitly, they are 0755 and hold only the bind.
            for parent in reversed(Path(p).parents[:-1]):
                if str(parent) not in seen:
                    seen.add(str(parent))
                    args += ["--perms", "0755", "--dir", str(parent)]
            # Symlinks (usrmerge's /bin -> usr/bin) are recreated, not bound twice.
            if os.path.islink(p):
                args += ["--symlink", os.readlink(p), p]
            else:
                args += ["--ro-bind", p, p]
        return args

    def _command(self, inst: Instance) -> tuple[list[str], dict[str, str]]:
        assert self.bwrap is not None  # checked in __init__
        cg = self._cgroups(inst.id)
        cg.remove()  # a previous life's (empty) cgroups: start with fresh OOM counters
        cg.create(memory_mb=inst.runtime.resources.memory_mb, cpu=inst.runtime.resources.cpu)
        home = self._instance_dir(inst.id)
        self.state_dir.joinpath("instances").mkdir(mode=0o700, exist_ok=True)
        home.mkdir(mode=0o700, exist_ok=True)
        if self.user is not None:
            os.chown(home, self.user.pw_uid, self.user.pw_gid)
        package_parent = str(Path(federation.__file__).parent.parent)
        env = {
            **self._instance_env(inst),
            "PATH": SANDBOX_PATH,
            "HOME": INSTANCE_DIR,
            # Where the federation package is bound, for `{python} -m federation.demo`.
            "PYTHONPATH": package_parent,
        }
        bwrap = [
            self.bwrap,
            "--unshare-pid",
            "--unshare-ipc",
            "--die-with-parent",
            "--new-session",  # no TIOCSTI into a terminal the agent may have
            # The private /tmp first: a Python install under /tmp (a checkout there)
            # is bound on top of it, where a later tmpfs would hide it.
            "--perms",
            "1777",  # the run-as user's /tmp too (bwrap makes it root's 0755)
            "--tmpfs",
            "/tmp",
            *self._sandbox_binds(),
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--bind",
            str(home),
            INSTANCE_DIR,
            "--chdir",
            INSTANCE_DIR,
            "--clearenv",
        ]
        for key, value in sorted(env.items()):
            bwrap += ["--setenv", key, value]
        if inst.secret_env:
            bwrap += ["--args", str(self._secret_args(inst))]
            if inst.runtime.secret_files:
                bwrap += ["--setenv", "FEDERATION_SECRETS_DIR", SECRETS_DIR]
                bwrap += ["--perms", "0755", "--tmpfs", SECRETS_DIR]
                for name, value in sorted(inst.secret_env.items()):
                    fd = self._memfd(inst, value.encode())
                    bwrap += ["--perms", "0444", "--file", str(fd), f"{SECRETS_DIR}/{name}"]
        if self.user is not None:
            # bwrap as root drops every capability; setpriv needs these two to switch
            # user, and loses them (and any other) by switching.
            bwrap += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--"]
            bwrap += [
                "/usr/bin/setpriv",
                f"--reuid={self.user.pw_uid}",
                f"--regid={self.user.pw_gid}",
                "--clear-groups",
                "--no-new-privs",
            ]
        bwrap += ["--", *self._argv(inst)]
        join = "; ".join(f"echo $$ > {shlex.quote(str(p))}" for p in cg.procs_files())
        # `exec` is not used: the shell stays bwrap's parent (see the module docstring).
        script = f"{join} || exit 125; {shlex.join(bwrap)}"
        return ["/bin/sh", "-c", script], {"PATH": SANDBOX_PATH}

    def _memfd(self, inst: Instance, data: bytes) -> int:
        """An anonymous in-memory file holding `data`, read from its start by bwrap;
        passed to the child and closed here once it started."""
        fd = os.memfd_create(f"secrets-{inst.id}", os.MFD_CLOEXEC)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
        self._fds.setdefault(inst.id, []).append(fd)
        return fd

    def _secret_args(self, inst: Instance) -> int:
        """A memfd holding `--setenv NAME VALUE` for each secret, NUL-separated, for
        bwrap's `--args`."""
        args = b"".join(
            b"--setenv\0" + k.encode() + b"\0" + v.encode() + b"\0"
            for k, v in sorted(inst.secret_env.items())
        )
        return self._memfd(inst, args)

    def _pass_fds(self, inst: Instance) -> tuple[int, ...]:
        return tuple(self._fds.pop(inst.id, []))

    def _exit_reason(self, inst: Instance) -> str | None:
        return "OOMKilled" if self._cgroups(inst.id).oom_killed() else None

    def _measure(self, inst: Instance) -> dict[str, Any]:
        out = super()._measure(inst)
        if inst.state in ("starting", "running"):
            out.update(self._cgroups(inst.id).usage())
        return out

    def _released(self, instance_id: str) -> None:
        self._cgroups(instance_id).remove()
        shutil.rmtree(self._instance_dir(instance_id), ignore_errors=True)
