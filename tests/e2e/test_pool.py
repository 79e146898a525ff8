"""The warm pool on the running stack: the pool-manager pins the tier-1 model through a
LoadModel the worker answers, the fleet projection shows it, and a killed pool-manager rebuilds
its projection and asks for nothing it already asked for (issue 13)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from imagegen_schemas.workers import AutoscaleRecommended, LoadModel, ModelLoaded

from .conftest import RunningStack
from .test_failures import supervised_pid
from .test_generation import read_topic

pytestmark = pytest.mark.e2e
PINNED = "shapes-demo"  # tier 1 in its model.json


def fleet(stack: RunningStack) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "imagegen.cli", "fleet", "--json"],
        env=stack.env,
        capture_output=True,
        text=True,
        check=True,
    )
    return {w["worker_id"]: w for w in json.loads(out.stdout)["workers"]}


def loads(stack: RunningStack) -> list[dict[str, Any]]:
    return [
        e for e in read_topic(stack, "imagegen.pool.commands") if e["type"] == LoadModel.event_type
    ]


def test_the_pool_pins_the_tier_1_model_and_a_restart_asks_nothing_twice(
    stack: RunningStack,
) -> None:
    deadline = time.monotonic() + 180
    while True:
        worker = fleet(stack).get("worker-local-1", {})
        if PINNED in {m["model_id"] for m in worker.get("models", [])}:
            break
        assert time.monotonic() < deadline, worker
        time.sleep(0.5)  # between reads of the persisted projection
    # the latest pin (a stack restarted on the same log pins again: its worker starts cold; a
    # log that local fleets and `bench fleet` wrote to also holds their predictive loads)
    pins = [
        c
        for c in loads(stack)
        if c["data"]["model_id"] == PINNED
        and c["data"]["worker_id"] == "worker-local-1"
        and c["data"]["pin"]
    ]
    assert pins and {c["data"]["reason"] for c in pins} == {"pin"}
    answers = [
        e["data"]
        for e in read_topic(stack, "imagegen.workers.models")
        if e["type"] == ModelLoaded.event_type
        and e["data"].get("command_id") == pins[-1]["event_id"]
    ]
    assert [a["model"]["model_id"] for a in answers] == [PINNED]
    assert worker["state"] in ("idle", "busy") and worker["memory_total_bytes"] > 0

    asked = Counter((c["data"]["worker_id"], c["data"]["model_id"]) for c in loads(stack))
    signals_before = len(read_topic(stack, "imagegen.pool.signals"))
    os.kill(supervised_pid("pool-manager"), signal.SIGKILL)  # supervisord restarts it
    deadline = time.monotonic() + 120
    while True:  # the restarted process's first planning round publishes its signal
        signals = read_topic(stack, "imagegen.pool.signals")
        if len(signals) > signals_before and signals[-1]["type"] == AutoscaleRecommended.event_type:
            break
        assert time.monotonic() < deadline, "the restarted pool-manager never planned"
        time.sleep(0.5)  # between reads of the signals topic
    after = Counter((c["data"]["worker_id"], c["data"]["model_id"]) for c in loads(stack))
    again = {pair: n for pair, n in after.items() if pair in asked and n > asked[pair]}
    assert again == {}, "asked again after the restart"
    ready = httpx.get("http://127.0.0.1:8105/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    assert PINNED in {m["model_id"] for m in fleet(stack)["worker-local-1"]["models"]}


def pool(stack: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    """``imagegen pool ...`` against the stack, with its operator key."""
    from .test_metrics import operator_key

    return subprocess.run(
        [sys.executable, "-m", "imagegen.cli", "pool", *args, "--key", operator_key(stack)],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_an_operator_sends_pool_commands_by_hand_and_reads_the_workers_answers(
    stack: RunningStack,
) -> None:
    w = ("--worker", "worker-local-1")
    first = pool(stack, "load", *w, "--model", "tiny-sdxl", "--json")
    assert first.returncode == 0, first.stderr
    loaded = json.loads(first.stdout)
    assert loaded["outcome"] == "loaded" and loaded["answer"]["command_id"] == loaded["command_id"]
    again = pool(stack, "load", *w, "--model", "tiny-sdxl")
    assert again.returncode == 0, again.stderr
    assert "already resident (nothing read)" in again.stdout  # a second load reads nothing
    assert any(
        e["event_id"] == loaded["command_id"] and e["data"]["reason"] == "operator"
        for e in loads(stack)
    )

    unknown = pool(stack, "load", *w, "--model", "no-such-model")
    assert unknown.returncode == 1 and "unknown_model" in unknown.stderr
    lora = pool(stack, "load", *w, "--model", "tiny-sd15-lora-ink")
    assert lora.returncode == 1 and "not_a_base_model" in lora.stderr

    def by_operator() -> int:  # the pool-manager may send its own commands meanwhile
        return sum(
            1
            for e in read_topic(stack, "imagegen.pool.commands")
            if e["data"].get("reason") == "operator"
        )

    commands = by_operator()
    nobody = pool(stack, "load", "--worker", "w9", "--model", "tiny-sdxl")
    assert nobody.returncode == 2 and "no worker 'w9' in the fleet" in nobody.stderr
    pinned = pool(stack, "evict", *w, "--model", PINNED)
    assert pinned.returncode == 2 and "pinned on 'worker-local-1'" in pinned.stderr
    assert by_operator() == commands  # nothing was sent

    evicted = pool(stack, "evict", *w, "--model", "tiny-sdxl")
    assert evicted.returncode == 0 and "evicted tiny-sdxl" in evicted.stdout, evicted.stderr
    # not loaded there: a model id no worker ever loads (the pool may preload tiny-sdxl again at
    # any quiet moment: jobs of earlier tests ran on it)
    gone = pool(stack, "evict", *w, "--model", "no-such-model")
    assert gone.returncode == 0 and "nothing unloaded" in gone.stdout, gone.stderr

    refused = subprocess.run(
        [sys.executable, "-m", "imagegen.cli", "pool", "defrag", *w, "--key", stack.key],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "operator" in refused.stderr.lower()
