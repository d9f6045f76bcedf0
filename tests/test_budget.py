"""The budget and the claims, as rules on trials: which count, which may train, and the
words for their states. Small and fast, on trials made in memory."""


import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from experiments.search.spec.space import Param
from experiments.search.spec.sweepfile import SweepSpec
from experiments.search.trials.budget import (
    CLAIM,
    GRID_POINT,
    Budget,
    Word,
    grid_point,
    reached,
    state_name,
    tally,
    word,
)
from experiments.search.trials.loop import End, mark_failed


def trial(number, state=TrialState.COMPLETE, value=0.5, **attrs):
    t = create_trial(state=state, value=value if state == TrialState.COMPLETE else None,
                     user_attrs=attrs)
    t.number = number
    return t


def spec(**given):
    return SweepSpec(path="s.yaml", name="s", **given)


def grid(n_trials=100):
    return spec(method="grid", n_trials=n_trials,
                parameters=(Param("seed", "categorical", (0, 1, 2)),))


@pytest.mark.parametrize("t, counted", [
    (trial(0), True),
    (trial(0, TrialState.PRUNED), True),
    (trial(0, TrialState.FAIL, fail_reason="objective has_aux diverged"), True),
    (trial(0, TrialState.FAIL, fail_kind="interrupted"), False),
    (trial(0, TrialState.FAIL, fail_kind="infrastructure"), False),
    (trial(0, TrialState.FAIL, fail_kind="over_budget"), False),
    (trial(0, TrialState.FAIL), False),  # a crash leaves no reason of its own
    (trial(0, TrialState.RUNNING), False),
    (trial(0, TrialState.WAITING), False),
], ids=lambda v: str(v) if isinstance(v, bool) else "")
def test_a_trial_counts_when_it_finished_or_failed_for_its_own_reason(t, counted):
    assert Budget.of(spec(n_trials=3)).counts(t) is counted


def test_a_grid_is_capped_at_its_points_and_only_its_points_count():
    b = Budget.of(grid(n_trials=100))
    assert b.limit == 3
    on = trial(0, **{GRID_POINT: grid_point({"seed": 1})})
    off = trial(1, **{GRID_POINT: grid_point({"seed": 7})})  # dropped by an allowed change
    assert b.counts(on) and not b.counts(off)
    assert Budget.of(grid(n_trials=2)).limit == 2


def test_the_lowest_numbered_trials_within_the_budget_train_and_the_rest_are_refused():
    b = Budget.of(spec(n_trials=2))
    trials = [trial(0), trial(1, TrialState.RUNNING), trial(2, TrialState.RUNNING)]
    assert b.refusal(trials, 1, {}) == ""
    assert b.refusal(trials, 2, {}) == "over_budget"
    # A trial cut short frees its place: the next one in line takes it.
    trials[1] = trial(1, TrialState.FAIL, fail_kind="interrupted")
    assert b.refusal(trials, 2, {}) == ""


def test_a_claim_is_trained_once_by_the_lowest_numbered_live_trial():
    b = Budget.of(spec(n_trials=10))
    claim = {CLAIM: "retry:3"}
    trials = [trial(4, TrialState.RUNNING, **claim), trial(5, TrialState.RUNNING, **claim)]
    assert b.refusal(trials, 4, claim) == ""
    assert b.refusal(trials, 5, claim) == "duplicate"
    # The holder was cut short: the claim is free again for the next.
    trials[0] = trial(4, TrialState.FAIL, fail_kind="crashed", **claim)
    assert b.refusal(trials, 5, claim) == ""


def test_a_grid_trial_without_a_point_is_refused():
    b = Budget.of(grid())
    assert b.refusal([trial(0, TrialState.RUNNING)], 0, {}) == "no_grid_point"


def test_every_state_has_the_runners_word_and_every_count_adds_up():
    b = Budget.of(spec(n_trials=4))
    trials = [trial(0), trial(1, TrialState.PRUNED),
              trial(2, TrialState.FAIL, fail_reason="diverged"),
              trial(3, TrialState.FAIL, fail_kind="interrupted"),
              trial(4, TrialState.FAIL, fail_kind="over_budget"),
              trial(5, TrialState.WAITING, retry_of=3), trial(6, TrialState.RUNNING)]
    assert [word(t) for t in trials] == [Word.COMPLETE, Word.PRUNED, Word.FAILED,
                                         Word.CUT_SHORT, Word.REFUSED, Word.QUEUED,
                                         Word.RUNNING]
    assert state_name(trials[3]) == "CUT SHORT (interrupted)"
    assert state_name(trials[4]) == "REFUSED (over budget)"
    assert tally(trials, b) == ("1 COMPLETE, 1 PRUNED, 1 FAILED; not counted: 1 CUT SHORT "
                                "(interrupted), 1 REFUSED (over budget), 1 RUNNING, 1 QUEUED")
    assert "WAITING" not in tally(trials, b) and "FAIL " not in tally(trials, b)


