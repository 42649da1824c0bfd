#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install requirements-dev.txt into it.
# Idempotent: when the requirements haven't changed since the last successful install,
# it returns at once. PYTHON=/path/to/python3.x picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

PYTHON="${PYTHON:-python3}"
VENV=.venv

if [[ ! -x "$VENV/bin/python" ]]; then
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        echo "start_venv_setup: $PYTHON not found; install Python 3.11 or newer" >&2
        exit 1
    fi
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "start_venv_setup: $PYTHON is $("$PYTHON" -V 2>&1); Python 3.11 or newer is needed" \
            "(set PYTHON=python3.11)" >&2
        exit 1
    fi
    echo "start_venv_setup: creating $VENV with $("$PYTHON" -V 2>&1)"
    if ! "$PYTHON" -m venv "$VENV"; then
        echo "start_venv_setup: could not create $VENV (on Debian/Ubuntu: apt install python3-venv)" >&2
        exit 1
    fi
fi

# The stamp names the requirements it was made for; a change to either file reinstalls.
digest="$(cat requirements.txt requirements-dev.txt \
    | "$VENV/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
stamp="$VENV/.installed-$digest"
if [[ -f "$stamp" ]]; then
    exit 0
fi

echo "start_venv_setup: installing requirements-dev.txt into $VENV"
"$VENV/bin/python" -m pip install --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install --disable-pip-version-check -r requirements-dev.txt
rm -f "$VENV"/.installed-*
touch "$stamp"
echo "start_venv_setup: done"
