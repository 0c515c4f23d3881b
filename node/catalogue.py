"""The node's dataset catalogue: which table holds each dataset, and what each field may become.

Loaded from the node config and validated at start-up, so that a query can only ever touch columns
named here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from domain.errors import ConfigError
from infra.config import Section


class FieldType(StrEnum):
    STRING = "string"
    NUMBER = "number"
    DATE = "date"


# Generalisations each field type supports; "" is the value as stored.
GENERALISATIONS: dict[FieldType, frozenset[str]] = {
    FieldType.STRING: frozenset({""}),
    FieldType.NUMBER: frozenset({"", "band5", "band10"}),
    FieldType.DATE: frozenset({"", "day", "week", "month", "year"}),
}


# The group a value falls in when the mapping table does not list it.
UNMAPPED = "(unmapped)"


@dataclass(frozen=True)
class Mapping:
    """A generalisation through a table in the data's database (a place to its district): the
    value in `value` of the row whose `key` equals the field's value."""

    # The mapping table, in the data's database.
    table: str
    # Its column holding the field's values.
    key: str
    # Its column holding what each value generalises to.
    value: str


@dataclass(frozen=True)
class FieldSpec:
    name: str
    # The table's column holding the field (default: the field's name).
    column: str
    # string, number or date.
    type: FieldType
    # What the field may be generalised to: "" (as stored), band5 and band10 for numbers, day,
    # week, month and year for dates, and the names under `maps` (default: [""]).
    generalisations: frozenset[str]
    # Generalisations through mapping tables in the data's database, by name (string fields
    # only); a tuple, so that a field stays hashable (statements are cached by shape).
    maps: tuple[tuple[str, Mapping], ...] = ()

    def mapping(self, generalisation: str) -> Mapping | None:
        """The mapping table behind `generalisation`, if it goes through one."""
        return dict(self.maps).get(generalisation)


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset is resident-linked (each row belongs to a resident: the consent filter applies
    and k counts distinct residents) or observational (public-space observations such as traffic
    counts, with no resident id: agreements and minimisation apply, k counts records)."""

    name: str
    # The table (or view) holding the dataset, in the data source.
    table: str
    # The column holding the resident's id (resident-linked datasets only).
    resident_column: str
    # The category of personal data, as agreements and consents name it.
    data_category: str
    # The dataset's fields, by name: the only columns a query may touch.
    fields: dict[str, FieldSpec]
    # From `kind`: "resident-linked" (each row is a resident's: consent filter, k counts
    # residents) or "observational" (no resident id: k counts records).
    resident_linked: bool = True


@dataclass(frozen=True)
class Catalogue:
    # The datasets, by the name queries use.
    datasets: dict[str, DatasetSpec]

    @classmethod
    def from_config(cls, section: Section) -> Catalogue:
        """The catalogue a node's config describes, validated."""
        datasets = {}
        for name in section:
            ds = section.section(name)
            fields = {}
            fsec = ds.section("fields")
            for fname in fsec:
                f = fsec.section(fname)
                try:
                    ftype = FieldType(f.str("type"))
                except ValueError:
                    raise ConfigError(
                        f"{f.path}: datasets.{name}.fields.{fname}.type must be one of "
                        f"{', '.join(t.value for t in FieldType)}"
                    ) from None
                maps = _maps(f, f"datasets.{name}.fields.{fname}", ftype)
                gens = frozenset(f.strs("generalisations", [""]))
                bad = gens - GENERALISATIONS[ftype] - {g for g, _ in maps}
                if bad:
                    raise ConfigError(
                        f"{f.path}: datasets.{name}.fields.{fname}: generalisations {sorted(bad)} "
                        f"are not available for {ftype.value} fields"
                        + ("" if maps else " (string fields take one through a mapping table)")
                    )
                fields[fname] = FieldSpec(fname, f.str("column", fname), ftype, gens, maps)
            if not fields:
                raise ConfigError(f"{section.path}: dataset {name} has no fields")
            kind = ds.str("kind", "resident-linked")
            if kind not in ("resident-linked", "observational"):
                raise ConfigError(
                    f"{section.path}: datasets.{name}.kind must be resident-linked or observational"
                )
            linked = kind == "resident-linked"
            datasets[name] = DatasetSpec(
                name=name,
                table=ds.str("table"),
                resident_column=ds.str("resident_column") if linked else "",
                resident_linked=linked,
                data_category=ds.str("data_category"),
                fields=fields,
            )
        return cls(datasets)


def _maps(f: Section, where: str, ftype: FieldType) -> tuple[tuple[str, Mapping], ...]:
    """`[…fields.NAME.maps.GENERALISATION]` tables: table, key, value."""
    section = f.section("maps", required=False)
    maps = []
    for gen in section:
        if ftype is not FieldType.STRING:
            raise ConfigError(f"{f.path}: {where}.maps: only string fields map through a table")
        if gen in GENERALISATIONS[ftype] or not gen.isidentifier():
            raise ConfigError(f"{f.path}: {where}.maps.{gen}: not a name for a generalisation")
        m = section.section(gen)
        maps.append((gen, Mapping(m.str("table"), m.str("key"), m.str("value"))))
    return tuple(sorted(maps))


def data_tables(catalogue: Catalogue) -> dict[str, tuple[str, frozenset[str]]]:
    """What the data source must hold, by what needs it: each dataset's table with the columns
    the catalogue names, and each mapping table with its key and value columns."""
    tables = {}
    for name, ds in catalogue.datasets.items():
        columns = [f.column for f in ds.fields.values()]
        tables[name] = (
            ds.table,
            frozenset(columns + ([ds.resident_column] if ds.resident_linked else [])),
        )
        for f in ds.fields.values():
            for gen, m in f.maps:
                tables[f"{name} ({f.name} -> {gen})"] = (m.table, frozenset({m.key, m.value}))
    return tables
