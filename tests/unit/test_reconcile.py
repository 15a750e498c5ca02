"""The reconcilers against an in-memory KubeAPI: what a pass makes, and every error's path.

Fast and exhaustive where the real-cluster tests (tests/integration) are slow and few: each
error a pass can meet ends as a condition naming the cause, one Warning Event, the status of
the last good pass kept, and the Kopf retry that cause calls for.
"""

from __future__ import annotations

import datetime as dt

import kopf
import pytest

from diffusion_operator.conditions import PoolPhase, Reason
from diffusion_operator.errors import ApiUnavailable, DependencyMissing, SpecError
from diffusion_operator.handlers.outcome import conclude, kopf_error, merge_patch
from diffusion_operator.models import reconcile_model
from diffusion_operator.pools import ReconcileOptions, reconcile_pool
from tests.unit.fakekube import FakeKube

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)
OPTIONS = ReconcileOptions(sampler_image="sampler:test", allow_file_sources=True)
API = "diffusion.serving.dev/v1alpha1"


def model(steps: int = 4, uri: str = "file:///models/tiny") -> dict:
    return {"apiVersion": API, "kind": "DiffusionModel", "metadata": {"name": "tiny", "namespace": "ns"},
            "spec": {"source": {"uri": uri}, "precision": "fp32", "defaults": {"steps": steps}}}


def pool(**spec) -> dict:
    return {"apiVersion": API, "kind": "InferencePool", "metadata": {"name": "tiny", "namespace": "ns"},
            "spec": {"modelRef": {"name": "tiny"}, "replicas": 2, **spec}}


def cond(status: dict, type_: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == type_)


def run(kube: FakeKube, options: ReconcileOptions = OPTIONS, now: dt.datetime = NOW):
    """One pass as the handler does it: reconcile, then write the status back."""
    body = kube.obj("InferencePool", "tiny")
    result = reconcile_pool(kube, body, now=now, options=options)
    patch = merge_patch(body.get("status") or {}, result.status)
    if patch:
        kube.patch_status(API, "InferencePool", "tiny", "ns", patch)
    return result


@pytest.fixture
def kube() -> FakeKube:
    k = FakeKube()
    k.add(model())
    k.add(pool())
    return k


def test_first_pass_makes_the_workload_and_reports_progressing(kube):
    result = run(kube)
    assert result.error is None
    [dep] = kube.of_kind("Deployment")
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "sampler:test"
    assert {o["metadata"]["name"] for o in kube.of_kind("Service")} == {"tiny", dep["metadata"]["name"]}
    for kind in ("ControllerRevision", "PodDisruptionBudget", "NetworkPolicy", "PodMonitor", "PrometheusRule"):
        assert kube.of_kind(kind), kind
    st = result.status
    assert st["phase"] == PoolPhase.PROGRESSING
    assert cond(st, "Ready")["status"] == "False" and cond(st, "Ready")["reason"] == Reason.REPLICAS_NOT_READY
    assert cond(st, "Valid")["status"] == "True" and cond(st, "ReferencesResolved")["status"] == "True"


def test_ready_when_the_deployment_controller_says_so_and_then_quiet(kube):
    run(kube)
    kube.set_deployment_ready(kube.of_kind("Deployment")[0]["metadata"]["name"])
    st = run(kube).status
    assert st["phase"] == PoolPhase.READY and st["readyReplicas"] == 2
    assert cond(st, "Ready") == {**cond(st, "Ready"), "status": "True", "reason": "Ready"}
    # Nothing changed: the next pass computes the same status and writes nothing.
    before = kube.obj("InferencePool", "tiny")["metadata"]["resourceVersion"]
    again = run(kube)
    assert merge_patch(kube.obj("InferencePool", "tiny")["status"], again.status) == {}
    assert again.events == []
    assert kube.obj("InferencePool", "tiny")["metadata"]["resourceVersion"] == before


def test_missing_model_is_pending_with_a_reason_and_retried_soon():
    kube = FakeKube()
    kube.add(pool())
    result = run(kube)
    assert isinstance(result.error, DependencyMissing) and result.error.delay == 15
    st = result.status
    assert st["phase"] == PoolPhase.PENDING
    assert cond(st, "Ready")["reason"] == Reason.MODEL_NOT_FOUND
    assert "DiffusionModel ns/tiny" in cond(st, "Ready")["message"]
    assert result.events == [("Warning", "ModelNotFound", cond(st, "Ready")["message"])]
    # the same cause again: no second Event
    assert run(kube).events == []
    err = kopf_error(result.error)
    assert isinstance(err, kopf.TemporaryError) and err.delay == 15


