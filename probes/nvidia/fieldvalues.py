"""Decoding the array ``nvmlDeviceGetFieldValues`` fills, in one pass.

Reading each entry through ctypes attributes builds a Python object per member and one for
the value union: about 22 us for 25 fields, most of the process's own cost of reading a GPU's
counters (benchmarks/overhead.py). The array is plain C memory laid out as pynvml's
``c_nvmlFieldValue_t`` says, so one ``struct`` pass over it reads the same numbers in about
3 us. The layout is taken from the binding's own structure (offsets and sizes), and a binding
whose structure does not match what is expected is read member by member as before.

An array of one length read again (every poll asks the same fields) is read in one
``unpack`` of the whole array, with each value in the type the entry had the last time:
the types come back in the same call and are compared, and a change falls back to the pass
per entry. The 126 NVLink entries of an H100, decoded into a list, took 15 us so against
35-39 us entry by entry (timeit on a 2-CPU VM).
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Iterator
from typing import Any, NamedTuple

# nvmlValueType_t -> the member of c_nvmlValue_t that holds the value
VALUE_MEMBER = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal",
                6: "usVal"}



class _Layout(NamedTuple):
    head: struct.Struct  # one entry: fieldId, valueType, nvmlReturn, the value's raw bytes
    values: dict[int, struct.Struct]  # valueType -> the struct of its value
    entries: dict[int, str]  # valueType -> the format of one entry holding such a value


_layouts: dict[Any, _Layout | None] = {}
# (entry structure, array length) -> (the value types last seen, in order; the struct that
# reads the whole array with them)
_whole: dict[tuple[Any, int], tuple[tuple[int, ...], struct.Struct]] = {}
_MAX_WHOLE = 64  # distinct (structure, length) pairs kept: a poll asks a few


def _layout(entry: Any) -> _Layout | None:
    """How ``entry`` is read, or None where it is not laid out as expected."""
    try:
        fid, vtype, ret, value = (getattr(entry, n) for n in
                                  ("fieldId", "valueType", "nvmlReturn", "value"))
        union = dict(entry._fields_)["value"]
        members = {t: getattr(union, name).size for t, name in VALUE_MEMBER.items()}
        codes = {t: dict(union._fields_)[name]._type_ for t, name in VALUE_MEMBER.items()}
    except (AttributeError, KeyError, TypeError):
        return None
    if (fid.offset, fid.size, vtype.size, ret.size) != (0, 4, 4, 4) \
            or ret.offset != vtype.offset + 4 or value.offset < ret.offset + 4:
        return None
    size = ctypes.sizeof(entry)
    prefix = f"I{vtype.offset - 4}xII{value.offset - ret.offset - 4}x"
    head = struct.Struct(f"@{prefix}{value.size}s{size - value.offset - value.size}x")
    values = {t: struct.Struct(f"@{codes[t]}") for t in VALUE_MEMBER}
    if head.size != size or any(
            v.size != members[t] or v.size > value.size for t, v in values.items()):
        return None
    entries = {t: f"{prefix}{codes[t]}{size - value.offset - members[t]}x" for t in VALUE_MEMBER}
    return _Layout(head, values, entries)


def _flat(values: Any) -> tuple | None:
    """The array read in one unpack, (fieldId, valueType, nvmlReturn, value) per entry in
    turn, where an array of its length was read before and its value types are unchanged;
    else None."""
    whole = _whole.get((getattr(values, "_type_", None), len(values)))
    if whole is None:
        return None
    types, reader = whole
    flat = reader.unpack(memoryview(values).cast("B"))
    return flat if flat[1::4] == types else None


def decode(values: Any) -> Iterator[tuple[int, int, int, float | int | None]]:
    """(field id, nvmlReturn, value type, value) for each entry of a filled
    ``c_nvmlFieldValue_t`` array; the value is None for a type this code does not know."""
    entry = getattr(values, "_type_", None)
    if entry not in _layouts:
        _layouts[entry] = _layout(entry) if isinstance(entry, type) else None
    layout = _layouts[entry]
    if layout is None:  # not a ctypes array of the expected structure
        return _by_member(values)
    flat = _flat(values)
    if flat is not None:
        return zip(flat[0::4], flat[2::4], flat[1::4], flat[3::4], strict=True)
    out = []
    for fid, vtype, ret, raw in layout.head.iter_unpack(memoryview(values).cast("B")):
        v = layout.values.get(vtype)
        out.append((fid, ret, vtype, v.unpack_from(raw)[0] if v is not None else None))
    _learn((entry, len(values)), layout, [e[2] for e in out])
    return iter(out)


def answers(values: Any) -> list[float | int | None]:
    """Each entry's value, or None where the entry has an error of its own: what
    :func:`decode` gives, without the ids and types. An array read whole in which every
    entry succeeded (the usual case) is two slices of one unpack."""
    flat = _flat(values) if _layouts.get(getattr(values, "_type_", None)) else None
    if flat is not None and not any(flat[2::4]):
        return list(flat[3::4])
    return [value if ret == 0 else None for _, ret, _, value in decode(values)]


def _by_member(values: Any) -> Iterator[tuple[int, int, int, float | int | None]]:
    for v in values:
        vtype = int(v.valueType)
        member = VALUE_MEMBER.get(vtype)
        yield (int(v.fieldId), int(v.nvmlReturn), vtype,
               getattr(v.value, member) if member is not None else None)


def _learn(key: tuple[Any, int], layout: _Layout, types: list[int]) -> None:
    """Keep a struct that reads an array of ``key``'s length whole, its values in ``types``;
    none where a type is unknown or the native alignment would not match the structure's."""
    if any(t not in VALUE_MEMBER for t in types):
        _whole.pop(key, None)
        return
    reader = struct.Struct("@" + "".join(layout.entries[t] for t in types))
    if reader.size != layout.head.size * len(types):
        return
    if len(_whole) >= _MAX_WHOLE and key not in _whole:
        _whole.clear()
    _whole[key] = (tuple(types), reader)
