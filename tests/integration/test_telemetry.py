"""Telemetry: `/metrics` after a deploy and a failover, one trace for a deploy across
the API, the controller, etcd and an agent, and JSON logs."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from bench.failover import InstantDriver
from federation.agent.loop import Agent, AgentConfig
from federation.api.app import create_app
from federation.api.context import ServerConfig
from federation.processes.local_etcd import LocalEtcd
from federation.store import Store
from federation.telemetry import setup
from federation.telemetry.logs import JsonFormatter, redact
from tests.conftest import Api, server_config
from tests.integration.agents import Federation, running_federation, wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(api: Api) -> Samples:
    status, text = await api.call("GET", "/metrics", token=None)
    assert status == 200, text
    assert isinstance(text, str)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
async def federation(api: Api, store: Store) -> AsyncIterator[Federation]:
    async with running_federation(api, store) as fed:
        yield fed


async def test_metrics_after_a_deploy_and_a_failover(federation: Federation, api: Api) -> None:
    before = await scrape(api)
    failovers_before = value(before, "federation_failover_duration_seconds_count")
    await federation.deploy(
        {
            "name": "records",
            "command": ["true"],
            "replicas": 2,
            "data_classes": ["phi-eu"],
            "placement": {"prefer": ["eu-de-1"], "max_per_region": 2},
        },
        expect=201,
    )
    await federation.deploy(
        {"name": "site", "command": ["true"], "replicas": 1, "data_classes": ["public"]},
        expect=201,
    )
    await federation.wait_placed("records", {"eu-de-1": 2})
    await federation.wait_decided("site")  # report only once both are assigned
    for region in ("eu-de-1", "eu-fr-1", "us-east-1", "ap-in-1"):
        await federation.report(region)
    await federation.wait_phase("records", "Running")
    await federation.wait_phase("site", "Running")

    async def running_counted() -> Samples | None:
        samples = await scrape(api)
        return samples if value(samples, "federation_services", phase="Running") == 2 else None

    samples = await wait_until(running_counted, timeout=5, what="2 services Running in /metrics")
    assert value(samples, "federation_regions", state="ready") == 4
    assert value(samples, "federation_regions", state="unreachable") == 0
    assert value(samples, "federation_services", phase="Pending") == 0
    # phi-eu is EEA only: US and IN are rejected for `records` by its allow list.
    assert value(samples, "federation_residency_rejections", reason="not_in_allow") == 2
    assert value(samples, "federation_etcd_request_duration_seconds_count", operation="txn") > 0
    assert value(samples, "federation_scheduling_duration_seconds_count") > 0
    # The first pass as leader is a full one; deploys are planned incrementally.
    assert value(samples, "federation_reconcile_duration_seconds_count", kind="full") > 0
    assert value(samples, "federation_reconcile_duration_seconds_count", kind="incremental") > 0

    # eu-de-1 goes silent: its lease expires and `records` moves to eu-fr-1.
    await federation.stop_heartbeats("eu-de-1")
    await federation.wait_state("eu-de-1", "unreachable", timeout=6)
    await federation.wait_placed("records", {"eu-fr-1": 2}, timeout=6)

    async def failed_over() -> Samples | None:
        samples = await scrape(api)
        done = value(samples, "federation_failover_duration_seconds_count") > failovers_before
        return samples if done else None

    samples = await wait_until(failed_over, timeout=5, what="a failover duration sample")
    assert value(samples, "federation_failover_duration_seconds_sum") > 0
    assert value(samples, "federation_regions", state="unreachable") == 1
    assert value(samples, "federation_regions", state="ready") == 3
    assert value(samples, "federation_residency_violations_total") == 0

    async def degraded_counted() -> Samples | None:
        samples = await scrape(api)
        # `records` waits for eu-fr-1 to report its replicas ready.
        progressing = value(samples, "federation_services", phase="Progressing")
        return samples if progressing == 1 else None

    samples = await wait_until(degraded_counted, timeout=5, what="records Progressing")
    assert value(samples, "federation_services", phase="Running") == 1


# -- traces ------------------------------------------------------------------------------


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on, into memory, for this test only (before any app is built)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    setup.install_tracer_provider(provider)
    try:
        yield exporter
    finally:
        setup.install_tracer_provider(None)
        provider.shutdown()


def test_tracing_is_off_by_default() -> None:
    assert not setup.tracing_enabled()
    assert not setup.export_configured({})
    assert setup.export_configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert setup.export_configured({"OTEL_TRACES_EXPORTER": "otlp"})
    assert not setup.export_configured({"OTEL_TRACES_EXPORTER": "none"})
    app = create_app(server_config_stub())
    assert not any(_is_tracing(m) for m in app.middlewares)


def server_config_stub() -> ServerConfig:
    return ServerConfig(etcd_endpoints=("127.0.0.1:1",))


def _is_tracing(middleware: object) -> bool:
    return getattr(middleware, "__module__", "").startswith(
        "opentelemetry.instrumentation.aiohttp_server"
    )


async def test_a_deploy_is_one_trace_from_api_to_agent(
    spans: InMemorySpanExporter, etcd: LocalEtcd, prefix: str, store: Store, tmp_path: Path
) -> None:
    config = server_config(etcd, prefix)
    app = create_app(config, announce=False)
    assert _is_tracing(app.middlewares[0]), "the tracing middleware comes first"
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    agent_task: asyncio.Task[None] | None = None
    try:
        async with aiohttp.ClientSession() as session:
            assert config.admin_token is not None
            url = str(server.make_url("")).rstrip("/")
            api = Api(url, config.admin_token, session, config)
            status, body = await api.call(
                "POST", "/v1/regions", json={"name": "eu-de-1", "country": "DE"}
            )
            assert status == 201, body
            agent = Agent(
                AgentConfig(
                    server=url,
                    region="eu-de-1",
                    token=body["token"],
                    cpu=8,
                    memory_mb=16384,
                    state_dir=tmp_path / "agent",
                ),
                driver=InstantDriver(),
            )
            agent_task = asyncio.create_task(agent.run())
            fed = Federation(api, store)
            await fed.wait_state("eu-de-1", "ready", timeout=5)
            await fed.deploy({"name": "web", "command": ["true"], "replicas": 1}, expect=201)

            def applied() -> list[ReadableSpan]:
                return [s for s in spans.get_finished_spans() if s.name == "agent.apply"]

            async def agent_applied() -> list[ReadableSpan]:
                return applied()

            (apply,) = await wait_until(agent_applied, timeout=5, what="the agent's apply span")
    finally:
        if agent_task is not None:
            agent_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await agent_task
        await server.close()

    finished = spans.get_finished_spans()
    assert apply.context is not None
    trace_id = apply.context.trace_id
    in_trace = [s for s in finished if s.context is not None and s.context.trace_id == trace_id]
    names = {s.name for s in in_trace}
    request = [
        s
        for s in in_trace
        if s.kind is trace.SpanKind.SERVER and s.parent is None and "PUT" in s.name
    ]
    assert request, f"no API request span in the trace: {sorted(names)}"
    assert "controller.place" in names
    assert any(n.startswith("etcd ") for n in names), names
    place = next(s for s in in_trace if s.name == "controller.place")
    assert place.attributes is not None and place.attributes["federation.service"] == "web"
    # The etcd write of the placement is a child of the placement span.
    assert any(
        s.name == "etcd txn"
        and s.parent is not None
        and place.context is not None
        and s.parent.span_id == place.context.span_id
        for s in in_trace
    )
    assert apply.parent is not None and place.context is not None
    assert apply.parent.span_id == place.context.span_id


# -- logs --------------------------------------------------------------------------------


def test_json_logs_carry_trace_ids_and_no_secrets() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("federation.test-json")
    logger.addHandler(handler)
    logger.propagate = False
    provider = TracerProvider()
    try:
        logger.warning("plain %s", "line")
        with provider.get_tracer("t").start_as_current_span("s") as span:
            logger.warning("token fed_abcdefghijklmnop and Authorization: Bearer s3cr3t-value")
            context = span.get_span_context()
    finally:
        logger.removeHandler(handler)
        provider.shutdown()
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "plain line"
    assert first["level"] == "warning"
    assert first["logger"] == "federation.test-json"
    assert "time" in first and "trace_id" not in first
    assert second["trace_id"] == format(context.trace_id, "032x")
    assert second["span_id"] == format(context.span_id, "016x")
    assert "fed_abcdefghijklmnop" not in second["message"]
    assert "s3cr3t-value" not in second["message"]
    assert redact("Bearer x") == "Bearer [redacted]"