def test_a_child_the_api_server_rejects_is_a_spec_error_with_its_message(kube):
    kube.reject["Deployment"] = 'metadata.labels: Invalid value: "not ok!": a valid label must be ...'
    result = run(kube)
    assert isinstance(result.error, SpecError) and result.error.reason == Reason.CHILD_REJECTED
    st = result.status
    for type_ in ("Ready", "Valid"):
        c = cond(st, type_)
        assert c["status"] == "False" and c["reason"] == "ChildRejected"
        assert "Deployment tiny-" in c["message"] and "Invalid value" in c["message"]
    assert result.events[0][:2] == ("Warning", "ChildRejected")
    # not retried on a timer: Kopf waits for the spec to change
    assert isinstance(kopf_error(result.error), kopf.PermanentError)


def test_api_unavailable_keeps_what_the_pool_served_and_retries(kube):
    run(kube)
    kube.set_deployment_ready(kube.of_kind("Deployment")[0]["metadata"]["name"])
    run(kube)
    body = kube.obj("InferencePool", "tiny")
    kube.unavailable = True
    result = reconcile_pool(kube, body, now=NOW, options=OPTIONS)
    assert isinstance(result.error, ApiUnavailable)
    st = result.status
    assert st["readyReplicas"] == 2 and st["rollout"] == body["status"]["rollout"]
    assert st["phase"] == PoolPhase.READY  # it still serves; only this pass failed
    assert cond(st, "Ready")["status"] == "False" and cond(st, "Ready")["reason"] == "ApiUnavailable"
    assert isinstance(kopf_error(result.error), kopf.TemporaryError)


def test_file_sources_refused_unless_allowed(kube):
    result = run(kube, options=ReconcileOptions(allow_file_sources=False))
    assert result.error.reason == Reason.FILE_SOURCE_NOT_ALLOWED
    assert result.status["phase"] == PoolPhase.PENDING
    assert "--allow-file-sources" in cond(result.status, "Valid")["message"]
    assert kube.of_kind("Deployment") == []


def test_unreadable_spec_is_invalid_not_a_crash(kube):
    kube.objects[("InferencePool", "ns", "tiny")]["spec"]["replicas"] = "two"
    result = run(kube)
    assert isinstance(result.error, SpecError)
    assert cond(result.status, "Valid")["status"] == "False"
    assert "spec could not be read" in cond(result.status, "Valid")["message"]


def test_a_model_change_starts_a_canary_next_to_the_stable(kube):
    run(kube)
    stable = kube.of_kind("Deployment")[0]["metadata"]["name"]
    kube.set_deployment_ready(stable)
    run(kube)
    kube.add(model(steps=8))
    result = run(kube)
    assert result.error is None
    names = {d["metadata"]["name"]: d["spec"]["replicas"] for d in kube.of_kind("Deployment")}
    assert stable in names and len(names) == 2
    ro = result.status["rollout"]
    assert ro["canaryRevision"] and ro["canaryRevision"] != ro["stableRevision"]
    assert names[f"tiny-{ro['canaryRevision']}"] == 1  # one replica to warm up, no traffic yet
    assert ("Normal", "RolloutStarted") in {e[:2] for e in result.events}


def test_revision_of_an_old_stable_without_snapshot_is_a_temporary_error(kube):
    run(kube)
    kube.set_deployment_ready(kube.of_kind("Deployment")[0]["metadata"]["name"])
    run(kube)
    kube.add(model(steps=8))
    run(kube)
    for key in [k for k in kube.objects if k[0] == "ControllerRevision"]:
        del kube.objects[key]
    result = run(kube)
    assert result.error.reason == Reason.REVISION_SNAPSHOT_MISSING and result.error.delay == 30


