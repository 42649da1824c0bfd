"""The server log: the model libraries kept quiet in it (no progress bars, no deprecation
noise), in the server process and in each device's worker process."""

from __future__ import annotations

import logging
import os
import warnings

# Set (unless already set) before the model libraries load: no progress bars, no advice.
QUIET_LIBRARIES = {
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
}
# Loggers of libraries that report every request or every file at INFO.
CHATTY_LOGGERS = ("httpx", "huggingface_hub", "urllib3", "filelock")


def quiet_model_libraries(debug: bool) -> None:
    """A server log without progress bars and library deprecation noise (this process only;
    call it before the model libraries are imported). ``debug`` keeps the libraries' warnings,
    as log lines."""
    for name, value in QUIET_LIBRARIES.items():
        if debug and name.endswith("VERBOSITY"):
            continue
        os.environ.setdefault(name, value)
    logging.captureWarnings(True)  # what still warns becomes a log line, not raw stderr
    if debug:
        return
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
