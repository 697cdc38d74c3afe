"""get_scheduler and SchedulerType: transformers 4.49's dispatch, ignored arguments, error
types and messages (golden and live, on random calls).

funcopt follows transformers 5.x where 5.x changed get_scheduler (two more names; inverse_sqrt
forwards scheduler_specific_kwargs), and appends the accepted keys to the TypeError for an
unknown one: those cases are checked against 4.49 where they still agree, and against 5.23 in
tests/trainer5/test_schedules5.py."""

import re
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import golden, reference

import funcopt
from funcopt import SchedulerType, get_scheduler

ERRORS = golden("golden_pt")["errors"]
NAMES = ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
         "constant_with_warmup", "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr",
         "warmup_stable_decay"]
ADDED_IN_5 = ["cosine_warmup_with_min_lr", "greedy"]  # transformers 5.0


def same_outcome(ours, theirs):
    """Equal, except that the unknown-name message lists 5.x's names, and that funcopt's
    TypeError for an unknown key also lists the accepted ones."""
    if theirs[0] == "error":
        names = str([m.value for m in SchedulerType])
        theirs = (*theirs[:2], theirs[2].replace(str(NAMES), names))
    if ours[:2] == theirs[:2] == ("error", "TypeError") and "unexpected keyword" in theirs[2]:
        return ours[2].startswith(theirs[2] + ". scheduler_specific_kwargs for ")
    return ours == theirs


def test_scheduler_type_values():
    assert [m.value for m in SchedulerType if m.value not in ADDED_IN_5] == NAMES
    assert {m.value for m in SchedulerType} == set(NAMES + ADDED_IN_5)
    assert SchedulerType("cosine") is SchedulerType.COSINE
    assert SchedulerType.COSINE == "cosine" and isinstance(SchedulerType.COSINE, str)
    assert SchedulerType(SchedulerType.LINEAR) is SchedulerType.LINEAR


def test_scheduler_type_matches_transformers():
    trainer_utils = reference("transformers.trainer_utils")
    assert [m.value for m in trainer_utils.SchedulerType] == NAMES
    assert [m.name for m in trainer_utils.SchedulerType] == [
        m.name for m in SchedulerType if m.value not in ADDED_IN_5]


def error_text(call):
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    return f"{type(info.value).__name__}: {info.value}"


@pytest.mark.parametrize(("key", "call"), [
    ("bad_name", lambda: get_scheduler("foo", 1.0)),
    ("bad_name", lambda: SchedulerType("foo")),
    ("linear_no_warmup", lambda: get_scheduler("linear", 1.0)),
    ("linear_no_training", lambda: get_scheduler("linear", 1.0, 2)),
    ("constant_with_warmup_none", lambda: get_scheduler("constant_with_warmup", 1.0)),
    ("wsd_no_decay", lambda: get_scheduler("warmup_stable_decay", 1.0, 2, 10)),
    ("wsd_no_training_no_stable",
     lambda: get_scheduler("warmup_stable_decay", 1.0, 2, None, {"num_decay_steps": 2})),
    ("wsd_bad_type", lambda: get_scheduler("warmup_stable_decay", 1.0, 2, 10,
                                           {"num_decay_steps": 2, "warmup_type": "exp"})),
    ("cos_min_lr_none", lambda: get_scheduler("cosine_with_min_lr", 1.0, 2, 10)),
    ("cos_min_lr_both", lambda: get_scheduler("cosine_with_min_lr", 1.0, 2, 10,
                                              {"min_lr": 0.1, "min_lr_rate": 0.1})),
    ("cosine_extra_kw", lambda: get_scheduler("cosine", 1.0, 2, 10, {"foo": 1})),
    ("linear_with_kwargs_num_cycles",
     lambda: get_scheduler("linear", 1.0, 2, 10, {"num_cycles": 2})),
    ("poly_lr_end_eq_init", lambda: get_scheduler("polynomial", 1e-7, 2, 10)),
])
def test_golden_errors(key, call):
    assert same_outcome(("error", *error_text(call).split(": ", 1)),
                        ("error", *ERRORS[key].split(": ", 1)))


def test_hf_test_get_scheduler():
    """transformers 4.49's ScheduleInitTest.test_get_scheduler calls."""
    for kind in ("linear", "cosine", "1-sqrt"):
        schedule = get_scheduler("warmup_stable_decay", 10.0, num_warmup_steps=2,
                                 num_training_steps=10,
                                 scheduler_specific_kwargs={"num_decay_steps": 2,
                                                            "warmup_type": kind,
                                                            "decay_type": kind})
        assert schedule(2) == 10.0 and schedule(11) == 0.0
    assert get_scheduler("cosine", 10.0, num_warmup_steps=2, num_training_steps=10)(6) == 5.0


