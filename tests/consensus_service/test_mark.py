"""The signing mark's file: durable, in place, readable by an operator, refused when damaged."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from services.consensus.core.durable import SigningMark
from services.consensus.mark import RECORD_BYTES, MarkFile, MarkFileError


def test_marks_round_trip_in_place(tmp_path: Path) -> None:
    path = tmp_path / "consensus" / "signing-mark.json"
    mark = MarkFile(path)
    assert mark.load() is None  # a new replica
    for seq in (1, 2, 10_000_000_000):
        mark.store(SigningMark(3, seq))
        assert MarkFile(path).load() == SigningMark(3, seq)
    mark.close()
    assert path.stat().st_size == RECORD_BYTES
    assert (path.stat().st_mode & 0o777) == 0o600
    assert json.loads(path.read_text()) == {"view": 3, "seq": 10_000_000_000}


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_mark_deleted_or_replaced_while_consensus_runs_is_written_again(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The mark is written through a descriptor kept open: without a check, a mark
    deleted (or swapped for an older copy) while the replica runs would get every later
    mark in a file nobody can read, and the next start would trust the records alone."""
    path = tmp_path / "consensus" / "signing-mark.json"
    mark = MarkFile(path)
    mark.store(SigningMark(2, 40))

    def take_away() -> None:
        if how == "deleted":
            path.unlink()
        else:  # an older copy moved over it (a new inode)
            older = path.with_name("old-copy.json")
            older.write_text('{"view": 1, "seq": 7}')
            os.replace(older, path)

    take_away()
    with caplog.at_level(logging.ERROR, logger="services.consensus.mark"):
        mark.store(SigningMark(2, 41))
    assert MarkFile(path).load() == SigningMark(2, 41)
    assert "deleted or replaced while consensus runs" in caplog.text
    # gone again after the last mark: closing writes it back
    take_away()
    mark.close()
    assert MarkFile(path).load() == SigningMark(2, 41)
    assert (path.stat().st_mode & 0o777) == 0o600


def test_a_hand_written_mark_is_read_and_then_rewritten_in_place(tmp_path: Path) -> None:
    path = tmp_path / "signing-mark.json"
    path.write_text('{"view": 1, "seq": 99}')
    mark = MarkFile(path)
    assert mark.load() == SigningMark(1, 99)
    mark.store(SigningMark(1, 100))
    mark.close()
    assert MarkFile(path).load() == SigningMark(1, 100)
    assert path.stat().st_size == RECORD_BYTES


@pytest.mark.parametrize(
    "content", ["", "not json", '{"view": 1}', '{"view": -1, "seq": 2}', '{"view": "1", "seq": 2}']
)
def test_a_damaged_mark_is_refused_with_advice(tmp_path: Path, content: str) -> None:
    path = tmp_path / "signing-mark.json"
    path.write_text(content)
    with pytest.raises(MarkFileError, match="is damaged"):
        MarkFile(path).load()


def test_one_mark_is_held_by_one_consensus_process(tmp_path: Path) -> None:
    """Two consensus processes on one data directory would overwrite each other's mark:
    the second is refused, naming the directory, until the first lets go."""
    import subprocess
    import sys

    path = tmp_path / "data" / "consensus" / "signing-mark.json"
    (tmp_path / "data").mkdir()
    first = MarkFile(path)
    first.acquire()
    holder = (
        "import sys; from pathlib import Path; from services.consensus.mark import MarkFile, "
        "MarkFileError\ntry:\n    MarkFile(Path(sys.argv[1])).acquire()\nexcept MarkFileError "
        "as exc:\n    print(exc); sys.exit(3)"
    )
    other = subprocess.run(
        [sys.executable, "-c", holder, str(path)], capture_output=True, text=True, timeout=60
    )
    assert other.returncode == 3, other.stderr
    assert "in use by another consensus process" in other.stdout
    assert str(tmp_path / "data") in other.stdout
    first.close()
    again = subprocess.run(
        [sys.executable, "-c", holder, str(path)], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0, again.stdout + again.stderr


def test_a_mark_is_never_made_where_the_data_directory_is_missing(tmp_path: Path) -> None:
    """A missing data directory is a volume not mounted or a wrong path: a new mark there
    would let this key sign a second history (with every node so, a second seq 1 with a
    valid certificate). Refused, naming the directory; nothing is created."""
    path = tmp_path / "unmounted" / "consensus" / "signing-mark.json"
    with pytest.raises(MarkFileError, match=f"{tmp_path / 'unmounted'} does not exist"):
        MarkFile(path).acquire()
    assert not (tmp_path / "unmounted").exists()
