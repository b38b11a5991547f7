# syntax=docker/dockerfile:1
# Build stage: install the locked dependencies, then the project, into /app/.venv.
FROM python:3.11-slim AS build
RUN pip install --no-cache-dir uv==0.13.9
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
WORKDIR /app
COPY pyproject.toml uv.lock ./
RUN uv sync --locked --no-dev --no-install-project
COPY README.md alembic.ini ./
COPY migrations ./migrations
COPY app ./app
RUN uv sync --locked --no-dev

# Runtime stage: no build tools, a non-root user.
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 callbridge && mkdir /data && chown callbridge /data
WORKDIR /app
COPY --from=build /app /app
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1 CALLBRIDGE_DATA_DIR=/data
USER callbridge
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["callbridge", "serve", "--host", "0.0.0.0", "--port", "8000"]
