"""python -m services.storage --config FILE"""

from __future__ import annotations

import sys

from cretoai.entry import run_service
from services.storage.service import build


def main(argv: list[str] | None = None) -> int:
    return run_service("storage", build, argv)


if __name__ == "__main__":
    sys.exit(main())
