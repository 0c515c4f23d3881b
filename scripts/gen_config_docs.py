"""Generate docs/config.md, the reference of every node and broker config key, so it cannot drift.

    python scripts/gen_config_docs.py           # rewrite docs/config.md
    python scripts/gen_config_docs.py --check   # exit 1 (saying why) if it is stale or incomplete

Two sources, checked against each other:
- the config dataclasses (NodeConfig, BrokerConfig, the PartyConfig they extend and the sections
  they hold: TlsFiles, DuckDBSettings, LimitsConfig, Catalogue, ...), walked field by field: each
  field is a key (ALIASES names the few whose key differs), its description the comment above it;
- the real loaders (NodeConfig.load, BrokerConfig.load) run over the example configs in
  deploy/config/, with infra.config.Section's accessors recorded: which keys they read, as what TOML
  type, with what default.
A field no loader read from the examples, a key the loader read that no field declares, a field
without a comment, or an example key nobody reads is an error: a new option needs a comment, an
entry in the examples and a regenerated page (tests/unit/infra/test_config_docs.py checks all this).
"""

from __future__ import annotations

import ast
import collections.abc
import dataclasses
import functools
import inspect
import sys
import textwrap
import tomllib
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.config import BrokerConfig
from infra.config import PartyConfig, Section
from node.config import NodeConfig

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "config.md"
EXAMPLES = ROOT / "deploy" / "config"

# Fields whose TOML key is not their name: a dotted key, "" for a section read into the table that
# holds it (a flattened section, or a map whose entries are that table's keys), None for a field
# that is not read from the file at all.
ALIASES: dict[tuple[str, str], str | None] = {
    ("BrokerConfig", "broker_id"): "broker",
    ("PartyConfig", "trust_bundle"): "trust.bundle",
    ("PartyConfig", "authority_key"): "trust.authority_key",
    ("NodeConfig", "catalogue"): "datasets",
    ("Catalogue", "datasets"): "",
    ("DatasetSpec", "name"): None,  # the table's own name
    ("DatasetSpec", "resident_linked"): "kind",
    ("FieldSpec", "name"): None,  # the table's own name
    ("TransferRules", "home"): None,  # the node's jurisdiction, from the trust bundle
    ("TransferRules", "rules"): "",
    ("LimitsConfig", "defaults"): "",
}
# Keys a dataclass declares that one kind of config does not read (the loader refuses them).
NOT_READ: dict[str, set[str]] = {"NodeConfig": {"limits.partners"}}
# What the name of each entry of a map (a table of tables, or of values) stands for.
MAP_LABELS = {
    "datasets": "<dataset>",
    "datasets.<dataset>.fields": "<field>",
    "datasets.<dataset>.fields.<field>.maps": "<generalisation>",
    "transfers": "<jurisdiction>",
    "limits.partners": "<partner>",
}
# Defaults the loaders compute rather than pass to an accessor.
DEFAULT_NOTES = {
    "data": "a DuckDB file beside a SQLite `database`; the `database` itself when PostgreSQL",
    "datasets.<dataset>.resident_column": "required for resident-linked datasets",
    "datasets.<dataset>.fields.<field>.column": "the field's name",
    "limits.partners.<partner>.queries_per_minute": "the `[limits]` value",
    "limits.partners.<partner>.max_concurrent": "the `[limits]` value",
    "limits.partners.<partner>.burst": "the `[limits]` value",
}
TOML_TYPES = {
    "str": "string",
    "int": "integer",
    "float": "number",
    "strs": "list of strings",
    "path_": "path",
    "database_url": "database URL",
}
ROOTS: tuple[tuple[str, type[PartyConfig], Callable[[Path], object], str], ...] = (
    ("NodeConfig", NodeConfig, NodeConfig.load, "node-*.toml"),
    ("BrokerConfig", BrokerConfig, BrokerConfig.load, "broker*.toml"),
)


@dataclass(frozen=True)
class Declared:
    """A key as the dataclasses declare it: `leaf` is a value, else a table (or a map of them)."""

    key: str
    owner: str  # Class.field
    description: str
    leaf: bool


@dataclass
class Reads:
    """What a loader read from one config file: leaf keys (normalised: map entries as <label>) with
    their accessor and default, the same keys as written (`raw`), and the tables it opened."""

    leaves: dict[str, tuple[str, object]] = field(default_factory=dict)
    raw: set[str] = field(default_factory=set)
    maps: set[str] = field(default_factory=set)
    depth: int = 0

    def normalise(self, raw_key: str) -> str:
        """`raw_key` with each map entry's name replaced by the map's label."""
        parts, raw_prefix, norm = raw_key.split("."), "", ""
        for part in parts:
            name = MAP_LABELS.get(norm, "<name>") if raw_prefix in self.maps else part
            raw_prefix = f"{raw_prefix}.{part}" if raw_prefix else part
            norm = f"{norm}.{name}" if norm else name
        return norm


