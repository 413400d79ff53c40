"""deploy/prometheus against real processes: promtool checks the config and the alert rules
(and runs their unit tests), then a real Prometheus, started by deploy/local-prometheus.sh,
scrapes a real `lethe serve` and fires LetheServedInvalidityAboveGate while a version that
serves far above its gate is active, and stops firing once it is rolled back.

The Prometheus binaries come from Debian's `prometheus` package (.ci/run installs it). When
they are missing the tests fail: they never skip."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from serving import LetheServer, free_port
from unlearning.registry import Registry
from unlearning.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "lethe-dashboard.json"
ALERT = "LetheServedInvalidityAboveGate"

# Every digit is in the redaction set, so every served image is invalid (served invalidity
# 1.0), while the gate allows 1 %: the version breaks its promise whatever it generates.
FORGET_EVERY_DIGIT = {
    "name": "forget-every-digit",
    "sets": [{"kind": "validity", "rule": {"type": "classifier_label", "classifier": "digits",
                                           "labels": list(range(10))}}],
    "gates": {"max_invalidity": 0.01, "eval_samples": 1000, "attack_starts": 0},
}


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed: install Debian's prometheus package "
                    f"(apt-get install -y --no-install-recommends prometheus), as .ci/run does")
    return path


def promtool(*args: str, cwd: Path = DEPLOY / "prometheus") -> str:
    done = subprocess.run([binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def test_promtool_accepts_the_configs_and_the_rules(tmp_path):
    out = promtool("check", "rules", str(RULES))
    assert "SUCCESS: 4 rules found" in out, out
    out = promtool("check", "config", "prometheus.yml")  # rule_files resolve next to it
    assert "SUCCESS" in out and "alerts.yml" in out, out
    promtool("test", "rules", "alerts.test.yml")  # each alert on synthetic series

    # the cluster's config: Debian's build has no Kubernetes discovery, so check everything
    # else (relabelling included) with a static target in its place
    cluster = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-kubernetes.yml").read_text())
    assert [job["job_name"] for job in cluster["scrape_configs"]] == ["lethe", "lethe-job-worker"]
    for job in cluster["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs")[0]["role"] == "pod"
        job["static_configs"] = [{"targets": ["10.0.0.1:3000"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cluster))
    shutil.copyfile(RULES, tmp_path / "alerts.yml")
    promtool("check", "config", "prometheus.yml", cwd=tmp_path)


def dashboard_queries() -> list[str]:
    """Every PromQL query of the Grafana dashboard, Grafana's interval variables filled in."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    return [re.sub(r"\$__(rate_interval|interval|range)", "1m", q) for q in queries]


