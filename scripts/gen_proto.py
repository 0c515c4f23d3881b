"""Generate the Python wire code from proto/ (beside the .proto files), or check that it has not drifted.

python scripts/gen_proto.py          # regenerate
python scripts/gen_proto.py --check  # fail if the checked-in code differs from a fresh build
"""

from __future__ import annotations

import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent.parent / "proto"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out: Path) -> None:
    include = Path(protoc.__file__).parent / "_proto"
    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    for pkg in {Path(s).parent for s in sources}:
        for d in [pkg, *pkg.parents][:-1]:
            (out / d / "__init__.py").touch()


def generated_files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.name.endswith(GENERATED_SUFFIXES)}


def main() -> None:
    if "--check" not in sys.argv[1:]:
        generate(PROTO_ROOT)
        return
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        want, have = generated_files(fresh), generated_files(PROTO_ROOT)
        drift = sorted(str(p) for p in want ^ have)
        drift += sorted(
            str(p) for p in want & have if not filecmp.cmp(fresh / p, PROTO_ROOT / p, shallow=False)
        )
    if drift:
        sys.exit("generated code drifted from proto/ (run `make proto`): " + ", ".join(drift))
    print("generated code matches proto/")


if __name__ == "__main__":
    main()
