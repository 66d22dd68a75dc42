"""Generate the Python code for protos/cretoai/v1 into cretoai/v1.

    python -m cretoai.tools.protogen          # regenerate in place
    python -m cretoai.tools.protogen --check  # exit 1 if cretoai/v1 is stale

Generated files are never edited by hand; tests/test_protogen.py runs --check.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "protos"
PROTO_DIR = PROTO_ROOT / "cretoai" / "v1"
OUT_PACKAGE = ROOT / "cretoai" / "v1"
INIT_TEXT = '"""Generated from protos/cretoai/v1 by cretoai.tools.protogen. Do not edit."""\n'


def generate(out_root: Path) -> list[Path]:
    """Run protoc on every .proto; return the generated files (relative to out_root)."""
    from grpc_tools import protoc  # dev dependency, imported lazily

    protos = sorted(PROTO_DIR.glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files in {PROTO_DIR}")
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(str(p.relative_to(PROTO_ROOT)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    package = out_root / "cretoai" / "v1"
    (package / "__init__.py").write_text(INIT_TEXT)
    (package / "py.typed").write_text("")
    return sorted(p.relative_to(package) for p in package.iterdir() if p.is_file())


def stale_files() -> list[str]:
    """Names of generated files that differ from a fresh generation (or are missing/extra)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        fresh_dir = Path(tmp) / "cretoai" / "v1"
        current = sorted(
            p.relative_to(OUT_PACKAGE)
            for p in OUT_PACKAGE.iterdir()
            if p.is_file() and p.suffix in {".py", ".pyi", ".typed"}
        )
        stale = [str(p) for p in set(fresh) ^ set(current)]
        for rel in fresh:
            target = OUT_PACKAGE / rel
            if target.exists() and not filecmp.cmp(fresh_dir / rel, target, shallow=False):
                stale.append(str(rel))
        return sorted(stale)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the generated code is stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print("generated code is stale: " + ", ".join(stale), file=sys.stderr)
            print("run: python -m cretoai.tools.protogen", file=sys.stderr)
            return 1
        print("generated code is fresh")
        return 0
    OUT_PACKAGE.mkdir(parents=True, exist_ok=True)
    for old in OUT_PACKAGE.glob("*_pb2*.py*"):
        old.unlink()
    files = generate(ROOT)
    print(f"generated {len(files)} files in {OUT_PACKAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
