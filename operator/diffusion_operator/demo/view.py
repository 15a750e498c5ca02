"""What the demo shows: live progress of a canary rollout, a summary table, and an SVG chart.

``diffusion-operator dev demo`` polls an InferencePool's ``status.rollout`` about once a second
and hands each reading here. This module only turns readings into text and pictures; it talks
to no cluster, starts no thread and uses the standard library alone, so it is tested without
a cluster and the demo's output can be rendered again from recorded samples.

* :func:`sample_from_status` turns one ``status.rollout`` dict (fields may be missing or
  ``None``) into a :class:`Sample`.
* :class:`LiveView` shows the samples as they come: on a terminal one compact block redrawn
  in place; in a log (not a TTY) one plain line each time something a reader cares about
  changed (phase, canary weight, analysis outcome, the set of tripped burn-rate pairs).
* :class:`RolloutRecord` keeps what one rollout did; :func:`summary_table` prints the records
  as a fixed-width table, and :func:`write_svg` draws, per rollout, the canary weight over
  time and the availability burn rates against their thresholds, ending in "promoted" or
  "rolled back: <reason>".
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO
from xml.sax.saxutils import escape, quoteattr

__all__ = [
    "BurnPair",
    "LiveView",
    "RolloutRecord",
    "Sample",
    "render_svg",
    "sample_from_status",
    "summary_table",
    "write_svg",
]

# Lines printed by LiveView and summary_table stay shorter than this.
MAX_LINE = 99
AVAILABILITY = "availability"


# --- readings -------------------------------------------------------------------------------


def _float(x: Any) -> float | None:
    """A finite float, or None for anything missing, non-numeric, NaN or infinite."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _int(x: Any, default: int = 0) -> int:
    v = _float(x)
    return default if v is None else int(round(v))


def _str(x: Any) -> str | None:
    return None if x is None or x == "" else str(x)


@dataclass(frozen=True)
class BurnPair:
    """One (SLI, window pair) of the last analysis: the canary's burn rates and the threshold."""

    sli: str
    factor: float | None  # threshold: the pair trips when both windows burn at or above it
    long_window_s: float | None
    short_window_s: float | None
    long_burn: float | None
    short_burn: float | None
    state: str | None  # "ok", "tripped", or why the pair was not judged ("warming-up", ...)

    @property
    def tripped(self) -> bool:
        return self.state == "tripped"

    @property
    def short_over(self) -> bool:
        return _over(self.short_burn, self.factor)

    @property
    def long_over(self) -> bool:
        return _over(self.long_burn, self.factor)

    @property
    def windows(self) -> str:
        """``"8s/96s"``: short window / long window."""
        return f"{_dur(self.short_window_s)}/{_dur(self.long_window_s)}"

    @property
    def label(self) -> str:
        return f"{self.sli} {self.windows}"


def _over(rate: float | None, factor: float | None) -> bool:
    return rate is not None and factor is not None and rate >= factor


@dataclass(frozen=True)
class Sample:
    """One reading of ``status.rollout``, ``t`` seconds after the rollout started."""

    t: float
    phase: str | None = None
    weight: int = 0  # canary weight, percent
    step_index: int | None = None
    outcome: str | None = None  # of the last analysis: pass, fail, inconclusive, error
    reason: str | None = None  # of the last analysis
    pairs: tuple[BurnPair, ...] = ()
    canary_revision: str | None = None
    stable_revision: str | None = None

    @property
    def tripped(self) -> frozenset[str]:
        """Labels of the pairs that tripped in the last analysis."""
        return frozenset(p.label for p in self.pairs if p.tripped)


