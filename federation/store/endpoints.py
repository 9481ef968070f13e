"""etcd endpoints as the client can use them: host names resolved to addresses."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence

from federation.store.errors import StoreUnavailable


async def resolve(endpoints: Sequence[str]) -> tuple[list[str], str | None]:
    """`host:port` endpoints with host names resolved to IPv4 addresses, and the host
    name when exactly one was given. etcd3aio hands gRPC one `ipv4:` target for all
    endpoints, which takes addresses only (`etcd-1:2379` is refused as an invalid
    address): the names in deploy files must be resolved here, without blocking."""
    loop = asyncio.get_running_loop()
    resolved: list[str] = []
    names: set[str] = set()
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isascii() or not port.isdigit():
            resolved.append(endpoint)  # not host:port: let the client say what is wrong
            continue
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            pass
        else:
            resolved.append(endpoint)
            continue
        try:
            infos = await loop.getaddrinfo(
                host, int(port), family=socket.AF_INET, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise StoreUnavailable(
                f"etcd endpoint {endpoint}: cannot resolve {host}: {exc}"
            ) from exc
        names.add(host)
        resolved += list(dict.fromkeys(f"{info[4][0]}:{port}" for info in infos))
    return resolved, (names.pop() if len(names) == 1 else None)
