"""deploy/prometheus: the alert rules parse, fire where they should, and are the same everywhere."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from deploy import generate
from deploy.local.render import prometheus_yml
from deploy.local.spec import load_stack
from tests.deploy.tools import DEPLOY, need, run

ALERTS = DEPLOY / "prometheus" / "alerts.yml"
RUNBOOK = DEPLOY / "RUNBOOK.md"
REQUIRED_ALERTS = {
    "RouterHighErrorRate",
    "RouterTTFTHigh",
    "WorkerQueueBacklog",
    "NoHealthyWorker",
    "WorkerFlapping",
    "RegistryStale",
    "AdmissionQueueRejecting",
    "WorkerBreakerOpen",
    "RegistryInvalidRecords",
    "UsageNotSettled",
}


def test_promtool_check_rules() -> None:
    out = run([need("promtool"), "check", "rules", str(ALERTS)])
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_fire_every_alert() -> None:
    tests = DEPLOY / "prometheus" / "alerts_test.yml"
    out = run([need("promtool"), "test", "rules", tests.name], cwd=tests.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    tested = set(re.findall(r"alertname: (\w+)", tests.read_text()))
    alerts = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    assert alerts >= REQUIRED_ALERTS
    assert tested == alerts, "every alert has a unit test"


def test_every_alert_has_severity_and_text() -> None:
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def anchor(heading: str) -> str:
    """The fragment GitHub (and most Markdown renderers) give a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_links_its_own_runbook_section() -> None:
    """runbook_url: deploy/RUNBOOK.md#<anchor>, the anchor a heading of the runbook, and each
    section says what the alert means, how to check and what to do."""
    text = RUNBOOK.read_text()
    sections = dict(
        (anchor(m.group(1)), m.group(2))
        for m in re.finditer(r"^## ([^\n]+)\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    )
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            url = rule["annotations"].get("runbook_url", "")
            page, _, fragment = url.partition("#")
            assert page == "deploy/RUNBOOK.md", rule["alert"]
            assert (DEPLOY.parent / page).is_file()
            assert fragment == anchor(rule["alert"]), rule["alert"]
            assert fragment in sections, f"{rule['alert']}: no section #{fragment}"
            for part in ("**Means.**", "**Check.**", "**Do.**"):
                assert part in sections[fragment], f"{rule['alert']}: {part} missing"


def test_generated_files_are_current() -> None:
    """The dashboard JSON and the PrometheusRule are written by `python3 -m deploy.generate`."""
    for path, text in generate.outputs().items():
        assert path.read_text() == text, f"{path} is out of date: run python3 -m deploy.generate"


def test_local_prometheus_config_checks(tmp_path: Path) -> None:
    spec = load_stack(DEPLOY / "local" / "stack.toml")
    config = tmp_path / "prometheus.yml"
    config.write_text(prometheus_yml(spec))
    out = run([need("promtool"), "check", "config", str(config)])
    assert out.returncode == 0, out.stdout + out.stderr
    scrape = yaml.safe_load(config.read_text())["scrape_configs"]
    jobs = {job["job_name"]: job for job in scrape}
    # Routers and workers are scraped on their metrics ports, the only ones serving /metrics.
    routers = jobs["router"]["static_configs"]
    metrics = spec.router_metrics_ports()
    assert [t["targets"] for t in routers] == [[f"127.0.0.1:{p}"] for p in metrics]
    assert not set(metrics) & set(spec.router_ports())
    workers = jobs["worker"]["static_configs"]
    assert len(workers) == spec.total_workers()
    assert all(set(t["labels"]) == {"worker", "model"} for t in workers)
    worker_metrics = [p for m in spec.models for p in m.worker_metrics_ports()]
    assert [t["targets"] for t in workers] == [[f"127.0.0.1:{p}"] for p in worker_metrics]


def test_compose_prometheus_config_checks(tmp_path: Path) -> None:
    """The compose config, with its rule file path pointed at the repository's copy."""
    text = (DEPLOY / "docker" / "prometheus.yml").read_text()
    text = text.replace("/etc/prometheus/alerts.yml", str(ALERTS))
    config = tmp_path / "prometheus.yml"
    config.write_text(text)
    out = run([need("promtool"), "check", "config", str(config)])
    assert out.returncode == 0, out.stdout + out.stderr
    jobs = {job["job_name"]: job for job in yaml.safe_load(text)["scrape_configs"]}
    ports = {
        name: job["dns_sd_configs"][0]["port"]
        for name, job in jobs.items()
        if "dns_sd_configs" in job
    }
    assert ports == {"router": 9180, "worker": 9181}  # the metrics ports, not 8080 and 9001
