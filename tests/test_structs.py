"""probes/nvidia/structs.py: one unpack reads what the members read, or the members are read."""

from __future__ import annotations

import ctypes
from types import SimpleNamespace

import pynvml
import pytest

from gpuprobe.probes.nvidia import structs


def _counting(base: type[ctypes.Structure]) -> tuple[type, list[str]]:
    """A subclass of ``base`` that records its member reads, as pynvml's structures make
    one Python call per read (their ``__getattribute__``)."""
    reads: list[str] = []

    class Counting(base):  # type: ignore[misc, valid-type]
        def __getattribute__(self, name: str):
            if not name.startswith("_"):
                reads.append(name)
            return super().__getattribute__(name)

    return Counting, reads


@pytest.mark.parametrize(("cls", "values"), [
    # offsets: timeStamp 0, pid 8, smUtil 12; asked in another order than laid out
    (pynvml.c_nvmlProcessUtilizationInfo_v1_t,
     {"pid": 4_000_000_000, "timeStamp": 2**63 + 3, "smUtil": 77}),
    (pynvml.c_nvmlProcessUtilizationSample_t,  # the older call's structure: pid first
     {"pid": 12, "timeStamp": 2**40, "smUtil": 100}),
    (pynvml.c_nvmlGpmMetric_t, {"nvmlReturn": 3, "value": -12.25}),
])
def test_pynvml_structures_are_read_in_one_unpack_with_the_members_values(cls, values) -> None:
    counting, reads = _counting(cls)
    obj = counting()
    for name, value in values.items():
        setattr(obj, name, value)
    names = tuple(values)
    reads.clear()
    got = structs.reader(counting, names)(obj)
    assert reads == []  # no member was read through the structure
    assert got == tuple(getattr(obj, n) for n in names) == tuple(values.values())
    assert structs.reader(counting, names) is structs.reader(counting, names)  # kept


def test_a_packed_structure_and_signed_members_are_read_at_their_offsets() -> None:
    class Packed(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("flag", ctypes.c_uint8), ("big", ctypes.c_int64),
                    ("small", ctypes.c_int16), ("ratio", ctypes.c_float)]

    counting, reads = _counting(Packed)
    obj = counting(flag=200, big=-(2**50), small=-300, ratio=0.5)
    reads.clear()
    assert structs.reader(counting, ("small", "big", "flag", "ratio"))(obj) == (
        -300, -(2**50), 200, 0.5)
    assert reads == []


def test_members_struct_cannot_read_are_read_one_by_one() -> None:
    class Odd(ctypes.Structure):
        _fields_ = [("name", ctypes.c_char * 8), ("bits", ctypes.c_uint32, 3),
                    ("ok", ctypes.c_bool), ("n", ctypes.c_uint32)]

    counting, reads = _counting(Odd)
    obj = counting(name=b"gpu", bits=5, ok=True, n=9)
    for names in (("name", "n"), ("bits", "n"), ("ok", "n")):
        reads.clear()
        assert structs.reader(counting, names)(obj) == tuple(getattr(obj, n) for n in names)
        assert reads == [*names, *names]  # read by the fallback, then by this check


def test_plain_objects_and_unknown_members_are_read_by_attribute() -> None:
    plain = SimpleNamespace(pid=5, timeStamp=6, smUtil=7)
    assert structs.reader(SimpleNamespace, ("pid", "smUtil"))(plain) == (5, 7)
    with pytest.raises(AttributeError):  # as reading the member itself would
        structs.reader(pynvml.c_nvmlGpmMetric_t, ("nope",))(pynvml.c_nvmlGpmMetric_t())
