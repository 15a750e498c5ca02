"""Pod statuses as the kubelet writes them, turned into the reason a pool shows."""

from __future__ import annotations

import pytest

from diffusion_operator.conditions import Reason
from diffusion_operator.pod_health import pod_problem, pods_problem

pytestmark = pytest.mark.unit


def _pod(name="tiny-abc-1", *, init=None, main=None, deleting=False, phase="Pending"):
    meta = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-03T10:00:00Z"
    status = {"phase": phase}
    if init is not None:
        status["initContainerStatuses"] = init
    if main is not None:
        status["containerStatuses"] = main
    return {"metadata": meta, "status": status}


def _waiting(name, reason, message="", image="ghcr.io/x/sampler:nope"):
    return {"name": name, "image": image, "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": message}}}


def test_a_missing_image_tag_names_the_image_and_the_kubelets_words():
    p = pod_problem(_pod(main=[_waiting("sampler", "ErrImagePull", 'failed to resolve reference "x": not found')]))
    assert p.reason == Reason.IMAGE_PULL_FAILED
    assert "ghcr.io/x/sampler:nope" in p.message and "not found" in p.message and "tiny-abc-1" in p.message
    backoff = pod_problem(_pod(main=[_waiting("sampler", "ImagePullBackOff", "Back-off pulling image")]))
    assert backoff.reason == Reason.IMAGE_PULL_FAILED


def test_a_failed_model_download_is_a_fetch_problem_with_its_last_log_line():
    init = [{"name": "fetch-model", "restartCount": 2,
             "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}},
             "lastState": {"terminated": {
                 "exitCode": 1, "reason": "Error",
                 "message": "fetching s3://m/tiny\nerror: InvalidAccessKeyId: key not found"}}}]
    p = pod_problem(_pod(init=init, main=[_waiting("sampler", "PodInitializing")]))
    assert p.reason == Reason.MODEL_FETCH_FAILED
    assert "InvalidAccessKeyId" in p.message and "download error" in p.message


def test_exit_2_of_the_fetch_container_says_bad_configuration():
    init = [{"name": "fetch-model", "restartCount": 0,
             "state": {"terminated": {"exitCode": 2, "reason": "Error", "message": "MODEL_DEST is not set"}}}]
    assert "bad configuration" in pod_problem(_pod(init=init)).message


def test_an_oom_kill_is_reported_as_out_of_memory_not_a_crash():
    main = [{"name": "sampler", "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
             "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]
    p = pod_problem(_pod(main=main, phase="Running"))
    assert p.reason == Reason.OUT_OF_MEMORY and "restarted 3 times" in p.message


def test_a_crashing_sampler_gives_exit_code_and_message():
    main = [{"name": "sampler", "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
             "lastState": {"terminated": {"exitCode": 3, "reason": "Error", "message": "ConfigError: bad dtype"}}}]
    p = pod_problem(_pod(main=main, phase="Running"))
    assert p.reason == Reason.CONTAINER_CRASHING and "code 3" in p.message and "bad dtype" in p.message


def test_healthy_starting_completed_and_deleting_pods_have_no_problem():
    running = [{"name": "sampler", "restartCount": 0, "state": {"running": {"startedAt": "x"}}}]
    assert pod_problem(_pod(main=running, phase="Running")) is None
    assert pod_problem(_pod(main=[_waiting("sampler", "ContainerCreating")])) is None
    drained = [{"name": "sampler", "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]
    assert pod_problem(_pod(main=drained, phase="Succeeded")) is None
    failing = [_waiting("sampler", "ErrImagePull")]
    assert pod_problem(_pod(main=failing, deleting=True)) is None


def test_the_worst_problem_of_a_pool_wins():
    crash = _pod("a", main=[{"name": "sampler", "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                             "lastState": {"terminated": {"exitCode": 1}}}], phase="Running")
    pull = _pod("b", main=[_waiting("sampler", "ErrImagePull")])
    assert pods_problem([crash, pull]).reason == Reason.IMAGE_PULL_FAILED
    assert pods_problem([]) is None
