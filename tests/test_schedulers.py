"""MO-ASHA's rung decisions on hand-made reports (fake trials; no Ray instance needed)."""

from __future__ import annotations

import copy
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
from ray.tune.schedulers import TrialScheduler

from search.schedulers import MOASHAScheduler, crowding_distance, epoch_objective, rung_milestones

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP
ACC_PARAMS = [("val_accuracy", "max"), ("params_nonzero", "min")]


def report(sched: MOASHAScheduler, trial: str, epoch: int, **metrics) -> str:
    return sched.on_trial_result(None, SimpleNamespace(trial_id=trial), {"epoch": epoch, **metrics})


def test_rungs_lie_below_max_t():
    assert rung_milestones(1, 3, 12) == [1, 3, 9]
    assert rung_milestones(1, 3, 9) == [1, 3]  # a rung at max_t would decide nothing
    assert rung_milestones(2, 2, 9) == [2, 4, 8]
    assert rung_milestones(1, 1.5, 4) == [1, 2, 3]  # rounded up to whole epochs, no duplicates


def test_final_objectives_are_read_through_their_per_epoch_counterparts():
    assert [epoch_objective(m) for m in ("val_accuracy", "params_nonzero", "flops_compact", "sparsity",
                                         "params_compact")] == [
        "val_accuracy", "weights_nonzero", "flops_estimate", "weights_sparsity", "params_estimate"]
    with pytest.raises(ValueError, match="'param_sharing' has no per-epoch counterpart"):
        MOASHAScheduler([("param_sharing", "max")], max_t=4)


def test_dominated_trial_stops_and_non_dominated_continues():
    s = MOASHAScheduler(ACC_PARAMS, max_t=8, grace_period=1, reduction_factor=2)
    assert report(s, "a", 1, val_accuracy=0.90, weights_nonzero=100) == CONTINUE  # first at the rung
    assert report(s, "b", 1, val_accuracy=0.80, weights_nonzero=200) == STOP  # dominated by a
    assert report(s, "c", 1, val_accuracy=0.95, weights_nonzero=300) == CONTINUE  # a trade-off
    assert report(s, "d", 1, val_accuracy=0.99, weights_nonzero=50) == CONTINUE  # dominates all
    assert s.num_stopped == 1 and sorted(s.recorded[1]) == ["a", "b", "c", "d"]  # stopped ones stay


def test_crowding_distance_by_hand():
    np.testing.assert_allclose(crowding_distance(np.array([[0.0, 3], [1, 1], [3, 0]])), [np.inf, 2.0, np.inf])
    # ranges 4 and 4: (2-0)/4 + (4-1)/4 = 1.25 and (4-1)/4 + (3-0)/4 = 1.5
    np.testing.assert_allclose(crowding_distance(np.array([[0.0, 4], [1, 3], [2, 1], [4, 0]])),
                               [np.inf, 1.25, 1.5, np.inf])
    assert np.isinf(crowding_distance(np.array([[1.0, 2], [2, 1]]))).all()


@pytest.mark.parametrize("last, other, expected", [("d", "c", CONTINUE), ("c", "d", STOP)])
def test_crowding_breaks_ties_within_a_front(last, other, expected):
    """Four non-dominated trials (val_loss, params both minimised); with η = 1.5 three may pass.
    a and b are the front's extremes (infinite crowding), so the fourth continues only if it is
    more isolated than the other interior trial: d (crowding 1.5) does, c (1.25) does not."""
    points = {"a": (0.0, 4), "b": (4.0, 0), "c": (1.0, 3), "d": (2.0, 1)}
    s = MOASHAScheduler([("val_loss", "min"), ("params_nonzero", "min")], max_t=5, reduction_factor=1.5)
    for trial in ("a", "b", other):
        report(s, trial, 1, val_loss=points[trial][0], weights_nonzero=points[trial][1])
    assert report(s, last, 1, val_loss=points[last][0], weights_nonzero=points[last][1]) == expected


def test_only_the_top_third_passes_with_eta_3():
    """Nine trials at a rung, η = 3: a trial passes iff fewer than ceil(9/3) = 3 are ahead."""
    s = MOASHAScheduler([("val_accuracy", "max")], max_t=9, reduction_factor=3)
    for i, acc in enumerate([0.50, 0.55, 0.60, 0.65, 0.70, 0.75, 0.80, 0.85]):
        report(s, f"t{i}", 1, val_accuracy=acc)
    for acc, ahead in ((0.82, 1), (0.78, 2), (0.80, 1), (0.72, 3)):  # a tie with 0.80 is not ahead
        expected = CONTINUE if ahead < 3 else STOP
        assert report(copy.deepcopy(s), "new", 1, val_accuracy=acc) == expected, (acc, ahead)


