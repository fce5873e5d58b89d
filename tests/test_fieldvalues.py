"""probes/nvidia/fieldvalues.py: the one-pass decode reads what ctypes attributes read."""

from __future__ import annotations

import ctypes
from types import SimpleNamespace

import pynvml
import pytest

from gpuprobe.probes.nvidia import fieldvalues

# (valueType, member, value): every nvmlValueType_t, with values that tell the types apart
# (a negative signed value, a double, a 64-bit value beyond 32 bits, a ushort).
CASES = [
    (0, "dVal", 12.5),
    (1, "uiVal", 4_000_000_000),
    (2, "ulVal", 2**40 + 7),
    (3, "ullVal", 2**63 + 5),
    (4, "sllVal", -(2**40)),
    (5, "siVal", -17),
    (6, "usVal", 65_000),
]


def _filled() -> ctypes.Array:
    values = (pynvml.c_nvmlFieldValue_t * (len(CASES) + 2))()
    for i, (vtype, member, value) in enumerate(CASES):
        values[i].fieldId = 100 + i
        values[i].valueType = vtype
        values[i].timestamp = -1  # members the decode skips must not shift the others
        values[i].latencyUsec = 2**40
        setattr(values[i].value, member, value)
    values[len(CASES)].fieldId = 200  # a field with its own error status
    values[len(CASES)].nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
    values[len(CASES) + 1].fieldId = 201  # a value type newer than this code
    values[len(CASES) + 1].valueType = 99
    values[len(CASES) + 1].value.ullVal = 3
    return values


def _by_attributes(values) -> list[tuple]:
    out = []
    for v in values:
        member = fieldvalues.VALUE_MEMBER.get(int(v.valueType))
        out.append((int(v.fieldId), int(v.nvmlReturn), int(v.valueType),
                    getattr(v.value, member) if member else None))
    return out


def test_decode_matches_ctypes_attributes_for_every_value_type() -> None:
    values = _filled()
    decoded = list(fieldvalues.decode(values))
    assert decoded == _by_attributes(values)
    assert [d[3] for d in decoded[:len(CASES)]] == [c[2] for c in CASES]
    assert decoded[len(CASES)][1] == pynvml.NVML_ERROR_NOT_SUPPORTED
    assert decoded[-1] == (201, 0, 99, None)


def test_decode_uses_the_one_pass_layout_for_pynvml_structure() -> None:
    list(fieldvalues.decode(_filled()))
    assert fieldvalues._layouts[pynvml.c_nvmlFieldValue_t] is not None


def test_a_structure_laid_out_otherwise_is_read_member_by_member() -> None:
    class Shuffled(ctypes.Structure):  # value first: not the layout the decode expects
        _fields_ = [("value", pynvml.c_nvmlValue_t), ("fieldId", ctypes.c_uint32),
                    ("nvmlReturn", ctypes.c_uint32), ("valueType", ctypes.c_uint32)]

    values = (Shuffled * 2)()
    values[0].fieldId, values[0].valueType, values[0].value.sllVal = 5, 4, -3
    values[1].fieldId, values[1].nvmlReturn = 6, 3
    assert fieldvalues._layout(Shuffled) is None
    assert list(fieldvalues.decode(values)) == [(5, 0, 4, -3), (6, 3, 0, 0.0)]


@pytest.mark.parametrize("values", [[], [SimpleNamespace(
    fieldId=9, nvmlReturn=0, valueType=3, value=SimpleNamespace(ullVal=11))]])
def test_a_plain_sequence_is_read_member_by_member(values) -> None:
    assert list(fieldvalues.decode(values)) == [(v.fieldId, 0, 3, 11) for v in values]


def test_an_array_read_again_is_read_whole_and_a_changed_type_falls_back() -> None:
    known = (pynvml.c_nvmlFieldValue_t * len(CASES))()
    for i, (vtype, member, value) in enumerate(CASES):
        known[i].fieldId, known[i].valueType = 300 + i, vtype
        setattr(known[i].value, member, value)
    first = list(fieldvalues.decode(known))
    key = (pynvml.c_nvmlFieldValue_t, len(CASES))
    assert fieldvalues._whole[key][0] == tuple(c[0] for c in CASES)
    # read whole now: the same numbers, and new values are read, not remembered
    known[3].value.ullVal = 42
    again = list(fieldvalues.decode(known))
    assert again == _by_attributes(known) and again[3][3] == 42 and again != first
    # a field whose type changes (a driver update, an error) is read per entry and learnt
    known[1].valueType, known[1].value.dVal = 0, 2.25
    assert list(fieldvalues.decode(known)) == _by_attributes(known)
    assert fieldvalues._whole[key][0][1] == 0
    assert list(fieldvalues.decode(known)) == _by_attributes(known)
    # an array with an unknown type is never read whole
    mixed = _filled()
    list(fieldvalues.decode(mixed))
    assert (pynvml.c_nvmlFieldValue_t, len(mixed)) not in fieldvalues._whole
    assert list(fieldvalues.decode(mixed)) == _by_attributes(mixed)


def _answers_by_attributes(values) -> list:
    return [v if ret == 0 else None for _, ret, _, v in _by_attributes(values)]


def test_answers_are_the_values_with_errors_absent_read_whole_or_not() -> None:
    known = (pynvml.c_nvmlFieldValue_t * len(CASES))()
    for i, (vtype, member, value) in enumerate(CASES):
        known[i].fieldId, known[i].valueType = 400 + i, vtype
        setattr(known[i].value, member, value)
    key = (pynvml.c_nvmlFieldValue_t, len(CASES))
    fieldvalues._whole.pop(key, None)
    assert fieldvalues.answers(known) == [c[2] for c in CASES]  # not yet learnt: per entry
    assert key in fieldvalues._whole
    known[2].value.ulVal = 99
    assert fieldvalues.answers(known) == _answers_by_attributes(known)  # whole
    known[4].nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED  # an entry's own error: absent
    got = fieldvalues.answers(known)
    assert got == _answers_by_attributes(known) and got[4] is None and got[2] == 99
    mixed = _filled()  # an unknown value type: None, as decode gives it
    assert fieldvalues.answers(mixed) == _answers_by_attributes(mixed)
    assert fieldvalues.answers([]) == []
