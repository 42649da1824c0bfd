#!/usr/bin/env bash
# Set up .venv if needed, then start the server. Settings come from DD_* variables
# (see README); by default it listens on 127.0.0.1:5000. Arguments go to `serve`
# (e.g. --host 0.0.0.0 --port 8000; --help lists the settings).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

./start_venv_setup.sh
exec .venv/bin/python -m api serve "$@"
