"""Generated code in cretoai/v1 is exactly what protoc makes from protos/ (never hand-edited)."""

from __future__ import annotations

from pathlib import Path

from cretoai.tools import protogen


def test_generated_code_is_fresh() -> None:
    stale = protogen.stale_files()
    assert stale == [], f"stale generated code {stale}; run: python -m cretoai.tools.protogen"


def test_check_detects_a_stale_file(tmp_path: Path, monkeypatch: object) -> None:
    """The freshness check can fail: point it at a copy with one edited file."""
    import shutil

    import pytest

    copy = tmp_path / "v1"
    shutil.copytree(protogen.OUT_PACKAGE, copy)
    target = copy / "vertex_pb2.pyi"
    target.write_text(target.read_text() + "\n# hand edit\n")
    mp = pytest.MonkeyPatch()
    mp.setattr(protogen, "OUT_PACKAGE", copy)
    try:
        assert protogen.stale_files() == ["vertex_pb2.pyi"]
        assert protogen.main(["--check"]) == 1
    finally:
        mp.undo()


def test_generated_modules_import_as_the_package() -> None:
    from cretoai.v1 import gateway_pb2, pbft_pb2, storage_pb2, transport_pb2, vertex_pb2

    assert vertex_pb2.DESCRIPTOR.package == "cretoai.v1"
    for module in (gateway_pb2, pbft_pb2, storage_pb2, transport_pb2):
        assert module.DESCRIPTOR.package == "cretoai.v1"