def test_conclude_writes_once_and_posts_events(kube, monkeypatch):
    posted = []
    monkeypatch.setattr(kopf, "event", lambda body, **kw: posted.append(kw))
    body = kube.obj("InferencePool", "tiny")
    result = reconcile_pool(kube, body, now=NOW, options=OPTIONS)
    writes_before = [c for c in kube.calls if c[0] == "patch_status"]
    conclude(kube, "InferencePool", body, result.status, [("Warning", "X", "y")], None, 0.01)
    assert len([c for c in kube.calls if c[0] == "patch_status"]) == len(writes_before) + 1
    assert posted == [{"type": "Warning", "reason": "X", "message": "y"}]
    again = kube.obj("InferencePool", "tiny")
    assert conclude(kube, "InferencePool", again, result.status, [], None, 0.01) is None


def test_model_reconcile_reports_missing_secret_and_api_errors():
    kube = FakeKube()
    body = model(uri="s3://bucket/tiny")
    body["spec"]["source"]["credentialsSecretRef"] = {"name": "s3-creds"}
    result = reconcile_model(kube, body, allow_file_sources=False)
    assert result.error.reason == Reason.SECRET_NOT_FOUND
    assert cond(result.status, "ReferencesResolved")["status"] == "False"
    kube.unavailable = True
    result = reconcile_model(kube, body, allow_file_sources=False)
    assert isinstance(result.error, ApiUnavailable)
    assert cond(result.status, "Ready")["reason"] == "ApiUnavailable"


def test_analysis_settings_that_judge_nothing_are_a_warning_condition(kube):
    kube.objects[("InferencePool", "ns", "tiny")]["spec"]["monitoring"] = {"scrapeIntervalSeconds": 60}
    result = run(kube)
    c = cond(result.status, "AnalysisValid")
    assert c["status"] == "False" and c["reason"] == Reason.WINDOW_BELOW_SCRAPE_INTERVAL
    assert ("Warning", "WindowBelowScrapeInterval", c["message"]) in result.events
    assert result.error is None  # a warning: the pool still works
    assert run(kube).events == []  # said once


# --------------------------------------------------------------------------- fault injection (tests and demos only)

FAULTS = {"errorRate": 0.3, "latencySeconds": 1.5}


def faulty_model(**faults) -> dict:
    body = model(steps=8)
    body["spec"]["faultInjection"] = faults or dict(FAULTS)
    return body


def test_fault_injection_refused_unless_allowed(kube):
    kube.add(faulty_model())
    result = run(kube, options=ReconcileOptions(allow_file_sources=True))  # allow_fault_injection off
    assert result.error.reason == Reason.FAULT_INJECTION_NOT_ALLOWED
    assert isinstance(result.error, SpecError) and isinstance(kopf_error(result.error), kopf.PermanentError)
    assert result.status["phase"] == PoolPhase.PENDING
    valid = cond(result.status, "Valid")
    assert valid["status"] == "False" and valid["reason"] == "FaultInjectionNotAllowed"
    assert "--allow-fault-injection" in valid["message"] and "spec.faultInjection" in valid["message"]
    assert ("Warning", "FaultInjectionNotAllowed") in {e[:2] for e in result.events}
    assert kube.of_kind("Deployment") == []


def test_fault_injection_allowed_reaches_the_sampler_env(kube):
    kube.add(faulty_model())
    result = run(kube, options=ReconcileOptions(allow_file_sources=True, allow_fault_injection=True))
    assert result.error is None
    [dep] = kube.of_kind("Deployment")
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SAMPLER_FAULT_ERROR_RATE"] == "0.3" and env["SAMPLER_FAULT_LATENCY_S"] == "1.5"


def test_a_faulty_model_is_a_canary_and_the_stable_keeps_serving_without_faults(kube):
    options = ReconcileOptions(sampler_image="sampler:test", allow_file_sources=True, allow_fault_injection=True)
    run(kube, options=options)
    stable = kube.of_kind("Deployment")[0]["metadata"]["name"]
    kube.set_deployment_ready(stable)
    run(kube, options=options)
    kube.add(faulty_model(errorRate=0.5))
    result = run(kube, options=options)
    ro = result.status["rollout"]
    assert ro["canaryRevision"] and ro["canaryRevision"] != ro["stableRevision"]

    def fault_env(name):
        dep = kube.obj("Deployment", name)
        return {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
                if e["name"].startswith("SAMPLER_FAULT_")}
    assert fault_env(f"tiny-{ro['canaryRevision']}") == {"SAMPLER_FAULT_ERROR_RATE": "0.5"}
    assert fault_env(stable) == {}  # rebuilt from its ControllerRevision snapshot


