"""The bounded-history TPE sampler (search/history.py): its elite is exactly the trials dominated
by fewer than 25 others, whatever the order they finish in; the view keeps the study's front and
its elite's ranks, and the recent trials; under its history it is plain TPE."""

from __future__ import annotations

import pickle

import numpy as np
import optuna
import pytest
from optuna.samplers._tpe import sampler as tpe_internals

from search.pareto import pareto_ranks
from search.history import ELITE, MIN_HISTORY, BoundedTPESampler, DominanceArchive

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def brute_force(points: np.ndarray, k: int) -> set[int]:
    dominated_by = [(np.all(points <= p, axis=1) & np.any(points < p, axis=1)).sum() for p in points]
    return {i for i, d in enumerate(dominated_by) if d < k}


@pytest.mark.parametrize("k", [1, 3, ELITE])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_archive_is_the_points_dominated_by_fewer_than_k_whatever_the_order(k, seed):
    rng = np.random.default_rng(seed)
    points = rng.integers(0, 8, size=(400, 3)).astype(float)  # a coarse grid: ties and duplicates
    points[::37] = points[0]  # repeated points
    archive = DominanceArchive(k)
    for i in rng.permutation(len(points)):
        archive.insert(int(i), points[i])
    assert set(archive.keys) == brute_force(points, k)
    assert len(archive.keys) == len(set(archive.keys))


def test_a_capped_elite_keeps_the_least_dominated_and_the_most_recent_among_equals():
    archive = DominanceArchive(3)
    front = [(float(i), float(10 - i)) for i in range(10)]  # 10 mutually non-dominated points
    for key, p in enumerate(front):
        archive.insert(key, p)
    assert archive.insert(10, (9.5, 1.5))  # dominated by (9, 1) only
    assert archive.best(20) == set(range(11))
    assert archive.best(4) == {9, 8, 7, 6}  # front members (no dominator), the latest first
    assert 10 not in archive.best(10)


def test_archive_ignores_non_finite_points():
    archive = DominanceArchive(2)
    assert not archive.insert(0, [np.nan, 1.0])
    assert not archive.insert(1, [np.inf, 0.0])
    assert archive.insert(2, [1.0, 1.0]) and archive.keys == [2]


def _study(n: int, seed: int, sampler=None) -> optuna.Study:
    """n finished trials with coarse objective values (ties), mixed directions, some pruned."""
    rng = np.random.default_rng(seed)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=sampler)
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for i in range(n):
        if i % 11 == 5:
            study.add_trial(optuna.trial.create_trial(params={"x": rng.random()}, distributions=dist,
                                                      state=optuna.trial.TrialState.PRUNED))
        else:
            study.add_trial(optuna.trial.create_trial(params={"x": rng.random()}, distributions=dist,
                                                      values=list(rng.integers(0, 30, 3).astype(float))))
    return study


@pytest.mark.parametrize("seed", [0, 1])
def test_the_view_keeps_the_front_the_elites_ranks_and_the_recent_trials(seed):
    study = _study(900, seed)
    sampler = BoundedTPESampler(history=MIN_HISTORY)
    trial = study.ask()
    view = sampler.view(study, trial)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    seen = view.get_trials(deepcopy=False)
    everything = study.get_trials(deepcopy=False, states=finished)
    assert MIN_HISTORY < len(seen) < len(everything)
    assert {t.number for t in everything[-MIN_HISTORY:]} <= {t.number for t in seen}
    assert trial.number in {t.number for t in seen}  # the running trial (the constant liar's)

    def ranks(trials) -> dict[int, int]:
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        loss = np.array([[-t.values[0], t.values[1], t.values[2]] for t in complete])
        return dict(zip((t.number for t in complete), pareto_ranks(loss, ["min"] * 3)))

    in_view, in_study = ranks(seen), ranks(everything)
    elite = set(sampler._archive.keys)
    assert len(elite) <= MIN_HISTORY  # the whole elite is in view (not capped)
    losses = np.array([[-t.values[0], t.values[1], t.values[2]] for t in everything
                       if t.state == optuna.trial.TrialState.COMPLETE])
    assert elite == {[t.number for t in everything if t.state == optuna.trial.TrialState.COMPLETE][i]
                     for i in brute_force(losses, ELITE)}
    assert {n for n, r in in_view.items() if r == 0} == {n for n, r in in_study.items() if r == 0}
    assert all(in_view[n] == in_study[n] for n in elite)
    assert all(in_view[n] >= 1 for n in in_view if n not in elite)
    # TPE's below set in the view: the view's best 10%, all from its first ranks
    complete_seen = [t for t in seen if t.state in finished]
    below, _ = tpe_internals._split_trials(view, complete_seen, tpe_internals.default_gamma_multiobjective(len(complete_seen)))
    assert max(in_view[t.number] for t in below) <= min(in_view[t.number] for t in complete_seen
                                                           if t not in below and t.number in in_view)


def test_under_its_history_the_sampler_is_plain_tpe():
    def suggestions(sampler) -> list[float]:
        study = _study(40, 3, sampler)
        out = []
        for _ in range(5):
            t = study.ask()
            out.append(t.suggest_float("x", 0, 1))
            study.tell(t, [out[-1], 1 - out[-1], 0.5])
        return out

    plain = suggestions(optuna.samplers.TPESampler(seed=7, multivariate=True))
    assert suggestions(BoundedTPESampler(history=MIN_HISTORY, seed=7, multivariate=True)) == plain
    assert suggestions(BoundedTPESampler(history=None, seed=7, multivariate=True)) == plain


def test_beyond_its_history_it_samples_and_pickles_without_its_view():
    sampler = BoundedTPESampler(history=MIN_HISTORY, seed=0, multivariate=True, group=True, constant_liar=True)
    study = _study(MIN_HISTORY + 30, 4, sampler)
    for _ in range(3):
        t = study.ask()
        x = t.suggest_float("x", 0, 1)
        study.tell(t, [x, 1 - x, 0.5])
    assert sampler._cached is not None
    restored = pickle.loads(pickle.dumps(sampler))
    assert restored._cached is None and restored._archive.keys == sampler._archive.keys


def test_a_short_history_is_refused():
    with pytest.raises(ValueError, match="history must be None or >= 250"):
        BoundedTPESampler(history=10)