@pytest.mark.parametrize("goal, target, values, met", [
    ("maximize", 0.9, [0.8, 0.91], True), ("maximize", 0.95, [0.8, 0.91], False),
    ("minimize", 0.3, [0.5, 0.29], True), ("minimize", 0.1, [0.5, 0.29], False)])
def test_metric_target_is_reached_by_a_complete_trial(goal, target, values, met):
    trials = [trial(i, value=v) for i, v in enumerate(values)]
    assert reached(trials, spec(goal=goal, target=target)) is met


def test_each_end_carries_its_status_and_words():
    assert [(e.value, e.status) for e in End] == [
        ("budget", "FINISHED"), ("timeout", "FINISHED"), ("target", "FINISHED"),
        ("interrupted", "KILLED"), ("workers died", "FAILED"), ("infrastructure", "FAILED"),
        ("failed", "FAILED")]
    assert End.BUDGET.text == "budget met" and End.BUDGET.complete
    assert not End.INTERRUPTED.complete


def test_a_lost_trial_is_queued_again_with_its_claim():
    study = optuna.create_study()
    lost = study.ask({"x": CategoricalDistribution([1, 2])})
    assert mark_failed(study, study.trials[lost.number], "interrupted")
    (queued,) = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert queued.user_attrs["retry_of"] == lost.number
    assert queued.user_attrs[CLAIM] == f"retry:{lost.number}"
    assert study.trials[lost.number].user_attrs["fail_kind"] == "interrupted"


def test_interrupted_trials_are_retried_as_often_as_it_takes_and_keep_their_origin():
    """A Ctrl-C is never the trial's fault: each interrupted retry is queued again (a
    crash is retried once), and a warm start's origin goes with the retry."""
    from experiments.search.trials import loop as tr

    study = optuna.create_study()
    study.enqueue_trial({"x": 0.5}, user_attrs={"warm_start_from": "early#3"})
    chain = []
    for kind in ("interrupted", "interrupted", "crashed", "crashed"):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        chain.append(trial.number)
        tr.mark_failed(study, study.trials[trial.number], kind)
    trials = study.get_trials()
    # 0 interrupted -> 1, 1 interrupted -> 2, 2 crashed -> 3, 3 (a crash of a retry) ends.
    assert [t.user_attrs.get("retry_of") for t in trials] == [None, 0, 1, 2]
    assert all(t.user_attrs["warm_start_from"] == "early#3" for t in trials)
    assert all(t.params == {"x": 0.5} for t in trials)



def test_a_trial_whose_process_died_before_failing_it_keeps_its_cause_and_one_retry():
    """A worker cut short by a full disk records why and queues the retry, then dies
    before its FAIL reaches the journal (the disk is full). The rerun that finds it
    RUNNING keeps its cause and queues no second retry: CI saw it called 'crashed', with
    a twin retry refused as a duplicate."""
    study = optuna.create_study()
    lost = study.ask({"x": CategoricalDistribution([1, 2])})
    assert mark_failed(study, study.trials[lost.number], "infrastructure", set_state=False)
    assert study.trials[lost.number].state == TrialState.RUNNING
    assert mark_failed(study, study.trials[lost.number], "crashed", how="process gone")
    trials = study.get_trials()
    assert trials[lost.number].state == TrialState.FAIL
    assert trials[lost.number].user_attrs["fail_kind"] == "infrastructure"
    (queued,) = [t for t in trials if t.state == TrialState.WAITING]
    assert queued.user_attrs["retry_reason"] == "infrastructure"


def test_a_met_budget_leaves_nothing_queued():
    """Two workers that top up a grid at once queue a point twice; once the budget is met,
    the spare copy is turned away on the record, never left QUEUED for ever (CI saw a
    grid sweep end with a WAITING trial that had no reason)."""
    from experiments.search.trials import loop as tr

    study = optuna.create_study()
    s = grid()
    for _ in range(2):  # both workers see every point free and queue it
        tr._top_up_grid(study, s, [], Budget.of(s))
    trained = []

    def objective(t):
        trained.append(t.suggest_categorical("seed", [0, 1, 2]))
        return float(trained[-1])

    end = tr.work(study, s, Budget.of(s), objective, on_done=lambda t: None,
                  recovery=tr.Recovery())
    assert end == End.BUDGET and sorted(trained) == [0, 1, 2]
    left = [t for t in study.get_trials() if t.state != TrialState.COMPLETE]
    assert len(left) == 3
    assert all(t.state == TrialState.FAIL and t.user_attrs["fail_kind"] == "duplicate"
               for t in left), [(t.state, t.user_attrs) for t in left]
