"""CC002 unseeded-rng: two recorded runs compared, causes from the probe's RNG records, source snippets, scripts."""

from __future__ import annotations

import ast
import json
import os
import re
import textwrap
from pathlib import Path

import pytest
from cc_testing import EXAMPLES, SCRIPTS, convcheck, read_traces

from convcheck.checks.cc002_unseeded_rng import UnseededRng, compare, doubtful, repeat_steps, static_seeding
from convcheck.registry import CheckOptionError, RunVariant
from convcheck.runtime.trace import RunTrace, load_events
from convcheck.static.context import StaticContext


def _ctx(source: str = "") -> StaticContext:
    source = textwrap.dedent(source)
    return StaticContext(path=Path("train.py"), source=source, tree=ast.parse(source))


def _proc(losses: list[float], *, norms: float = 1.0, seeds=(), unseeded=(), loaders=(), pid: int = 1,
          final_sum: float | None = 3.0):
    events: list[dict] = [{"ev": "process", "pid": pid, "role": "entry"}]
    events += [{"ev": "seed", "rng": rng, "value": 0, "loc": ["train.py", line], "internal": False,
                "drawn_before": late} for rng, line, late in seeds]
    events += list(loaders)
    for n, loss in enumerate(losses, start=1):
        events.append({"ev": "backward", "n": n, "step": n - 1, "loss": loss, "loc": ["train.py", 20]})
        events.append({"ev": "step", "opt": 0, "n": n, "backwards": 1, "grad": [0], "lrs": [0.1],
                       "param_norms": [norms, 2.0]})
    events.append({"ev": "final", "steps": len(losses), "param_sum": final_sum, "rng_unseeded_draws": list(unseeded),
                   "rng_seeded": sorted({s[0] for s in seeds})})
    return load_events(events, pid=pid)


def _run(main, repeat) -> RunTrace:
    return RunTrace(processes=[main], variants={"repeat": RunTrace(processes=[repeat])})


def test_identical_runs_are_quiet_even_if_the_source_has_no_seed() -> None:
    ctx = _ctx("import torch\nmodel = torch.nn.Linear(2, 2)\n")
    check = UnseededRng()
    check.options = {"repeat-steps": 4}
    assert check.extra_runs(2, 20, ctx) == {"repeat": RunVariant(nproc_per_node=2, steps=4)}
    assert check.extra_runs(2, 3, ctx) == {"repeat": RunVariant(nproc_per_node=2, steps=3)}
    check.runtime_follows = True  # as the analysis sets it when a run's traces follow
    assert list(check.check_static(ctx)) == []
    assert list(check.check_runtime(_run(_proc([0.7, 0.6]), _proc([0.7, 0.6], pid=2)), ctx)) == []


def test_unseeded_torch_is_an_error_with_its_cause() -> None:
    run = _run(_proc([0.7, 0.6], unseeded=["torch", "numpy"]), _proc([0.71, 0.6], pid=2, unseeded=["torch"]))
    (finding,) = UnseededRng().check_runtime(run, _ctx())
    assert finding.severity.value == "error"
    assert "the loss of backward pass 1 was 0.7 in one run and 0.71 in the other" in finding.message
    assert finding.evidence["causes"] == ["unseeded:numpy", "unseeded:torch"]
    assert "torch.manual_seed(seed)" in finding.message and "np.random.seed(seed)" in finding.message


def test_late_seed_points_at_the_seed() -> None:
    run = _run(_proc([0.7], seeds=[("torch", 9, True)], unseeded=["torch"]), _proc([0.8], pid=2))
    (finding,) = UnseededRng().check_runtime(run, _ctx())
    assert finding.location.line == 9 and finding.evidence["causes"] == ["late-seed:torch"]


def test_parameters_differ_with_equal_losses() -> None:
    assert compare(_proc([0.7, 0.6]), _proc([0.7, 0.6], norms=1.5)) is not None
    assert compare(_proc([0.7, 0.6]), _proc([0.7, 0.6], final_sum=3.5)) is not None
    assert compare(_proc([0.7, 0.6, 0.5]), _proc([0.7, 0.6], pid=2)) is None  # only common steps count


def test_a_parameter_digest_one_run_lacks_or_took_over_other_parameters_is_no_evidence() -> None:
    main, repeat = _proc([0.7, 0.6]), _proc([0.7, 0.6], final_sum=None)
    assert compare(main, repeat) is None and compare(repeat, main) is None
    fewer = _proc([0.7, 0.6], final_sum=2.0)
    fewer.first("final")["params_summed"] = 1
    assert compare(_proc([0.7, 0.6]), fewer) is None


