"""The alert rules and the Grafana dashboard use only names the services register (issue 15).

Every service's composition root (``bootstrap``, which imports all of the service's modules) is
imported into this process's default registry, the one each service serves on /metrics; a PromQL
expression may name a registered metric by its exported sample names: a counter's ``_total``, a
histogram's ``_bucket``/``_sum``/``_count``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

import imagegen_api.bootstrap
import imagegen_delivery.bootstrap
import imagegen_gpu_worker.bootstrap
import imagegen_pool_manager.bootstrap
import imagegen_safety.bootstrap
import imagegen_scheduler.bootstrap

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
SCRAPE = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "imagegen-dashboard.json"
SERVICES = (
    imagegen_api.bootstrap,
    imagegen_scheduler.bootstrap,
    imagegen_gpu_worker.bootstrap,
    imagegen_safety.bootstrap,
    imagegen_delivery.bootstrap,
    imagegen_pool_manager.bootstrap,
)
NAME = re.compile(r"\bimagegen_[a-zA-Z0-9_]+")
# The names issue 15 asks for (what dashboards and alerts may rely on), with their labels.
ISSUE_NAMES = {
    "imagegen_queue_depth": ("gauge", {"tier"}),
    "imagegen_queue_wait_seconds": ("histogram", {"tier"}),
    "imagegen_warm_hits": ("counter", set()),
    "imagegen_cold_loads": ("counter", set()),
    "imagegen_model_load_seconds": ("histogram", {"source"}),
    "imagegen_denoise_step_seconds": ("histogram", {"family"}),
    "imagegen_safety_check_seconds": ("histogram", {"kind"}),
    "imagegen_delivery_upload_seconds": ("histogram", set()),
    "imagegen_worker_memory_used_bytes": ("gauge", {"worker"}),
    "imagegen_worker_memory_free_bytes": ("gauge", {"worker"}),
    "imagegen_worker_memory_fragmentation_ratio": ("gauge", {"worker"}),
    "imagegen_dlq_records": ("gauge", {"topic"}),
    "imagegen_consumer_lag": ("gauge", {"group", "topic"}),
    "imagegen_http_requests": ("counter", {"service", "method", "route", "status"}),
    "imagegen_http_request_seconds": ("histogram", {"service", "method", "route"}),
}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def registered() -> dict[str, tuple[str, set[str]]]:
    """Family name -> (type, label names) of every imagegen_* metric in the default registry."""
    out: dict[str, tuple[str, set[str]]] = {}
    for collector in list(REGISTRY._collector_to_names):  # noqa: SLF001 (no public listing)
        describe = getattr(collector, "describe", None)
        families = describe() if describe is not None else []
        for family in families:
            if family.name.startswith("imagegen_"):
                labels = set(getattr(collector, "_labelnames", ()))
                out[family.name] = (family.type, labels)
    return out


def sample_names() -> set[str]:
    """Every name a PromQL expression may use for the registered imagegen_* metrics."""
    return {
        name + suffix
        for name, (kind, _) in registered().items()
        for suffix in SUFFIXES.get(kind, ("",))
    }


def alert_exprs() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def test_the_registry_holds_metrics_defined_outside_metrics_modules() -> None:
    # the pool-manager's planner registers its own gauges: seen because bootstrap imports it
    assert registered()["imagegen_pool_desired_workers"] == ("gauge", {"pool"})


@pytest.mark.parametrize("name", sorted(ISSUE_NAMES))
def test_every_name_the_issue_lists_is_registered_with_its_type_and_labels(name: str) -> None:
    kind, labels = ISSUE_NAMES[name]
    assert name in registered(), f"{name} is not registered by any service's metrics module"
    assert registered()[name] == (kind, labels)


@pytest.mark.parametrize(
    ("source", "exprs"), [("alerts.yml", alert_exprs), ("dashboard", dashboard_exprs)]
)
def test_every_imagegen_name_in_the_rules_and_the_dashboard_is_registered(
    source: str, exprs: object
) -> None:
    found = exprs()  # type: ignore[operator]
    assert found, f"no expressions read from the {source}"
    used = {name for expr in found for name in NAME.findall(expr)}
    assert used, f"the {source} names no imagegen_* series"
    assert sorted(used - sample_names()) == [], f"{source} uses names no service registers"


def test_the_name_check_catches_a_name_nobody_registers() -> None:
    used = set(NAME.findall("rate(imagegen_queue_wait_seconds_total[5m]) + imagegen_nope"))
    assert used - sample_names() == {"imagegen_queue_wait_seconds_total", "imagegen_nope"}


def test_the_dashboard_has_a_panel_for_every_name_the_issue_lists() -> None:
    used = {name for expr in dashboard_exprs() for name in NAME.findall(expr)}
    families = {name for name in ISSUE_NAMES if any(u.startswith(name) for u in used)}
    assert families == set(ISSUE_NAMES)


def test_the_alerts_cover_wait_targets_fragmentation_dead_letters_and_lag() -> None:
    exprs = alert_exprs()
    for tier, target in (("turbo", 15), ("fast", 60), ("relax", 300)):  # docs/scheduling.md
        assert any(f'tier="{tier}"' in e and e.endswith(f"> {target}") for e in exprs), tier
    assert "imagegen_worker_memory_fragmentation_ratio < 0.7" in exprs
    assert "increase(imagegen_dlq_records[10m]) > 0" in exprs
    assert any(e.startswith("imagegen_consumer_lag >") for e in exprs)


def test_the_scrape_config_loads_the_rules_and_sends_the_operator_key() -> None:
    config = yaml.safe_load(SCRAPE.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    [job] = config["scrape_configs"]
    assert job["authorization"]["credentials_file"].endswith("var/secrets/operator_api_key")
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    assert targets == {f"127.0.0.1:{port}" for port in (8000, 8101, 8102, 8103, 8104, 8105, 8106)}


NO_PROMTOOL = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (Debian package `prometheus`: apt-get install prometheus)",
)


def promtool(*args: str) -> None:
    out = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@NO_PROMTOOL
def test_promtool_accepts_the_rule_file() -> None:
    promtool("check", "rules", str(ALERTS))


@NO_PROMTOOL
def test_the_alerts_fire_on_the_series_they_watch_and_only_then() -> None:
    # deploy/prometheus/alerts_test.yml: turbo p95 over 15 s fires, fast under 60 s does not;
    # fragmentation 0.5 fires, 0.9 does not; a growing DLQ fires, a steady one does not; lag
    # 5000 fires, 3 does not
    promtool("test", "rules", str(ALERTS.parent / "alerts_test.yml"))
