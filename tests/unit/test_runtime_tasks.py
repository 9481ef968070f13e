"""The server's task group: eternal tasks never die quietly, stops go in order."""

from __future__ import annotations

import asyncio
import logging

import pytest

from federation.runtime import Tasks


async def test_a_crashing_eternal_task_is_logged_at_once_and_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks = Tasks()
    runs = 0

    async def body() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("boom")
        await asyncio.Event().wait()

    tasks.start("flaky", body, restart_s=0.01)
    await asyncio.sleep(0.05)
    assert runs == 2
    assert "flaky crashed; restarting in 0.01 s" in caplog.text
    assert "boom" in caplog.text  # with its traceback
    assert tasks.names == ["flaky"]
    await tasks.stop_all()
    assert tasks.names == []


async def test_an_eternal_task_that_returns_is_logged_as_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks = Tasks()

    async def body() -> None:
        return

    tasks.start("quitter", body, restart_s=10)
    await asyncio.sleep(0.01)
    assert any(
        r.levelno == logging.ERROR and "quitter returned" in r.getMessage() for r in caplog.records
    )
    await tasks.stop("quitter")


async def test_names_are_unique_and_stops_go_in_the_order_given() -> None:
    tasks = Tasks()
    stopped: list[str] = []

    def forever(name: str) -> asyncio.Task[None]:
        async def body() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                stopped.append(name)

        return tasks.start(name, body)

    for name in ("a", "b", "c"):
        forever(name)
    await asyncio.sleep(0)  # each is inside its try
    with pytest.raises(ValueError, match="already running"):
        forever("a")
    await tasks.stop("b")
    await tasks.stop_all()
    assert stopped == ["b", "c", "a"]


async def test_a_graceful_stop_lets_the_body_finish_before_any_cancel() -> None:
    tasks = Tasks()
    done = asyncio.Event()
    finished = []

    async def body() -> None:
        await done.wait()
        finished.append("after the work under way")

    tasks.start("loop", body, on_stop=done.set)
    await tasks.stop("loop", grace=1)
    assert finished == ["after the work under way"]


async def test_a_task_that_ignores_cancellation_is_left_behind_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks = Tasks()
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(stubborn())
    tasks.track("stubborn", task)
    await asyncio.sleep(0)
    await tasks.stop("stubborn", grace=0.05)
    assert "stubborn: 1 task(s) still running 0.05 s after being cancelled" in caplog.text
    release.set()
    await task