def test_the_digest_is_taken_even_when_the_optimizer_was_collected_before_the_end(tmp_path: Path) -> None:
    result = convcheck("run", "--format", "json", "--trace-dir", tmp_path / "t", SCRIPTS / "optimizer_gone_at_the_end.py")
    assert result.code == 0, result.stdout + result.stderr
    [final] = [e for events in read_traces(tmp_path / "t") for e in events if e["ev"] == "final"]
    assert final["steps"] == 3 and final["params_summed"] == 2 and isinstance(final["param_sum"], float)
    assert result.findings() == []


def test_dataset_rng_copied_into_workers() -> None:
    loader = {"ev": "loader", "id": 0, "num_workers": 4, "dataset": "Aug", "worker_init_fn": False,
              "generator": False, "dataset_rngs": [{"attr": "rng", "cls": "RandomState"}], "loc": ["train.py", 12]}
    same = _run(_proc([0.7], seeds=[("torch", 2, False)], loaders=[loader]),
                _proc([0.7], pid=2, seeds=[("torch", 2, False)], loaders=[loader]))
    (finding,) = UnseededRng().check_runtime(same, _ctx())
    assert finding.severity.value == "warning" and finding.location.line == 12
    differ = _run(_proc([0.7], seeds=[("torch", 2, False)], loaders=[loader]), _proc([0.9], pid=2))
    (finding,) = UnseededRng().check_runtime(differ, _ctx())
    assert finding.severity.value == "error" and finding.evidence["causes"] == ["dataset-rng"]
    with_init = {**loader, "worker_init_fn": True}
    quiet = _run(_proc([0.7], loaders=[with_init]), _proc([0.7], pid=2, loaders=[with_init]))
    assert list(UnseededRng().check_runtime(quiet, _ctx())) == []


def test_without_a_repeat_only_a_warning() -> None:
    run = RunTrace(processes=[_proc([0.7], unseeded=["python"])])
    (finding,) = UnseededRng().check_runtime(run, _ctx())
    assert finding.severity.value == "warning" and "not verified" in finding.message


@pytest.mark.parametrize(
    ("source", "seeds", "first_draw", "late"),
    [
        ("import torch\ntorch.manual_seed(0)\nmodel = torch.nn.Linear(2, 2)\n", [2], 3, None),
        ("import torch\nmodel = torch.nn.Linear(2, 2)\ntorch.manual_seed(0)\n", [3], 2, (3, 2)),
        ("import numpy as np\nx = np.random.rand(3)\n", [], 2, None),
        ("import random\nrandom.seed(1)\nrandom.shuffle(xs)\n", [2], 3, None),
        # the model class is built in main(), which seeds first: definitions above do not count
        ("import torch.nn as nn\nclass Net(nn.Module):\n    def __init__(self):\n        self.l = nn.Linear(2, 2)\n"
         "def main():\n    seed_everything(1)\n    net = Net()\n", [6], 4, None),
        ("import torch.nn as nn\nclass Net(nn.Module):\n    pass\n"
         "def main():\n    net = Net()\n    set_seed(1)\n", [6], 5, (6, 5)),
        ("import torch\nx = torch.zeros(3)\n", [], None, None),
    ],
    ids=["seeded", "late", "numpy-unseeded", "python", "main-seeds-first", "main-late", "nothing-random"],
)
def test_static_seeding(source: str, seeds: list[int], first_draw: int | None, late) -> None:
    facts = static_seeding(_ctx(source))
    assert (facts.seed_lines, facts.first_draw, facts.late_seed) == (seeds, first_draw, late)


def test_static_findings() -> None:
    late = list(UnseededRng().check_static(_ctx("import torch\nm = torch.nn.Linear(2, 2)\ntorch.manual_seed(0)\n")))
    assert [(f.severity.value, f.location.line, f.source) for f in late] == [("warning", 3, "static")]
    missing = list(UnseededRng().check_static(_ctx("import torch\nm = torch.nn.Linear(2, 2)\n")))
    assert [(f.severity.value, f.location.line) for f in missing] == [("info", 2)]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [([], ["error"]), (["--seed-all", "--seed-rng"], ["warning"]), (["--seed-all", "--seed-rng", "--worker-init"], [])],
    ids=["unseeded", "seeded-copies", "reseeded-per-worker"],
)
def test_dataloader_workers_script(flags: list[str], expected: list[str]) -> None:
    result = convcheck("run", "--format", "json", "--fail-on", "never", "--select", "CC002", "--steps", "3",
                       SCRIPTS / "cc002_augment_workers.py", *flags)
    assert result.code == 0, result.stderr
    assert [f["severity"] for f in result.findings("CC002")] == expected


