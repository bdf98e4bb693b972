#!/usr/bin/env bash
# One-shot set-up on a fresh Debian/Ubuntu machine with Python 3.11:
# system libraries for Qt/OpenCV/mediapipe, a virtual environment in .venv, ferkit installed editable
# with the app, ONNX and test extras. Safe to rerun: every step is skipped or cheap when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(libpulse0 libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 libxkbcommon-x11-0 libxcb-shape0
              libxcb-randr0 libxcb-render-util0 libxcb-image0 libxcb-xinerama0 libgl1 libegl1 libglib2.0-0
              libfontconfig1 libdbus-1-3 fontconfig xvfb xauth)

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else SUDO=""; fi
    if [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; then
        echo "setup: installing system packages: ${missing[*]}" >&2
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "setup: WARNING: cannot install ${missing[*]} (not root, no sudo); the Qt app may not start" >&2
    fi
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# torch==2.13.0 is pinned in pyproject.toml: on this project's machines pip then takes the local CPU
# wheel. For a CUDA machine see README ("GPU").
stamp=.venv/.ferkit-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    .venv/bin/python -m pip install -q -e ".[app,onnx,test,build]"
    touch "$stamp"
fi
echo "setup: ready (.venv)" >&2
