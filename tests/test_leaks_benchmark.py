"""benchmarks/leaks.py on a few shapes and the tuning seeds: the figures' structure, the
verdicts, and bad arguments (the full corpus takes minutes: docs/leaks.md)."""

from __future__ import annotations

import pytest

from .conftest import load_benchmark

leaks = load_benchmark("leaks")


def test_a_settling_allocator_and_a_leak_on_the_tuning_seeds(capsys) -> None:
    rc = leaks.main(["--tuning", "--only", "512 MiB every 4 min", "--workers", "1"])
    out = capsys.readouterr().out
    assert "| caching allocator settling: +512 MiB every 4 min for 20 min | quiet |" in out
    assert "seeds 0-9 (10 per shape)" in out
    assert rc == 1  # the leak targets have no leak shape to meet in this selection
    shape = next(s for s in leaks.corpus() if s.name.startswith("steady leak, 4 MiB/min, "
                                                                "noise 16"))
    row = leaks.summarise(shape, {seed: leaks.evaluate(shape, seed, leaks.LeaksConfig(),
                                                       leaks.rule_for()) for seed in (0, 1)})
    assert row["gpuprobe"]["recall"] == 1 and 5 < row["gpuprobe"]["p50"] < 20
    assert row["predict_linear"]["recall"] == 0  # it misses a slow leak: 4 h is far


def test_the_rule_for_is_read_from_the_shipped_rules() -> None:
    assert leaks.rule_for() == 120.0


@pytest.mark.parametrize("argv", [["--seeds", "5"], ["--only", "no such shape", "--tuning"],
                                  ["--cost", "--against", "no-such-revision"]])
def test_bad_arguments_exit_2(argv, capsys) -> None:
    assert leaks.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("leaks.py: ")



def test_equivalent_compares_every_assessment(monkeypatch, capsys) -> None:
    """--equivalent: the same detector agrees with itself; a detector with another
    significance, fed the same trace, is caught."""
    import dataclasses

    base = leaks.LeaksConfig
    monkeypatch.setattr(leaks, "detector_at", lambda rev: (leaks.LeakDetector, base))
    shape = [i for i, s in enumerate(leaks.corpus()) if "sawtooth every 45 s" in s.name]
    assert leaks.equivalent("REV", [0], 1, shape) == 0
    monkeypatch.setattr(leaks, "LeaksConfig",
                        lambda: dataclasses.replace(base(), min_significance=1.0))
    assert leaks.equivalent("REV", [0], 1, shape) == 1
    assert "1 traces differ from REV's detector" in capsys.readouterr().out


def test_detector_at_loads_a_revision_beside_this_one() -> None:
    import subprocess

    if subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    det, cfg = leaks.detector_at("HEAD")
    assert det is not leaks.LeakDetector and det.__module__ == "leaks_at_detector"
    d = det(cfg())
    d.observe("p", 0.0, 1.0)
    assert d.assess("p") is None or not d.assess("p").suspected