def test_unseeded_cause_points_at_the_first_draw() -> None:
    ctx = _ctx("import random\nimport numpy as np\nimport torch\ntorch.manual_seed(0)\nrandom.shuffle(xs)\n"
               "x = np.random.normal(0, 1, 3)\n")
    run = _run(_proc([0.7], seeds=[("torch", 4, False)], unseeded=["numpy", "python"]), _proc([0.9], pid=2))
    (finding,) = UnseededRng().check_runtime(run, ctx)
    assert finding.location.line == 5
    assert finding.evidence["causes"] == ["unseeded:python", "unseeded:numpy"]
    assert "the script's first draw from it is on line 6" in finding.message


def test_cudnn_benchmark_with_determinism_is_kept_after_matching_runs() -> None:
    ctx = _ctx("import torch\ntorch.manual_seed(0)\ntorch.backends.cudnn.deterministic = True\n"
               "torch.backends.cudnn.benchmark = True\n")
    check = UnseededRng()
    check.runtime_follows = True  # a run follows: static findings wait for it
    assert list(check.check_static(ctx)) == []
    (finding,) = check.check_runtime(_run(_proc([0.7]), _proc([0.7], pid=2)), ctx)
    assert (finding.severity.value, finding.location.line, finding.source) == ("warning", 4, "static")
    alone = _ctx("import torch\ntorch.backends.cudnn.benchmark = True\n")
    assert list(UnseededRng().check_static(alone)) == []


def test_a_seed_that_changes_between_runs() -> None:
    main = _proc([0.7], seeds=[("torch", 4, False)])
    repeat = _proc([0.8], pid=2, seeds=[("torch", 4, False)])
    for event in repeat.events:
        if event["ev"] == "seed":
            event["value"] = 1234
    (finding,) = UnseededRng().check_runtime(_run(main, repeat), _ctx())
    assert finding.evidence["causes"] == ["changing-seed:torch"] and finding.location.line == 4
    assert "changes from run to run (0 and 1234)" in finding.message


@pytest.mark.parametrize(
    ("source", "fixed"),
    [
        ('os.environ["MASTER_PORT"] = "12355"\n', True),
        ("os.environ['MASTER_PORT']='29500'\n", True),
        ('os.environ.update(MASTER_ADDR="localhost", MASTER_PORT="1234")\n', True),
        ('dist.init_process_group("gloo", init_method="tcp://127.0.0.1:23456", rank=r, world_size=2)\n', True),
        ('os.environ.setdefault("MASTER_PORT", "12355")\n', False),
        ('port = os.environ["MASTER_PORT"]\nif os.environ["MASTER_PORT"] == "1": pass\n', False),
        ('dist.init_process_group("gloo")\n', False),
    ],
)
def test_fixed_port_detection(source: str, fixed: bool) -> None:
    from convcheck.static.ports import binds_fixed_port

    assert binds_fixed_port(_ctx(source)) is fixed


def test_repeat_of_a_script_with_its_own_port_runs_after_the_main_run(tmp_path: Path) -> None:
    # The script binds a port it names itself (what the check looks for); the test picks one that is
    # free now so that no other test, here or running beside it, uses the same one.
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = tmp_path / "spawn_fixed_port.py"
    script.write_text((SCRIPTS / "cc002_spawn_fixed_port.py").read_text().replace("@PORT@", str(port)))
    assert f'"MASTER_PORT"] = "{port}"' in script.read_text()
    result = convcheck("run", "--format", "json", "--fail-on", "never", "--select", "CC002", "--steps", "3", script)
    assert result.code == 0, result.stderr + result.stdout
    assert result.report["run"]["status"] == "completed"
    assert result.findings("CC002") == []


def test_only_torch_itself_seeds_internally() -> None:
    numpy = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    from convcheck.runtime.locate import is_library_file, is_torch_file

    import torch.utils.data.dataloader as dataloader

    assert is_torch_file(dataloader.__file__)
    # A library's seeding helper (numpy stands in for transformers or lightning) is the user's seeding.
    assert is_library_file(numpy.__file__) and not is_torch_file(numpy.__file__)
    assert not is_torch_file(__file__)
    assert torch is not None


