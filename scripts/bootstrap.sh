# Sourced by scripts/serve and scripts/test: finds or installs uv, then installs the
# project from the lock file. Needs only Python >= 3.11.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if command -v uv >/dev/null 2>&1; then
  UV=(uv)
elif python3 -m uv --version >/dev/null 2>&1; then
  UV=(python3 -m uv)
else
  # A private venv for uv itself: works even where the system Python refuses pip installs.
  if [ ! -x .tools/bin/uv ]; then
    echo "Installing uv into .tools/ ..." >&2
    python3 -m venv .tools
    .tools/bin/python -m pip install --quiet --disable-pip-version-check uv
  fi
  UV=(.tools/bin/uv)
fi

"${UV[@]}" sync --locked --quiet
