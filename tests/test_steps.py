"""The step rules (tokencache/runtime/clock.py, session.py) on their own: timestep sequences of real
samplers in, (generation, step, call position, variant) out. The same Session drives the PyTorch
runtime and the bundle runners."""
import warnings

import pytest
import torch

from tokencache.runtime.clock import StepClock
from tokencache.runtime.session import Session


def _ticks(clock, timesteps, same=None):
    out = []
    for i, t in enumerate(timesteps):
        tick = clock.tick(None if t is None else float(t), (lambda i=i: same[i]) if same else None)
        out.append((clock.generations, tick.step, tick.position))
    return out


def test_cfg_as_two_calls_are_positions_of_one_step():
    clock = StepClock(num_steps=4)
    assert _ticks(clock, [999, 999, 750, 750, 500, 500]) == [(1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1),
                                                              (1, 2, 0), (1, 2, 1)]
    assert _ticks(clock, [999, 999, 750])[0] == (2, 0, 0)          # back up: a new generation


def test_heun_repeated_timesteps_are_positions():
    """diffusers' HeunDiscreteScheduler calls the model at [t0, t1, t1, t2, t2, ...]."""
    clock = StepClock(num_steps=3)
    assert _ticks(clock, [999, 600, 600, 300, 300]) == [(1, 0, 0), (1, 1, 0), (1, 1, 1), (1, 2, 0), (1, 2, 1)]


def test_more_steps_than_num_steps_stay_one_generation():
    clock = StepClock(num_steps=10)
    seen = _ticks(clock, range(1500, 0, -100))                        # 15 steps
    assert {g for g, _, _ in seen} == {1} and seen[-1][1] == 14


def test_warm_up_call_at_the_first_timestep_is_its_own_generation():
    """Same timestep, different latent, at a generation's first step: a warm-up then the real run."""
    clock = StepClock(num_steps=10)
    seen = _ticks(clock, [999, 999, 999, 900], same=[True, False, True, True])
    assert seen == [(1, 0, 0), (2, 0, 0), (2, 0, 1), (2, 1, 0)]


def test_one_step_run_at_a_lower_timestep_does_not_absorb_the_next_generation():
    clock = StepClock(num_steps=10)
    assert _ticks(clock, [0, 999, 800, 600]) == [(1, 0, 0), (2, 0, 0), (2, 1, 0), (2, 2, 0)]


def test_ascending_timesteps_are_learned_after_two_moves():
    clock = StepClock(num_steps=10)
    seen = _ticks(clock, [0, 100, 200, 300, 0, 100, 200])
    assert seen == [(1, 0, 0), (2, 0, 0), (1, 2, 0), (1, 3, 0), (2, 0, 0), (2, 1, 0), (2, 2, 0)]


def test_restart_inside_an_explicit_generation():
    clock = StepClock(num_steps=6, explicit=True)
    seen = _ticks(clock, [999, 700, 400, 800, 500, 200])
    assert [s for _, s, _ in seen] == [0, 1, 2, 0, 1, 2] and clock.generations == 1 and clock.restarts == 1


def test_explicit_generation_takes_its_direction_from_the_first_move():
    clock = StepClock(num_steps=6, explicit=True)
    assert [s for _, s, _ in _ticks(clock, [0.0, 0.25, 0.5, 0.5])] == [0, 1, 2, 2] and clock.generations == 1


def test_no_timestep_counts_calls():
    clock = StepClock(num_steps=2)
    assert [g for g, _, _ in _ticks(clock, [None] * 5)] == [1, 1, 2, 2, 3]
    explicit = StepClock(num_steps=2, explicit=True)
    assert [s for _, s, _ in _ticks(explicit, [None] * 5)] == [0, 1, 2, 3, 4] and explicit.generations == 1


def _session(num_steps=6, interval=3, explicit=False):
    schedule = lambda n: ["fresh" if s % interval == 0 else "partial" for s in range(n)]
    return Session(schedule, num_steps, explicit)


def test_a_position_without_caches_runs_fresh():
    """Heun's corrector position first appears at a cached step: it computes its caches."""
    session = _session()
    variants = [(c.variant, c.position) for c in (session.begin(t) for t in [999.0, 800.0, 800.0, 600.0, 600.0])]
    assert variants == [("fresh", 0), ("partial", 0), ("fresh", 1), ("partial", 0), ("partial", 1)]
    assert session.positions[0].fresh_steps == [0] and session.positions[1].fresh_steps == [1]


def test_steps_past_the_schedule_run_fresh_and_warn_once_per_generation():
    session = _session(num_steps=3)
    with pytest.warns(UserWarning, match="runs past its 3 steps") as caught:
        variants = [session.begin(float(t)).variant for t in range(900, 300, -100)]
    assert variants == ["fresh", "partial", "partial", "fresh", "fresh", "fresh"] and len(caught) == 1
    assert session.clock.generations == 1


def test_warm_up_latent_check_in_the_session():
    session = _session()
    warm, real = torch.full((1, 4), float("nan")), torch.randn(1, 4)
    calls = [session.begin(999.0, warm), session.begin(999.0, real), session.begin(999.0, real.clone()),
             session.begin(800.0, real)]
    assert [(c.tick.new_generation, c.step, c.position) for c in calls] == [(True, 0, 0), (True, 0, 0),
                                                                              (False, 0, 1), (False, 1, 0)]
    assert session.clock.generations == 2
