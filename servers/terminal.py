"""What commands write to the terminal besides their progress: JSON for scripts, and the exit statuses."""

from __future__ import annotations

import json
import sys

EXIT_FAILED_FILES = 1  # some files could not be indexed; the others were
EXIT_ERROR = 2  # bad input or a failure, said in one sentence on stderr
EXIT_NO_ANSWER = 3  # the run ended without an answer


def print_json(data: object) -> None:
    json.dump(data, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")
