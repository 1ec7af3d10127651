"""Where each field of ``shield.config.model`` comes from in a TOML file: declared once, on the field.

A field's TOML key follows the naming rule (``heartbeat_interval`` is read from
``heartbeat-interval``) unless the field says otherwise in its ``metadata``, with one of the
helpers below, next to its declaration:

- ``key("tokens")``: a value read from a key of another name (``token_hashes``);
- ``table()`` / ``table("name")``: a sub-table (``[dmz.cluster]``) read into a nested dataclass;
- ``tables("service")``: an array of tables (``[[dmz.service]]``), a tuple of dataclasses;
- ``inline("keepalive-")``: a nested dataclass whose keys sit in this very table, each with the
  prefix (``keepalive-interval`` fills ``keepalive.interval``);
- ``not_in_file()``: not read from the file at all (``source``).

The loader takes the keys it accepts in a table from ``table_keys``, so a key exists exactly when
a field declares it. The order is the one a TOML file is written in: the table's own keys in
field order (inline ones expanded where their field is), then its sub-tables, then its arrays of
tables. Unknown-key messages list the keys in that order.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Place",
    "TomlKey",
    "key",
    "table",
    "tables",
    "inline",
    "not_in_file",
    "Entry",
    "toml_key",
    "table_entries",
    "table_keys",
    "nested_class",
]

#: The name under which a field's ``metadata`` holds its ``TomlKey``.
METADATA = "shield.toml"


class Place(enum.Enum):
    """How a field appears in the table of its dataclass."""

    VALUE = "value"  # key = value (a string, number, array, or a table read whole: connectors)
    TABLE = "table"  # [parent.key], read into the field's dataclass
    TABLES = "tables"  # [[parent.key]], read into a tuple of the field's dataclass
    INLINE = "inline"  # the keys of the field's dataclass, prefixed, in the parent's table
    NONE = "none"  # not in the file


@dataclass(frozen=True, slots=True)
class TomlKey:
    name: str | None  # the key (None: by the naming rule); for INLINE the prefix; "" for NONE
    place: Place


def _metadata(name: str | None, place: Place) -> Mapping[str, TomlKey]:
    return {METADATA: TomlKey(name, place)}


def key(name: str) -> Mapping[str, TomlKey]:
    """A value read from the key ``name``, which does not follow the naming rule."""
    return _metadata(name, Place.VALUE)


def table(name: str | None = None) -> Mapping[str, TomlKey]:
    """A sub-table read into the field's dataclass (key: ``name``, or by the naming rule)."""
    return _metadata(name, Place.TABLE)


def tables(name: str) -> Mapping[str, TomlKey]:
    """An array of tables ``[[parent.name]]``, read into a tuple of the field's dataclass."""
    return _metadata(name, Place.TABLES)


def inline(prefix: str = "") -> Mapping[str, TomlKey]:
    """The nested dataclass's keys, each with ``prefix``, sit in the parent's table."""
    return _metadata(prefix, Place.INLINE)


def not_in_file() -> Mapping[str, TomlKey]:
    """Set by the loader, never read from a key (``source``)."""
    return _metadata("", Place.NONE)


def _rule(field_name: str) -> str:
    return field_name.replace("_", "-")


def toml_key(field: dataclasses.Field[Any]) -> tuple[str, Place]:
    """The field's key (or inline prefix) and place: from its metadata, else a value under the
    naming rule."""
    declared = field.metadata.get(METADATA, TomlKey(None, Place.VALUE))
    if not isinstance(declared, TomlKey):
        raise TypeError(f"{field.name}: metadata[{METADATA!r}] is not a TomlKey")
    return (_rule(field.name) if declared.name is None else declared.name), declared.place


def nested_class(cls: type, field: dataclasses.Field[Any]) -> type:
    """The dataclass a TABLE, TABLES or INLINE field holds (``X``, ``X | None``, ``tuple[X, ...]``)."""
    hint = typing.get_type_hints(cls)[field.name]
    while not dataclasses.is_dataclass(hint):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None) and arg is not Ellipsis]
        if len(args) != 1 or typing.get_origin(hint) not in (tuple, typing.Union, types.UnionType):
            raise TypeError(f"{cls.__name__}.{field.name}: {hint} does not hold one dataclass")
        hint = args[0]
    assert isinstance(hint, type)
    return hint


@dataclass(frozen=True, slots=True)
class Entry:
    """A key of a table and what it fills."""

    key: str
    path: tuple[str, ...]  # field names from the table's dataclass: ("keepalive", "interval")
    place: Place  # VALUE, TABLE or TABLES (inline keys are VALUEs with a longer path)


def _entries(cls: type) -> Iterator[tuple[str, tuple[str, ...], Place]]:
    """Each key of ``cls``'s table with the field path it fills, inline fields expanded."""
    later: list[tuple[str, tuple[str, ...], Place]] = []
    for field in dataclasses.fields(cls):
        name, place = toml_key(field)
        if place is Place.VALUE:
            yield name, (field.name,), place
        elif place is Place.INLINE:
            for inner, path, inner_place in _entries(nested_class(cls, field)):
                if inner_place is not Place.VALUE:
                    raise TypeError(f"{cls.__name__}.{field.name}: an inline dataclass has only values")
                yield name + inner, (field.name, *path), inner_place
        elif place is not Place.NONE:
            later.append((name, (field.name,), place))
    yield from (entry for entry in later if entry[2] is Place.TABLE)
    yield from (entry for entry in later if entry[2] is Place.TABLES)


@functools.cache
def table_entries(cls: type) -> tuple[Entry, ...]:
    """Each key a table read into ``cls`` accepts, with the field it fills, in the order of
    ``table_keys``. An empty key, or two fields declaring one key, is a ``TypeError``."""
    found: dict[str, Entry] = {}
    for name, path, place in _entries(cls):
        if not name:
            raise TypeError(f"{cls.__name__}.{'.'.join(path)}: empty TOML key")
        if name in found:
            earlier = ".".join(found[name].path)
            raise TypeError(f"{cls.__name__}: key {name!r} declared by {earlier} and {'.'.join(path)}")
        found[name] = Entry(name, path, place)
    return tuple(found.values())


def table_keys(cls: type) -> tuple[str, ...]:
    """The keys a table read into ``cls`` accepts, in the order unknown-key messages list them."""
    return tuple(entry.key for entry in table_entries(cls))
