"""The iteration profile: a role's busy seconds and peak memory (actors/usage.py), and what
benchmarks/iteration_profile.py makes of an align run's records."""

from __future__ import annotations

import json
import time

import pytest

from actors.usage import Metered, metered, peak_rss_mb
from benchmarks import iteration_profile


class _Clock:
    """time.perf_counter for actors.usage: each call's work moves it on by exactly its seconds."""

    now = 0.0

    def __call__(self) -> float:
        return self.now


class _Role(Metered):
    def __init__(self, clock: _Clock):
        self.clock = clock

    @metered
    def work(self, seconds: float) -> float:
        self.clock.now += seconds
        return seconds

    @metered
    def fail(self):
        self.clock.now += 0.05
        raise ValueError("no")

    def idle(self) -> None:
        self.clock.now += 0.05


def test_a_roles_metered_calls_count_as_its_busy_time_and_failures_too(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(time, "perf_counter", clock)  # the seconds counted are the seconds spent, exactly
    role = _Role(clock)
    assert role.usage()["busy_seconds"] == 0.0
    assert role.work(0.05) == 0.05 and role.work.__name__ == "work"  # wrapped as itself (Ray reads the names)
    with pytest.raises(ValueError):
        role.fail()
    role.idle()  # not metered: not counted
    usage = role.usage()
    assert usage["busy_seconds"] == pytest.approx(0.1)
    assert usage["peak_rss_mb"] == pytest.approx(peak_rss_mb(), rel=0.05) and usage["peak_rss_mb"] > 10
    assert _Role(clock).usage()["busy_seconds"] == 0.0  # per instance


def _record(k: int, **extra) -> dict:
    return {"iteration": k, "eval_seconds": 10.0, "busy_evaluator_seconds": 8.0, "peak_rss_evaluator_mb": 900.0 + k}


def test_the_profile_splits_each_stage_into_its_roles_work_and_the_rest(tmp_path, capsys):
    one = {
        **_record(1),
        "rollout_seconds": 5.0,
        "busy_rollout_seconds": 3.0,
        "busy_reference_seconds": 2.5,  # side by side with the engine: more than the wall time in all
        "learn_seconds": 30.0,
        "busy_learner_seconds": 12.0,
        "peak_rss_learner_mb": 1500.0,
        "peak_rss_driver_mb": 400.0,
    }
    stages = iteration_profile.profile([_record(0), one])
    assert [(r["version"], r["stage"]) for r in stages] == [
        (0, "evaluate"),
        (1, "rollout"),
        (1, "learn"),
        (1, "evaluate"),
    ]
    rollout, learn = stages[1], stages[2]
    assert rollout["busy_seconds"] == 5.5 and rollout["other_seconds"] == 0.0 and rollout["other_share"] == 0.0
    assert rollout["roles"] == "rollout 3.0 reference 2.5"
    assert learn["other_seconds"] == 18.0 and learn["other_share"] == pytest.approx(0.6)
    assert iteration_profile.memory([_record(0), one]) == [
        {"role": "driver", "peak_rss_mb": 400.0},
        {"role": "evaluator", "peak_rss_mb": 901.0},
        {"role": "learner", "peak_rss_mb": 1500.0},
    ]
    assert iteration_profile.profile([{"iteration": 1, "rollout_seconds": 5.0}]) == []  # recorded before usage was

    records = tmp_path / "align" / "records"
    records.mkdir(parents=True)
    for k, r in ((0, _record(0)), (1, one)):
        (records / f"iter_{k}.json").write_text(json.dumps(r))
    rows = iteration_profile.main(["--run-dir", str(tmp_path), "--json", str(tmp_path / "p.json")])
    assert json.loads((tmp_path / "p.json").read_text()) == rows and len(rows) == 4 + 3
    assert "| 1 | learn | 30.0 | 12.0 | 18.0 | 60% | learner 12.0 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no align records in"):
        iteration_profile.main(["--run-dir", str(tmp_path / "nothing")])
