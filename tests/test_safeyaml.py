"""The bounded YAML loader: size, encoding, depth, aliases, integer length; one short line."""

from __future__ import annotations

import pytest

from gpuprobe.daemon.core import config, safeyaml
from gpuprobe.daemon.core.config import ConfigError
from gpuprobe.daemon.core.safeyaml import YamlFileError, load_file, loads

# "Billion laughs" (342 bytes here): 9^9 "lol" strings once its aliases are expanded.
BILLION_LAUGHS = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
    "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
    "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
    "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
    "g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
    "h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n"
    "i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n"
)

LOADERS = [safeyaml.BoundedLoader] + ([safeyaml.FastBoundedLoader]
                                      if safeyaml.FastBoundedLoader else [])


@pytest.fixture(params=LOADERS, ids=lambda c: c.__name__)
def loader(request, monkeypatch):
    """Each test runs with libyaml's parser and with the pure-Python one."""
    if request.param is safeyaml.BoundedLoader:
        monkeypatch.setattr(safeyaml, "FastBoundedLoader", None)
    return request.param


def refused(text: str | bytes, **kw) -> str:
    with pytest.raises(YamlFileError) as e:
        loads(text, "f.yaml", **kw)
    msg = str(e.value)
    assert msg.startswith("f.yaml: ") and "\n" not in msg and len(msg) <= 200, msg
    return msg


def test_plain_documents_load(loader):
    assert loads("a: [1, 2.5, x, true, null]\nb: {c: 1s}\n") == {
        "a": [1, 2.5, "x", True, None], "b": {"c": "1s"}}
    assert loads("a: &x {k: v}\nb: {<<: *x, c: 1}\n") == {"a": {"k": "v"},
                                                          "b": {"k": "v", "c": 1}}
    assert loads(b"\xef\xbb\xbfa: 1\n") == {"a": 1}  # a UTF-8 byte-order mark
    assert loads("") is None


def test_billion_laughs_is_refused(loader):
    msg = refused(BILLION_LAUGHS)
    assert "more than 100000 values once its aliases are expanded" in msg


def test_billion_laughs_in_a_config_file(tmp_path):
    path = tmp_path / "lol.yaml"
    path.write_text(BILLION_LAUGHS)
    with pytest.raises(ConfigError, match=r"lol.yaml: not valid YAML \(line \d+, column \d+\): "
                                          r"more than 100000 values once its aliases"):
        config.load(path)


def test_deep_nesting_is_refused(loader):
    assert "nest" in refused("[" * 10_000)
    assert "nest" in refused("{" * 10_000)
    assert "nest" in refused("".join("  " * i + "- \n" for i in range(100)))
    assert loads("[" * 63 + "1" + "]" * 63)  # 64 levels, the scalar counted
    assert "nested more than 64 levels deep" in refused("[" * 64 + "1" + "]" * 64)


def test_nesting_through_aliases_is_refused(loader):
    inner = "[" * 40 + "1" + "]" * 40
    msg = refused(f"a: &x {inner}\nb: {'[' * 30}*x{']' * 30}\n")
    assert "nested more than 64 levels deep once aliases are expanded" in msg


def test_recursive_alias_is_refused(loader):
    assert "recursive alias" in refused("a: &a [*a]\n")
    assert "recursive alias" in refused("a: &a {b: [1, *a]}\n")


def test_size_is_bounded_before_reading(tmp_path):
    assert refused(b"a: 1\n" + b"#" * 2**20) == "f.yaml: larger than 1 MiB"
    with pytest.raises(YamlFileError, match=r"^file /dev/zero: larger than 1 MiB$"):
        load_file("/dev/zero")
    big = tmp_path / "big.yaml"
    big.write_bytes(b"a: 1\n" * 100)
    assert load_file(big, max_bytes=1000) == {"a": 1}
    with pytest.raises(YamlFileError, match="larger than 100 bytes"):
        load_file(big, max_bytes=100)


def test_config_from_dev_zero():
    with pytest.raises(ConfigError, match=r"^config file /dev/zero: larger than 1 MiB$"):
        config.load("/dev/zero")


def test_encoding_and_characters(loader, tmp_path):
    assert refused(b"a: \xff\xfe\n") == "f.yaml: not UTF-8 text (byte 3)"
    assert "unacceptable character #x0000" in refused("a: \x00\n")
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("listen: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 text"):
        config.load(bad)


def test_values_the_constructor_cannot_build(loader):
    assert "cannot read this value: month must be in 1..12" in refused("a: 2024-13-45\n")
    # sexagesimal integers cost quadratic time; 1,000 characters is plenty for any number
    assert "an integer of 1201 characters" in refused("a: 1" + ":30" * 400 + "\n")
    assert loads("a: " + "9" * 400) == {"a": int("9" * 400)}  # left to the caller's bounds
    assert "could not determine a constructor" in refused("a: !!python/object:os.system x\n")


def test_syntax_errors_keep_line_and_column(loader):
    assert refused("listen: [unclosed\n").startswith("f.yaml: not valid YAML (line 2, column 1):")
    assert "expected a single document" in refused("a: 1\n---\nb: 2\n")
    assert "undefined alias" in refused("a: *nope\n")
    assert len(refused("a: *" + "n" * 5000 + "\n")) <= 200


def test_file_errors(tmp_path):
    with pytest.raises(YamlFileError, match=r"^config file .*nope.yaml: No such file"):
        load_file(tmp_path / "nope.yaml", label="config file")
    with pytest.raises(YamlFileError, match="Is a directory"):
        load_file(tmp_path)
    with pytest.raises(YamlFileError, match="not a usable path"):
        load_file("a\0b")


def test_short_values():
    shown = safeyaml.short("x" * 10_000)
    assert len(shown) <= 60 and shown.startswith("'xxx") and "..." in shown
    assert len(safeyaml.short([["x" * 10_000] * 10_000] * 10_000)) <= 60
    assert len(safeyaml.short(10**5000)) <= 60  # repr itself would refuse: over 4300 digits
    nested: list = []
    for _ in range(10_000):
        nested = [nested]
    assert safeyaml.short(nested) == "[[[...]]]"
    assert safeyaml.cut("a\nb   c", 60) == "a b c"