def sample_from_status(rollout: Mapping[str, Any] | None, t: float) -> Sample:
    """A :class:`Sample` from one ``status.rollout`` dict; missing or malformed fields become None/0."""
    r: Mapping[str, Any] = rollout if isinstance(rollout, Mapping) else {}
    la = r.get("lastAnalysis")
    analysis: Mapping[str, Any] = la if isinstance(la, Mapping) else {}
    pairs = []
    for br in analysis.get("burnRates") or ():
        if not isinstance(br, Mapping):
            continue
        pairs.append(
            BurnPair(
                sli=_str(br.get("sli")) or "?",
                factor=_float(br.get("factor")),
                long_window_s=_float(br.get("longWindowSeconds")),
                short_window_s=_float(br.get("shortWindowSeconds")),
                long_burn=_float(br.get("longBurnRate")),
                short_burn=_float(br.get("shortBurnRate")),
                state=_str(br.get("state")),
            )
        )
    step = _float(r.get("stepIndex"))
    return Sample(
        t=float(t),
        phase=_str(r.get("phase")),
        weight=max(0, min(100, _int(r.get("canaryWeight")))),
        step_index=None if step is None else int(step),
        outcome=_str(analysis.get("outcome")),
        reason=_str(analysis.get("reason")),
        pairs=tuple(pairs),
        canary_revision=_str(r.get("canaryRevision")),
        stable_revision=_str(r.get("stableRevision")),
    )


# --- text helpers ---------------------------------------------------------------------------


def _dur(s: float | None) -> str:
    """8 -> "8s", 300 -> "5m", 3600 -> "1h", None -> "?"."""
    if s is None:
        return "?"
    if s >= 3600 and s % 3600 == 0:
        return f"{s / 3600:g}h"
    if s >= 60 and s % 60 == 0:
        return f"{s / 60:g}m"
    return f"{s:g}s"


def _rate(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) < 10:
        return f"{x:.2f}"
    if abs(x) < 1000:
        return f"{x:.1f}"
    return f"{x:.0f}"


def _num(x: float | None) -> str:
    """A tick or threshold value without float noise: 14.4, 25, 0.5."""
    return "-" if x is None else f"{round(x, 6):g}"


def _clip(line: str, width: int = MAX_LINE) -> str:
    return line if len(line) <= width else line[: width - 3] + "..."


def _bar(weight: int, width: int = 20) -> str:
    w = max(0, min(100, weight))
    filled = int(round(w * width / 100))
    return "[" + "#" * filled + "." * (width - filled) + "]"


# --- live view ------------------------------------------------------------------------------

_UP = "\x1b[{n}A"  # cursor up n lines (each line ends in a newline, so the column is 0)
_CLEAR_LINE = "\x1b[2K"
_CLEAR_BELOW = "\x1b[J"


