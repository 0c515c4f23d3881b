"""The node's dataset catalogue: which table holds each dataset, and what each field may become.

Loaded from the node config and validated at start-up, so that a query can only ever touch columns
named here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from federation.config import Section
from federation.errors import ConfigError


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


@dataclass(frozen=True)
class FieldSpec:
    name: str
    column: str
    type: FieldType
    generalisations: frozenset[str]


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset is resident-linked (each row belongs to a resident: the consent filter applies
    and k counts distinct residents) or observational (public-space observations such as traffic
    counts, with no resident id: agreements and minimisation apply, k counts records)."""

    name: str
    table: str
    resident_column: str
    data_category: str
    fields: dict[str, FieldSpec]
    resident_linked: bool = True


@dataclass(frozen=True)
class Catalogue:
    datasets: dict[str, DatasetSpec]

    @classmethod
    def from_config(cls, section: Section) -> Catalogue:
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
                gens = frozenset(f.strs("generalisations", [""]))
                bad = gens - GENERALISATIONS[ftype]
                if bad:
                    raise ConfigError(
                        f"{f.path}: datasets.{name}.fields.{fname}: generalisations {sorted(bad)} "
                        f"are not available for {ftype.value} fields"
                    )
                fields[fname] = FieldSpec(fname, f.str("column", fname), ftype, gens)
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
