"""python -m services.transport --config FILE"""

from __future__ import annotations

import sys

from cretoai.entry import run_service
from services.transport.service import build


def main(argv: list[str] | None = None) -> int:
    return run_service("transport", build, argv)


if __name__ == "__main__":
    sys.exit(main())
