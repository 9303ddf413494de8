"""`aiot bench decide --json` runs every tier briefly: keys and consistency, never timings."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.cluster.hubs import need_mosquitto
from tests.support import ROOT

pytestmark = [pytest.mark.bench, pytest.mark.cluster]

KEYS = {
    "rules_decisions_per_s",
    "onnx_latency_ms_p50",
    "onnx_latency_ms_p99",
    "llm_decision_latency_ms_p50",
    "llm_decision_latency_ms_p95",
    "llm_tokens_per_s",
    "llm_prime_ms_p50",
    "llm_prime_ms_p95",
    "llm_prompt_ms_per_token",
    "llm_generate_ms_per_token",
    "q4_1_prompt_ms_per_token",
    "q4_1_generate_ms_per_token",
    "adapter_generate_ms_per_token",
    "control_loop_ms_p50",
    "control_loop_ms_p99",
    "hot_swap_ms",
    "llm_accuracy",
    "llm_invalid_rate",
    "base_llm_accuracy",
    "llm_accuracy_hand_written",
    "base_llm_accuracy_hand_written",
    "swap_decisions_per_s",
    "swap_baseline_decisions_per_s",
    "swap_count",
    "swap_failed",
    "swap_dropped",
}


def test_bench_decide_prints_every_figure() -> None:
    need_mosquitto()
    from hub.decide import llm

    if not llm.llama_cpp_available():
        pytest.skip(f"llama-cpp-python missing: {llm.INSTALL_HINT}")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.cli",
            "bench",
            "decide",
            "--json",
            "--loops",
            "10",
            "--background",
            "1",
            "--llm-cases",
            "2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result) >= KEYS, KEYS - set(result)
    assert result["control_loops"] == 10 and result["llm_cases"] == 2
    # Progress on stderr, with --json too: each LLM run's last scenario and its end.
    assert "[2/2] test-000001" in out.stderr and "held-out" in out.stderr, out.stderr[-2000:]
    assert result["control_loop_ms_p50"] <= result["control_loop_ms_p99"]
    assert 0.0 <= result["llm_accuracy"] <= 1.0 and 0.0 <= result["llm_invalid_rate"] <= 1.0
    assert 0.0 <= result["base_llm_accuracy"] <= 1.0
    assert result["llm_split"] == "heldout.jsonl" and result["llm_cases_hand_written"] == 2
    assert result["rules_fired"] > 0
    # The default GGUF against its Q4_1 source, measured in the same run.
    # The shipped adapter's cost a token, measured in the same run.
    for key in (
        "llm_prompt_ms_per_token",
        "q4_1_generate_ms_per_token",
        "adapter_generate_ms_per_token",
    ):
        assert result[key] > 0, key
    # Ten hot swaps under load: every window judged, none failed, the engine saw each model.
    assert result["swap_count"] == 10 and result["swap_seen_by_engine"] == 10
    assert result["swap_failed"] == 0 and result["swap_dropped"] == 0
    assert result["swap_decisions"] > 0 and result["swap_decisions_per_s"] > 0
    assert result["swap_baseline_decisions_per_s"] > 0
    assert result["bars"]["swap_failed==0"] and result["bars"]["swap_dropped==0"]
