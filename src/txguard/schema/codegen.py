"""Generates the Protobuf and gRPC Python code under txguard/schema/v1 from proto/txguard/v1.

`python -m txguard.schema.codegen` rewrites the generated files; `--check` fails when they are
stale, so CI catches a .proto change committed without its generated code.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import sys
import tempfile
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
PROTO_ROOT = REPO_ROOT / "proto"
PROTO_PACKAGE = Path("txguard/v1")
OUTPUT_DIR = Path(__file__).resolve().parent / "v1"
# protoc writes imports for the proto package path; the code lives inside txguard.schema instead.
IMPORT_REWRITES = (("from txguard.v1 import", "from txguard.schema.v1 import"),)


def _include_dirs() -> list[str]:
    import google.rpc  # googleapis-common-protos ships google/rpc/*.proto

    grpc_tools_protos = resources.files("grpc_tools") / "_proto"
    googleapis_root = Path(next(iter(google.rpc.__path__))).parents[1]
    return [str(PROTO_ROOT), str(grpc_tools_protos), str(googleapis_root)]


def generate(into: Path) -> None:
    from grpc_tools import protoc

    protos = sorted(
        str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PROTO_PACKAGE).glob("*.proto")
    )
    with tempfile.TemporaryDirectory() as raw:
        raw_dir = Path(raw)
        args = ["grpc_tools.protoc"]
        args += [f"-I{d}" for d in _include_dirs()]
        plugins = Path(sys.executable).parent
        args += [
            f"--plugin=protoc-gen-mypy={plugins / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={plugins / 'protoc-gen-mypy_grpc'}",
            f"--python_out={raw_dir}",
            f"--mypy_out=quiet:{raw_dir}",
            f"--grpc_python_out={raw_dir}",
            f"--mypy_grpc_out=quiet:{raw_dir}",
        ]
        if protoc.main([*args, *protos]) != 0:
            raise SystemExit("protoc failed")
        into.mkdir(parents=True, exist_ok=True)
        for stale in into.glob("*_pb2*.py*"):
            stale.unlink()
        # protoc writes a *_pb2_grpc module for every file; only those with a service need one.
        services = {
            Path(proto).stem
            for proto in protos
            if re.search(r"^service\s", (PROTO_ROOT / proto).read_text(), re.MULTILINE)
        }
        for produced in sorted((raw_dir / PROTO_PACKAGE).iterdir()):
            stem, grpc_module, _ = produced.name.partition("_pb2_grpc.")
            if grpc_module and stem not in services:
                continue
            text = produced.read_text()
            for old, new in IMPORT_REWRITES:
                text = text.replace(old, new)
            (into / produced.name).write_text(text)
        (into / "__init__.py").write_text('"""Generated from proto/txguard/v1: do not edit."""\n')


def check() -> int:
    with tempfile.TemporaryDirectory() as fresh_raw:
        fresh = Path(fresh_raw)
        generate(fresh)
        names = {p.name for p in fresh.iterdir()} | {
            p.name for p in OUTPUT_DIR.iterdir() if p.suffix in {".py", ".pyi"}
        }
        stale = sorted(
            name
            for name in names
            if not (fresh / name).exists()
            or not (OUTPUT_DIR / name).exists()
            or not filecmp.cmp(fresh / name, OUTPUT_DIR / name, shallow=False)
        )
    if stale:
        print(
            "generated protobuf code is stale: " + ", ".join(stale) + "; run `make proto`",
            file=sys.stderr,
        )
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if generated code is stale")
    args = parser.parse_args()
    if args.check:
        return check()
    generate(OUTPUT_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
