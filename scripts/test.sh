#!/usr/bin/env bash
# Install what the tests need on a fresh machine (Debian's LibreOffice and Chromium, a virtual environment with the CPU
# build of torch first, then pagelens non-editable with its dev and train extras) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# LibreOffice converts office files; Chromium opens the agent's HTML traces to check their images render.
PACKAGES=()
command -v soffice >/dev/null 2>&1 || PACKAGES+=(libreoffice-writer-nogui libreoffice-core-nogui)
command -v chromium >/dev/null 2>&1 || PACKAGES+=(chromium)
if [ ${#PACKAGES[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
fi
export PAGELENS_REQUIRE_CHROMIUM=1

VENV="${PAGELENS_TEST_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q torch==2.13.0      # the CPU build; a looser spec pulls a CUDA build
"$VENV/bin/python" -m pip install -q --force-reinstall --no-deps . && "$VENV/bin/python" -m pip install -q ".[dev,train]"

# The pytest script (not `python -m pytest`) keeps the source folder off sys.path, so the tests import the
# installed package and a packaging mistake fails here.
exec "$VENV/bin/pytest" "$@"
