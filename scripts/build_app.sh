#!/usr/bin/env bash
# Builds the one-folder desktop app with PyInstaller: build/out/ferkit-app/ferkit-app (+ _internal/).
# Needs the venv from scripts/setup.sh (the [build] extra installs pyinstaller). Runs offline.
#   bash scripts/build_app.sh            build (replaces build/out/ferkit-app)
#   FERKIT_BUILD_NICE=5 bash ...         lower the build's CPU priority (default 5; 0 = not niced)
# Fails (exit != 0) when a required file is missing (build/bundle.py names it) or PyInstaller fails.
set -euo pipefail
cd "$(dirname "$0")/.."

PYINSTALLER=.venv/bin/pyinstaller
if [ ! -x "$PYINSTALLER" ]; then
    echo "build_app: $PYINSTALLER not found: run 'bash scripts/setup.sh' first (installs the [build] extra)" >&2
    exit 1
fi
NICE="${FERKIT_BUILD_NICE:-5}"
start=$(date +%s)
# build/work keeps PyInstaller's analysis between builds (it redoes what changed); delete it, or
# set FERKIT_BUILD_CLEAN=1, after changing the venv's packages
CLEAN=(); [ "${FERKIT_BUILD_CLEAN:-0}" = 1 ] && CLEAN=(--clean)
nice -n "$NICE" "$PYINSTALLER" build/ferkit-app.spec --noconfirm "${CLEAN[@]}" --log-level WARN \
    --distpath build/out --workpath build/work
exe=build/out/ferkit-app/ferkit-app
if [ ! -x "$exe" ]; then
    echo "build_app: PyInstaller finished but $exe is missing" >&2
    exit 1
fi
echo "build_app: built $exe in $(( $(date +%s) - start )) s; size $(du -sh build/out/ferkit-app | cut -f1)" >&2