class LiveView:
    """Progress of one rollout at a time, fed one :class:`Sample` per poll.

    On a TTY, :meth:`update` redraws one block in place; :meth:`finish` leaves the block on
    screen and prints a message under it, so the next :meth:`update` starts a new block. Not
    on a TTY (a log, CI), :meth:`update` prints the title when it changes and one plain line
    when the phase, weight, analysis outcome or set of tripped pairs changed; it never writes
    escape codes.
    """

    def __init__(self, stream: TextIO, tty: bool) -> None:
        self.stream = stream
        self.tty = tty
        self._drawn = 0  # lines of the block currently on screen (TTY)
        self._title: str | None = None  # the title printed last (not a TTY)
        self._last: tuple[Any, ...] | None = None  # what the last plain line showed

    def update(self, title: str, sample: Sample) -> None:
        if self.tty:
            self._redraw(self.block(title, sample))
            return
        if title != self._title:
            self._title = title
            self._last = None
            self._write(_clip(title.replace("\x1b", "")) + "\n")
        key = (sample.phase, sample.weight, sample.outcome, sample.tripped)
        if key != self._last:
            self._last = key
            self._write(self.line(sample) + "\n")

    def finish(self, message: str) -> None:
        """End the current block (it stays on screen) and print ``message`` under it."""
        self._drawn = 0
        self._title = self._last = None
        text = message if self.tty else message.replace("\x1b", "")
        self._write(text + "\n")

    # The two renderings are public so the demo (and tests) can reuse them.

    @staticmethod
    def block(title: str, sample: Sample) -> list[str]:
        """The TTY block: title and elapsed time, phase and weight bar, analysis, one line per pair."""
        elapsed = f"elapsed {sample.t:.0f}s"
        width = max(len(title) + 2 + len(elapsed), 72)
        lines = [_clip(f"{title:<{width - len(elapsed)}}{elapsed}")]
        step = "-" if sample.step_index is None else str(sample.step_index)
        lines.append(
            f"  phase {sample.phase or '-':<11} step {step:<3} canary {_bar(sample.weight)} {sample.weight:>3}%"
        )
        analysis = sample.outcome or "none yet"
        if sample.reason:
            analysis += f" ({sample.reason})"
        lines.append(_clip(f"  analysis {analysis}"))
        if sample.pairs:
            lines.append("  sli           threshold  windows    short burn       long burn")
        for p in sample.pairs:
            state = "TRIPPED" if p.tripped else (p.state or "")
            lines.append(
                _clip(
                    f"  {p.sli:<12.12}  >= {_num(p.factor):<6} {p.windows:<9}"
                    f"  {_rate(p.short_burn):>8} {'over' if p.short_over else '    '}"
                    f"  {_rate(p.long_burn):>8} {'over' if p.long_over else '    '}"
                    f"  {state:<.20}"
                ).rstrip()
            )
        return [ln.rstrip() for ln in lines]

    @staticmethod
    def line(sample: Sample) -> str:
        """The plain line for logs: time, phase, weight, analysis, tripped pairs (under a title line)."""
        parts = [sample.phase or "-", f"canary {sample.weight}%"]
        tripped: dict[str, list[str]] = {}
        for p in sample.pairs:
            if p.tripped:
                tripped.setdefault(p.sli, []).append(p.windows)
        if sample.outcome:
            # The reason says why a non-pass happened; with tripped pairs listed it is redundant.
            why = sample.reason if sample.reason and sample.outcome != "pass" and not tripped else None
            parts.append(f"analysis {sample.outcome}" + (f" ({why})" if why else ""))
        if tripped:
            parts.append("TRIPPED " + "; ".join(f"{sli} {', '.join(w)}" for sli, w in tripped.items()))
        return _clip(f"  {sample.t:5.0f}s " + " | ".join(parts))

    def _redraw(self, lines: Sequence[str]) -> None:
        out = []
        if self._drawn:
            out.append(_UP.format(n=self._drawn))
        out.extend(_CLEAR_LINE + ln + "\n" for ln in lines)
        if len(lines) < self._drawn:
            out.append(_CLEAR_BELOW)
        self._drawn = len(lines)
        self._write("".join(out))

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


# --- records and the table ------------------------------------------------------------------


