# tierkv: one image for the server (`tierkv serve`), the router (`tierkv route`) and the
# load generator (`tierkv-load`). BASE_IMAGE needs python3 (>= 3.11) with venv.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH
# Optional CA bundle for pip behind a TLS-intercepting proxy (see docker/ca/README.md).
COPY docker/ca/ /tmp/ca/
RUN python3 -m venv /opt/venv
COPY pyproject.toml README.md /src/
COPY cache /src/cache
COPY npu_sim /src/npu_sim
COPY server /src/server
COPY load /src/load
RUN set -e; \
    if [ -f /tmp/ca/ca-certificates.crt ]; then export PIP_CERT=/tmp/ca/ca-certificates.crt; fi; \
    pip install '/src[load]'; \
    rm -rf /src /tmp/ca
WORKDIR /work
EXPOSE 8000 8080 5557 5558
HEALTHCHECK NONE
CMD ["tierkv", "serve", "--host", "0.0.0.0"]
