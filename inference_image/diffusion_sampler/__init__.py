"""The sampler container: serves one diffusers pipeline over HTTP.

One worker thread owns the pipeline and runs dynamically formed batches; the asyncio side
(FastAPI on uvicorn) only validates, queues, waits and encodes. The operator never imports this
package: the two sides meet in ``docs/sampler-contract.md`` (environment, port, probes, metrics).
"""

__version__ = "0.1.0"
