"""The demo's presentation: status readings -> samples, the live view, the summary table, the SVG."""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET

import pytest

from diffusion_operator.demo import view
from diffusion_operator.demo.view import LiveView, RolloutRecord, Sample, sample_from_status

pytestmark = pytest.mark.unit

SVG = "{http://www.w3.org/2000/svg}"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def pair(short, long, state="ok", factor=14.4, short_s=8, long_s=96, sli="availability"):
    return {
        "sli": sli,
        "factor": factor,
        "longWindowSeconds": long_s,
        "shortWindowSeconds": short_s,
        "longBurnRate": long,
        "shortBurnRate": short,
        "stableLongBurnRate": 0.0,
        "stableShortBurnRate": 0.0,
        "requests": 120.0,
        "state": state,
    }


def status(phase="Progressing", weight=25, outcome="pass", burns=None, reason="BurnRateWithinBudget", step=0):
    analysis = None
    if outcome is not None:
        analysis = {
            "at": "2026-12-03T18:00:00Z",
            "outcome": outcome,
            "reason": reason,
            "message": "m",
            "burnRates": burns if burns is not None else [pair(0.5, 0.3)],
        }
    return {
        "phase": phase,
        "canaryRevision": "ab12cd34",
        "stableRevision": "ff00ee11",
        "canaryWeight": weight,
        "stepIndex": step,
        "reason": "r",
        "message": "msg",
        "lastAnalysis": analysis,
        "history": [],
    }


def good_record() -> RolloutRecord:
    """Promoted: 0 -> 25 -> 50 -> 100 %, burn rates well under the 14.4 threshold."""
    rec = RolloutRecord(title="rollout 1/2: good revision ab12cd34", outcome="Promoted", reason="AllStepsPassed")
    for t, w in [(0, 0), (2, 25), (30, 50), (60, 100)]:
        rec.add(sample_from_status(status(weight=w, outcome=None if t == 0 else "pass"), t))
    rec.add(sample_from_status(status(phase="Succeeded", weight=0), 80))
    rec.finished_t = 80
    return rec


def bad_record(peak=30.0) -> RolloutRecord:
    """Rolled back: the short burn rate climbs to ``peak`` against the 14.4 threshold."""
    rec = RolloutRecord(
        title="rollout 2/2: bad revision 99aa88bb",
        outcome="RolledBack",
        reason="AvailabilityBurnRateExceeded",
        started_t=150.0,  # on the demo's clock, as run.py records it
        finished_t=150.0 + 24,
    )
    rec.add(sample_from_status(status(weight=0, outcome=None), 0))
    rec.add(sample_from_status(status(outcome="inconclusive", burns=[pair(None, None, "warming-up")]), 4))
    for t, short, long in [(8, 2.0, 1.0), (12, 10.0, 5.0), (16, 20.0, 12.0)]:
        rec.add(sample_from_status(status(burns=[pair(short, long)]), t))
    tripped = [pair(peak, 16.0, "tripped")]
    rec.add(sample_from_status(status(outcome="fail", burns=tripped, reason="AvailabilityBurnRateExceeded"), 20))
    rec.add(sample_from_status(status(phase="RolledBack", weight=0, outcome="fail", burns=tripped), 24))
    return rec


# --- sample_from_status ---------------------------------------------------------------------


def test_sample_from_a_full_status():
    s = sample_from_status(status(burns=[pair(20.1, 3.2), pair(30.0, 15.0, "tripped", factor=6, long_s=720)]), 12.5)
    assert (s.t, s.phase, s.weight, s.step_index) == (12.5, "Progressing", 25, 0)
    assert (s.outcome, s.reason) == ("pass", "BurnRateWithinBudget")
    assert (s.canary_revision, s.stable_revision) == ("ab12cd34", "ff00ee11")
    first, second = s.pairs
    assert first == view.BurnPair("availability", 14.4, 96.0, 8.0, 3.2, 20.1, "ok")
    assert first.short_over and not first.long_over and not first.tripped
    assert second.tripped and second.windows == "8s/12m"
    assert s.tripped == frozenset({"availability 8s/12m"})