def test_ignored_arguments():
    steps = jnp.arange(30)
    with pytest.warns(UserWarning, match=r"\['anything'\] are ignored for 'constant'"):
        constant = get_scheduler("constant", 3.0, 5, 10, {"anything": object()})
    np.testing.assert_array_equal(constant(steps), 3.0)
    for name, plain in (("constant_with_warmup", funcopt.get_constant_schedule_with_warmup),):
        with pytest.warns(UserWarning, match="are ignored"):
            schedule = get_scheduler(name, 3.0, 5, None, {"timescale": 2, "foo": 1})
        np.testing.assert_array_equal(schedule(steps), plain(3.0, 5)(steps))
    # transformers 5.x forwards inverse_sqrt's kwargs (4.49 ignored them): see tests/trainer5.
    schedule = get_scheduler("inverse_sqrt", 3.0, 5, None, {"timescale": 2})
    plain = funcopt.get_inverse_sqrt_schedule(3.0, 5, timescale=2)
    np.testing.assert_array_equal(schedule(steps), plain(steps))
    plateau = get_scheduler("reduce_lr_on_plateau", 1e-3, None, None, {"patience": 0})
    assert isinstance(plateau.init({}), funcopt.ReduceOnPlateauState)


def test_scheduler_type_members_work_as_names():
    for member in SchedulerType:
        if member in (SchedulerType.REDUCE_ON_PLATEAU, SchedulerType.GREEDY):
            continue
        kwargs = {"warmup_stable_decay": {"num_decay_steps": 3},
                  "cosine_with_min_lr": {"min_lr_rate": 0.1},
                  "cosine_warmup_with_min_lr": {"min_lr_rate": 0.1}}.get(member.value)
        schedule = get_scheduler(member, 2.0, 2, 10, kwargs)
        assert schedule(1 if member is SchedulerType.COSINE_WARMUP_WITH_MIN_LR else 2) == 2.0


# ------------------------------------------------------------------------------------------
# Live: random calls, valid or not, to funcopt's and transformers' get_scheduler.

KWARG_POOL = {
    "num_cycles": 0.7, "lr_end": 1e-5, "power": 2.0, "min_lr_rate": 0.1, "min_lr": 0.02,
    "num_decay_steps": 5, "num_stable_steps": 3, "warmup_type": "cosine",
    "decay_type": "1-sqrt", "min_lr_ratio": 0.2, "timescale": 7, "foo": 1, "patience": 2,
    "factor": 0.5, "mode": "max", "num_warmup_steps": 4,
}


def normalize(text):
    return re.sub(r"\b(transformers\.optimization|funcopt\._lambda_schedules_\w+)\.", "", text)


def outcome(function, *args, **kwargs):
    """``function(*args, **kwargs)`` as (what happened, result)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = function(*args, **kwargs)
        except (TypeError, ValueError) as err:
            return ("error", type(err).__name__, normalize(str(err))), None
    warned = tuple(str(w.message) for w in caught if issubclass(w.category, UserWarning)
                   and "num_stable_steps will be used" in str(w.message))
    return ("ok", warned), result


def test_live_random_calls_against_transformers():
    torch = reference("torch")
    hf = reference("transformers")
    rng = np.random.default_rng(4)
    counts = {"ok": 0, "error": 0}
    for _ in range(300):
        name = str(rng.choice(NAMES + ["Linear", "cosine_warmup_with_min_lr"]))
        lr = 0.1
        w = None if rng.random() < 0.15 else int(rng.integers(0, 20))
        t = None if rng.random() < 0.15 else (w or 0) + int(rng.integers(1, 60))
        keys = rng.choice(sorted(KWARG_POOL), size=int(rng.integers(0, 3)), replace=False)
        kwargs = None if rng.random() < 0.2 else {str(k): KWARG_POOL[k] for k in keys}
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
        theirs, scheduler = outcome(
            hf.get_scheduler, name, optimizer, num_warmup_steps=w, num_training_steps=t,
            scheduler_specific_kwargs=None if kwargs is None else dict(kwargs))
        ours, schedule = outcome(
            get_scheduler, name, lr, num_warmup_steps=w, num_training_steps=t,
            scheduler_specific_kwargs=None if kwargs is None else dict(kwargs))
        case = (name, w, t, kwargs)
        if name == "cosine_warmup_with_min_lr" or (name == "inverse_sqrt" and kwargs):
            continue  # changed in transformers 5.x, compared with 5.23 in tests/trainer5
        counts[theirs[0]] += 1
        if name == "reduce_lr_on_plateau" and theirs[0] == "error":
            # torch's message names ReduceLROnPlateau.__init__, ours reduce_on_plateau.
            assert ours[:2] == theirs[:2], case
            continue
        assert same_outcome(ours, theirs), case
        if theirs[0] == "ok" and name == "reduce_lr_on_plateau":
            check_plateau(scheduler, optimizer, schedule, lr)
        elif theirs[0] == "ok":
            lrs = []
            for _ in range(80):
                lrs.append(optimizer.param_groups[0]["lr"])
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    scheduler.step()
            np.testing.assert_allclose(schedule(jnp.arange(80)), lrs, rtol=0, atol=3e-7 * lr)
    assert counts["ok"] > 80 and counts["error"] > 80


def check_plateau(scheduler, optimizer, transformation, lr):
    state = transformation.init({})
    for metric in [3.0, 2.0, 2.0, 2.0, 2.5, 2.5, 2.5, 1.0, 1.0, 1.0, 1.0, 1.0]:
        scheduler.step(metric)
        _, state = transformation.update({}, state, value=metric)
        np.testing.assert_allclose(float(state.scale) * lr, optimizer.param_groups[0]["lr"],
                                   rtol=1e-7)
