"""``python -m services.consensus --config FILE``: the PBFT replica of one node."""

from __future__ import annotations

import sys

from cretoai.entry import run_service
from services.consensus.service import build


def main(argv: list[str] | None = None) -> int:
    return run_service("consensus", build, argv)


if __name__ == "__main__":
    sys.exit(main())
