# Sourced by scripts/serve, scripts/test and scripts/bench: finds or installs uv, then
# installs the project from the lock file. Needs only Python >= 3.11.
# The caller sets SYNC_ARGS: what to install beyond the service's own dependencies
# (scripts/serve: the embedded Postgres; scripts/test: that and the dev tools).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { echo "==> $*" >&2; }

if command -v uv >/dev/null 2>&1; then
  UV=(uv)
elif python3 -m uv --version >/dev/null 2>&1; then
  UV=(python3 -m uv)
else
  # A private venv for uv itself: works even where the system Python refuses pip installs.
  if [ ! -x .tools/bin/uv ]; then
    say "Installing uv (the package manager) into .tools/ (once, about 10 s)"
    python3 -m venv .tools
    .tools/bin/python -m pip install --quiet --disable-pip-version-check uv
  fi
  UV=(.tools/bin/uv)
fi

if [ ! -d .venv ]; then
  say "Installing Callbridge's dependencies into .venv/ (once; about 20 s the first time)"
fi
"${UV[@]}" sync --locked --quiet "${SYNC_ARGS[@]}"
