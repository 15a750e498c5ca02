"""Pure checks of the CRDs in crds/ and the manifests in examples/ (no cluster).

The API server is the final judge (tests/integration/test_crd_validation.py); these catch the
mistakes that are cheap to catch early: a non-structural schema, a field without a description,
an unbounded list or string (CEL cost limits), an example that drifted from the schema, or a
scheduler list that drifted from the sampler contract.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
EXAMPLES = REPO / "examples"
GROUP = "diffusion.serving.dev"
CRD_FILES = {
    "DiffusionModel": CRDS / f"diffusionmodels.{GROUP}.yaml",
    "InferencePool": CRDS / f"inferencepools.{GROUP}.yaml",
}

# Keys apiextensions.k8s.io/v1 JSONSchemaProps accepts (structural subset we use).
SCHEMA_KEYS = {
    "type", "description", "properties", "required", "items", "default", "enum", "format", "pattern",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minLength", "maxLength",
    "minItems", "maxItems", "minProperties", "maxProperties", "additionalProperties", "anyOf", "nullable",
    "x-kubernetes-validations", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "x-kubernetes-int-or-string", "x-kubernetes-map-type", "x-kubernetes-preserve-unknown-fields",
    "title", "example", "uniqueItems",
}
RULE_KEYS = {"rule", "message", "messageExpression", "fieldPath", "reason", "optionalOldSelf"}
TYPES = {"object", "array", "string", "integer", "number", "boolean"}


def load_crd(kind: str) -> dict:
    docs = [d for d in yaml.safe_load_all(CRD_FILES[kind].read_text()) if d]
    assert len(docs) == 1, f"{CRD_FILES[kind].name}: one CRD per file"
    return docs[0]


def schema_of(kind: str) -> dict:
    return load_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def walk(node: dict, path: str = ""):
    """Yield (path, node) for every schema node."""
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")
    for i, alt in enumerate(node.get("anyOf") or []):
        yield from walk(alt, f"{path}<anyOf{i}>")


def _is_anyof_branch(path: str) -> bool:
    return path.endswith(">")


# --------------------------------------------------------------------------- CRD shape


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_crd_metadata(kind):
    crd = load_crd(kind)
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    spec = crd["spec"]
    plural = spec["names"]["plural"]
    assert crd["metadata"]["name"] == f"{plural}.{GROUP}"
    assert CRD_FILES[kind].name == f"{plural}.{GROUP}.yaml"
    assert spec["group"] == GROUP and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == kind
    assert "diffusion" in spec["names"]["categories"]
    assert "infpool" not in spec["names"]["shortNames"], "infpool belongs to the Gateway API Inference Extension"
    versions = spec["versions"]
    assert [v["name"] for v in versions] == ["v1alpha1"]
    assert versions[0]["served"] and versions[0]["storage"]
    assert versions[0]["subresources"]["status"] == {}


def test_short_names_do_not_collide():
    names = [n for k in CRD_FILES for n in load_crd(k)["spec"]["names"]["shortNames"]]
    assert len(names) == len(set(names))
    assert set(load_crd("InferencePool")["spec"]["names"]["shortNames"]) >= {"dpool", "ipool"}
    assert set(load_crd("DiffusionModel")["spec"]["names"]["shortNames"]) >= {"dm"}


def test_inferencepool_scale_subresource():
    scale = load_crd("InferencePool")["spec"]["versions"][0]["subresources"]["scale"]
    assert scale == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    props = schema_of("InferencePool")["properties"]
    assert props["spec"]["properties"]["replicas"]["type"] == "integer"
    assert props["status"]["properties"]["replicas"]["type"] == "integer"
    assert props["status"]["properties"]["selector"]["type"] == "string"


def test_inferencepool_printer_columns():
    cols = {c["name"]: c for c in load_crd("InferencePool")["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert {"Model", "Phase", "Ready", "Stable", "Canary", "Weight", "Age"} <= set(cols)
    schema = schema_of("InferencePool")
    for col in cols.values():
        if col["jsonPath"].startswith(".metadata"):
            continue
        node = schema
        for part in col["jsonPath"].lstrip(".").split("."):
            assert part in node.get("properties", {}), f"column {col['name']}: {col['jsonPath']} not in schema"
            node = node["properties"][part]


# --------------------------------------------------------------------------- structural schema


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_schema_is_structural(kind):
    problems = []
    for path, node in walk(schema_of(kind)):
        unknown = set(node) - SCHEMA_KEYS
        if unknown:
            problems.append(f"{path}: unknown keys {sorted(unknown)}")
        if node.get("x-kubernetes-int-or-string"):
            continue
        if _is_anyof_branch(path):
            continue
        if node.get("type") not in TYPES:
            problems.append(f"{path}: missing or bad type {node.get('type')!r}")
        if "properties" in node and node.get("type") != "object":
            problems.append(f"{path}: properties on a non-object")
        if node.get("type") == "array" and not isinstance(node.get("items"), dict):
            problems.append(f"{path}: array without items schema")
        for r in node.get("x-kubernetes-validations", []):
            if set(r) - RULE_KEYS or "rule" not in r:
                problems.append(f"{path}: bad validation rule {r}")
            if "message" not in r and "messageExpression" not in r:
                problems.append(f"{path}: rule without a message: {r['rule']}")
        for req in node.get("required", []):
            if req not in node.get("properties", {}):
                problems.append(f"{path}: required {req} is not a property")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_no_preserve_unknown_fields(kind):
    # Status and spec are fully schema'd: Kopf's own bookkeeping goes to annotations.
    offenders = [p for p, n in walk(schema_of(kind)) if n.get("x-kubernetes-preserve-unknown-fields")]
    assert not offenders


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_every_property_has_a_description(kind):
    missing = [
        p for p, n in walk(schema_of(kind))
        if p and p != ".metadata" and not _is_anyof_branch(p) and not p.endswith("{}")
        and not (n.get("description") or "").strip()
    ]
    assert not missing, f"fields without a description: {missing}"


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_lists_and_strings_are_bounded(kind):
    """CEL cost estimation needs bounds; unbounded lists/strings get rules refused."""
    problems = []
    for path, node in walk(schema_of(kind)):
        if path in (".apiVersion", ".kind") or _is_anyof_branch(path):
            continue
        t = node.get("type")
        if t == "array" and "maxItems" not in node:
            problems.append(f"{path}: array without maxItems")
        if t == "string" and not ("maxLength" in node or "enum" in node or node.get("format") == "date-time"):
            problems.append(f"{path}: string without maxLength")
        if t == "object" and "additionalProperties" in node and "maxProperties" not in node:
            problems.append(f"{path}: map without maxProperties")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_defaults_satisfy_their_schema(kind):
    problems = []
    for path, node in walk(schema_of(kind)):
        if "default" in node:
            problems += validate(node["default"], node, path + "(default)")
    assert not problems, "\n".join(problems)


def test_scheduler_enum_matches_sampler_contract():
    contract = (REPO / "docs" / "sampler-contract.md").read_text()
    line = next(ln for ln in contract.splitlines() if "SAMPLER_DEFAULT_SCHEDULER" in ln)
    listed = re.findall(r"`([a-z0-9-]+)`", line.split("|")[2])
    enum = schema_of("DiffusionModel")["properties"]["spec"]["properties"]["defaults"]["properties"]["scheduler"]
    assert enum["enum"] == listed
    assert enum["default"] in listed


def test_fault_injection_is_bounded_optional_and_says_it_is_test_only():
    spec = schema_of("DiffusionModel")["properties"]["spec"]
    assert "faultInjection" not in spec.get("required", []) and "default" not in spec["properties"]["faultInjection"]
    fi = spec["properties"]["faultInjection"]
    for words in ("tests and demos only", "off by default", "--allow-fault-injection", "FaultInjectionNotAllowed"):
        assert words in fi["description"], words
    rate, latency = fi["properties"]["errorRate"], fi["properties"]["latencySeconds"]
    assert (rate["type"], rate["minimum"], rate["maximum"]) == ("number", 0, 1)
    assert (latency["type"], latency["minimum"], latency["maximum"]) == ("number", 0, 60)
    assert not any("default" in f for f in (rate, latency))
    assert [r["rule"] for r in fi["x-kubernetes-validations"]] == \
        ["has(self.errorRate) || has(self.latencySeconds) || has(self.image)"]
    assert fi["properties"]["image"]["enum"] == ["nan", "noise"] and "default" not in fi["properties"]["image"]
    schema = schema_of("DiffusionModel")
    doc = {"apiVersion": f"{GROUP}/v1alpha1", "kind": "DiffusionModel", "metadata": {"name": "m"},
           "spec": {"source": {"uri": "pvc://models/sd"}}}
    for ok in ({"errorRate": 0}, {"errorRate": 1}, {"errorRate": 0.3, "latencySeconds": 60}, {"latencySeconds": 0.5}):
        assert validate({**doc, "spec": {**doc["spec"], "faultInjection": ok}}, schema, "") == [], ok
    for bad, field in (({"errorRate": 1.5}, "spec.faultInjection.errorRate"),
                       ({"errorRate": -0.1}, "spec.faultInjection.errorRate"),
                       ({"latencySeconds": -1}, "spec.faultInjection.latencySeconds"),
                       ({"latencySeconds": 61}, "spec.faultInjection.latencySeconds"),
                       ({"errorRate": "half"}, "spec.faultInjection.errorRate"),
                       ({"rate": 0.5}, "unknown field rate")):
        errs = "\n".join(validate({**doc, "spec": {**doc["spec"], "faultInjection": bad}}, schema, ""))
        assert field in errs, (bad, errs)


def test_burn_rate_defaults_are_the_workbooks():
    analysis = schema_of("InferencePool")["properties"]["spec"]["properties"]["rollout"]["properties"]["analysis"]
    pairs = analysis["properties"]["windows"]["default"]
    assert [(p["factor"], p["longWindowSeconds"], p["shortWindowSeconds"]) for p in pairs] == [
        (14.4, 3600, 300), (6, 21600, 1800), (1, 259200, 21600),
    ]


# --------------------------------------------------------------------------- a small validator


def validate(value, node: dict, path: str) -> list[str]:
    """Validate ``value`` against the OpenAPI subset the CRDs use (not CEL)."""
    errs: list[str] = []
    if node.get("x-kubernetes-int-or-string"):
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            return [f"{path}: want int or string, got {value!r}"]
        if isinstance(value, str) and "pattern" in node and not re.search(node["pattern"], value):
            errs.append(f"{path}: {value!r} does not match {node['pattern']}")
        return errs
    t = node.get("type")
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
    }
    if t in checks and not checks[t](value):
        return [f"{path}: want {t}, got {value!r}"]
    if "enum" in node and value not in node["enum"]:
        errs.append(f"{path}: {value!r} not in {node['enum']}")
    if t in ("integer", "number"):
        lo = node.get("minimum")
        if lo is not None and (value <= lo if node.get("exclusiveMinimum") else value < lo):
            errs.append(f"{path}: {value} below minimum {node['minimum']}")
        hi = node.get("maximum")
        if hi is not None and (value >= hi if node.get("exclusiveMaximum") else value > hi):
            errs.append(f"{path}: {value} above maximum {node['maximum']}")
        if "multipleOf" in node and value % node["multipleOf"]:
            errs.append(f"{path}: {value} not a multiple of {node['multipleOf']}")
    if t == "string":
        if "maxLength" in node and len(value) > node["maxLength"]:
            errs.append(f"{path}: longer than {node['maxLength']}")
        if "minLength" in node and len(value) < node["minLength"]:
            errs.append(f"{path}: shorter than {node['minLength']}")
        if "pattern" in node and not re.search(node["pattern"], value):
            errs.append(f"{path}: {value!r} does not match {node['pattern']}")
    if t == "array":
        if "maxItems" in node and len(value) > node["maxItems"]:
            errs.append(f"{path}: more than {node['maxItems']} items")
        if "minItems" in node and len(value) < node["minItems"]:
            errs.append(f"{path}: fewer than {node['minItems']} items")
        for i, item in enumerate(value):
            errs += validate(item, node["items"], f"{path}[{i}]")
    if t == "object":
        props = node.get("properties")
        for req in node.get("required", []):
            if req not in value:
                errs.append(f"{path}: missing required {req}")
        if props is not None:
            for key, item in value.items():
                if key not in props:
                    errs.append(f"{path}: unknown field {key}")
                else:
                    errs += validate(item, props[key], f"{path}.{key}")
        elif isinstance(node.get("additionalProperties"), dict):
            if "maxProperties" in node and len(value) > node["maxProperties"]:
                errs.append(f"{path}: more than {node['maxProperties']} entries")
            for key, item in value.items():
                errs += validate(item, node["additionalProperties"], f"{path}.{key}")
    return errs


def test_validator_catches_mistakes():
    schema = schema_of("InferencePool")
    bad = {"apiVersion": f"{GROUP}/v1alpha1", "kind": "InferencePool", "metadata": {"name": "x"},
           "spec": {"modelRef": {"name": "m"}, "replicas": -1, "batching": {"maxBatchSize": 0},
                    "rollout": {"steps": [{"weight": 101}]}, "slo": {"availability": {"objective": 1}},
                    "bogus": True}}
    errs = "\n".join(validate(bad, schema, ""))
    for needle in ("spec.replicas", "spec.batching.maxBatchSize", "spec.rollout.steps[0].weight",
                   "spec.slo.availability.objective", "unknown field bogus"):
        assert needle in errs


# --------------------------------------------------------------------------- examples


def example_docs() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def test_minimal_and_full_examples_exist():
    names = {p.name for p in EXAMPLES.glob("*.yaml")}
    assert {"diffusionmodel-minimal.yaml", "diffusionmodel-full.yaml",
            "inferencepool-minimal.yaml", "inferencepool-full.yaml"} <= names


def test_examples_are_valid_against_the_schemas():
    kinds = {"DiffusionModel": schema_of("DiffusionModel"), "InferencePool": schema_of("InferencePool")}
    seen = set()
    problems = []
    for name, doc in example_docs():
        kind = doc.get("kind")
        if kind in kinds:
            assert doc["apiVersion"] == f"{GROUP}/v1alpha1", name
            seen.add(kind)
            problems += validate(doc, kinds[kind], f"{name}:{doc['metadata']['name']}")
        else:
            assert (doc.get("apiVersion"), kind) == ("v1", "Secret"), f"{name}: unexpected {kind}"
    assert seen == set(kinds)
    assert not problems, "\n".join(problems)


def test_examples_secret_references_resolve():
    """Every Secret a full example references ships in examples/ too."""
    secrets = {doc["metadata"]["name"] for _, doc in example_docs() if doc.get("kind") == "Secret"}
    wanted = set()
    for name, doc in example_docs():
        spec = doc.get("spec") or {}
        if doc.get("kind") == "DiffusionModel":
            src = spec["source"]
            for ref in ("tokenSecretRef", "credentialsSecretRef"):
                if ref in src:
                    wanted.add((name, src[ref]["name"]))
        if doc.get("kind") == "InferencePool":
            if "authSecretRef" in spec.get("prometheus", {}):
                wanted.add((name, spec["prometheus"]["authSecretRef"]["name"]))
            for ref in spec.get("imagePullSecrets", []):
                wanted.add((name, ref["name"]))
    missing = [w for w in wanted if w[1] not in secrets]
    assert not missing


def test_example_pools_reference_example_models():
    models = {doc["metadata"]["name"] for _, doc in example_docs() if doc.get("kind") == "DiffusionModel"}
    for name, doc in example_docs():
        if doc.get("kind") == "InferencePool":
            assert doc["spec"]["modelRef"]["name"] in models, name


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_every_spec_field_is_documented(kind):
    """docs/api.md names every spec field."""
    words = set(re.findall(r"[A-Za-z0-9]+", (REPO / "docs" / "api.md").read_text()))
    missing = []
    for path, _ in walk(schema_of(kind)["properties"]["spec"], ".spec"):
        if path.endswith((">", "]", "}")):
            continue
        leaf = path.rsplit(".", 1)[-1]
        if leaf not in words:
            missing.append(path)
    assert not missing, f"spec fields not mentioned in docs/api.md: {missing}"
