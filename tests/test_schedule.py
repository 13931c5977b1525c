"""Learning rates of transformers' schedulers, computed in a helper process (resumedoctor.lr_schedule)."""

from __future__ import annotations

import pytest


def test_helper_process_agrees_with_get_scheduler_and_has_a_time_limit(tmp_path, monkeypatch):
    from resumedoctor.lr_schedule import Schedule, ScheduleError, compute
    from resumedoctor.lr_schedule import learning_rates as rates

    monkeypatch.setenv("RESUMEDOCTOR_CACHE_DIR", str(tmp_path / "cache"))
    schedules = [Schedule("cosine", 1e-3, 10, warmup_steps=0.2), Schedule("polynomial", 1e-3, 10, 2,
                                                                          lr_scheduler_kwargs={"power": 2.0})]
    steps = list(range(11))
    answer = rates(schedules, steps, in_process=False)
    for helper, here in zip(answer, compute(schedules, steps), strict=True):
        assert helper == pytest.approx(here)
    assert answer[0][:3] == pytest.approx([0.0, 5e-4, 1e-3])  # ceil(0.2 x 10) = 2 warmup steps
    assert rates(schedules, steps, in_process=False, timeout=0.001) == answer  # cached: no helper
    with pytest.raises(ScheduleError, match="did not answer within"):
        rates(schedules, steps, in_process=False, use_cache=False, timeout=0.001)
