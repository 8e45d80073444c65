# The stixbus image: the worker, the egress servers (TAXII, sinks) and the CLI, from the locked
# environment (uv.lock).
#
#   docker build -t stixbus:0.1.0 .
#   docker run --read-only --tmpfs /tmp -v stixbus-data:/data stixbus:0.1.0 worker
#
# Two stages: `build` resolves nothing (uv sync --frozen installs exactly uv.lock, the project
# itself as a regular wheel, no dev extras) and compiles the bytecode; the runtime stage copies
# only that virtual environment and the example registry/agreements.  Nothing is downloaded when
# a container starts, it runs as an unprivileged user (uid 10001), and it writes only under
# STIXBUS_HOME=/data (a volume: worker state, the generated pseudonym key) and /tmp, so
# `--read-only` / readOnlyRootFilesystem works (docs/operations.md, "Deploy").

FROM python:3.11.14-slim-bookworm AS build
# Keep equal to UV_VERSION in deploy/bootstrap.sh and the dev extra in pyproject.toml.
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# Dependencies first (their layer survives source edits), then the project.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project --python /usr/local/bin/python3.11
COPY stixbus ./stixbus
COPY agents ./agents
COPY schemas ./schemas
COPY connectors ./connectors
COPY egress ./egress
RUN uv sync --frozen --no-dev --no-editable --python /usr/local/bin/python3.11

FROM python:3.11.14-slim-bookworm
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /data \
      --shell /usr/sbin/nologin stixbus \
    && mkdir -p /data \
    && chown 10001:10001 /data \
    && chmod 700 /data
COPY --from=build /app/.venv /app/.venv
COPY deploy/orgs.yaml deploy/agreements.yaml deploy/sinks.yaml /app/deploy/
WORKDIR /app
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    STIXBUS_HOME=/data \
    STIXBUS_WEB_HOST=0.0.0.0
VOLUME ["/data"]
USER 10001:10001
EXPOSE 6066
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["python", "-c", "import os,urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('STIXBUS_WEB_PORT', '6066'), timeout=2)"]
ENTRYPOINT ["stixbus"]
CMD ["worker"]
