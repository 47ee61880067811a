"""search/_compat.py on real, small Ray and Optuna objects: if an upgrade of Ray or Optuna moves an
internal the adapter relies on, a test here fails (not a user's search)."""

from __future__ import annotations

import pickle
import sys
import time

import optuna
import pytest
from ray import cloudpickle, tune
from ray.tune.search import BasicVariantGenerator, SearchGenerator
from ray.tune.search.optuna import OptunaSearch
from ray.tune.stopper import Stopper, TimeoutStopper

import search  # noqa: F401  (the driver's Tune environment)
from search import _compat
from search.budget import ResumableBudget, ResumableGenerator


def _space(trial):
    trial.suggest_float("x", 0.0, 1.0)


def _optuna_search() -> OptunaSearch:
    return OptunaSearch(space=_space, metric=["a", "b"], mode=["max", "min"], sampler=optuna.samplers.RandomSampler(seed=0))


def test_optuna_search_trial_map_study_and_told_set():
    sr = _optuna_search()
    sr.suggest("t0")
    sr.suggest("t1")
    trial = _compat.optuna_trial_of(sr, "t0")
    assert isinstance(trial, optuna.trial.Trial) and 0.0 <= trial.params["x"] <= 1.0
    assert _compat.optuna_trial_of(sr, "unknown") is None
    _compat.tell_once(sr, "t0", None, optuna.trial.TrialState.PRUNED)
    assert _compat.optuna_trial_of(sr, "t0") is None  # told
    # OptunaSearch's own bookkeeping saw it: its on_trial_complete does not tell it a second time
    sr.on_trial_complete("t0", {"a": 1.0, "b": 2.0})
    sr.on_trial_complete("t1", {"a": 1.0, "b": 2.0})
    study = _compat.study_of(sr)
    assert isinstance(study, optuna.Study)
    assert [t.state.name for t in study.trials] == ["PRUNED", "COMPLETE"]
    assert study.trials[1].values == [1.0, 2.0]


def test_a_finished_trial_is_not_told_again_and_an_asked_one_is_adopted_with_its_parameters():
    """What a resume after a killed driver relies on: the study's own state decides whether a
    tell happens, and a trial asked before the kill runs again with the parameters it was given."""
    sr = _optuna_search()
    sr.suggest("t0")
    study = _compat.study_of(sr)
    study.tell(_compat.trial_of(sr, "t0"), [1.0, 2.0])  # told before Ray saved the searcher
    stale = pickle.loads(pickle.dumps(sr))  # a copy that has not heard of it
    assert _compat.optuna_trial_of(stale, "t0") is not None
    _compat.tell_once(stale, "t0", [3.0, 4.0], optuna.trial.TrialState.COMPLETE)  # no "Cannot tell a COMPLETE trial"
    assert _compat.optuna_trial_of(stale, "t0") is None
    assert [t.values for t in _compat.study_of(stale).trials] == [[1.0, 2.0]]  # the first result stands

    asked = _compat.study_of(stale).ask()
    x = asked.suggest_float("x", 0.0, 1.0)
    frozen = _compat.study_of(stale).trials[-1]
    assert _compat.asked(stale) == 1 and frozen.number not in _compat.known_numbers(stale)
    _compat.adopt_trial(stale, "t1", _compat.storage_id(frozen))
    assert _compat.knows(stale, "t1") and frozen.number in _compat.known_numbers(stale)
    assert stale.suggest("t1") == {"x": x}  # the define-by-run space gives back the stored value
    assert len(_compat.study_of(stale).trials) == 2  # nothing new asked


def test_kept_checkpoints_of_a_trial(tmp_path):
    from ray.train import CheckpointConfig
    from ray.train._internal.session import _TrainingResult
    from ray.tune.experiment import Trial

    trial = Trial("x", stub=True, checkpoint_config=CheckpointConfig(num_to_keep=2))
    for i in range(3):
        (tmp_path / f"checkpoint_{i}").mkdir()
        trial.run_metadata.checkpoint_manager.register_checkpoint(
            _TrainingResult(tune.Checkpoint.from_directory(str(tmp_path / f"checkpoint_{i}")), {"i": i}))
    kept = sorted({c.path for c in _compat.kept_checkpoints(trial)})
    assert kept == [str(tmp_path / "checkpoint_1"), str(tmp_path / "checkpoint_2")]
    assert not (tmp_path / "checkpoint_0").exists()  # what Ray deletes when it keeps two


def test_search_generator_reopened_after_being_finished():
    generator = SearchGenerator(_optuna_search())
    generator.set_state({**generator.get_state(), "total_samples": 4})  # 4 trials, none started
    generator.set_finished()
    assert generator.is_finished()
    _compat.reopen_generator(generator)
    assert not generator.is_finished()
    # and through the saved state, as a resumed search restores it
    generator.set_finished()
    state = generator.get_state()
    reopened = ResumableGenerator(_optuna_search())
    reopened.set_state(state)
    assert state["finished"] and not reopened.is_finished()