def test_sample_from_a_sparse_status():
    assert sample_from_status({}, 1.0) == Sample(t=1.0)
    assert sample_from_status(None, 0) == Sample(t=0.0)
    s = sample_from_status(
        {
            "phase": "Pending",
            "canaryWeight": None,
            "lastAnalysis": {
                "outcome": "error",
                "burnRates": [None, {"sli": "availability", "factor": None, "shortBurnRate": "nan?"}],
            },
        },
        3,
    )
    assert (s.phase, s.weight, s.outcome, s.reason, s.step_index) == ("Pending", 0, "error", None, None)
    (p,) = s.pairs
    assert (p.factor, p.short_burn, p.long_burn, p.state) == (None, None, None, None)
    assert not p.short_over and not p.tripped and p.windows == "?/?"
    assert sample_from_status({"lastAnalysis": {"burnRates": None}}, 0).pairs == ()


# --- LiveView -------------------------------------------------------------------------------


def test_plain_view_prints_a_line_only_when_something_changed():
    out = io.StringIO()
    live = LiveView(out, tty=False)
    title = "rollout 2/2: bad revision 99aa88bb"
    live.update(title, sample_from_status(status(burns=[pair(1.0, 0.5)]), 1))
    live.update(title, sample_from_status(status(burns=[pair(1.2, 0.6)]), 2))  # only burn rates moved
    live.update(title, sample_from_status(status(burns=[pair(1.3, 0.6)]), 3))
    assert out.getvalue().count("\n") == 2  # the title and one state line

    live.update(title, sample_from_status(status(weight=50, burns=[pair(1.3, 0.6)]), 4))  # weight
    live.update(title, sample_from_status(status(weight=50, outcome="fail", burns=[pair(30, 16, "tripped")]), 5))
    live.update(title, sample_from_status(status(weight=50, outcome="fail", burns=[pair(31, 17, "tripped")]), 6))
    live.update(title, sample_from_status(status(phase="RolledBack", weight=0, outcome="fail"), 7))
    live.finish("rollout 2/2: RolledBack after 7 s (AvailabilityBurnRateExceeded)")

    text = out.getvalue()
    assert "\x1b" not in text
    lines = text.splitlines()
    assert lines[0] == title
    assert [ln.split()[0] for ln in lines[1:5]] == ["1s", "4s", "5s", "7s"]
    assert "canary 25%" in lines[1] and "canary 50%" in lines[2]
    assert "analysis fail" in lines[3] and "TRIPPED availability 8s/96s" in lines[3]
    assert "RolledBack" in lines[4] and "TRIPPED" not in lines[4]
    assert lines[5].startswith("rollout 2/2: RolledBack")
    assert all(len(ln) < 100 for ln in lines)


def test_plain_view_says_why_an_analysis_did_not_pass():
    out = io.StringIO()
    live = LiveView(out, tty=False)
    live.update("t", sample_from_status(status(outcome="inconclusive", reason="AnalysisWarmingUp"), 1))
    assert "analysis inconclusive (AnalysisWarmingUp)" in out.getvalue()


def test_tty_view_redraws_its_block_in_place_and_shows_a_tripped_pair():
    out = io.StringIO()
    live = LiveView(out, tty=True)
    title = "rollout 2/2: bad revision 99aa88bb"
    live.update(title, sample_from_status(status(burns=[pair(2.0, 1.0)]), 3))
    first = out.getvalue()
    assert "\x1b[" not in first.replace("\x1b[2K", "")  # nothing to move over yet
    n = first.count("\n")

    live.update(title, sample_from_status(status(outcome="fail", burns=[pair(30.0, 16.0, "tripped")]), 4))
    second = out.getvalue()[len(first) :]
    assert second.startswith(f"\x1b[{n}A")  # back up over the first block
    screen = ANSI.sub("", second).splitlines()
    assert screen[0].startswith(title) and screen[0].endswith("elapsed 4s")
    assert "canary [#####...............]  25%" in screen[1]
    assert "AvailabilityBurnRateExceeded" not in screen[2]  # reason of this status: BurnRateWithinBudget
    (burn_line,) = [ln for ln in screen if ln.lstrip().startswith("availability")]
    assert "14.4" in burn_line and "8s/96s" in burn_line
    assert burn_line.count("over") == 2 and burn_line.endswith("TRIPPED")
    assert all(len(ln) < 100 for ln in screen)