def test_a_seed_called_per_sample_is_one_cause_and_the_message_stays_short() -> None:
    reseeded = convcheck("run", "--format", "json", "--fail-on", "never", "--select", "CC002",
                         SCRIPTS / "cc002_reseed_per_sample.py")
    [finding] = reseeded.findings("CC002")
    # Reseeding per sample from the index is reproducible: the cause is the unseeded torch RNG alone.
    assert finding["evidence"]["causes"] == ["unseeded:torch"]
    clock = convcheck("run", "--format", "json", "--fail-on", "never", "--select", "CC002",
                      SCRIPTS / "cc002_reseed_per_sample.py", "--clock")
    [finding] = clock.findings("CC002")
    assert finding["evidence"]["causes"] == ["changing-seed:python", "unseeded:torch"]
    assert finding["message"].count("seeded on line 18") == 1
    assert re.search(r"\(\d{2,} times\)", finding["message"])
    assert len(finding["message"]) < 600 and len(json.dumps(finding["evidence"])) < 5000


def test_hogwild_training_is_nondeterministic_by_design_not_unseeded() -> None:
    result = convcheck("run", "--format", "json", SCRIPTS / "cc002_hogwild.py")
    assert result.code == 0, result.stdout + result.stderr
    [finding] = result.findings("CC002")
    assert finding["severity"] == "info"
    assert finding["evidence"] == {"kind": "hogwild", "processes": 2}
    assert "Hogwild" in finding["message"] and "whatever the seeds" in finding["message"]


def test_a_seed_drawn_at_random_is_one_cause_not_also_a_late_seed() -> None:
    result = convcheck("run", "--format", "json", "--fail-on", "never", "--select", "CC002",
                       SCRIPTS / "cc002_random_seed_value.py")
    [finding] = result.findings("CC002")
    assert finding["evidence"]["causes"] == ["changing-seed:python", "changing-seed:torch"]
    assert "built before the seed" not in finding["message"]


@pytest.mark.parametrize("value", [True, -1, "5", 2.5, None])
def test_a_repeat_length_that_is_not_a_number_of_steps_is_refused(value) -> None:  # noqa: ANN001
    with pytest.raises(CheckOptionError, match="repeat-steps"):
        repeat_steps(value)
    assert repeat_steps(0) == 0 and repeat_steps(7) == 7


def test_no_repeat_run_when_repeat_steps_is_zero() -> None:
    check = UnseededRng()
    check.options = {"repeat-steps": 0}
    assert check.extra_runs(1, 20, _ctx()) == {}


_SEEDED = "import torch\ntorch.manual_seed(0)\nmodel = torch.nn.Linear(2, 2)\n"


@pytest.mark.parametrize(("source", "proc", "doubt"), [
    (_SEEDED, {}, False),
    (_SEEDED, {"unseeded": ["numpy"]}, True),
    (_SEEDED, {"seeds": [("torch", 2, True)]}, True),  # seeded after a draw
    ("import torch\nmodel = torch.nn.Linear(2, 2)\n", {}, True),  # no seed in the source
    ("import torch\nmodel = torch.nn.Linear(2, 2)\ntorch.manual_seed(0)\n", {}, True),  # seeded too late
])
def test_what_calls_for_the_repeat_when_the_cores_are_full(source: str, proc: dict, doubt: bool) -> None:
    run = RunTrace(processes=[_proc([0.7, 0.6], **proc)])
    assert doubtful(run, _ctx(source)) is doubt


def test_a_seed_taken_from_the_clock_calls_for_the_repeat() -> None:
    import time

    for value, doubt in [(int(time.time()), True), (time.time_ns(), True), (int(time.time() * 1000), True),
                         (0, False), (1337, False), (2**32 - 1, False)]:
        proc = _proc([0.7])
        proc.events.insert(1, {"ev": "seed", "rng": "torch", "value": value, "loc": ["train.py", 1],
                               "internal": False, "drawn_before": False})
        assert doubtful(RunTrace(processes=[proc]), _ctx(_SEEDED)) is doubt, value


def test_a_seed_call_without_a_value_calls_for_the_repeat_unless_torch_made_it() -> None:
    for internal, doubt in [(False, True), (True, False)]:
        proc = _proc([0.7])
        # `np.random.seed()` seeds from the OS; torch seeds each DataLoader worker itself (internal).
        proc.events.insert(1, {"ev": "seed", "rng": "numpy", "value": None, "loc": ["train.py", 1],
                               "internal": internal, "drawn_before": False})
        assert doubtful(RunTrace(processes=[proc]), _ctx(_SEEDED)) is doubt


def test_benchmark_mode_alone_does_not_call_for_a_cpu_repeat() -> None:
    proc = _proc([0.7])
    proc.events[-1].update(cudnn_benchmark=True, cudnn_deterministic=True)
    assert doubtful(RunTrace(processes=[proc]), _ctx(_SEEDED)) is False


def _with_config(tmp_path: Path, script: Path, table: str) -> Path:
    copy = tmp_path / script.name
    copy.write_text(script.read_text())
    (tmp_path / "pyproject.toml").write_text(f"[tool.convcheck.checks.CC002]\n{table}\n")
    return copy