def test_model_with_fault_injection_refused_then_allowed_warns_once():
    kube = FakeKube()
    body = faulty_model()
    result = reconcile_model(kube, body, allow_file_sources=True)
    assert result.error.reason == Reason.FAULT_INJECTION_NOT_ALLOWED
    for type_ in ("Valid", "Ready"):
        c = cond(result.status, type_)
        assert c["status"] == "False" and c["reason"] == "FaultInjectionNotAllowed"
        assert "--allow-fault-injection" in c["message"]
    assert [e[:2] for e in result.events] == [("Warning", "FaultInjectionNotAllowed")]

    body = {**body, "status": result.status}
    allowed = reconcile_model(kube, body, allow_file_sources=True, allow_fault_injection=True)
    assert allowed.error is None
    ready = cond(allowed.status, "Ready")
    assert ready["status"] == "True" and "fault injection on" in ready["message"]
    [warning] = [e for e in allowed.events if e[1] == "FaultInjectionEnabled"]
    assert warning[0] == "Warning" and "errorRate 0.3" in warning[2] and "latencySeconds 1.5" in warning[2]
    again = reconcile_model(kube, {**body, "status": allowed.status}, allow_file_sources=True,
                            allow_fault_injection=True)
    assert again.events == []  # said once per change, not on every pass


def test_new_faulty_revision_warns_and_models_without_faults_do_not():
    kube = FakeKube()
    plain = reconcile_model(kube, model(), allow_file_sources=True, allow_fault_injection=True)
    assert [e[1] for e in plain.events] == ["RevisionComputed"]
    body = {**faulty_model(), "status": plain.status}
    faulty = reconcile_model(kube, body, allow_file_sources=True, allow_fault_injection=True)
    assert [e[1] for e in faulty.events] == ["RevisionComputed", "FaultInjectionEnabled"]
    assert faulty.status["revision"] != plain.status["revision"]


def test_golden_renders_gate_the_canary_and_a_mismatch_rolls_it_back_before_traffic(kube):
    from tests.unit.test_golden import STABLE, FakeRenderer, picture

    golden = {"prompts": [{"prompt": "a red bicycle", "seed": 7}, {"prompt": "a lighthouse", "seed": 8}],
              "maxMeanDifference": 0.05}
    run(kube)
    stable_dep = kube.of_kind("Deployment")[0]["metadata"]["name"]
    kube.set_deployment_ready(stable_dep)
    run(kube)
    stable_rev = kube.obj("InferencePool", "tiny")["status"]["rollout"]["stableRevision"]
    # Listing golden renders is not a new revision: no rollout starts for it.
    kube.add({**model(), "spec": {**model()["spec"], "goldenRenders": golden}})
    assert not run(kube).status["rollout"].get("canaryRevision")
    kube.add({**model(steps=8), "spec": {**model(steps=8)["spec"], "goldenRenders": golden}})
    canary = run(kube).status["rollout"]["canaryRevision"]
    renderer = FakeRenderer({f"tiny-{stable_rev}": STABLE, f"tiny-{canary}": [picture(90), picture(91)]})

    def gated_pass(now):
        body = kube.obj("InferencePool", "tiny")
        result = reconcile_pool(kube, body, now=now, options=OPTIONS, renderer=renderer)
        kube.patch_status(API, "InferencePool", "tiny", "ns", merge_patch(body.get("status") or {}, result.status))
        return result

    kube.set_deployment_ready(f"tiny-{canary}")
    result = gated_pass(NOW + dt.timedelta(seconds=5))
    ro = result.status["rollout"]
    assert {c[0] for c in renderer.calls} == {f"tiny-{stable_rev}", f"tiny-{canary}"}
    assert ro["phase"] == "RolledBack" and ro["reason"] == "GoldenRenderMismatch" and ro["canaryWeight"] == 0
    assert ro["goldenRender"]["outcome"] == "Failed" and len(ro["goldenRender"]["renders"]) == 2
    assert result.golden is not None and result.golden.reason == "GoldenRenderMismatch"
    assert ("Warning", "GoldenRenderMismatch") in {e[:2] for e in result.events}
    assert canary in [f["revision"] for f in ro["failedRevisions"]]
