"""docs/api.md says what the code does: condition types and reasons, the settings table.

A user reads the docs to write alerts and `kubectl wait` conditions; a reason the docs name
but the code never sets (or the reverse) is a silent break.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from diffusion_operator.conditions import ConditionType, Reason
from diffusion_operator.rollout.golden import GoldenReason
from diffusion_operator.rollout.state_machine import EventReason
from diffusion_operator.rollout.verdict import Reason as VerdictReason
from diffusion_operator.settings import Settings

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
API_MD = (REPO / "docs/api.md").read_text()


def _constants(cls) -> set[str]:
    return {v for k, v in vars(cls).items() if k.isupper() and isinstance(v, str)}


def _conditions_table() -> dict[str, set[str]]:
    section = API_MD.split("### Conditions and reasons", 1)[1].split("\n### ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\| `(\w+)` \| [^|]+ \| (.+) \|$", line)
        if m:
            rows[m.group(1)] = set(re.findall(r"`(\w+)`", m.group(2)))
    return rows


def test_condition_types_in_the_docs_are_the_ones_the_code_sets():
    assert set(_conditions_table()) == {t.value for t in ConditionType}


def test_every_reason_the_code_sets_is_documented():
    documented = set().union(*_conditions_table().values())
    event_only = {Reason.REVISION_COMPUTED.value, Reason.FAULT_INJECTION_ENABLED.value}
    missing = {r.value for r in Reason} - documented - event_only
    assert not missing, f"reasons set by the code but not in docs/api.md: {sorted(missing)}"
    for reason in event_only:
        assert reason in API_MD  # Event reasons, named below the table
    rollout = _conditions_table()["Progressing"]
    rollout_reasons = _constants(EventReason) | _constants(GoldenReason)
    assert rollout_reasons <= rollout, sorted(rollout_reasons - rollout)


def test_every_documented_reason_exists_in_the_code():
    known = {r.value for r in Reason} | _constants(EventReason) | _constants(VerdictReason) | _constants(GoldenReason)
    documented = set().union(*_conditions_table().values())
    assert documented <= known, f"docs/api.md names reasons the code never sets: {sorted(documented - known)}"


def test_the_settings_table_covers_every_setting():
    import diffusion_operator.settings as settings_module

    doc = settings_module.__doc__ or ""
    named = set(re.findall(r"^\| (\w+) \|", doc, flags=re.M)) - {"setting"}
    timings = {"lease_duration_s", "renew_deadline_s", "retry_period_s", "verbose"}
    assert named | timings == set(Settings.__dataclass_fields__)
