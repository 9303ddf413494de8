"""The HTTP API against its own OpenAPI spec with schemathesis: generated
requests (valid and invalid) to every operation of a real node; no server
error and no response that breaks the schema."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.cluster.hubs import running_cluster
from tests.support import find_tool

pytestmark = pytest.mark.cluster

EXAMPLES = int(os.environ.get("AIOT_SCHEMATHESIS_EXAMPLES", "25"))


def test_no_server_errors_and_no_schema_violations(tmp_path: Path) -> None:
    tool = find_tool("schemathesis")
    if tool is None:
        pytest.skip("schemathesis not found: pip install -e '.[dev]'")
    with running_cluster(tmp_path, nodes=1) as cluster:
        c = cluster.client(0)
        c.post("/v1/devices", {"device_id": "plug-1"})
        token = c._http.headers["Authorization"].split(" ", 1)[1]
        report = tmp_path / "report"
        out = subprocess.run(
            [
                tool,
                "run",
                f"{c.url}/openapi.json",
                "-H",
                f"Authorization: Bearer {token}",
                "--checks",
                "not_a_server_error,response_schema_conformance",
                "-n",
                str(EXAMPLES),
                "--seed",
                "1",
                # Four operations at a time: the same operations, phases,
                # examples per operation and checks; the node answers one
                # while the others wait on the network.
                "--workers",
                "4",
                "--exclude-path-regex",
                "/v1/stream",  # an endless event stream
                "--request-timeout",
                "20",
                "--report",
                "ndjson",
                "--report-dir",
                str(report),
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
        summary = out.stdout[out.stdout.rfind("SUMMARY") :]
        print(summary)
        assert out.returncode == 0, summary or out.stderr[-3000:]
        generated = [ln for ln in summary.splitlines() if "generated" in ln]
        assert generated, summary
        assert "Exception in ASGI application" not in cluster.log_path(0).read_text()
        events = [
            json.loads(ln) for p in report.glob("*.ndjson") for ln in p.read_text().splitlines()
        ]
        assert events