def test_decisions_only_at_rungs_and_never_at_max_t():
    s = MOASHAScheduler(ACC_PARAMS, max_t=6, grace_period=2, reduction_factor=2)
    assert s.milestones == [2, 4]
    report(s, "good", 2, val_accuracy=0.9, weights_nonzero=10)
    assert report(s, "bad", 1, val_accuracy=0.1, weights_nonzero=99) == CONTINUE  # before the grace period
    assert s.recorded[2].keys() == {"good"}
    assert report(s, "bad", 3, val_accuracy=0.1, weights_nonzero=99) == STOP  # first report past rung 2
    assert report(s, "good", 3, val_accuracy=0.9, weights_nonzero=10) == CONTINUE  # already decided at 2
    report(s, "good", 4, val_accuracy=0.9, weights_nonzero=10)
    # reaching max_t (the full budget): complete, never stopped, but recorded for later comparisons
    assert report(s, "late", 6, val_accuracy=0.1, weights_nonzero=99) == CONTINUE
    assert "late" in s.recorded[4] and s.num_stopped == 1


def test_reports_without_objectives_neither_stop_nor_count():
    s = MOASHAScheduler(ACC_PARAMS, max_t=4, reduction_factor=2)
    report(s, "a", 1, val_accuracy=0.9, weights_nonzero=10)
    assert report(s, "diverged", 1, trial_failed=1.0) == CONTINUE
    assert report(s, "nan", 1, val_accuracy=float("nan"), weights_nonzero=5) == CONTINUE
    assert s.recorded[1].keys() == {"a"}


def test_completed_trials_are_recorded_and_state_pickles():
    s = MOASHAScheduler(ACC_PARAMS, max_t=4, reduction_factor=2)
    s.on_trial_complete(None, SimpleNamespace(trial_id="done"), {"epoch": 4, "val_accuracy": 0.9,
                                                                  "weights_nonzero": 10})
    assert s.recorded[2].keys() == {"done"} and s.num_stopped == 0
    restored = pickle.loads(pickle.dumps(s))  # Ray saves the scheduler with the experiment
    assert report(restored, "x", 2, val_accuracy=0.5, weights_nonzero=50) == STOP


@pytest.mark.parametrize("kwargs, message", [
    ({"max_t": 1, "grace_period": 1}, "max_t > grace_period"),
    ({"max_t": 5, "grace_period": 0}, "grace_period >= 1"),
    ({"max_t": 5, "reduction_factor": 1.0}, "reduction_factor > 1"),
])
def test_bad_settings_name_field_and_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MOASHAScheduler(ACC_PARAMS, **kwargs)
    with pytest.raises(ValueError, match="mode must be 'max' or 'min'"):
        MOASHAScheduler([("val_accuracy", "up")], max_t=5)


def test_in_a_path_search_rungs_are_stages_and_points_are_ranked_by_the_objectives():
    """``time_attr=stages_done, per_epoch=False`` (``make_scheduler`` for a path search): the epochs
    inside a stage carry no ``stages_done`` and decide nothing; a point is ranked at its stage by
    the final objectives themselves."""
    s = MOASHAScheduler([("val_accuracy", "max"), ("params_nonzero", "min")], max_t=5, grace_period=1,
                        reduction_factor=2, time_attr="stages_done", per_epoch=False)
    assert s.milestones == [1, 2, 4]

    def say(trial, **metrics):
        return s.on_trial_result(None, SimpleNamespace(trial_id=trial), metrics)

    assert say("a", epoch=1, val_accuracy=0.1, weights_nonzero=1) == CONTINUE  # inside a stage
    assert say("a", epoch=3, stages_done=1, val_accuracy=0.90, params_nonzero=100) == CONTINUE
    # an epoch with a worse per-epoch value than a's point: not a point, so never a stop
    assert say("b", epoch=2, val_accuracy=0.1, weights_nonzero=500) == CONTINUE
    assert say("b", epoch=3, stages_done=1, val_accuracy=0.80, params_nonzero=200) == STOP  # dominated
    assert say("c", epoch=3, stages_done=1, val_accuracy=0.95, params_nonzero=300) == CONTINUE  # a trade-off
    assert sorted(s.recorded[1]) == ["a", "b", "c"] and not s.recorded[2]
    assert "stage 1: 3 trials" in s.debug_string()


def test_make_scheduler_counts_stages_for_a_path_spec():
    from ray.tune.schedulers import ASHAScheduler

    from search.schedulers import make_scheduler
    from search.spec import SearchSpec

    base = {"name": "p", "base": {"data": {"name": "digits"}, "model": {"name": "mlp", "hidden": [8]},
                                   "optim": {"epochs": 2}, "path": {"targets": [0.3, 0.6, 0.8], "finetune_epochs": 1}},
            "regularizers": {"group_lasso": {"lam": {"type": "loguniform", "low": 1e-3, "high": 1e-1}}},
            "trials": 4}
    moasha = make_scheduler(SearchSpec.model_validate({**base, "scheduler": {"type": "moasha"}}))
    assert (moasha._time_attr, moasha._max_t, moasha.milestones) == ("stages_done", 3, [1])
    assert moasha._metrics == ["val_accuracy", "params_nonzero", "flops_compact"]  # the objectives themselves
    asha = make_scheduler(SearchSpec.model_validate({**base, "scheduler": {"type": "asha"}}))
    assert isinstance(asha, ASHAScheduler) and asha._time_attr == "stages_done" and asha._max_t == 3
    plain = make_scheduler(SearchSpec.model_validate({**base, "base": {**base["base"], "path": None},
                                                      "scheduler": {"type": "moasha"}}))
    assert plain._time_attr == "epoch" and plain._max_t == 2
