"""Fuzzing the config and scenario loaders with hypothesis: whatever the file holds, loading
it succeeds or raises ConfigError / ScenarioError with one line of bounded length; nothing
else escapes. Derandomized with a fixed budget, so CI runs the same examples every time."""

from __future__ import annotations

import atexit
import copy
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuprobe.daemon.core import config
from gpuprobe.daemon.core.config import ConfigError
from gpuprobe.probes.sim import scenario as scenario_mod
from gpuprobe.probes.sim.scenario import ScenarioError

from .conftest import ROOT

MAX_LINE = 200  # not counting the file's path
FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

DEPLOY_TEXT = (ROOT / "deploy" / "gpuprobe.yaml").read_text()
SCENARIO_TEXT = (ROOT / "probes" / "sim" / "scenarios" / "default.yaml").read_text()
DEPLOY = yaml.safe_load(DEPLOY_TEXT)
SCENARIO = yaml.safe_load(SCENARIO_TEXT)
WORK = Path(tempfile.mkdtemp(prefix="gpuprobe-fuzz-"))
atexit.register(shutil.rmtree, WORK, True)


def check_line(e: BaseException, path: Path | None = None) -> None:
    msg = str(e)
    assert "\n" not in msg and "\r" not in msg, msg
    assert len(msg.replace(str(path), "") if path else msg) <= MAX_LINE, msg


def _load_text(name: str, load: Any, error: type[Exception], text: str | bytes) -> None:
    """Write ``text`` to the file ``name`` and ``load`` it: it loads or raises ``error`` with
    one line."""
    path = WORK / name
    path.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    try:
        load(path)
    except error as e:
        check_line(e, path)


def load_config_text(text: str | bytes) -> None:
    _load_text("config.yaml", config.load, ConfigError, text)


def load_scenario_text(text: str | bytes) -> None:
    _load_text("scenario.yaml", scenario_mod.load, ScenarioError, text)


# -- values a user (or an attacker) might put anywhere ---------------------------------------

NASTY_SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from([0, -1, 1, 2**31, 2**63, 2**64, 10**30, -(10**30)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, 0.0, -0.0]),
    st.text(max_size=20),
    st.sampled_from(["", "5s", "1ms", "0s", "-5s", "1e400", "nan", ".inf", "abcMHz", "nanMHz",
                     "1" * 400, "9" * 400 + "s", "1.5 GiB", "20MiB/min", "xx/min", "80GiB",
                     "0.0.0.0:14787", ":", "[::]:0", "\x00", "a" * 5000, "2001-12-14",
                     "1:30:00", "0x1F", "~", "yes", "on", "NaN", "1980MHz", "1/s"]),
)
VALUES = st.recursive(NASTY_SCALARS,
                      lambda inner: st.one_of(st.lists(inner, max_size=4),
                                              st.dictionaries(st.text(max_size=8) | NASTY_SCALARS
                                                              .filter(lambda v: v is None
                                                                      or isinstance(v, str | int)),
                                                              inner, max_size=4)),
                      max_leaves=12)


def paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, (*prefix, i))
    return out


def mutate(doc: Any, path: tuple, value: Any, how: str) -> Any:
    doc = copy.deepcopy(doc)
    if not path:
        return value
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    last = path[-1]
    if how == "delete":
        del parent[last]
    elif how == "add" and isinstance(parent[last], dict):
        parent[last]["extra"] = value
    elif how == "add" and isinstance(parent[last], list):
        parent[last].append(value)
    else:
        parent[last] = value
    return doc


def structural(doc: Any) -> st.SearchStrategy:
    where = paths(doc)
    return st.tuples(st.sampled_from(where), VALUES,
                     st.sampled_from(["replace", "replace", "delete", "add"]),
                     st.integers(min_value=1, max_value=3)).map(
        lambda t: _apply(doc, where, t))


def _apply(doc: Any, where: list[tuple], t: tuple) -> Any:
    path, value, how, n = t
    out = mutate(doc, path, value, how if path else "replace")
    # a few more replacements at related places: the same key in every device, say
    for other in where[1:n]:
        try:
            out = mutate(out, other, value, "replace")
        except (KeyError, IndexError, TypeError):
            pass
    return out


def text_mutations(text: str) -> st.SearchStrategy:
    edit = st.tuples(st.integers(min_value=0, max_value=len(text)),
                     st.integers(min_value=0, max_value=20),
                     st.text(alphabet=st.sampled_from(list("[]{}:,-&*!|>'\"#%@`?\n\t .0123456789"
                                                           "aex~\\")) | st.characters(),
                             max_size=12)
                     | st.sampled_from(["&a ", "*a", "<<: *a", "!!python/object:x ", ".nan",
                                        ".inf", "9" * 400, "\n  - ", ": {", "[" * 100, "\x00",
                                        "\ufeff", "---\n", "...\n", "!!binary ", "? "]))

    def apply(edits: list[tuple[int, int, str]]) -> str:
        out = text
        for pos, cut, insert in edits:
            pos = min(pos, len(out))
            out = out[:pos] + insert + out[pos + cut:]
        return out

    return st.lists(edit, min_size=1, max_size=4).map(apply)


YAMLISH = st.one_of(
    st.text(alphabet=st.sampled_from(list("[]{}:,-&*!|>'\"# \n.01aez~")), max_size=200),
    st.lists(st.sampled_from(["a:", " b", "- ", "[", "]", "{", "}", ", ", ": ", "&x ", "*x",
                              "\n", "  ", "!!str ", "!!int ", "!!float ", ".nan", "1e3",
                              "<<: ", "? ", "'", '"', "#", "---", "collectors:", "devices:",
                              "interval:", "pcie_probe:", "false", "null"]),
             max_size=60).map("".join),
    st.binary(max_size=200),
)


# -- the config and scenario loaders --------------------------------------------------------

def _parse_scenario(doc: Any) -> None:
    scenario_mod.parse(doc, "s.yaml")


@pytest.mark.parametrize(("documents", "parse", "error"), [
    (structural(DEPLOY), config.from_mapping, ConfigError),
    (structural(SCENARIO), _parse_scenario, ScenarioError),
], ids=["config", "scenario"])
@FUZZ
@given(data=st.data())
def test_fuzz_values(documents, parse, error, data):
    try:
        parse(data.draw(documents))
    except error as e:
        check_line(e)


@pytest.mark.parametrize(("texts", "load"), [
    (text_mutations(DEPLOY_TEXT) | YAMLISH, load_config_text),
    (text_mutations(SCENARIO_TEXT) | YAMLISH, load_scenario_text),
], ids=["config", "scenario"])
@FUZZ
@given(data=st.data())
def test_fuzz_files(texts, load, data):
    load(data.draw(texts))


def test_the_fuzzed_documents_load_unmutated():
    """The fuzzing starts from documents that load, so its mutations reach deep keys."""
    load_config_text(DEPLOY_TEXT)
    assert config.load(WORK / "config.yaml") == config.from_mapping({})
    load_scenario_text(SCENARIO_TEXT)
    assert scenario_mod.load(WORK / "scenario.yaml").name == "default"
