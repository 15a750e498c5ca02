# The operator image (the sampler has its own: inference_image/Dockerfile).
# Small and torch-free: the operator package never imports torch.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${BASE_IMAGE}
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# Matches the chart's securityContext: non-root uid 65532, read-only root filesystem, writable /tmp.
USER 65532:65532
ENV PYTHONUNBUFFERED=1 HOME=/tmp
ENTRYPOINT ["diffusion-operator"]
CMD ["run"]
