"""Status conditions in the ``metav1.Condition`` shape, and the reasons we use.

``set_condition`` moves ``lastTransitionTime`` only when the status flips, so re-computing
the same condition never changes the object (and never causes a write).
"""

from __future__ import annotations

import datetime as dt

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
MONITORING = "MonitoringAvailable"
TRAFFIC = "TrafficRouted"
VALID = "Valid"
RESOLVED = "ReferencesResolved"


def now_iso(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: list[dict], type_: str, status: bool | str, reason: str, message: str,
                  generation: int | None, now: str | None = None) -> list[dict]:
    """Return a new list with ``type_`` set; other conditions are kept in order."""
    status_s = status if isinstance(status, str) else ("True" if status else "False")
    out = []
    found = False
    for c in conditions or []:
        if c.get("type") != type_:
            out.append(c)
            continue
        found = True
        ltt = c.get("lastTransitionTime") if c.get("status") == status_s else (now or now_iso())
        out.append({"type": type_, "status": status_s, "reason": reason, "message": message,
                    "lastTransitionTime": ltt or (now or now_iso()), "observedGeneration": generation})
    if not found:
        out.append({"type": type_, "status": status_s, "reason": reason, "message": message,
                    "lastTransitionTime": now or now_iso(), "observedGeneration": generation})
    return out


def get_condition(conditions: list[dict] | None, type_: str) -> dict | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)