@dataclass
class RolloutRecord:
    """What one rollout did: its outcome and every sample taken while it ran.

    ``outcome`` is the history entry's ("Promoted", "RolledBack"), None while unfinished.
    ``started_t`` and ``finished_t`` may be on any common clock (e.g. seconds since the demo
    started); only their difference is used. The samples' :attr:`Sample.t` count from the
    rollout's start, so the chart's time axis runs from 0 to :attr:`duration_s`.
    """

    title: str
    canary_revision: str | None = None
    stable_revision: str | None = None
    outcome: str | None = None
    reason: str | None = None
    message: str | None = None
    started_t: float = 0.0
    finished_t: float | None = None
    max_weight: int = 0
    samples: list[Sample] = field(default_factory=list)

    def add(self, sample: Sample) -> None:
        """Append a sample, keeping :attr:`max_weight` and the revisions up to date."""
        self.samples.append(sample)
        self.max_weight = max(self.max_weight, sample.weight)
        self.canary_revision = self.canary_revision or sample.canary_revision
        self.stable_revision = self.stable_revision or sample.stable_revision

    @property
    def duration_s(self) -> float:
        """``finished_t - started_t`` once finished, else the last sample's time (the elapsed time so far)."""
        if self.finished_t is not None:
            return max(0.0, self.finished_t - self.started_t)
        return max([0.0] + [s.t for s in self.samples])

    @property
    def peak_weight(self) -> int:
        return max([self.max_weight] + [s.weight for s in self.samples])

    @property
    def final_reason(self) -> str | None:
        """The record's reason, else the reason of the last failed analysis seen."""
        if self.reason:
            return self.reason
        return next((s.reason for s in reversed(self.samples) if s.reason and s.outcome == "fail"), None)

    def peak_short_burn(self, sli: str = AVAILABILITY) -> tuple[float | None, float | None]:
        """(largest short-window burn rate of ``sli`` in its fastest pair, that pair's threshold).

        The fastest pair (the largest factor, 14.4x by default) is the one that pages first; a
        slower pair's short window (the 1x pair's, say) can read higher early in a canary's life
        against a threshold that does not page. ``(None, largest threshold seen or None)`` while
        no burn rate was measured.
        """
        fastest = self._threshold(sli)
        best: tuple[float, float, float | None] | None = None  # (burn, ratio, factor)
        for s in self.samples:
            for p in s.pairs:
                if p.sli != sli or p.short_burn is None or p.factor != fastest:
                    continue
                ratio = p.short_burn / p.factor if p.factor else 0.0
                if best is None or (p.short_burn, ratio) > best[:2]:
                    best = (p.short_burn, ratio, p.factor)
        if best is None:
            return None, self._threshold(sli)
        return best[0], best[2]

    def _threshold(self, sli: str) -> float | None:
        factors = [p.factor for s in self.samples for p in s.pairs if p.sli == sli and p.factor]
        return max(factors) if factors else None


def _outcome_text(r: RolloutRecord) -> str:
    if r.outcome:
        return r.outcome
    last = r.samples[-1].phase if r.samples else None
    return f"unfinished ({last})" if last else "unfinished"


def summary_table(records: Iterable[RolloutRecord]) -> str:
    """A fixed-width table, one row per rollout, ending in a newline."""
    head = (
        "rollout",
        "revision",
        "outcome",
        "reason",
        "duration s",
        "max weight %",
        "peak short burn (avail.)",
        "threshold",
    )
    rows = []
    for r in records:
        burn, factor = r.peak_short_burn(AVAILABILITY)
        rows.append(
            (
                _clip(r.title, 50),
                r.canary_revision or "-",
                _outcome_text(r),
                _clip(r.final_reason or "-", 40),
                f"{r.duration_s:.0f}",
                str(r.peak_weight),
                _rate(burn),
                _num(factor),
            )
        )
    numeric = {4, 5, 6, 7}
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]

    def fmt(row: Sequence[str]) -> str:
        cells = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return "  ".join(cells).rstrip()

    lines = [fmt(head), "  ".join("-" * w for w in widths)]
    lines.extend(fmt(row) for row in rows)
    if not rows:
        lines.append("(no rollouts)")
    return "\n".join(lines) + "\n"


# --- SVG ------------------------------------------------------------------------------------

_FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
_W = 960
_LEFT, _RIGHT = 70, 30  # plot margins inside the chart
_PLOT_W = _W - _LEFT - _RIGHT
_WEIGHT_H = 130
_BURN_H = 190
_TITLE_H = 34
_GAP = 46  # between the weight and the burn panels (x-axis labels of the first)
_BLOCK_GAP = 64  # after a rollout's burn panel (its x axis and axis title)
_BLOCK_H = _TITLE_H + _WEIGHT_H + _GAP + _BURN_H + _BLOCK_GAP
_HEADER_H = 104  # chart title and legend