def test_repeat_steps_zero_leaves_what_the_run_saw_as_a_warning(tmp_path: Path) -> None:
    script = _with_config(tmp_path, EXAMPLES / "cc002_seed_after_model.py", "repeat-steps = 0")
    result = convcheck("run", "--format", "json", "--fail-on", "never", "--select", "CC002", script)
    assert result.code == 0, result.stderr
    assert result.report["run"]["extra_runs"] == []
    severities = {f["severity"] for f in result.findings("CC002")}
    assert "error" not in severities and "warning" in severities


def test_a_bad_repeat_steps_is_a_one_paragraph_error(tmp_path: Path) -> None:
    script = _with_config(tmp_path, SCRIPTS / "single.py", 'repeat-steps = "many"')
    result = convcheck("run", "--select", "CC002", script)
    assert result.code == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "[tool.convcheck.checks.CC002]" in result.stderr and "repeat-steps = 'many'" in result.stderr
    assert str(tmp_path / "pyproject.toml") in result.stderr


def _pinned(*args) -> dict:  # noqa: ANN002
    """``convcheck run --format json`` pinned to one core, so that the main run's one process fills the cores."""
    result = convcheck("run", "--format", "json", "--fail-on", "never", "--select", "CC002", *args,
                       cores={min(os.sched_getaffinity(0))})
    assert result.code == 0, result.stderr
    return result.report


def test_on_full_cores_a_seeded_script_is_not_repeated_and_the_report_says_why(tmp_path: Path) -> None:
    report = _pinned("--steps", "6", SCRIPTS / "single.py", "--ckpt", tmp_path / "ckpt.pt")
    [row] = report["run"]["extra_runs"]
    assert (row["check"], row["label"], row["when"], row["steps_made"]) == ("CC002", "repeat", "left-out", 0)
    assert row["why"].startswith("CC002's repeat run was not made: the main run's 1 process fills the 1 core")
    assert "seeds from changing values" in row["why"] and "repeat-always = true" in row["why"]
    assert report["findings"] == []
    text = convcheck("run", "--select", "CC002", "--steps", "6", SCRIPTS / "single.py", "--ckpt", tmp_path / "c.pt",
                     cores={min(os.sched_getaffinity(0))}, env={"COLUMNS": "400"})
    assert "CC002's repeat run was not made" in text.stdout


def test_on_full_cores_a_script_that_seeds_too_late_is_repeated_after_the_main_run() -> None:
    report = _pinned(EXAMPLES / "cc002_seed_after_model.py")
    [row] = report["run"]["extra_runs"]
    assert row["when"] == "after" and 1 <= row["steps_made"] <= 5 and "why" not in row
    [error] = [f for f in report["findings"] if f["code"] == "CC002" and f["severity"] == "error"]
    assert "Two runs of this script differ" in error["message"]


@pytest.mark.slow
def test_repeat_always_makes_the_repeat_on_full_cores(tmp_path: Path) -> None:
    script = _with_config(tmp_path, SCRIPTS / "single.py", "repeat-always = true")
    report = _pinned("--steps", "6", script, "--ckpt", tmp_path / "ckpt.pt")
    [row] = report["run"]["extra_runs"]
    assert (row["when"], row["steps"], row["steps_made"]) == ("beside", 5, 5)
    assert report["findings"] == []


@pytest.mark.slow
def test_a_repeat_made_after_the_main_run_stops_once_it_differs(tmp_path: Path) -> None:
    # 12 slow steps each way: the repeat differs from its first loss on and is stopped long before its 12th.
    script = _with_config(tmp_path, SCRIPTS / "cc002_unseeded_slow_steps.py", "repeat-steps = 12")
    report = _pinned("--steps", "12", script)
    [row] = report["run"]["extra_runs"]
    assert (row["when"], row.get("stopped_early")) == ("after", True), row
    assert 1 <= row["steps_made"] < 12
    [finding] = report["findings"]
    assert (finding["code"], finding["severity"]) == ("CC002", "error")
    assert "the loss of backward pass 1 was" in finding["message"]


def test_losses_that_differ_past_six_digits_are_written_so_that_they_differ() -> None:
    # 2e-6 apart, beyond the comparison's tolerance (1e-6); six digits would write both as 2.
    run = _run(_proc([2.0000001, 0.6]), _proc([2.0000041, 0.6], pid=2))
    (finding,) = UnseededRng().check_runtime(run, _ctx())
    assert "was 2 in one run and 2.000004 in the other" in finding.message
