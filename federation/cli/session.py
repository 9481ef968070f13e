"""Running a command's coroutine, and its one conversation with the API.

`call(ctx, fn)` builds the client from the group's options (`--url`, `--token`,
`--ca`), runs `fn` with it, and turns an `ApiError` into the one error printout and
exit status 1, so a command only says what to ask and how to show the answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click

from federation.cli.render import print_api_error
from federation.client import ApiClient, ApiError, tls_context

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    """Run `coro` to the end in a new event loop."""

    async def wrapper() -> T:
        return await coro

    return asyncio.run(wrapper())


def call(ctx: click.Context, fn: Callable[[ApiClient], Awaitable[T]]) -> T:
    """Run one API interaction; print a readable error and exit 1 on failure."""
    url, token = ctx.obj["url"], ctx.obj["token"]
    tls = tls_context(ctx.obj.get("ca"))

    async def go() -> T:
        async with ApiClient(url, token, ssl_context=tls) as client:
            return await fn(client)

    try:
        return run(go())
    except ApiError as exc:
        print_api_error(exc)
        raise SystemExit(1) from None
