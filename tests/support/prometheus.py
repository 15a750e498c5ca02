"""Prometheus for the rollout tests and benchmarks: an instant query, waiting until a
namespace's sampler pods are scraped (:func:`wait_pods_scraped`), and a Prometheus server of our
own (:class:`PrometheusServer`) for a scenario that kills it: it discovers the cluster's pods
like the cluster's own. File-based-discovery targets (:class:`TargetFile`) remain for the one
test that scrapes a sampler process outside any cluster (tests/integration/test_dashboard_queries.py).

The scrape configuration is the local cluster's (``devcluster.manifests.prometheus_config``),
so what a test sees here is what ``diffusion-operator dev up`` runs. Not the operator's metrics
provider: that is ``diffusion_operator.rollout.metrics_provider``, and tests must exercise it,
not this.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import requests
import yaml

from diffusion_operator.devcluster.cluster import free_port
from tests.support.polling import wait_for

#: Scrape interval of every Prometheus here and of the local cluster's in tests.
SCRAPE_S = 1


class TargetFile:
    """A file-based-discovery target: ``<dir>/<name>.json``, written atomically."""

    def __init__(self, targets_dir: Path, name: str, port: int, labels: dict[str, str]) -> None:
        self.path = Path(targets_dir) / f"{name}.json"
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"], "labels": labels}]))
        tmp.rename(self.path)
        self.port, self.labels = port, labels

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def prom_query(url: str, query: str, timeout: float = 5) -> list:
    resp = requests.get(f"{url}/api/v1/query", params={"query": query}, timeout=timeout)
    resp.raise_for_status()
    return resp.json()["data"]["result"]


def _scraped(url: str, target: TargetFile) -> bool:
    sel = ",".join([f'instance="127.0.0.1:{target.port}"'] + [f'{k}="{v}"' for k, v in target.labels.items()])
    return any(r["value"][1] == "1" for r in prom_query(url, f"up{{{sel}}}"))


def wait_pods_scraped(url: str, namespace: str, count: int, timeout: float = 60) -> None:
    """Until Prometheus scrapes ``count`` sampler pods of ``namespace`` successfully."""
    query = f'sum(up{{job="diffusion-sampler-pods",namespace="{namespace}"}})'

    def scraped() -> bool:
        result = prom_query(url, query)
        return bool(result) and float(result[0]["value"][1]) >= count

    wait_for(scraped, timeout, 0.5, f"Prometheus at {url} to scrape {count} sampler pod(s) in {namespace}",
             ignoring=(requests.RequestException,))


def wait_scraped(url: str, targets: list[TargetFile], timeout: float = 60) -> None:
    """Until Prometheus has scraped every target successfully under its labels."""
    pending = list(targets)

    def all_scraped() -> bool:
        while pending and _scraped(url, pending[0]):
            pending.pop(0)
        return not pending

    wait_for(all_scraped, timeout, 0.5, f"Prometheus at {url} to scrape every target",
             ignoring=(requests.RequestException,),
             detail=lambda: f"never scraped: {[t.path.name for t in pending]}")


class PrometheusServer:
    """A Prometheus of our own (1 s scrapes), for a scenario that kills it. With ``kubeconfig``
    (the local cluster's Prometheus ServiceAccount) it discovers sampler pods exactly as the
    cluster's Prometheus does; with ``file_targets`` it also reads :class:`TargetFile` s."""

    def __init__(self, binary: Path, workdir: Path, *, kubeconfig: Path | None = None,
                 file_targets: bool = False) -> None:
        from diffusion_operator.devcluster import manifests

        self.binary, self.dir = Path(binary), Path(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets_dir = self.dir / "targets"
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(manifests.prometheus_config(
            f"{SCRAPE_S}s", self.port, kubeconfig=kubeconfig, targets_dir=self.targets_dir if file_targets else None)))
        self.log_path = self.dir / "prometheus.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> PrometheusServer:
        # Prometheus writes to it for as long as it runs; stop() closes it.
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([str(self.binary), f"--config.file={self.config}",
                                      f"--storage.tsdb.path={self.dir / 'data'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=self._log, stderr=subprocess.STDOUT)

        def ready() -> bool:
            if self.proc.poll() is not None:  # waiting longer cannot help
                raise RuntimeError(f"prometheus exited: {self.log_path.read_text()[-2000:]}")
            return requests.get(self.url + "/-/ready", timeout=1).status_code == 200

        try:
            wait_for(ready, timeout, 0.25, f"Prometheus at {self.url} to be ready",
                     ignoring=(requests.RequestException,),
                     detail=lambda: f"its log ends:\n{self.log_path.read_text()[-2000:]}")
        except BaseException:
            self.stop()  # not left running behind a failed start
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # as if the node died: no graceful shutdown
            self.proc.wait(10)
        if self.proc is not None:
            self._log.close()
            self.proc = None