_WEIGHT_COLOR = "#2b6cb0"
_THRESHOLD_COLOR = "#c53030"
_PROMOTED_COLOR = "#2f855a"
_ROLLED_BACK_COLOR = "#c53030"
_GRID = "#e2e8f0"
_AXIS = "#4a5568"
# (short, long) colours per availability window pair, in the order the pairs first appear.
_PAIR_COLORS = [("#dd6b20", "#805ad5"), ("#d69e2e", "#319795"), ("#b83280", "#4a5568")]


def _nice_step(span: float, target: int = 5) -> float:
    raw = span / target if span > 0 else 1.0
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * mag >= raw * (1 - 1e-9):
            return m * mag
    return 10 * mag


def _axis(vmax: float, target: int = 5) -> tuple[float, list[float]]:
    """A rounded top at or above ``vmax`` and the ticks from 0 to it."""
    vmax = vmax if vmax > 0 else 1.0
    step = _nice_step(vmax, target)
    n = max(1, math.ceil(vmax / step - 1e-9))
    return n * step, [i * step for i in range(n + 1)]


@dataclass(frozen=True)
class _Scale:
    """Maps data to SVG coordinates for one panel."""

    x0: float
    y0: float  # top of the panel
    w: float
    h: float
    tmax: float
    vmax: float

    def x(self, t: float) -> float:
        return self.x0 + self.w * max(0.0, min(t, self.tmax)) / self.tmax

    def y(self, v: float) -> float:
        return self.y0 + self.h * (1 - max(0.0, min(v, self.vmax)) / self.vmax)


def _f(v: float) -> str:
    return f"{v:.1f}"


def _text(x: float, y: float, s: str, size: int = 12, anchor: str = "start", **attrs: str) -> str:
    extra = "".join(f" {k.replace('_', '-')}={quoteattr(v)}" for k, v in attrs.items())
    return f'<text x="{_f(x)}" y="{_f(y)}" font-size="{size}" text-anchor="{anchor}"{extra}>{escape(s)}</text>'


def _runs(samples: Sequence[Sample], pick: Any, sc: _Scale) -> list[list[tuple[float, float]]]:
    """Runs of consecutive samples where ``pick(sample)`` is not None, as SVG points."""
    runs: list[list[tuple[float, float]]] = [[]]
    for s in samples:
        v = pick(s)
        if v is None:
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append((sc.x(s.t), sc.y(v)))
    return [r for r in runs if r]


def _series_path(runs: list[list[tuple[float, float]]], cls: str, series: str, **style: str) -> list[str]:
    if not runs:
        return [f'<path class="{cls}" data-series={quoteattr(series)} d="" fill="none"/>']
    d = " ".join("M" + " L".join(f"{_f(x)},{_f(y)}" for x, y in run) for run in runs)
    attrs = "".join(f" {k.replace('_', '-')}={quoteattr(v)}" for k, v in style.items())
    out = [f'<path class="{cls}" data-series={quoteattr(series)} d="{d}" fill="none"{attrs}/>']
    color = style.get("stroke", _AXIS)
    for run in runs:
        if len(run) == 1:  # a lone reading would be invisible as a path
            x, y = run[0]
            out.append(f'<circle cx="{_f(x)}" cy="{_f(y)}" r="3" fill="{color}"/>')
    return out


