"""CC001 state-dict-prefix: static snippets, recorded traces, and scripts written in other styles."""

from __future__ import annotations

from pathlib import Path

import pytest
from cc_testing import SCRIPTS, convcheck
from static_expect import context, expected, static_findings

from convcheck.checks.cc001_state_dict_prefix import StateDictPrefix
from convcheck.runtime.trace import RunTrace, load_events

# -- static --------------------------------------------------------------------------------------

STATIC_CASES = {
    "ddp_state_dict": """
        import torch
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(Net())
        torch.save(model.state_dict(), "ckpt.pt")  # expect: CC001 warning
    """,
    "nested_payload": """
        import torch
        import torch.nn as nn
        model = Net()
        model = nn.parallel.DistributedDataParallel(model)
        torch.save({"model": model.state_dict(), "epoch": 3}, path)  # expect: CC001 warning
    """,
    "compiled": """
        import torch
        model = torch.compile(Net())
        torch.save(model.state_dict(), "ckpt.pt")  # expect: CC001 warning
    """,
    "data_parallel_through_alias": """
        import torch
        from torch import nn
        net = nn.DataParallel(Net())
        to_save = net
        torch.save(to_save.state_dict(), "ckpt.pt")  # expect: CC001 warning
    """,
    "trainer_attribute": """
        import torch
        from torch.nn.parallel import DistributedDataParallel
        class Trainer:
            def __init__(self, net):
                self.model = DistributedDataParallel(net)
            def save(self, path):
                torch.save({"state_dict": self.model.state_dict()}, path)  # expect: CC001 warning
    """,
    "unwrapped": """
        import torch
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(Net())
        torch.save(model.module.state_dict(), "ckpt.pt")
    """,
    "saved_before_wrapping": """
        import torch
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = Net()
        torch.save(model.state_dict(), "init.pt")
        model = DDP(model)
    """,
    "loaded_back_into_the_wrapper": """
        import torch
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(Net())
        model.load_state_dict(torch.load("ckpt.pt"))
        torch.save(model.state_dict(), "ckpt.pt")  # expect: CC001 info
    """,
    "strict_false_ignored": """
        import torch
        net = Net()
        net.load_state_dict(torch.load("ckpt.pt"), strict=False)  # expect: CC001 warning
        net.load_state_dict(torch.load("ckpt.pt"), False)  # expect: CC001 warning
    """,
    "strict_false_checked": """
        import torch
        net = Net()
        result = net.load_state_dict(torch.load("ckpt.pt"), strict=False)
        missing, unexpected = net.load_state_dict(torch.load("ckpt.pt"), strict=False)
        net.load_state_dict(torch.load("ckpt.pt"))
    """,
}


@pytest.mark.parametrize("name", sorted(STATIC_CASES))
def test_static(name: str) -> None:
    source = STATIC_CASES[name]
    assert static_findings(StateDictPrefix(), source) == expected(source)


def test_static_fix_names_the_variable_and_the_command() -> None:
    [finding] = StateDictPrefix().check_static(context(STATIC_CASES["trainer_attribute"]))
    assert "`self.model.module.state_dict()`" in finding.fix
    [finding] = StateDictPrefix().check_static(context(STATIC_CASES["ddp_state_dict"]))
    assert "convcheck fix-state-dict ckpt.pt --output ckpt.fixed.pt" in finding.fix


# -- runtime on recorded traces ---------------------------------------------------------------------

PLAIN = ["fc.weight", "fc.bias", "out.weight", "out.bias"]


def trainer(*events: dict, rank: int = 0) -> list[dict]:
    return [{"ev": "process", "rank": rank, "world_size": 1}, {"ev": "step", "opt": 0, "n": 1, "lrs": [0.1]}, *events]


def save(keys: list[str], path: str = "ckpt.pt", inner: list[str] = (), line: int = 30) -> dict:
    return {"ev": "save", "path": path, "redirected_to": "/scratch/x", "loc": ["train.py", line], "step": 4,
            "state_dicts": [{"path": list(inner), "n_keys": len(keys), "keys": keys}]}


def load(keys: list[str], path: str = "ckpt.pt", inner: list[str] = ()) -> dict:
    return {"ev": "load", "path": path, "loc": ["train.py", 40],
            "state_dicts": [{"path": list(inner), "n_keys": len(keys), "keys": keys}] if keys else []}


