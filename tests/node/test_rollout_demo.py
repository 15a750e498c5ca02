"""``diffusion-operator dev demo`` as a user runs it, on the real node behind the Gateway: the good
revision is promoted, the bad one is rolled back for its burn rate with value, threshold and
windows printed, the summary table and the picture are written, the log is plain lines when the
output is not a terminal, and ``--cleanup`` leaves only what was there before.
"""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET

import pytest

from diffusion_operator.demo import run as demo

pytestmark = [pytest.mark.node, pytest.mark.timeout(900)]


def _namespaces(cluster) -> set[str]:
    items = json.loads(cluster.kubectl("get", "namespaces", "-o", "json").stdout)["items"]
    return {n["metadata"]["name"] for n in items if n["status"].get("phase") != "Terminating"}


def test_dev_demo_promotes_the_good_revision_and_rolls_back_the_bad_one(node_cluster, node_operator, dev_model,
                                                                         tmp_path):
    before = _namespaces(node_cluster)
    out = io.StringIO()
    said: list[str] = []
    rc = demo.play(node_cluster, tmp_path, said.append, stream=out)
    text = out.getvalue()
    print(text)
    assert rc == 0, text + "\n".join(said)

    assert "\x1b[" not in text, "not a terminal: plain lines, no cursor movement"
    assert "Promoted" in text and "RolledBack" in text
    reason = next(line for line in text.splitlines() if line.startswith("why rollout 2 was rolled back"))
    assert "availability burn rate" in reason and "threshold 14.4x" in reason and "over 10s" in reason, reason
    # Answers came from both revisions' pods through the Gateway, and the bad one's included 500s.
    answers = next(line for line in text.splitlines() if line.startswith("answers through the Gateway"))
    assert " 500: " in answers and " 200: " in answers and "gateway" not in answers, answers
    svg = tmp_path / "demo-rollouts.svg"
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    assert "rolled back" in svg.read_text() and "promoted" in svg.read_text()

    assert _namespaces(node_cluster) - before == {demo.NAMESPACE}
    demo.cleanup(node_cluster, said.append)
    assert demo.NAMESPACE not in _namespaces(node_cluster)
