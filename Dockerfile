# syntax=docker/dockerfile:1
# windsurf-exporter image: build the wheel, install it with the dependency versions pinned in
# uv.lock into a venv, and copy only that venv into a slim runtime that runs as a numeric
# non-root user. Build:  docker build -t windsurf-exporter .
# Run:    docker run -p 9929:9929 windsurf-exporter --demo
# For real it reads /etc/windsurf-exporter/config/config.yaml and, if the config names it, the
# key at /etc/windsurf-exporter/secrets/service-key: the paths the Kubernetes manifests mount.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
COPY exporter/ exporter/
# Locked runtime dependencies (hash-checked) first, then the project's own wheel on top.
RUN uv export --frozen --no-dev --no-emit-project --output-file /tmp/requirements.txt \
    && uv venv --python /usr/local/bin/python3 /opt/windsurf-exporter \
    && uv pip install --python /opt/windsurf-exporter/bin/python --require-hashes \
        --requirement /tmp/requirements.txt \
    && uv build --wheel --out-dir /tmp/dist \
    && uv pip install --python /opt/windsurf-exporter/bin/python --no-deps /tmp/dist/*.whl

FROM ${PYTHON_IMAGE}
# Kept equal to pyproject.toml's version by tests/test_packaging.py; the exporter itself reads
# its version from the installed package (windsurf_exporter_build_info).
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="windsurf-exporter" \
      org.opencontainers.image.description="Prometheus exporter for Windsurf (Codeium) seat usage and prompt credits" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
COPY --from=build /opt/windsurf-exporter /opt/windsurf-exporter
ENV PATH="/opt/windsurf-exporter/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# 65532: the conventional "nonroot" id; numeric so runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 9929
# /-/healthy needs no basic auth; python is the only client the slim image has.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9929/-/healthy', timeout=4)"]
ENTRYPOINT ["windsurf-exporter"]
CMD ["--config.file=/etc/windsurf-exporter/config/config.yaml"]
