"""List functions of the project's own packages that pass a line or parameter bound, or that are
public and say nothing of what they promise (`make lint` runs it).

Functions stay under about 60 lines and 7 parameters where a natural split or a value object exists;
the bounds here are the hard ceiling that fails the build: 80 lines, 7 parameters (self and cls
not counted). A Typer command takes one parameter per command-line option, so only its length counts.
Public functions and methods (of public classes) need a docstring; gRPC methods (CamelCase, as the
generated servicer bases name them) are documented in proto/ and dunder methods by Python."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGES = ("domain", "keys", "audit", "infra", "node", "broker", "edge", "cli")
MAX_LINES, MAX_PARAMS = 80, 7


def _is_cli_command(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for d in node.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        if isinstance(target, ast.Attribute) and target.attr in ("command", "callback"):
            return True
    return False


def _public_functions(tree: ast.Module) -> set[ast.AST]:
    """Module-level functions and methods of module-level classes whose names are public."""
    public: set[ast.AST] = set()
    for node in tree.body:
        members = node.body if isinstance(node, ast.ClassDef) else [node]
        if isinstance(node, ast.ClassDef) and node.name.startswith("_"):
            continue
        for member in members:
            if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef) and not (
                member.name.startswith("_") or member.name[0].isupper()
            ):
                public.add(member)
    return public


def offenders(root: Path) -> list[str]:
    """One line per function of the packages under `root` that passes a bound or lacks a docstring."""
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            tree = ast.parse(path.read_text(), str(path))
            public = _public_functions(tree)
            for node in ast.walk(tree):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                args = node.args
                params = [*args.posonlyargs, *args.args, *args.kwonlyargs]
                count = len([a for a in params if a.arg not in ("self", "cls")])
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                where = f"{path.relative_to(root)}:{node.lineno} {node.name}"
                if lines > MAX_LINES:
                    found.append(f"{where}: {lines} lines (at most {MAX_LINES})")
                if count > MAX_PARAMS and not _is_cli_command(node):
                    found.append(f"{where}: {count} parameters (at most {MAX_PARAMS})")
                if node in public and ast.get_docstring(node) is None:
                    found.append(f"{where}: public, without a docstring saying what it promises")
    return found


def main() -> int:
    found = offenders(Path(__file__).resolve().parent.parent)
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
