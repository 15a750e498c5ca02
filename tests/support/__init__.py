"""Library code for the tests and the benchmarks: real sampler and Prometheus processes, the
load generator, the rollout scenarios' vocabulary, and the one polling helper.

Plain modules, importable from anywhere (``from tests.support.polling import wait_for``): no
pytest fixtures live here, and nothing here imports a ``conftest``'s fixtures. Fixtures stay in
the ``conftest.py`` of the tier that uses them and are built from these modules.

Nothing in this package imports torch; samplers run in child processes. This ``__init__``
imports nothing, so a benchmark that needs only :mod:`tests.support.polling` pulls in nothing
else.
"""