def test_tty_view_clears_leftover_lines_and_starts_a_new_block_after_finish():
    out = io.StringIO()
    live = LiveView(out, tty=True)
    live.update("t", sample_from_status(status(burns=[pair(1, 1), pair(1, 1, factor=6, long_s=720)]), 1))
    mark = len(out.getvalue())
    live.update("t", sample_from_status(status(outcome=None), 2))  # no analysis: fewer lines
    assert out.getvalue()[mark:].endswith("\x1b[J")
    live.finish("done")
    mark = len(out.getvalue())
    live.update("next", sample_from_status(status(), 0))
    assert "A" not in "".join(ANSI.findall(out.getvalue()[mark:]))  # the finished block stays


# --- summary_table --------------------------------------------------------------------------


def test_summary_table_lists_each_rollout():
    good, bad = good_record(), bad_record()
    unfinished = RolloutRecord(title="rollout 3/3")
    unfinished.add(sample_from_status(status(outcome=None), 5))
    lines = view.summary_table([good, bad, unfinished]).splitlines()
    header, rule, row1, row2, row3 = lines
    for col in ("rollout", "revision", "outcome", "reason", "duration s", "max weight %", "threshold"):
        assert col in header
    assert "Promoted" in row1 and "AllStepsPassed" in row1 and "ab12cd34" in row1
    assert "RolledBack" in row2 and "AvailabilityBurnRateExceeded" in row2
    assert "unfinished (Progressing)" in row3
    cells = row2.split()
    assert cells[-4:] == ["24", "25", "30.0", "14.4"]  # duration, max weight, peak short burn, threshold
    assert row1.split()[-4:] == ["80", "100", "0.50", "14.4"]
    assert row3.split()[-4:] == ["5", "25", "-", "-"]
    # Fixed width: every column starts where its header does.
    for col in ("revision", "outcome", "reason"):
        i = header.index(col)
        for row in (row1, row2, row3):
            assert row[i - 2 : i] == "  " and row[i] != " ", (col, row)
    assert set(rule) <= {"-", " "} and len(rule) >= len(max(lines, key=len))


def test_summary_table_without_records():
    assert "(no rollouts)" in view.summary_table([])


# --- SVG ------------------------------------------------------------------------------------


def _svg(records, tmp_path):
    path = tmp_path / "demo.svg"
    view.write_svg(records, path)
    text = path.read_text(encoding="utf-8")
    return text, ET.fromstring(text)


def _panel(group, kind):
    (panel,) = [g for g in group.iter(f"{SVG}g") if g.get("class") == f"panel {kind}"]
    return panel


def _texts(el):
    return ["".join(t.itertext()) for t in el.iter(f"{SVG}text")]


def _points(path_el):
    return [tuple(map(float, xy.split(","))) for xy in re.findall(r"-?[\d.]+,-?[\d.]+", path_el.get("d"))]


def test_svg_shows_weight_and_burn_rates_per_rollout(tmp_path):
    text, root = _svg([good_record(), bad_record()], tmp_path)
    assert root.tag == f"{SVG}svg" and root.get("viewBox", "").startswith("0 0 ")
    rollouts = [g for g in root.iter(f"{SVG}g") if g.get("class") == "rollout"]
    assert len(rollouts) == 2
    for g in rollouts:
        series = sorted(p.get("class") for p in g.iter(f"{SVG}path"))
        assert series == ["series burn long", "series burn short", "series weight"]
    assert "rollout 1/2: good revision ab12cd34" in text
    legend = _texts(next(g for g in root.iter(f"{SVG}g") if g.get("class") == "legend"))
    assert {"canary weight %", "threshold", "promoted", "rolled back"} <= set(legend)

    good, bad = rollouts
    assert "promoted" in _texts(good)
    assert "rolled back: AvailabilityBurnRateExceeded" in _texts(bad)
    assert "threshold 14.4 (8s/96s)" in _texts(_panel(bad, "burn"))


