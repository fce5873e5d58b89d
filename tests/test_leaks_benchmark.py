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