@contextmanager
def recorded(reads: Reads) -> Iterator[None]:
    """Record into `reads` every key Section's accessors read while the block runs."""
    names = [*TOML_TYPES, "__iter__", "reject_unknown"]
    originals = {name: getattr(Section, name) for name in names}

    def leaf(name: str) -> Callable[..., Any]:
        original = originals[name]

        def accessor(self: Section, key: str, *args: Any, **kwargs: Any) -> Any:
            if reads.depth == 0:  # path_ and database_url read through str: count them once
                raw = self.prefix + key
                default = args[0] if args else kwargs.get("default")
                reads.raw.add(raw)
                reads.leaves.setdefault(reads.normalise(raw), (name, default))
            reads.depth += 1
            try:
                return original(self, key, *args, **kwargs)
            finally:
                reads.depth -= 1

        return accessor

    def iterate(self: Section) -> Any:
        reads.maps.add(self.prefix.removesuffix("."))
        return originals["__iter__"](self)

    try:
        for name in TOML_TYPES:
            setattr(Section, name, leaf(name))
        Section.__iter__ = iterate  # type: ignore[method-assign]
        # Keys nobody reads are reported below, with the others, not raised one at a time.
        Section.reject_unknown = lambda self: None  # type: ignore[method-assign]
        yield
    finally:
        for name, original in originals.items():
            setattr(Section, name, original)


def read_keys(load: Callable[[Path], object], path: Path) -> Reads:
    """Load `path` with the real loader `load`, recording what it reads."""
    reads = Reads()
    with recorded(reads):
        load(path)
    return reads


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """The comment lines directly above each annotated field of `cls`, joined into one text."""
    lines = textwrap.dedent(inspect.getsource(cls)).splitlines()
    comments = {}
    for node in ast.parse("\n".join(lines)).body[0].body:  # type: ignore[attr-defined]
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            above: list[str] = []
            i = node.lineno - 2
            while i >= 0 and lines[i].strip().startswith("#"):
                above.insert(0, lines[i].strip().lstrip("#").strip())
                i -= 1
            comments[node.target.id] = " ".join(above)
    return comments


def _declaring_class(cls: type, name: str) -> type:
    for klass in reversed(cls.__mro__):
        if name in getattr(klass, "__annotations__", {}):
            return klass
    return cls


def _map_value(hint: Any) -> Any | None:
    """The value type of a map field (dict[str, V], Mapping[str, V], tuple[tuple[str, V], ...])."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (dict, collections.abc.Mapping) and args and args[0] is str:
        return args[1]
    pair = typing.get_args(args[0]) if origin is tuple and len(args) == 2 else ()
    if args[-1:] == (Ellipsis,) and len(pair) == 2 and pair[0] is str:
        return pair[1]
    return None


def declared(cls: type, prefix: str = "", only: type | None = None) -> list[Declared]:
    """Every key the dataclass `cls` declares under `prefix`, in field order; with `only`, just the
    fields `only` itself declares (not those it inherits)."""
    hints = typing.get_type_hints(cls)
    out: list[Declared] = []
    for f in dataclasses.fields(cls):
        owner = _declaring_class(cls, f.name)
        if only is not None and owner is not only:
            continue
        alias = ALIASES.get((owner.__name__, f.name), f.name)
        if alias is None:
            continue
        key = f"{prefix}.{alias}".strip(".") if alias else prefix
        where = f"{owner.__name__}.{f.name}"
        text = field_comments(owner).get(f.name, "")
        hint, value = hints[f.name], _map_value(hints[f.name])
        if value is not None:
            entry = f"{key}.{MAP_LABELS.get(key, '<name>')}"
            is_table = dataclasses.is_dataclass(value)
            out.append(Declared(entry, where, text, leaf=not is_table))
            if is_table:
                out += declared(value, entry)
        elif isinstance(hint, type) and dataclasses.is_dataclass(hint):
            if alias:
                out.append(Declared(key, where, text, leaf=False))
            out += declared(hint, key)
        else:
            out.append(Declared(key, where, text, leaf=True))
    return out


def examples(pattern: str) -> list[Path]:
    """The example configs in deploy/config/ that one loader reads."""
    return sorted(EXAMPLES.glob(pattern))


def toml_leaves(data: dict[str, Any], prefix: str = "") -> set[str]:
    """Every key of a TOML document that holds a value (not a table), dotted."""
    out: set[str] = set()
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        out |= toml_leaves(v, key) if isinstance(v, dict) else {key}
    return out


def problems() -> tuple[list[str], dict[str, Reads]]:
    """What keeps the page and the examples from being complete, and each root's reads."""
    errors: list[str] = []
    reads_by_root: dict[str, Reads] = {}
    for name, cls, load, pattern in ROOTS:
        files = examples(pattern)
        if not files:
            errors.append(f"no example {pattern} in {EXAMPLES}")
            continue
        wanted = {d.key: d for d in declared(cls) if d.leaf and not _not_read(name, d.key)}
        for d in declared(cls):  # every field, read or not, is documented
            if not d.description:
                errors.append(f"{d.owner} (key {d.key}) has no comment above it to document it")
        for path in files:
            reads = read_keys(load, path)
            reads_by_root.setdefault(name, reads)
            rel = path.relative_to(ROOT)
            in_file = toml_leaves(tomllib.loads(path.read_text()))
            for key in sorted(set(wanted) - {reads.normalise(k) for k in in_file}):
                errors.append(f"{rel} does not set {key} ({wanted[key].owner})")
            for key in sorted(set(wanted) - set(reads.leaves)):
                errors.append(f"{name}'s loader never reads {key} ({wanted[key].owner})")
            for key in sorted(set(reads.leaves) - set(wanted)):
                errors.append(
                    f"{name}'s loader reads {key} but no dataclass field declares it "
                    "(add the field, or an alias in scripts/gen_config_docs.py)"
                )
            unread = in_file - reads.raw
            errors += [
                f"{rel} sets {key}, which the loader does not read" for key in sorted(unread)
            ]
    return list(dict.fromkeys(errors)), reads_by_root