def _frame(sc: _Scale, yticks: Sequence[float], xticks: Sequence[float], ylabel: str, xlabel: str) -> list[str]:
    out = [
        f'<rect class="frame" x="{_f(sc.x0)}" y="{_f(sc.y0)}" width="{_f(sc.w)}" height="{_f(sc.h)}" '
        f'fill="#ffffff" stroke="{_AXIS}" stroke-width="1"/>'
    ]
    for v in yticks:
        y = sc.y(v)
        if 0 < v < sc.vmax:
            out.append(f'<line x1="{_f(sc.x0)}" y1="{_f(y)}" x2="{_f(sc.x0 + sc.w)}" y2="{_f(y)}" stroke="{_GRID}"/>')
        out.append(f'<line x1="{_f(sc.x0 - 5)}" y1="{_f(y)}" x2="{_f(sc.x0)}" y2="{_f(y)}" stroke="{_AXIS}"/>')
        out.append(_text(sc.x0 - 8, y + 4, _num(v), 11, "end", fill=_AXIS, **{"class": "ytick"}))
    for t in xticks:
        x = sc.x(t)
        bottom = sc.y0 + sc.h
        out.append(f'<line x1="{_f(x)}" y1="{_f(bottom)}" x2="{_f(x)}" y2="{_f(bottom + 5)}" stroke="{_AXIS}"/>')
        out.append(_text(x, bottom + 18, _num(t), 11, "middle", fill=_AXIS, **{"class": "xtick"}))
    out.append(
        _text(
            sc.x0 - 52,
            sc.y0 + sc.h / 2,
            ylabel,
            12,
            "middle",
            fill=_AXIS,
            transform=f"rotate(-90 {_f(sc.x0 - 52)} {_f(sc.y0 + sc.h / 2)})",
        )
    )
    if xlabel:
        out.append(_text(sc.x0 + sc.w / 2, sc.y0 + sc.h + 34, xlabel, 12, "middle", fill=_AXIS))
    return out


def _pair_keys(samples: Sequence[Sample]) -> list[tuple[float | None, float | None, float | None]]:
    """Availability window pairs, as (factor, short window, long window), in order of appearance."""
    keys: list[tuple[float | None, float | None, float | None]] = []
    for s in samples:
        for p in s.pairs:
            k = (p.factor, p.short_window_s, p.long_window_s)
            if p.sli == AVAILABILITY and k not in keys:
                keys.append(k)
    return keys


def _pick(key: tuple[float | None, float | None, float | None], short: bool) -> Any:
    def pick(s: Sample) -> float | None:
        for p in s.pairs:
            if p.sli == AVAILABILITY and (p.factor, p.short_window_s, p.long_window_s) == key:
                return p.short_burn if short else p.long_burn
        return None

    return pick


def _traffic(r: RolloutRecord, samples: Sequence[Sample]) -> list[int]:
    """Percent of traffic on the new revision per sample, for the chart.

    Once promoted, the operator clears ``canaryWeight`` to 0 (the canary *is* the stable now);
    the trailing ``Succeeded`` readings of a promoted rollout are drawn at 100 % so the line
    does not look like a rollback. Earlier readings (a previous rollout's status read before the
    operator saw the change) keep their weight.
    """
    weights = [s.weight for s in samples]
    if r.outcome == "Promoted":
        for i in range(len(samples) - 1, -1, -1):
            if samples[i].phase != "Succeeded":
                break
            weights[i] = 100
    return weights


