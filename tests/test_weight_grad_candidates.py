"""The kernel-gradient candidates' model and enumeration (inspection/weight_grad_candidates.py).

Nothing here compiles: the schedules' programs and steps are checked against the grids the
launchers compute (recorded launches), the fit against data made from known constants, and the
ranking on stored-free inputs.
"""

import random

import pytest

from triton_nsr.kernels.inspection import weight_grad_candidates as wgc
from triton_nsr.kernels.inspection.capture import W1_EXPAND, LayerShape, kept_configs, kernels
from triton_nsr.kernels.inspection.compiled import HOPPER_SHARED_MEMORY
from triton_nsr.kernels.tiling import cdiv

ODD = LayerShape("odd", 3, 24, 48, 37, 29)


def _schedule(shape, launch, config):
    if launch.kernel == wgc.ALL_TAPS:
        return wgc.all_taps_schedule(shape, config, launch.named["num_splits"],
                                     bool(launch.named["TRANSPOSED"]))
    return wgc.per_tap_schedule(shape, config, launch.named["num_splits"])


@pytest.mark.parametrize("shape", [W1_EXPAND, ODD], ids=lambda s: s.name)
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
@pytest.mark.parametrize("variant", ["per_tap", "all_taps"])
@pytest.mark.parametrize("splits", [None, 3])
def test_programs_and_steps_match_the_launchers_grids(shape, layout, variant, splits):
    launch = wgc.kernel_gradient_launch(shape, layout, variant, splits)
    tuner = kernels()[launch.kernel]
    named = launch.named
    for index in kept_configs(tuner, launch):
        config = tuner.configs[index]
        schedule = _schedule(shape, launch, config)
        assert schedule.programs == launch.programs[index]
        assert schedule.splits == named["num_splits"]
        if variant == "per_tap":
            # The kernel's chunk of pixels per split, walked BLOCK_K at a time.
            chunk = cdiv(cdiv(named["out_pixels"], named["num_splits"]), config.kwargs["BLOCK_K"])
            assert schedule.steps == chunk
        else:
            assert schedule.steps == ((named["rows_per_split"] + 2)
                                      * cdiv(named["out_w"], config.kwargs["BLOCK_K"]))


def test_row_of_three_has_a_third_of_the_programs_and_three_mmas_a_step():
    config = kernels()[wgc.PER_TAP].configs[0]
    single = wgc.per_tap_schedule(W1_EXPAND, config, 1)
    row = wgc.per_tap_schedule(W1_EXPAND, config, 1, "row_of_3", taps_per_program=3)
    assert row.programs * 3 == single.programs
    assert (row.steps, row.dots) == (single.steps, 3)
    assert row.operand_bytes == (single.operand_bytes[0], 3 * single.operand_bytes[1])
    assert row.step_flops == 3 * single.step_flops


def test_persistent_spreads_every_step_over_the_sms():
    config = kernels()[wgc.PER_TAP].configs[0]
    base = wgc.per_tap_schedule(W1_EXPAND, config, 1)
    persistent = wgc.persistent_schedule(base, sms=132)
    assert persistent.programs == 132
    assert persistent.steps == cdiv(base.programs * base.steps, 132)
    model = wgc.Model(floor_us=0.5, dot_us=0.1, fixed_us=0.0)
    # 288 programs are 3 waves of 36 steps; spread evenly they are 79 steps an SM.
    assert model.time_us(persistent) < model.time_us(base)


def _synthetic_points(model):
    """Measurements made by ``model`` itself on today's two kernels."""
    per_tap = kernels()[wgc.PER_TAP].configs[0]
    all_taps = kernels()[wgc.ALL_TAPS].configs[2]
    probe = wgc.PROBE.name
    points = []
    for shape, splits in ((W1_EXPAND, 1), (LayerShape("W4", 1, 64, 64, 512, 512), 29)):
        schedule = wgc.per_tap_schedule(shape, per_tap, splits)
        points.append((wgc.Measurement(shape.name, "per_tap", splits, model.time_us(schedule),
                                       probe), schedule))
    for splits in (1, 2, 4):
        schedule = wgc.all_taps_schedule(W1_EXPAND, all_taps, splits, False)
        points.append((wgc.Measurement("W1-expand", "all_taps", splits, model.time_us(schedule),
                                       "splits"), schedule))
    return points


