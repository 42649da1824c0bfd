#!/usr/bin/env bash
# Set up .venv if needed, then run the test suite (tiny random-weight models: no GPU, no
# network). Arguments go to pytest, e.g. ./run_tests.sh -k inpaint -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

./start_venv_setup.sh
cd api
exec ../.venv/bin/python -m pytest "$@"