def _block(r: RolloutRecord, top: float) -> list[str]:
    out: list[str] = ['<g class="rollout">']
    samples = sorted(r.samples, key=lambda s: s.t)
    end_t = max([r.duration_s] + [s.t for s in samples])
    tmax, xticks = _axis(max(end_t, 1.0), 8)

    title = r.title
    if r.canary_revision:
        title += f"  (canary {r.canary_revision}" + (f", stable {r.stable_revision})" if r.stable_revision else ")")
    out.append(_text(_LEFT, top + 22, title, 16, font_weight="bold", fill="#1a202c"))

    # Canary weight: a step line (each reading holds until the next one).
    wsc = _Scale(_LEFT, top + _TITLE_H, _PLOT_W, _WEIGHT_H, tmax, 100.0)
    out.append('<g class="panel weight">')
    out += _frame(wsc, [0, 25, 50, 75, 100], xticks, "canary weight %", "")
    pts: list[tuple[float, float]] = []
    for i, (s, w) in enumerate(zip(samples, _traffic(r, samples), strict=True)):
        if i:
            pts.append((wsc.x(s.t), pts[-1][1]))
        pts.append((wsc.x(s.t), wsc.y(w)))
    if pts and end_t > samples[-1].t:
        pts.append((wsc.x(end_t), pts[-1][1]))
    out += _series_path(
        [pts] if pts else [], "series weight", "canary weight", stroke=_WEIGHT_COLOR, stroke_width="2.5"
    )
    out.append("</g>")

    # Availability burn rates, clipped to a rounded 2x the largest threshold.
    keys = _pair_keys(samples)
    factors = sorted({k[0] for k in keys if k[0]})
    values = [
        v
        for s in samples
        for p in s.pairs
        if p.sli == AVAILABILITY
        for v in (p.short_burn, p.long_burn)
        if v is not None
    ]
    ylabel = "burn rate"
    if factors:
        vmax, yticks = _axis(2 * factors[-1])
        if any(v > vmax for v in values):
            ylabel = f"burn rate (clipped at {_num(vmax)})"
    else:
        vmax, yticks = _axis(max(values, default=1.0))
    bsc = _Scale(_LEFT, wsc.y0 + _WEIGHT_H + _GAP, _PLOT_W, _BURN_H, tmax, vmax)
    out.append('<g class="panel burn">')
    out.append(
        _text(
            bsc.x0,
            bsc.y0 - 7,
            "availability burn rate of the canary (multiples of the error budget)",
            12,
            fill="#1a202c",
        )
    )
    out += _frame(bsc, yticks, xticks, ylabel, "seconds since the rollout started")
    for f in factors:
        y = bsc.y(f)
        wins = ", ".join(f"{_dur(k[1])}/{_dur(k[2])}" for k in keys if k[0] == f)
        out.append(
            f'<line class="threshold" data-factor="{_num(f)}" x1="{_f(bsc.x0)}" y1="{_f(y)}" '
            f'x2="{_f(bsc.x0 + bsc.w)}" y2="{_f(y)}" stroke="{_THRESHOLD_COLOR}" stroke-width="1.5" '
            f'stroke-dasharray="6 4"/>'
        )
        # At the left, where the canary is still warming up; under the line if the legend is above.
        legend_bottom = bsc.y0 + 16 + 16 * len(keys)
        ly = y - 5 if y - 16 > legend_bottom else y + 14
        label = f"threshold {_num(f)} ({wins})"
        out.append(_text(bsc.x0 + 8, ly, label, 11, fill=_THRESHOLD_COLOR, **{"class": "threshold-label"}))
    if not keys:
        out.append(_text(bsc.x0 + bsc.w / 2, bsc.y0 + bsc.h / 2, "no analysis yet", 13, "middle", fill=_AXIS))
    for i, key in enumerate(keys):
        short_c, long_c = _PAIR_COLORS[i % len(_PAIR_COLORS)]
        for short, window, color, width in ((True, key[1], short_c, "2.5"), (False, key[2], long_c, "1.5")):
            which = "short" if short else "long"
            out += _series_path(_runs(samples, _pick(key, short), bsc), f"series burn {which}",
                                f"{which} {_dur(window)}", stroke=color, stroke_width=width)
    out += _panel_legend(bsc, keys)
    out.append("</g>")

    # The end: a marker on the weight line and what happened.
    if r.outcome == "Promoted":
        label, color = "promoted", _PROMOTED_COLOR
    elif r.outcome == "RolledBack":
        reason = r.final_reason
        label, color = (f"rolled back: {reason}" if reason else "rolled back"), _ROLLED_BACK_COLOR
    else:
        label, color = _outcome_text(r), _AXIS
    last_w = _traffic(r, samples)[-1] if samples else 0
    mx, my = wsc.x(end_t), wsc.y(last_w)
    for sc in (wsc, bsc):
        out.append(
            f'<line x1="{_f(mx)}" y1="{_f(sc.y0)}" x2="{_f(mx)}" y2="{_f(sc.y0 + sc.h)}" stroke="{color}" '
            f'stroke-width="1" stroke-dasharray="2 3"/>'
        )
    out.append(
        f'<circle class="end" cx="{_f(mx)}" cy="{_f(my)}" r="6" fill="{color}" stroke="#ffffff" stroke-width="1.5"/>'
    )
    ly = my + 22 if last_w >= 50 else my - 12
    out.append(_text(mx - 10, ly, label, 13, "end", fill=color, font_weight="bold", **{"class": "outcome"}))
    out.append("</g>")
    return out