def test_grafana_dashboard_is_provisionable():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "lethe" and dashboard["schemaVersion"] >= 39
    assert [v["name"] for v in dashboard["templating"]["list"] if v["type"] == "datasource"] == ["datasource"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"]), p["title"]
    titles = " ".join(p["title"] for p in panels).lower()
    for topic in ("served invalidity", "gate", "requests", "latency", "generated images", "jobs", "swaps"):
        assert topic in titles, topic
    provider = (DEPLOY / "grafana" / "provisioning" / "dashboards" / "lethe.yml").read_text()
    assert "/etc/grafana/dashboards" in provider and "/etc/grafana/dashboards/lethe-dashboard.json" in (
        DEPLOY / "docker-compose.yml").read_text()


def test_deploy_manifests_hold_what_the_alerts_and_probes_rely_on():
    """The Kubernetes manifests (plain YAML; `kubectl kustomize deploy/kubernetes` renders
    them) and docker-compose.yml: the names, probes and paths the rest of deploy/ uses."""
    kube = DEPLOY / "kubernetes"
    listed = yaml.safe_load((kube / "kustomization.yaml").read_text())["resources"]
    docs = [d for name in listed for d in yaml.safe_load_all((kube / name).read_text()) if d]
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    serving = by_kind[("Deployment", "lethe-serving")]["spec"]
    worker = by_kind[("Deployment", "lethe-job-worker")]["spec"]
    assert serving["replicas"] == 3 and worker["replicas"] == 1
    (lethe,) = serving["template"]["spec"]["containers"]
    assert lethe["command"][:3] == ["lethe", "serve", "--no-job-worker"]
    assert lethe["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert lethe["livenessProbe"]["httpGet"]["path"] == "/livez"
    env = {e["name"]: e for e in lethe["env"]}
    assert env["LETHE_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "lethe-admin"
    containers = {c["name"]: c for c in worker["template"]["spec"]["containers"]}
    assert containers["job-worker"]["command"] == ["lethe", "worker"]
    assert containers["job-worker"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    for pod in (serving, worker):
        spec = pod["template"]["spec"]
        assert pod["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        # nothing shared on disk, nothing pinned: state is in PostgreSQL and the bucket
        assert "affinity" not in spec and not [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
        for container in [c for c in spec["containers"] if c["name"] != "metrics"] + spec.get("initContainers", []):
            sources = {next(iter(s.values()))["name"] for s in container["envFrom"]}
            assert sources == {"lethe-config", "lethe-storage"}, container["name"]
    assert serving["template"]["spec"]["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    config = by_kind[("ConfigMap", "lethe-config")]["data"]
    assert config["LETHE_REGISTRY_URL"].startswith("s3://")
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert set(compose["services"]) == {"lethe", "lethe-2", "postgres", "s3", "s3-bucket", "prometheus", "grafana"}
    for name in ("lethe", "lethe-2"):
        service = compose["services"][name]
        assert service["environment"]["LETHE_DATABASE_URL"].startswith("postgresql://")
        assert service["environment"]["LETHE_REGISTRY_URL"].startswith("s3://")
    assert compose["services"]["lethe"]["volumes"] != compose["services"]["lethe-2"]["volumes"]


class Prometheus:
    """deploy/local-prometheus.sh scraping ``target`` every second, on a free loopback port."""

    def __init__(self, target: str, root: Path):
        binary("prometheus")
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = root / "prometheus.log"
        self._log = open(self.log_path, "ab")
        env = dict(os.environ, PROMETHEUS_LISTEN=self.url.removeprefix("http://"), PROMETHEUS_INTERVAL="1s",
                   PROMETHEUS_DATA=str(root / "tsdb"), TMPDIR=str(root))
        self.process = subprocess.Popen([str(DEPLOY / "local-prometheus.sh"), target], env=env,
                                        stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.http = httpx.Client(base_url=self.url, timeout=10)
        self.wait(lambda: self._ready(), 60, "Prometheus did not become ready")

    def _ready(self) -> bool:
        assert self.process.poll() is None, f"prometheus exited ({self.process.returncode}):\n{self.log()}"
        try:
            return self.http.get("/-/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def query(self, promql: str) -> list[dict]:
        reply = self.http.get("/api/v1/query", params={"query": promql})
        assert reply.status_code == 200, reply.text
        return reply.json()["data"]["result"]

    def alerts(self, name: str) -> list[dict]:
        reply = self.http.get("/api/v1/alerts")
        assert reply.status_code == 200, reply.text
        return [a for a in reply.json()["data"]["alerts"] if a["labels"]["alertname"] == name]

    def wait(self, condition, timeout: float, what: str, tick=None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if tick is not None:
                tick()
            result = condition()
            if result:
                return result
            time.sleep(0.5)
        what = what() if callable(what) else what
        raise AssertionError(f"{what} within {timeout:.0f} s\nprometheus log:\n{self.log()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.http.close()
        self._log.close()


def register_gate_breaker(home: Path) -> tuple[str, str]:
    """A promoted version of ``digits`` whose gate passed (on paper) but which serves far
    above it: the base's generator under FORGET_EVERY_DIGIT with max_invalidity 0.01. The
    failure the alert exists for: what is served breaks what the gate promised."""
    registry = Registry(home)
    base = registry.active("digits")
    parent = registry.get(base)

    def write_files(folder: Path) -> None:
        for name in parent.files:
            shutil.copyfile(registry.file_path(base, name), folder / name)

    spec = load_spec(FORGET_EVERY_DIGIT).model_dump(mode="json")
    manifest = registry.create_version(
        "digits", write_files, parent=base, spec=spec, status="promoted",
        metrics={"after": {"invalidity": 0.004}}, dataset=parent.dataset, classifier=parent.classifier,
    )
    return base, manifest.version


def test_served_invalidity_alert_fires_on_a_real_prometheus_and_clears_on_rollback(quick_copy, tmp_path):
    started = time.monotonic()
    binary("prometheus")
    base, breaker = register_gate_breaker(quick_copy)
    server = LetheServer(quick_copy, tmp_path / "bentoml", workers=1, env={"LETHE_MONITOR_SHARE": "1.0"}).start()
    prometheus = None
    try:
        prometheus = Prometheus(f"127.0.0.1:{server.port}", tmp_path)

        def failing(what: str):
            return lambda: f"{what}\nlethe serve log:\n{server.log()}"

        prometheus.wait(lambda: prometheus.query(f'lethe_model_gate_max_invalidity{{model_version="{breaker}"}}'),
                        30, "Prometheus never scraped the breaker's gate limit")
        limit = prometheus.query(f'lethe_model_gate_max_invalidity{{model_version="{breaker}"}}')
        assert [float(s["value"][1]) for s in limit] == [0.01]
        assert prometheus.query('up{job="lethe"}')[0]["value"][1] == "1"

        # the base serves: the spec judges it too (every image invalid), but the base has
        # no gate of its own, so nothing fires
        for _ in range(4):
            assert server.generate(n=256).status_code == 200
        prometheus.wait(lambda: prometheus.query(f'lethe_served_invalidity_ratio{{model_version="{base}"}} == 1'),
                        60, failing("the base's served invalidity never reached Prometheus"))
        assert prometheus.alerts(ALERT) == []

        assert server.activate(breaker).status_code == 200
        server.wait_serving(breaker, timeout=10)
        activated = time.monotonic()

        def traffic() -> None:
            assert server.generate(n=256).status_code == 200

        firing = prometheus.wait(
            lambda: [a for a in prometheus.alerts(ALERT) if a["state"] == "firing"],
            90, failing(f"{ALERT} never fired while {breaker} served above its gate"), tick=traffic)
        fired_after = time.monotonic() - activated
        assert [(a["labels"]["model_version"], a["labels"]["spec"], a["labels"]["severity"]) for a in firing] \
            == [(breaker, "forget-every-digit", "critical")], firing
        assert float(firing[0]["value"]) == 1.0
        assert "allowed 1%" in firing[0]["annotations"]["description"], firing[0]["annotations"]

        # every dashboard query is valid PromQL on this Prometheus, and names metrics that exist
        # (lethe_model_fid and lethe_redaction_jobs_total appear once a job has ended)
        names = set(prometheus.http.get("/api/v1/label/__name__/values").json()["data"])
        for query in dashboard_queries():
            reply = prometheus.http.get("/api/v1/query", params={"query": query})
            assert reply.status_code == 200 and reply.json()["status"] == "success", (query, reply.text)
            for name in set(re.findall(r"\b(?:lethe|bentoml)_[a-z_]+", query)):
                assert name in names or name in {"lethe_model_fid", "lethe_redaction_jobs_total"}, (name, query)
        assert prometheus.query("sum(rate(bentoml_service_request_total[1m]))")

        # roll back: the breaker's last window is still exported, but it is no longer active
        assert server.activate(base).status_code == 200
        server.wait_serving(base, timeout=10)
        rolled_back = time.monotonic()
        prometheus.wait(lambda: prometheus.alerts(ALERT) == [], 30,
                        failing(f"{ALERT} still active after rolling back to {base}"), tick=traffic)
        assert prometheus.query(f'lethe_served_invalidity_ratio{{model_version="{breaker}"}} == 1')
        assert prometheus.query(f'lethe_active_model_info{{model_version="{breaker}"}}')[0]["value"][1] == "0"
        print(f"\n{ALERT} fired {fired_after:.1f} s after {breaker} went live, cleared "
              f"{time.monotonic() - rolled_back:.1f} s after the rollback; {time.monotonic() - started:.0f} s in all")
    finally:
        if prometheus is not None:
            prometheus.stop()
        server.stop()
