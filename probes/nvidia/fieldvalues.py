"""Decoding the array ``nvmlDeviceGetFieldValues`` fills, in one pass.

Reading each entry through ctypes attributes builds a Python object per member and one for
the value union: about 22 us for 25 fields, most of the process's own cost of reading a GPU's
counters (benchmarks/overhead.py). The array is plain C memory laid out as pynvml's
``c_nvmlFieldValue_t`` says, so one ``struct`` pass over it reads the same numbers in about
3 us. The layout is taken from the binding's own structure (offsets and sizes), and a binding
whose structure does not match what is expected is read member by member as before.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Iterator
from typing import Any

# nvmlValueType_t -> the member of c_nvmlValue_t that holds the value
VALUE_MEMBER = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal",
                6: "usVal"}

_layouts: dict[Any, tuple[struct.Struct, dict[int, struct.Struct]] | None] = {}


def _layout(entry: Any) -> tuple[struct.Struct, dict[int, struct.Struct]] | None:
    """(the struct of one entry: fieldId, valueType, nvmlReturn, the value's raw bytes;
    valueType -> the struct of its value), or None where ``entry`` is not laid out as
    expected."""
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
    head = struct.Struct(f"@I{vtype.offset - 4}xII{value.offset - ret.offset - 4}x"
                         f"{value.size}s{ctypes.sizeof(entry) - value.offset - value.size}x")
    values = {t: struct.Struct(f"@{codes[t]}") for t in VALUE_MEMBER}
    if head.size != ctypes.sizeof(entry) or any(
            v.size != members[t] or v.size > value.size for t, v in values.items()):
        return None
    return head, values


def decode(values: Any) -> Iterator[tuple[int, int, int, float | int | None]]:
    """(field id, nvmlReturn, value type, value) for each entry of a filled
    ``c_nvmlFieldValue_t`` array; the value is None for a type this code does not know."""
    entry = getattr(values, "_type_", None)
    if entry not in _layouts:
        _layouts[entry] = _layout(entry) if isinstance(entry, type) else None
    layout = _layouts[entry]
    if layout is None:  # not a ctypes array of the expected structure
        for v in values:
            vtype = int(v.valueType)
            member = VALUE_MEMBER.get(vtype)
            yield (int(v.fieldId), int(v.nvmlReturn), vtype,
                   getattr(v.value, member) if member is not None else None)
        return
    head, by_type = layout
    for fid, vtype, ret, raw in head.iter_unpack(memoryview(values).cast("B")):
        v = by_type.get(vtype)
        yield fid, ret, vtype, v.unpack_from(raw)[0] if v is not None else None
