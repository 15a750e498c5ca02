"""The Helm chart: CRD copies in sync with crds/, values documented and typed, and (e2e, with
the real ``helm`` and Argo CD's Lua interpreter) lint, rendering and the health check.

``helm`` and the Lua harness are built on first use with ``go install`` into the project cache
(like the cluster toolchain) and reused after; nothing is skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from diffusion_operator.devcluster import toolchain

# Pure tests are marked unit; the ones that run promtool/helm/gopher-lua are marked e2e.

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "diffusion-operator"
CRDS = REPO / "crds"
KUBE_VERSION = "1.31.0"  # helm built by `go install` defaults to an old one; the chart needs >=1.30
RULES = yaml.safe_load((CHART / "files" / "rbac-rules.yaml").read_text())
CLUSTER_SCOPED = {"customresourcedefinitions", "namespaces"}
LEASE_RULE = {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}


# --- CRD copies -------------------------------------------------------------------------------


@pytest.mark.unit
def test_chart_crds_are_byte_identical_copies_of_crds():
    sources = sorted(p.name for p in CRDS.glob("*.yaml"))
    copies = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert copies == sources, "run hack/sync-chart-crds.sh (copies missing or stale)"
    drifted = [n for n in sources if (CRDS / n).read_bytes() != (CHART / "crds" / n).read_bytes()]
    assert not drifted, f"chart CRD copies drifted from crds/: {drifted}; run hack/sync-chart-crds.sh"


@pytest.mark.unit
def test_sync_script_check_mode_agrees():
    res = subprocess.run([str(REPO / "hack" / "sync-chart-crds.sh"), "--check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.unit
def test_no_kopf_peering_left():
    """Leader election is a Lease now: no peering CRDs, rules, templates or values."""
    assert not list(CRDS.glob("kopf.dev*")) and not list((CHART / "crds").glob("kopf.dev*"))
    assert not (CHART / "templates" / "peering.yaml").exists()
    for path in [CHART / "values.yaml", CHART / "values.schema.json", CHART / "files" / "rbac-rules.yaml",
                 *sorted((CHART / "templates").iterdir())]:
        assert "peering" not in path.read_text().lower(), path


@pytest.mark.unit
def test_rbac_rules_grant_the_lease_and_nothing_more_for_it():
    lease_rules = [r for r in RULES["framework"] + RULES["application"] if "coordination.k8s.io" in r["apiGroups"]]
    assert lease_rules == [LEASE_RULE]  # no list/watch (standbys poll with get), no delete
    assert LEASE_RULE in RULES["framework"]


# --- Chart.yaml, values ----------------------------------------------------------------------


@pytest.mark.unit
def test_chart_metadata():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["kubeVersion"] == ">=1.30.0-0"
    assert chart["appVersion"] == "0.1.0"
    assert chart["name"] == "diffusion-operator"


def _value_lines():
    """(indent, key, line number, documented) for every key in values.yaml.

    A key is documented when a comment sits directly above it or above one of its parents
    (a block value such as ``resources`` is described once, at its top).
    """
    lines = (CHART / "values.yaml").read_text().splitlines()
    out = []
    stack: list[tuple[int, bool]] = []
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z][\w.-]*):(.*)$", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        documented = prev.strip().startswith("#") or any(d for _, d in stack)
        is_parent = m.group(3).strip() == "" and i + 1 < len(lines) and \
            len(lines[i + 1]) - len(lines[i + 1].lstrip()) > indent
        out.append((indent, m.group(2), i + 1, documented, is_parent))
        stack.append((indent, documented))
    return out


@pytest.mark.unit
def test_fault_injection_is_off_by_default_and_wired_to_the_setting():
    assert _values()["allowFaultInjection"] is False
    assert _schema()["properties"]["allowFaultInjection"] == {"type": "boolean"}
    template = (CHART / "templates" / "deployment.yaml").read_text()
    assert "{{- if .Values.allowFaultInjection }}" in template
    assert "DIFFUSION_OPERATOR_ALLOW_FAULT_INJECTION" in template


@pytest.mark.unit
def test_every_value_is_commented():
    undocumented = [f"line {n}: {k}" for _, k, n, doc, parent in _value_lines() if not doc and not parent]
    assert not undocumented, f"values.yaml keys without a comment: {undocumented}"


def _check(value, schema, path="$"):
    """The subset of JSON Schema the chart's schema uses (no jsonschema dependency)."""
    errors = []
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int}
    t = schema.get("type")
    if t and not isinstance(value, types[t]) or (t == "integer" and isinstance(value, bool)):
        return [f"{path}: expected {t}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: too short")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}.{key}: required")
        for key, v in value.items():
            if key in props:
                errors += _check(v, props[key], f"{path}.{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}.{key}: not in the schema")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += _check(v, schema["additionalProperties"], f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            errors += _check(v, schema["items"], f"{path}[{i}]")
    return errors


def _schema():
    return json.loads((CHART / "values.schema.json").read_text())


def _values():
    return yaml.safe_load((CHART / "values.yaml").read_text())


@pytest.mark.unit
def test_values_match_the_schema():
    assert _check(_values(), _schema()) == []


@pytest.mark.unit
def test_schema_and_values_name_the_same_keys():
    """Every schema property has a default in values.yaml and vice versa (objects the schema
    closes with additionalProperties: false)."""
    def walk(values, schema, path):
        missing = []
        if schema.get("type") != "object" or "properties" not in schema:
            return missing
        for key, sub in schema["properties"].items():
            if key not in values:
                missing.append(f"{path}.{key}")
            elif isinstance(values[key], dict):
                missing += walk(values[key], sub, f"{path}.{key}")
        return missing

    assert walk(_values(), _schema(), "$") == []


@pytest.mark.unit
@pytest.mark.parametrize(("patch", "bad"), [
    ({"watchNamespaces": ["Not_A_Namespace"]}, "watchNamespaces[0]"),
    ({"image": {"repository": "r", "pullPolicy": "Sometimes"}}, "pullPolicy"),
    ({"metrics": {"port": "9090"}}, "metrics.port"),
    ({"replicas": "2"}, "replicas"),
    ({"typo": 1}, "typo"),
    ({"allowFaultInjection": "yes"}, "allowFaultInjection"),
])
def test_schema_rejects_bad_values(patch, bad):
    values = {**_values(), **patch}
    errors = _check(values, _schema())
    assert any(bad in e for e in errors), errors


# --- the real helm ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def helm() -> Path:
    """helm, built once with ``go install`` into the project cache (about 5 minutes, 2 cores)."""
    return toolchain.ensure_helm(progress=lambda m: print(m, flush=True))


def _helm(helm, *args, check=True):
    res = subprocess.run([str(helm), *args], capture_output=True, text=True,
                         env={**os.environ, "HELM_CACHE_HOME": "/tmp/helm-cache",
                              "HELM_CONFIG_HOME": "/tmp/helm-config", "HELM_DATA_HOME": "/tmp/helm-data"})
    if check:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


def _render(helm, *sets, release="ops", namespace="diffusion-system"):
    args = ["template", release, str(CHART), "-n", namespace, f"--kube-version={KUBE_VERSION}"]
    for s in sets:
        args += ["--set", s]
    docs = [d for d in yaml.safe_load_all(_helm(helm, *args).stdout) if d]
    return docs


def _one(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


@pytest.mark.e2e
def test_helm_lint(helm):
    res = _helm(helm, "lint", str(CHART), f"--kube-version={KUBE_VERSION}", "--strict")
    assert "0 chart(s) failed" in res.stdout
    res = _helm(helm, "lint", str(CHART), f"--kube-version={KUBE_VERSION}", "--strict",
                "--set", "watchNamespaces={a,b}", "--set", "metrics.serviceMonitor.enabled=true")
    assert "0 chart(s) failed" in res.stdout


@pytest.mark.e2e
def test_helm_template_cluster_wide(helm):
    docs = _render(helm)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "ConfigMap", "ConfigMap", "Deployment",
                     "Role", "RoleBinding", "Service", "ServiceAccount"]  # the three dashboards
    role = _one(docs, "ClusterRole")
    # every rule but the Lease's, which goes into a Role in the release namespace
    assert role["rules"] == [r for r in RULES["framework"] + RULES["application"] if r != LEASE_RULE]
    binding = _one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    sa = _one(docs, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": "diffusion-system"}]
    _assert_leader_election_role(docs, sa["metadata"]["name"], "diffusion-system")

    dep = _one(docs, "Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [c] = pod["containers"]
    assert c["command"] == ["diffusion-operator"]
    assert c["args"][0] == "run" and not any("peering" in a for a in c["args"])
    assert "--metrics-port=9090" in c["args"] and "--liveness-port=8080" in c["args"]
    assert not any(a.startswith("--namespace") for a in c["args"])
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DIFFUSION_OPERATOR_BIND"] == "0.0.0.0"
    assert env["DIFFUSION_OPERATOR_SAMPLER_IMAGE"] == "ghcr.io/diffusion-serving/diffusion-sampler:0.1.0"
    assert env["DIFFUSION_OPERATOR_LEADER_ELECTION"] == "true"
    assert env["DIFFUSION_OPERATOR_LEASE_NAME"] == "ops-diffusion-operator"  # the release's full name
    downward = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"] if "valueFrom" in e}
    assert downward == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"healthz": 8080, "metrics": 9090}
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert c["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    assert c["image"] == "ghcr.io/diffusion-serving/diffusion-operator:0.1.0"

    svc = _one(docs, "Service")
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    assert svc["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()


@pytest.mark.e2e
def test_helm_template_namespaced(helm):
    docs = _render(helm, "watchNamespaces={team-a,team-b}", "metrics.serviceMonitor.enabled=true",
                   "prometheus.url=http://prometheus.monitoring:9090")
    roles = [d for d in docs if d["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["diffusion-system", "team-a", "team-b"]
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["diffusion-system", "team-a", "team-b"]
    watched = [r for r in roles if r["metadata"]["namespace"] != "diffusion-system"]
    assert sorted(r["metadata"]["namespace"] for r in watched) == ["team-a", "team-b"]
    for r in watched:
        resources = {res for rule in r["rules"] for res in rule["resources"]}
        assert not resources & CLUSTER_SCOPED
        assert "leases" not in resources
        assert {"inferencepools", "deployments", "events", "prometheusrules"} <= resources
    cluster_role = _one(docs, "ClusterRole")
    assert {res for rule in cluster_role["rules"] for res in rule["resources"]} == {
        "customresourcedefinitions", "namespaces"}
    lease_role = _assert_leader_election_role(docs, "ops-diffusion-operator", "diffusion-system")
    # every rule of the source file survives the split, resource by resource
    want = {(tuple(r["apiGroups"]), res, tuple(r["verbs"])) for r in RULES["framework"] + RULES["application"]
            for res in r["resources"]}
    got = {(tuple(r["apiGroups"]), res, tuple(r["verbs"]))
           for r in watched[0]["rules"] + cluster_role["rules"] + lease_role["rules"] for res in r["resources"]}
    assert got == want
    [c] = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "--namespace=team-a" in c["args"] and "--namespace=team-b" in c["args"]
    assert {"name": "DIFFUSION_OPERATOR_PROMETHEUS_URL", "value": "http://prometheus.monitoring:9090"} in c["env"]
    sm = _one(docs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    # the operator's pool `namespace` label must survive the scrape (the dashboards select on it)
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True


def _assert_leader_election_role(docs, sa_name, namespace):
    """The Lease rule, alone, in a Role bound to the operator in the release's namespace."""
    [role] = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"].endswith("-leader-election")]
    assert role["metadata"]["namespace"] == namespace
    assert role["rules"] == [LEASE_RULE]
    [binding] = [d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["name"] == role["metadata"]["name"]]
    assert binding["metadata"]["namespace"] == namespace
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa_name, "namespace": namespace}]
    return role


@pytest.mark.e2e
def test_helm_allow_fault_injection_sets_the_env_only_when_on(helm):
    [c] = _one(_render(helm), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "DIFFUSION_OPERATOR_ALLOW_FAULT_INJECTION" not in {e["name"] for e in c["env"]}
    assert not any("fault" in a for a in c["args"])
    [c] = _one(_render(helm, "allowFaultInjection=true"), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert {"name": "DIFFUSION_OPERATOR_ALLOW_FAULT_INJECTION", "value": "true"} in c["env"]


@pytest.mark.e2e
def test_helm_replicas_from_values(helm):
    dep = _one(_render(helm, "replicas=3"), "Deployment")
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    res = _helm(helm, "template", "x", str(CHART), f"--kube-version={KUBE_VERSION}", "--set", "replicas=0",
                check=False)
    assert res.returncode != 0 and "replicas" in res.stderr


@pytest.mark.e2e
def test_helm_lease_name_follows_the_release(helm):
    [c] = _one(_render(helm, release="diffusion-operator"), "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DIFFUSION_OPERATOR_LEASE_NAME"] == "diffusion-operator"  # `kubectl get lease diffusion-operator`


@pytest.mark.e2e
def test_helm_names_are_truncated_to_63(helm):
    docs = _render(helm, release="r" * 53)
    for d in docs:
        assert len(d["metadata"]["name"]) <= 63, d["metadata"]["name"]
        for v in (d["metadata"].get("labels") or {}).values():
            assert len(v) <= 63
    assert any(d["metadata"]["name"].endswith("-metrics") for d in docs)


@pytest.mark.e2e
def test_helm_refuses_values_outside_the_schema(helm):
    res = _helm(helm, "template", "x", str(CHART), f"--kube-version={KUBE_VERSION}",
                "--set", "watchNamespaces={Bad_Name}", check=False)
    assert res.returncode != 0 and "watchNamespaces" in res.stderr
    res = _helm(helm, "template", "x", str(CHART), "--kube-version=1.29.0", check=False)
    assert res.returncode != 0 and "kubeVersion" in res.stderr


# --- the Argo CD health check, run by gopher-lua (Argo CD's interpreter) ----------------------


@pytest.fixture(scope="session")
def luahealth() -> Path:
    base = toolchain.cache_root() / "luahealth"
    binary = base / "bin" / "luahealth"
    src = REPO / "hack" / "luahealth"
    stamp = base / "source.sha"
    digest = hashlib.sha256((src / "main.go").read_bytes() + (src / "go.mod").read_bytes()).hexdigest()
    if not binary.exists() or not stamp.exists() or stamp.read_text() != digest:
        with toolchain._lock("luahealth"):
            env = toolchain._go_env()
            env["GOBIN"] = str(base / "bin")
            toolchain._run(["go", "install", "."], cwd=src, env=env, what="building luahealth")
            stamp.write_text(digest)
    return binary


def _health(luahealth, obj):
    res = subprocess.run([str(luahealth), str(CHART / "files" / "argocd-health.lua")], input=json.dumps(obj),
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _pool(generation=1, **status):
    obj = {"apiVersion": "diffusion.serving.dev/v1alpha1", "kind": "InferencePool",
           "metadata": {"name": "sdxl", "namespace": "prod", "generation": generation}}
    if status:
        obj["status"] = {"observedGeneration": generation, **status}
    return obj


def _cond(ctype, status, reason="R", message=""):
    return {"type": ctype, "status": status, "reason": reason, "message": message}


@pytest.mark.e2e
@pytest.mark.parametrize(("obj", "health", "message"), [
    (_pool(), "Progressing", "Waiting for the operator"),
    ({**_pool(3, phase="Ready"), "status": {"observedGeneration": 2, "phase": "Ready"}}, "Progressing",
     "generation 3"),
    (_pool(phase="Ready", conditions=[_cond("Ready", "True", message="2/2 replicas ready")]), "Healthy",
     "2/2 replicas ready"),
    (_pool(phase="Ready"), "Healthy", "Ready"),
    (_pool(phase="Progressing", conditions=[_cond("Progressing", "True", message="canary at 25%")],
           rollout={"phase": "Progressing", "canaryWeight": 25}), "Progressing", "canary at 25%"),
    (_pool(phase="Pending"), "Progressing", "Phase Pending"),
    (_pool(phase="Paused", rollout={"phase": "Paused", "pausedBy": "user"}), "Suspended", "paused by user"),
    (_pool(phase="Progressing", rollout={"phase": "Paused", "pausedBy": "errorPolicy"}), "Suspended",
     "errorPolicy"),
    (_pool(phase="Degraded", conditions=[_cond("Degraded", "True", "InsufficientGPU", "needs 1 nvidia.com/gpu")]),
     "Degraded", "needs 1 nvidia.com/gpu"),
    (_pool(phase="Ready", conditions=[_cond("Ready", "False"), _cond("Stalled", "True", "Stuck", "stuck")]),
     "Degraded", "stuck"),
    (_pool(phase="Degraded"), "Degraded", "ready replicas"),
    (_pool(phase="RolledBack", rollout={"phase": "RolledBack", "canaryRevision": "bad1",
                                        "reason": "AvailabilityBurnRateExceeded", "message": "burn 30 >= 14.4"}),
     "Degraded", "bad1 rolled back: AvailabilityBurnRateExceeded burn 30 >= 14.4"),
    (_pool(phase="Ready", conditions=[_cond("Ready", "False", message="1/2 ready")]), "Progressing", "Phase Ready"),
])
def test_argocd_health_check(luahealth, obj, health, message):
    got = _health(luahealth, obj)
    assert got["status"] == health
    assert message in got["message"]


#: Verbs that let a holder grant itself more than it was given, or act as someone else.
ESCALATING_VERBS = {"*", "escalate", "bind", "impersonate"}


@pytest.mark.e2e
@pytest.mark.parametrize("sets", [(), ("watchNamespaces={team-a,team-b}",)], ids=["cluster-wide", "namespaced"])
def test_rendered_rbac_has_no_wildcards_and_reads_secrets_only_by_name(helm, sets):
    # What `helm install` would create, in both modes: no "*" anywhere, nothing that escalates,
    # no RBAC objects managed, and Secrets (model credentials) only read one by one, never listed
    # or watched (a list would hand the operator every Secret's value in the namespace).
    docs = _render(helm, *sets)
    rules = [(d["kind"], rule) for d in docs if d["kind"] in ("ClusterRole", "Role") for rule in d["rules"]]
    assert rules
    for kind, rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule.get(field, []), (kind, rule)
        assert not set(rule["verbs"]) & ESCALATING_VERBS, (kind, rule)
        assert "rbac.authorization.k8s.io" not in rule["apiGroups"], (kind, rule)
        assert not rule.get("nonResourceURLs"), (kind, rule)
        if "secrets" in rule["resources"]:
            assert rule["verbs"] == ["get"], (kind, rule)
