"""CC009 eval-mode-training: recorded traces, and a distillation script written another way."""

from __future__ import annotations

from cc_testing import SCRIPTS, convcheck

from convcheck.checks.cc009_eval_mode_training import EvalModeTraining
from convcheck.runtime.trace import RunTrace, load_events

MODES = [{"name": "1", "cls": "BatchNorm1d"}, {"name": "3", "cls": "Dropout"}]
PARAMS = [{"id": 0, "name": "0.weight", "requires_grad": True}, {"id": 1, "name": "1.weight", "requires_grad": True},
          {"id": 2, "name": "1.bias", "requires_grad": True}, {"id": 3, "name": "4.weight", "requires_grad": True}]


def trace(eval_from: int | None, steps: int = 6, names: list[str] = ("1", "3"), params: list[dict] = PARAMS,
          modes: list[dict] = MODES) -> list[dict]:
    events = [{"ev": "process"}, {"ev": "model", "cls": "Sequential", "params": params, "mode_modules": modes}]
    for n in range(1, steps + 1):
        backward = {"ev": "backward", "n": n, "step": n - 1, "loss": 1.0, "loc": ["train.py", 30]}
        if eval_from is not None and n == eval_from:
            events.append({"ev": "train_mode", "mode": False, "cls": "Sequential", "step": n - 1,
                           "loc": ["train.py", 33]})
        if eval_from is not None and n >= eval_from and names:
            backward["eval_modules"] = list(names)
            backward["eval_roots"] = [[0, len(names)]]
        events += [backward, {"ev": "step", "opt": 0, "n": n, "backwards": 1, "grad": [p["id"] for p in params
                                                                                        if p["requires_grad"]]}]
    return events


def runtime(events: list[dict]) -> list:
    return list(EvalModeTraining().check_runtime(RunTrace(processes=[load_events(events)]), None))


def test_eval_never_undone_is_an_error_at_the_eval_call() -> None:
    [finding] = runtime(trace(eval_from=3))
    assert finding.severity.value == "error"
    assert (finding.location.path, finding.location.line) == ("train.py", 33)
    assert finding.evidence["steps_in_eval"] == [3, 4, 5, 6]
    assert finding.evidence["modules_in_eval"] == ["1", "3"]
    assert "4 of 6 optimizer steps (from step 3)" in finding.message
    assert "Steps 1-2 trained in train mode" in finding.message


def test_train_mode_throughout_is_quiet() -> None:
    assert runtime(trace(eval_from=None)) == []


def test_model_without_dropout_or_batchnorm_is_quiet() -> None:
    assert runtime(trace(eval_from=1, names=[], modes=[])) == []


def test_some_layers_in_eval_is_a_warning() -> None:
    [finding] = runtime(trace(eval_from=1, names=["3"]))
    assert finding.severity.value == "warning"


def test_batchnorm_frozen_on_purpose_is_quiet() -> None:
    params = [dict(p, requires_grad=not p["name"].startswith("1.")) for p in PARAMS]
    assert runtime(trace(eval_from=1, names=["1"], params=params)) == []


def test_frozen_teacher_in_eval_is_quiet() -> None:
    events = trace(eval_from=None)
    teacher = {"ev": "model", "cls": "Sequential", "params": [{"id": 9, "name": "0.weight", "requires_grad": False}],
               "mode_modules": [{"name": "3", "cls": "Dropout"}]}
    events.insert(2, teacher)
    for event in events:
        if event["ev"] == "backward":
            event["eval_modules"], event["eval_roots"] = ["3"], [[1, 1]]
    assert runtime(events) == []


def test_student_left_in_eval_next_to_a_teacher() -> None:
    fixed = convcheck("run", "--format", "json", "--fail-on", "never", "--steps", "4", "--select", "CC009",
                      SCRIPTS / "cc009_distill.py")
    assert fixed.code == 0, fixed.stderr
    assert fixed.findings("CC009") == []
    buggy = convcheck("run", "--format", "json", "--fail-on", "never", "--steps", "4", "--select", "CC009",
                      SCRIPTS / "cc009_distill.py", "--bug")
    [finding] = buggy.findings("CC009")
    assert (finding["severity"], finding["location"]["line"]) == ("error", 23)
    assert finding["evidence"]["modules_in_eval"] == ["1", "3"]


def test_the_eval_call_of_the_trained_model_is_chosen() -> None:
    events = trace(eval_from=1)
    events[1]["obj"] = 111
    student_eval = next(e for e in events if e["ev"] == "train_mode")
    student_eval["obj"] = 111
    # A teacher switched to eval mode later, before the first backward.
    events.insert(events.index(student_eval) + 1, {"ev": "train_mode", "mode": False, "cls": "Teacher", "obj": 222,
                                                   "step": 0, "loc": ["train.py", 40]})
    [finding] = runtime(events)
    assert finding.location.line == 33


def test_a_frozen_backbone_in_eval_mode_on_purpose_is_quiet() -> None:
    fixed = convcheck("run", "--format", "json", "--fail-on", "never", "--steps", "6", "--select", "CC009",
                      SCRIPTS / "cc009_frozen_backbone.py")
    assert fixed.code == 0, fixed.stderr
    assert fixed.findings("CC009") == []
    buggy = convcheck("run", "--format", "json", "--fail-on", "never", "--steps", "6", "--select", "CC009",
                      SCRIPTS / "cc009_frozen_backbone.py", "--bug")
    [finding] = buggy.findings("CC009")
    # Every dropout and batch-norm layer of the model trains in eval mode: no intent can explain it.
    assert finding["severity"] == "error"
    assert finding["evidence"]["modules_in_eval"] == ["backbone.1", "backbone.3"]
    assert finding["location"]["line"] == 31


def test_a_teacher_inside_the_trained_module_is_not_reported() -> None:
    # Teacher and student are parts of one model here: the teacher's dropout in eval mode is no bug.
    fixed = convcheck("run", "--format", "json", "--fail-on", "never", "--steps", "4", "--select", "CC009",
                      SCRIPTS / "cc009_distiller_module.py")
    assert fixed.code == 0, fixed.stderr
    assert fixed.findings("CC009") == []
    buggy = convcheck("run", "--format", "json", "--fail-on", "never", "--steps", "4", "--select", "CC009",
                      SCRIPTS / "cc009_distiller_module.py", "--bug")
    [finding] = buggy.findings("CC009")
    assert finding["evidence"]["modules_in_eval"] == ["student.2"]
