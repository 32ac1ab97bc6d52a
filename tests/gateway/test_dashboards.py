"""dashboards/: the Grafana dashboard and the Prometheus alert rules name only metrics a live
gateway exports, and the rules pass `promtool check rules` and `promtool test rules` (promtool is
Debian's `prometheus` package: skipped without it on a workstation, a failure in CI)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from .test_feed_server import http_get
from .test_status_cases import closed_port_url, settled, site

DASHBOARDS = Path(__file__).parents[2] / "dashboards"
NAME = re.compile(r"\b((?:gateway|process)_[a-z0-9_]+)\b")


def named_metrics() -> dict[str, set[str]]:
    dashboard = json.loads((DASHBOARDS / "grafana-gateway.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if "query" in v
              and isinstance(v["query"], str)]
    rules = (DASHBOARDS / "prometheus-rules.yml").read_text()
    rule_exprs = re.findall(r"^\s+expr: (.+)$", rules, re.M)
    strip = re.compile(r'"[^"]*"')
    return {"dashboard": {n for e in exprs for n in NAME.findall(strip.sub("", e))},
            "rules": {n for e in rule_exprs for n in NAME.findall(strip.sub("", e))}}


def test_the_files_name_metrics():
    named = named_metrics()
    assert len(named["dashboard"]) >= 15 and len(named["rules"]) >= 8


async def test_every_metric_named_in_dashboard_and_rules_is_in_a_live_metrics(tmp_path: Path):
    with trio.fail_after(30):
        async with site(tmp_path) as s:
            gw = await s.gateway(s.config(await closed_port_url()), trio.CancelScope())
            await settled(gw)
            _, _, body = await http_get(gw.monitor_port, "/metrics")
    exported = {line.split("{")[0].split(" ")[0] for line in body.decode().splitlines()
                if line and not line.startswith("#")}
    for where, names in named_metrics().items():
        missing = sorted(n for n in names if n not in exported)
        assert missing == [], f"{where} names metrics /metrics does not export: {missing}"


def test_promtool_checks_and_tests_the_rules():
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true and promtool is missing (apt-get install prometheus)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    for args in (["check", "rules", "prometheus-rules.yml"],
                 ["test", "rules", "prometheus-rules.test.yml"]):
        result = subprocess.run([promtool, *args], cwd=DASHBOARDS, capture_output=True,
                                text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