def load_state_dict(expected_keys: list[str], given: list[str], strict: bool = True, line: int = 41) -> dict:
    missing = sorted(set(expected_keys) - set(given))
    unexpected = sorted(set(given) - set(expected_keys))
    return {"ev": "load_state_dict", "module": "Net", "strict": strict, "n_expected": len(expected_keys),
            "n_given": len(given), "n_loaded": len(set(expected_keys) & set(given)), "missing": missing,
            "unexpected": unexpected, "n_missing": len(missing), "n_unexpected": len(unexpected),
            "loc": ["train.py", line]}


def runtime(*events: dict) -> list:
    return list(StateDictPrefix().check_runtime(RunTrace(processes=[load_events(trainer(*events))]), context("")))


def prefixed(prefix: str) -> list[str]:
    return [prefix + k for k in PLAIN]


def test_save_from_ddp_is_a_warning() -> None:
    [finding] = runtime(save(prefixed("module."), inner=["model"]))
    assert (finding.severity.value, finding.location.line) == ("warning", 30)
    assert "payload['model']" in finding.message and "'module.'" in finding.message
    assert finding.evidence["prefix"] == "module." and finding.evidence["n_keys"] == 4
    assert "convcheck fix-state-dict ckpt.pt --output ckpt.fixed.pt" in finding.fix


def test_save_from_a_compiled_model_is_an_error() -> None:
    [finding] = runtime(save(prefixed("_orig_mod.")))
    assert (finding.severity.value, finding.location.line) == ("error", 30)
    assert "model._orig_mod.state_dict()" in finding.fix
    # Loaded back into the compiled model in the same run: consistent.
    [finding] = runtime(save(prefixed("_orig_mod.")), load(prefixed("_orig_mod.")),
                        load_state_dict(prefixed("_orig_mod."), prefixed("_orig_mod.")))
    assert finding.severity.value == "info"


def test_save_from_compiled_ddp() -> None:
    [finding] = runtime(save(prefixed("module._orig_mod.")))
    assert finding.severity.value == "error"
    assert finding.evidence["prefix"] == "module._orig_mod."
    assert "torch.compile inside DistributedDataParallel/DataParallel" in finding.message
    assert "model.module._orig_mod.state_dict()" in finding.fix


def test_plain_save_is_quiet() -> None:
    assert runtime(save(PLAIN)) == []


def test_wrapper_saved_and_loaded_back_consistently_is_info() -> None:
    keys = prefixed("module.")
    [finding] = runtime(save(keys), load(keys), load_state_dict(keys, keys))
    assert finding.severity.value == "info"


def test_save_then_prefix_mismatch_on_load() -> None:
    keys = prefixed("module.")
    found = runtime(save(keys, inner=["model"]), load(keys, inner=["model"]),
                    load_state_dict(PLAIN, keys, strict=False))
    by_line = {f.location.line: f for f in found}
    assert by_line[30].severity.value == "error"
    assert by_line[41].severity.value == "error"
    assert "loaded 0 of 4 tensors" in by_line[41].message
    assert by_line[41].evidence["n_loaded"] == 0 and by_line[41].evidence["prefix"] == "module."


def test_wrapped_model_given_a_plain_checkpoint() -> None:
    [finding] = runtime(load(PLAIN), load_state_dict(prefixed("module."), PLAIN, strict=True))
    assert finding.severity.value == "error"
    assert "raises" in finding.message
    assert "model.module.load_state_dict" in finding.fix


def test_nested_checkpoint_loaded_as_if_flat() -> None:
    payload_keys = ["epoch", "model", "optimizer"]
    [finding] = runtime(load(PLAIN, inner=["model"]), load_state_dict(PLAIN, payload_keys, strict=False))
    assert finding.severity.value == "error"
    assert "whole training checkpoint" in finding.message
    assert "checkpoint['model']" in finding.fix


def test_strict_false_that_loads_nothing() -> None:
    [finding] = runtime(load_state_dict(PLAIN, ["encoder.a.weight", "encoder.b.weight"], strict=False))
    assert finding.severity.value == "error" and "loaded 0 of 4" in finding.message


def test_partial_load_for_fine_tuning_is_quiet() -> None:
    assert runtime(load_state_dict(PLAIN, PLAIN[:2] + ["head.weight"], strict=False)) == []