def _panel_legend(sc: _Scale, keys: Sequence[tuple[float | None, float | None, float | None]]) -> list[str]:
    """Top left inside the burn panel: which colour is which window."""
    if not keys:
        return []
    x0, y0 = sc.x0 + 8, sc.y0 + 8
    rows = []
    for i, key in enumerate(keys):
        short_c, long_c = _PAIR_COLORS[i % len(_PAIR_COLORS)]
        rows.append(((short_c, "2.5", f"short window {_dur(key[1])}"), (long_c, "1.5", f"long window {_dur(key[2])}")))
    out = [
        f'<rect x="{_f(x0)}" y="{_f(y0)}" width="300" height="{_f(8 + 16 * len(rows))}" fill="#ffffff" '
        f'fill-opacity="0.85" stroke="{_GRID}"/>'
    ]
    for i, row in enumerate(rows):
        y = y0 + 12 + 16 * i
        for j, (color, width, name) in enumerate(row):
            x = x0 + 8 + 150 * j
            out.append(
                f'<line x1="{_f(x)}" y1="{_f(y)}" x2="{_f(x + 20)}" y2="{_f(y)}" stroke="{color}" '
                f'stroke-width="{width}"/>'
            )
            out.append(_text(x + 26, y + 4, name, 11, fill="#1a202c"))
    return out


def _legend(y: float) -> list[str]:
    items = [
        ("line", _WEIGHT_COLOR, "", "canary weight %"),
        ("line", _THRESHOLD_COLOR, "6 4", "threshold"),
        ("dot", _PROMOTED_COLOR, "", "promoted"),
        ("dot", _ROLLED_BACK_COLOR, "", "rolled back"),
    ]
    out = ['<g class="legend">']
    x = float(_LEFT)
    for kind, color, dash, name in items:
        if kind == "line":
            dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
            out.append(
                f'<line x1="{_f(x)}" y1="{_f(y)}" x2="{_f(x + 24)}" y2="{_f(y)}" stroke="{color}" '
                f'stroke-width="2.5"{dash_attr}/>'
            )
        else:
            out.append(f'<circle cx="{_f(x + 12)}" cy="{_f(y)}" r="6" fill="{color}"/>')
        out.append(_text(x + 30, y + 4, name, 12, fill="#1a202c"))
        x += 30 + 7 * len(name) + 22
    out.append("</g>")
    return out


def render_svg(records: Sequence[RolloutRecord], title: str = "diffusion-operator canary rollouts") -> str:
    """The chart :func:`write_svg` writes, as a string."""
    height = _HEADER_H + _BLOCK_H * max(1, len(records))
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{height}" viewBox="0 0 {_W} {height}" '
        f'font-family="{_FONT}">',
        f"<title>{escape(title)}</title>",
        f'<rect x="0" y="0" width="{_W}" height="{height}" fill="#f7fafc"/>',
        _text(_LEFT, 32, title, 20, font_weight="bold", fill="#1a202c"),
    ]
    out += _legend(62)
    out.append(
        _text(
            _LEFT,
            88,
            "Burn rates are the canary's, in multiples of the error budget; a window pair trips "
            "when both windows reach its threshold.",
            12,
            fill=_AXIS,
        )
    )
    if not records:
        out.append(_text(_W / 2, _HEADER_H + _BLOCK_H / 2, "no rollouts recorded", 16, "middle", fill=_AXIS))
    for i, r in enumerate(records):
        out += _block(r, _HEADER_H + i * _BLOCK_H)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_svg(records: Sequence[RolloutRecord], path: str | os.PathLike[str]) -> None:
    """Draw the records (see the module docstring) as one SVG file at ``path``."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_svg(records))
