"""Typed errors that say how to retry. Handlers raise these; ``handlers`` maps them to Kopf.

    OperatorError
    ├── PermanentError          the spec itself is wrong: no retry until it changes
    │   └── SpecError
    └── TemporaryError          retry later, with the delay given
        ├── DependencyMissing   a referenced DiffusionModel or Secret does not exist (yet)
        └── ApiUnavailable      the Kubernetes API failed or timed out

Client exceptions are converted at the boundary (``kube``) with ``raise ... from exc`` so a
handler never has to know about ``kubernetes.client.ApiException``.
"""

from __future__ import annotations


class OperatorError(Exception):
    """Base class. ``reason`` is a CamelCase condition/event reason."""

    reason = "Error"

    def __init__(self, message: str, *, reason: str | None = None):
        super().__init__(message)
        if reason:
            self.reason = reason


class PermanentError(OperatorError):
    reason = "InvalidSpec"


class SpecError(PermanentError):
    reason = "InvalidSpec"


class TemporaryError(OperatorError):
    reason = "Retrying"

    def __init__(self, message: str, *, delay: float = 30, reason: str | None = None):
        super().__init__(message, reason=reason)
        self.delay = delay


class DependencyMissing(TemporaryError):
    reason = "DependencyMissing"


class ApiUnavailable(TemporaryError):
    reason = "ApiUnavailable"
