# syntax=docker/dockerfile:1
# Build stage: install the locked dependencies, then the project, into /app/.venv.
FROM python:3.11-slim AS build
RUN pip install --no-cache-dir uv==0.13.9
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
WORKDIR /app
COPY pyproject.toml uv.lock ./
# Dependencies first, in their own layer: a code change does not reinstall them.
# --no-dev and no extras: neither the dev tools nor the embedded Postgres (production
# always has a DATABASE_URL).
RUN --mount=type=cache,target=/root/.cache/uv uv sync --locked --no-dev --no-install-project
COPY README.md alembic.ini ./
COPY migrations ./migrations
COPY app ./app
RUN --mount=type=cache,target=/root/.cache/uv uv sync --locked --no-dev

# Runtime stage: no uv, no build tools; the same Python, so the venv's links hold.
FROM python:3.11-slim
RUN groupadd --gid 10001 callbridge \
  && useradd --uid 10001 --gid 10001 --create-home callbridge \
  && mkdir /data && chown 10001:10001 /data
WORKDIR /app
COPY --from=build /app /app
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1 CALLBRIDGE_DATA_DIR=/data
# Numeric, so orchestrators enforcing runAsNonRoot can check it.
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
# Exec form: the server is PID 1 and gets SIGTERM itself, which starts a graceful shutdown.
CMD ["callbridge", "serve", "--host", "0.0.0.0", "--port", "8000"]