def test_every_rank_saving_at_one_line_gives_one_finding() -> None:
    keys = prefixed("module.")
    trace = RunTrace(processes=[load_events(trainer(save(keys), rank=r), pid=r + 1) for r in range(2)])
    assert len(list(StateDictPrefix().check_runtime(trace, context("")))) == 1


def test_static_and_runtime_make_one_finding() -> None:
    source = STATIC_CASES["ddp_state_dict"]
    ctx = context(source)
    check = StateDictPrefix()
    check.runtime_follows = True
    assert list(check.check_static(ctx)) == []
    [finding] = check.check_runtime(RunTrace(processes=[load_events(trainer(save(prefixed("module."), line=5)))]), ctx)
    assert (finding.severity.value, finding.source, finding.location.line) == ("warning", "static+runtime", 5)


def test_ignored_strict_false_that_loaded_everything_is_info() -> None:
    source = STATIC_CASES["strict_false_ignored"]
    ctx = context(source)
    check = StateDictPrefix()
    check.runtime_follows = True
    check.check_static(ctx)
    found = check.check_runtime(RunTrace(processes=[load_events(trainer(load_state_dict(PLAIN, PLAIN, False, 4)))]), ctx)
    assert sorted((f.location.line, f.severity.value) for f in found) == [(4, "info"), (5, "warning")]


# -- end to end, scripts in other styles -------------------------------------------------------------

@pytest.mark.parametrize(("script", "expect"), [
    ("cc001_argparse_dataparallel.py", {("error", 31), ("error", 35)}),
    ("cc001_argparse_dataparallel_fixed.py", set()),
])
def test_argparse_script_with_dataparallel(script: str, expect: set, tmp_path) -> None:  # noqa: ANN001
    result = convcheck("run", "--format", "json", "--fail-on", "never", "--select", "CC001", "--steps", "3", SCRIPTS / script,
                       "--ckpt", str(tmp_path / "net.pth"), "--epochs", "5")
    assert result.code == 0, result.stderr
    assert {(f["severity"], f["location"]["line"]) for f in result.findings("CC001")} == expect
    assert not (tmp_path / "net.pth").exists()  # the user's checkpoint path is never written


def test_nested_checkpoint_whose_state_dict_is_also_prefixed() -> None:
    [finding] = runtime(load(prefixed("module."), inner=["model"]), load_state_dict(PLAIN, ["epoch", "model"]))
    assert finding.evidence["inner_prefix"] == "module."
    assert "checkpoint['model']" in finding.fix and "convcheck fix-state-dict ckpt.pt" in finding.fix


def test_run_that_saved_plain_keys_under_a_wrapper_clears_the_static_warning() -> None:
    ctx = context(STATIC_CASES["ddp_state_dict"])
    check = StateDictPrefix()
    check.runtime_follows = True
    check.check_static(ctx)
    events = trainer({"ev": "model", "cls": "DistributedDataParallel", "params": [], "wrapper": True},
                     save(PLAIN, line=5))
    assert list(check.check_runtime(RunTrace(processes=[load_events(events)]), ctx)) == []


def test_a_resume_that_strips_the_prefix_itself_is_told_as_it_is(tmp_path: Path) -> None:
    result = convcheck("run", "--format", "json", "--fail-on", "never", "--select", "CC001",
                       SCRIPTS / "cc001_compiled_resume.py", tmp_path)
    assert result.code == 0, result.stdout + result.stderr
    [finding] = result.findings("CC001")
    assert (finding["severity"], finding["location"]["line"]) == ("info", 22)
    assert "loaded it back after removing the prefix itself before load_state_dict" in finding["message"]
    assert "same wrapper, which is consistent" not in finding["message"]
    assert not (tmp_path / "ckpt.pt").exists()  # the save went to the run's scratch folder


def test_compiled_model_saved_through_the_wrapper_fails_the_default_gate(tmp_path: Path) -> None:
    # backend="eager": the same `_orig_mod.` keys without the compiler's cost.
    result = convcheck("run", "--steps", "5", "--select", "CC001", "--format", "json",
                       SCRIPTS / "compiled_save.py", "--backend", "eager", cwd=tmp_path)
    assert result.code == 1, result.stdout + result.stderr
    (finding,) = result.findings("CC001")
    assert (finding["severity"], finding["location"]["line"]) == ("error", 23)
    assert finding["evidence"]["prefix"] == "_orig_mod."
    assert not (tmp_path / "compiled.pt").exists()
