"""Canary rollouts judged by SLO burn rate: the decision core.

Everything in this package except :mod:`.metrics_provider` is pure: no clock, no network,
no Kubernetes. The operator's handlers feed it data and apply what it returns.

Modules, in the order the operator uses them:

- :mod:`.burnrate`: burn-rate arithmetic, window pairs, the Workbook defaults and the rule
  that scales them to a canary's analysis interval.
- :mod:`.promql`: the PromQL strings for each SLI and window, from the sampler contract's
  metric names (``docs/sampler-contract.md``).
- :mod:`.metrics_provider`: the ``MetricsProvider`` protocol, its Prometheus implementation
  and ``measure()``, which turns query answers into :class:`.verdict.AnalysisInputs`
  ("no data" and "provider failed" kept apart from "SLO breached").
- :mod:`.verdict`: one analysis -> ``Verdict`` (pass | fail | inconclusive | error) with
  every number behind it and a distinct reason code.
- :mod:`.state_machine`: rollout status + spec + observations (time passed in) -> new status
  and the actions that changed.

What this package must not do: read the clock, talk to the API server, or mutate its
inputs. The model and its reasoning are in ``docs/rollouts.md``.
"""