def _default(key: str, reads: list[Reads]) -> str:
    if key in DEFAULT_NOTES:
        return DEFAULT_NOTES[key]
    found = [r.leaves[key][1] for r in reads if key in r.leaves]
    if any(default is None for default in found):
        return "required"
    values = sorted({repr(default).replace("'", '"') for default in found})
    return " or ".join(f"`{v}`" for v in values)


def _row(d: Declared, reads: list[Reads]) -> str:
    text = d.description.replace("|", "\\|")
    if not d.leaf:
        label = d.key.rsplit(".", 1)[-1]
        kind = f"table per {label}" if label.startswith("<") else "table"
        return f"| `[{d.key}]` | {kind} | | {text} |"
    accessors = sorted({r.leaves[d.key][0] for r in reads if d.key in r.leaves})
    kind = " or ".join(TOML_TYPES[a] for a in accessors)
    return f"| `{d.key}` | {kind} | {_default(d.key, reads)} | {text} |"


def _table(title: str, intro: str, rows: list[Declared], reads: list[Reads]) -> list[str]:
    return [
        f"## {title}",
        "",
        intro,
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
        *(_row(d, reads) for d in rows),
        "",
    ]


def render(reads_by_root: dict[str, Reads]) -> str:
    """The page: the keys every party has, then the node's and the broker's own."""
    node, broker = reads_by_root["NodeConfig"], reads_by_root["BrokerConfig"]
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by scripts/gen_config_docs.py from the config dataclasses and their loaders;",
        "     do not edit: change the field's comment and run `python scripts/gen_config_docs.py`. -->",
        "",
        "Node and broker configs are TOML files (`citybroker node serve --config FILE`,",
        "`citybroker broker serve --config FILE`). Relative paths and SQLite/DuckDB URLs are",
        "relative to the config file. Top-level scalar keys can be overridden by `CITYBROKER_<KEY>`",
        "environment variables (`CITYBROKER_LISTEN`, `CITYBROKER_DATABASE`, ...). Examples that set",
        "every key: [deploy/config/](../deploy/config/). `<name>` in a key stands for a name you",
        "choose (a dataset, a field, a partner id, ...).",
        "",
    ]
    lines += _table(
        "Every party (node and broker)",
        "From `PartyConfig` (infra/config.py).",
        declared(PartyConfig),
        [node, broker],
    )
    lines += _table(
        "Node",
        "From `NodeConfig` (node/config.py) and the sections it holds.",
        [d for d in declared(NodeConfig, only=NodeConfig) if not _not_read("NodeConfig", d.key)],
        [node],
    )
    lines += _table(
        "Broker",
        "From `BrokerConfig` (broker/config.py) and the sections it holds.",
        declared(BrokerConfig, only=BrokerConfig),
        [broker],
    )
    return "\n".join(lines).rstrip() + "\n"


def _not_read(root: str, key: str) -> bool:
    return any(key == s or key.startswith(s + ".") for s in NOT_READ.get(root, set()))


def main(argv: list[str]) -> int:
    """Write docs/config.md (or with --check, compare); 1 and the reasons when anything is off."""
    errors, reads = problems()
    if errors:
        print("config reference cannot be generated:", *errors, sep="\n  ", file=sys.stderr)
        return 1
    page = render(reads)
    if "--check" in argv:
        if not DOC.exists() or DOC.read_text() != page:
            print(f"{DOC} is stale: run python scripts/gen_config_docs.py")
            return 1
        return 0
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(page)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