def test_timeout_stopper_budget_spent_and_reset():
    stopper = TimeoutStopper(3600.0)
    assert not stopper.stop_all()
    _compat.timeout_spent(stopper)
    assert stopper.stop_all()
    _compat.reset_timeout(stopper)
    assert not stopper.stop_all()  # the whole hour again
    _compat.reset_timeout(stopper, 0.0)
    assert stopper.stop_all()  # a budget of nothing is spent at the first check


def test_resumable_budget_reached_and_afresh_when_unpickled():
    ResumableBudget.reached = False
    try:
        stopper = ResumableBudget(3600.0)
        assert not stopper.stop_all() and not ResumableBudget.reached
        _compat.timeout_spent(stopper)
        assert stopper.stop_all() and ResumableBudget.reached
        ResumableBudget.reached = False  # a new search in this process
        resumed = pickle.loads(pickle.dumps(stopper))
        assert not resumed.stop_all() and not ResumableBudget.reached
        ResumableBudget.next_budget_s = 0.0  # --resume --time-budget 0
        assert pickle.loads(pickle.dumps(stopper)).stop_all()
    finally:
        ResumableBudget.reached = False
        ResumableBudget.next_budget_s = None


# ------------------------------------------------------------------ a real Tuner, run once

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import this test file


def _reports(config):
    for i in range(200):  # stopped after its first report; finishing would take 20 s
        tune.report({"i": i})
        time.sleep(0.1)


class _StopAfterFirstResult(Stopper):
    """Stops the experiment (as the time budget does) once a trial has reported."""

    def __init__(self):
        self.go = False

    def __call__(self, trial_id, result) -> bool:
        self.go = True
        return False

    def stop_all(self) -> bool:
        return self.go


class _Events(tune.Callback):
    def __init__(self):
        self.completed: list[str] = []
        self.step_end_statuses: list[list[str]] = []

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.completed.append(trial.trial_id)

    def on_step_end(self, iteration, trials, **info):
        self.step_end_statuses.append([t.status for t in trials])


@pytest.mark.ray
def test_tuner_internals_and_how_tune_stops_an_experiment(ray_session, tmp_path):
    """What search/callbacks.py relies on: when a stopper ends the experiment, Tune stops the running
    trial (TERMINATED) without any trial hook, and the callbacks' on_step_end of that step sees it
    stopped. And what search/run.py reads of a (restored) Tuner: callbacks, search algorithm, budget."""
    events = _Events()
    search_alg = BasicVariantGenerator()
    tuner = tune.Tuner(_reports, tune_config=tune.TuneConfig(num_samples=1, search_alg=search_alg),
                       run_config=tune.RunConfig(name="compat", storage_path=str(tmp_path), verbose=0,
                                                 stop=_StopAfterFirstResult(), callbacks=[events]))
    assert _compat.restored_callbacks(tuner) == [events]
    assert _compat.restored_search_alg(tuner) is search_alg
    results = tuner.fit()
    assert results[0].metrics["i"] < 199  # stopped, not run to the end
    assert events.completed == []  # no trial hook for a trial the experiment stop ended
    assert ["TERMINATED"] in events.step_end_statuses

    restored = tune.Tuner.restore(str(tmp_path / "compat"), trainable=_reports)
    (callback,) = [cb for cb in _compat.restored_callbacks(restored) if isinstance(cb, _Events)]
    assert callback is not events  # unpickled from the experiment state
    assert isinstance(_compat.restored_search_alg(restored), BasicVariantGenerator)


@pytest.mark.ray
def test_a_time_budget_set_on_a_tuner_after_construction_stops_it(ray_session, tmp_path):
    tuner = tune.Tuner(_reports, tune_config=tune.TuneConfig(num_samples=1),
                       run_config=tune.RunConfig(name="budget", storage_path=str(tmp_path), verbose=0))
    _compat.set_restored_time_budget(tuner, 0.001)
    results = tuner.fit()
    assert results[0].metrics.get("i", 0) < 199


def test_a_study_view_is_what_tpe_and_its_search_space_read_as_the_study():
    import optuna
    from optuna.search_space import _GroupDecomposedSearchSpace

    from search._compat import StudyView

    study = optuna.create_study(directions=["minimize", "minimize"])
    for name in ("a", "b", "c"):
        study.add_trial(optuna.trial.create_trial(params={name: 0.5}, values=[1.0, 2.0],
                                                  distributions={name: optuna.distributions.FloatDistribution(0, 1)}))
    view = StudyView(study, study.get_trials(deepcopy=False)[1:])
    assert [t.number for t in view._get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))] == [1, 2]
    assert view.directions == study.directions and view._study_id == study._study_id
    spaces = _GroupDecomposedSearchSpace().calculate(view).search_spaces
    assert sorted(k for s in spaces for k in s) == ["b", "c"]