def test_calibration_recovers_the_constants_that_made_the_data():
    rates = {"tensor_flops": 800e12, "l2_bytes": 4.2e12}
    truth = wgc.Model(floor_us=0.6 + random.random() * 0.1, dot_us=0.1 + random.random() * 0.1,
                      fixed_us=3.0, **rates)
    fitted = wgc.calibrate(_synthetic_points(truth), rates)
    assert fitted.floor_us == pytest.approx(truth.floor_us, rel=1e-6)
    assert fitted.fixed_us == pytest.approx(truth.fixed_us, rel=1e-6)
    assert fitted.dot_us == pytest.approx(truth.dot_us, rel=1e-6)


def test_the_models_are_fitted_to_the_stored_h200_timings():
    model, probe_only, points = wgc.models()
    probe = [(m, s) for m, s in points if m.source == wgc.PROBE.name]
    assert {m.shape for m, _ in probe} == {"W1-expand", "W4"}
    for measured, schedule in probe:
        assert probe_only.time_us(schedule) == pytest.approx(measured.us, rel=0.05)
        # The fit assumes the floor binds at every calibration point: it must.
        assert probe_only.bound(schedule) == model.bound(schedule) == "floor"
    # The ranking's model, fitted to the split runs too, fits them better overall.
    assert len(points) > len(probe)
    assert wgc.rms_error(model, points) < wgc.rms_error(probe_only, points)


def test_a_step_bound_by_its_bytes_takes_their_time():
    config = kernels()[wgc.PER_TAP].configs[0]
    schedule = wgc.per_tap_schedule(W1_EXPAND, config, 1)
    slow_memory = wgc.Model(floor_us=0.01, dot_us=0.0, fixed_us=0.0, l2_bytes=1e9, sms=1)
    assert slow_memory.bound(schedule) == "bytes"
    step = schedule.step_bytes / 1e9 * 1e6
    assert slow_memory.time_us(schedule) == pytest.approx(schedule.programs * schedule.steps * step)


def test_narrow_loads_count_their_bytes_more_often():
    config = kernels()[wgc.PER_TAP].configs[0]
    schedule = wgc.per_tap_schedule(W1_EXPAND, config, 1)
    wide = {"operands": [{"name": "dy", "route": "cp.async 16B"},
                         {"name": "x", "route": "cp.async 16B"}]}
    narrow = {"operands": [{"name": "dy", "route": "cp.async 16B"},
                           {"name": "x", "route": "ld.global 2B"}]}
    assert wgc.narrow_load_factor(wide, schedule) == 1.0
    dy, x = schedule.operand_bytes
    assert wgc.narrow_load_factor(narrow, schedule) == pytest.approx((dy + 8 * x) / (dy + x))


def test_a_candidate_past_the_shared_memory_is_rejected():
    fits = {"registers": 120, "spill_bytes": 0, "shared_memory": HOPPER_SHARED_MEMORY}
    assert wgc.rejection(fits) is None
    assert "shared memory" in wgc.rejection({**fits, "shared_memory": HOPPER_SHARED_MEMORY + 1})
    assert wgc.rejection({**fits, "spill_bytes": 8}) is not None
    # A row of three taps holds three x tiles a stage: a per-tap tile at 150 KB fits, its
    # modelled row of three (about twice the ring for 64x64) does not.
    shape = W1_EXPAND
    launch = wgc.kernel_gradient_launch(shape, "channels_last", "per_tap")
    tuner = kernels()[wgc.PER_TAP]
    config = next(c for c in tuner.configs if c.kwargs["BLOCK_M"] == 64
                  and c.kwargs["BLOCK_N"] == 64)
    candidate = wgc.CompiledCandidate(shape.name, "channels_last", "per_tap", config, launch)
    rows = wgc.schedules_of(shape, candidate, {**fits, "shared_memory": 150_000},
                            {"per_tap": 1, "all_taps": 1}, {"layer": "per_tap"})
    verdicts = {r.schedule.kernel: wgc.rejection(r.findings) for r in rows}
    assert verdicts["per_tap"] is None
    assert "shared memory" in verdicts["row_of_3"]


def test_ranking_is_sorted_and_repeatable():
    model = wgc.Model(floor_us=0.65, dot_us=0.15, fixed_us=1.0)
    shape = LayerShape("small", 2, 16, 32, 24, 24)
    first = wgc.rank(model, {}, shapes=[shape], layouts=("channels_last",))
    second = wgc.rank(model, {}, shapes=[shape], layouts=("channels_last",))
    assert [(r.label, r.family, r.time_us) for r in first] == \
        [(r.label, r.family, r.time_us) for r in second]
    times = [r.time_us for r in first if not r.rejected]
    assert times == sorted(times)
    assert {r.schedule.kernel for r in first} >= {"per_tap", "x_rows", "all_taps", "row_of_3",
                                                   "persistent"}
    best = wgc.best_designs(first, "small", "channels_last")
    assert len({r.family for r in best}) == len(best) == 3