def test_svg_threshold_line_sits_at_its_value_on_the_axis(tmp_path):
    _, root = _svg([bad_record()], tmp_path)
    burn = _panel(root, "burn")
    ticks = {"".join(t.itertext()): float(t.get("y")) - 4 for t in burn.iter(f"{SVG}text") if t.get("class") == "ytick"}
    # 2x the 14.4 threshold, rounded up: the axis runs 0..30 in steps of 10.
    assert list(ticks) == ["0", "10", "20", "30"]
    (line,) = [ln for ln in burn.iter(f"{SVG}line") if ln.get("class") == "threshold"]
    assert line.get("stroke-dasharray")
    y = float(line.get("y1"))
    assert y == float(line.get("y2"))
    assert y == pytest.approx(ticks["10"] + (ticks["20"] - ticks["10"]) * 0.44, abs=0.2)

    # The short burn rate's peak (30) reaches the top of the axis; the long one (16) sits above the line.
    paths = {p.get("class"): _points(p) for p in burn.iter(f"{SVG}path")}
    assert min(y for _, y in paths["series burn short"]) == pytest.approx(ticks["30"], abs=0.2)
    assert min(y for _, y in paths["series burn long"]) < y


def test_svg_clips_burn_rates_far_over_the_threshold_and_says_so(tmp_path):
    _, root = _svg([bad_record(peak=250.0)], tmp_path)
    burn = _panel(root, "burn")
    frame = next(r for r in burn.iter(f"{SVG}rect") if r.get("class") == "frame")
    top = float(frame.get("y"))
    (short,) = [p for p in burn.iter(f"{SVG}path") if p.get("class") == "series burn short"]
    assert min(y for _, y in _points(short)) == pytest.approx(top)  # drawn at the top, not off the chart
    assert "burn rate (clipped at 30)" in _texts(burn)


def test_svg_weight_is_a_step_line_ending_at_full_traffic_when_promoted(tmp_path):
    _, root = _svg([good_record()], tmp_path)
    weight = _panel(root, "weight")
    ticks = {
        "".join(t.itertext()): float(t.get("y")) - 4 for t in weight.iter(f"{SVG}text") if t.get("class") == "ytick"
    }
    (path,) = [p for p in weight.iter(f"{SVG}path") if p.get("class") == "series weight"]
    pts = _points(path)
    for (x1, y1), (x2, y2) in zip(pts, pts[1:], strict=False):
        assert x1 == x2 or y1 == y2  # only horizontal and vertical segments
    levels = [y for i, (_, y) in enumerate(pts) if i == 0 or y != pts[i - 1][1]]
    assert levels == pytest.approx([ticks[v] for v in ("0", "25", "50", "100")], abs=0.2)


def test_svg_copes_with_no_analysis_a_single_sample_and_gaps(tmp_path):
    lone = RolloutRecord(title="just started")
    lone.add(sample_from_status({"phase": "Pending"}, 0.0))
    gap = RolloutRecord(title="gap", outcome="RolledBack")
    for t, short in [(0, 1.0), (1, None), (2, 3.0), (3, 4.0)]:
        gap.add(sample_from_status(status(burns=[pair(short, 1.0)]), t))
    one = RolloutRecord(title="one analysis")
    one.add(sample_from_status(status(burns=[pair(5.0, None)]), 2.0))
    _, root = _svg([lone, gap, one], tmp_path)
    lone_g, gap_g, one_g = [g for g in root.iter(f"{SVG}g") if g.get("class") == "rollout"]

    assert "no analysis yet" in _texts(lone_g)
    assert "unfinished (Pending)" in _texts(lone_g)
    assert "rolled back" in _texts(gap_g)  # no reason known
    (short,) = [p for p in gap_g.iter(f"{SVG}path") if p.get("class") == "series burn short"]
    assert short.get("d").count("M") == 2  # a gap where the burn rate was missing
    assert any(c.get("r") == "3" for c in gap_g.iter(f"{SVG}circle"))  # the lone reading at t=0 stays visible
    assert any(c.get("r") == "3" for c in one_g.iter(f"{SVG}circle"))

    _, empty = _svg([], tmp_path)
    assert "no rollouts recorded" in _texts(empty)


def test_a_rollback_without_a_recorded_reason_names_the_failed_analysis():
    rec = RolloutRecord(title="r", outcome="RolledBack")
    rec.add(sample_from_status(status(outcome="pass"), 1))
    rec.add(sample_from_status(status(outcome="fail", reason="AvailabilityBurnRateExceeded"), 2))
    rec.add(sample_from_status(status(phase="RolledBack", weight=0, outcome="inconclusive", reason="X"), 3))
    assert rec.final_reason == "AvailabilityBurnRateExceeded"
    assert "AvailabilityBurnRateExceeded" in view.summary_table([rec])
