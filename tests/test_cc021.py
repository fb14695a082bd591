"""CC021 save-on-every-rank: per-rank save events, and a DDP trainer that checkpoints through a helper."""

from __future__ import annotations

import pytest
from cc_testing import SCRIPTS, convcheck, read_traces
from static_expect import context

from convcheck.checks.cc021_save_on_every_rank import SaveOnEveryRank
from convcheck.runtime.trace import RunTrace, load_events


def save(path: str | None, line: int = 20, step: int = 2, redirected: bool = True, internal: bool = False) -> dict:
    return {"ev": "save", "path": path, "redirected_to": f"/scratch/files/work/{path}" if redirected and path else None,
            "internal": internal, "state_dicts": [], "loc": ["train.py", line], "step": step}


def rank(r: int, *saves: dict, world_size: int = 2) -> list[dict]:
    return [{"ev": "process", "rank": r, "world_size": world_size},
            {"ev": "dist_init", "rank": r, "world_size": world_size, "backend": "gloo"},
            {"ev": "backward", "n": 1, "step": 0, "loss": 1.0, "loc": ["train.py", 17]},
            {"ev": "step", "opt": 0, "n": 1, "grad": [0], "loc": ["train.py", 18]},
            *saves]


def runtime(*ranks: list[dict]) -> list:
    trace = RunTrace(processes=[load_events(e, pid=i + 1) for i, e in enumerate(ranks)], world_size=len(ranks))
    return list(SaveOnEveryRank().check_runtime(trace, context("x = 1\n")))


def test_every_rank_saving_one_path_is_a_warning_at_the_save_line() -> None:
    [finding] = runtime(rank(0, save("ckpt.pt"), save("ckpt.pt", step=4)), rank(1, save("ckpt.pt"), save("ckpt.pt", step=4)))
    assert (finding.code, finding.severity.value, finding.location.line) == ("CC021", "warning", 20)
    assert finding.message.startswith("Both ranks wrote the same checkpoint `ckpt.pt` (torch.save at train.py:20, "
                                      "2 times each): ")
    assert finding.evidence["saves_by_rank"] == {"0": 2, "1": 2}
    assert finding.evidence["steps"] == [2, 4]
    assert "if dist.get_rank() == 0:" in finding.fix and "dist.barrier()" in finding.fix


def test_two_of_four_ranks_saving_the_same_path_are_named() -> None:
    [finding] = runtime(rank(0, save("a.pt"), world_size=4), rank(1, world_size=4),
                        rank(2, save("a.pt"), save("a.pt", step=4), world_size=4), rank(3, world_size=4))
    assert finding.message.startswith("Ranks 0 and 2 of 4 wrote the same checkpoint `a.pt` (torch.save at "
                                      "train.py:20, rank 0: 1; rank 2: 2)")


def test_the_same_file_under_two_spellings_is_one_path() -> None:
    # The run's copy is keyed by the resolved path: "./ckpt.pt" and "ckpt.pt" land in one file.
    first = {**save("./ckpt.pt"), "redirected_to": "/scratch/files/work/ckpt.pt"}
    assert len(runtime(rank(0, first), rank(1, save("ckpt.pt")))) == 1


@pytest.mark.parametrize("ranks", [
    pytest.param([rank(0, save("ckpt_rank0.pt")), rank(1, save("ckpt_rank1.pt"))], id="a file per rank"),
    pytest.param([rank(0, save("ckpt.pt"), save("ckpt.pt")), rank(1)], id="rank 0 only"),
    pytest.param([rank(0, save(None, redirected=False)), rank(1, save(None, redirected=False))], id="in-memory buffers"),
    pytest.param([rank(0, save("x.pt", internal=True)), rank(1, save("x.pt", internal=True))], id="a library's saves"),
    pytest.param([rank(0, save("ckpt.pt"), world_size=1)], id="one process"),
])
def test_quiet(ranks: list[list[dict]]) -> None:
    assert runtime(*ranks) == []


def test_processes_without_a_rank_are_not_ranks() -> None:
    plain = [{"ev": "process", "world_size": None}, save("ckpt.pt")]
    assert runtime(plain, [dict(e) for e in plain]) == []


def _run(tmp_path, *flags: str) -> list[dict]:
    result = convcheck("run", "--format", "json", "--fail-on", "never", "--nproc-per-node", "2", "--steps", "4",
                       "--select", "CC021", "--trace-dir", tmp_path, SCRIPTS / "cc021_helper_checkpoint.py", *flags,
                       cwd=SCRIPTS)
    assert result.code == 0, result.stdout + result.stderr
    # The recording of every save worked (a failed one runs the user's call unrecorded).
    assert [e for trace in read_traces(tmp_path) for e in trace if e["ev"] == "probe_error"] == []
    return result.findings("CC021")


@pytest.mark.slow
def test_a_helper_that_saves_to_an_open_file_on_every_rank(tmp_path) -> None:
    [finding] = _run(tmp_path)
    assert (finding["severity"], finding["location"]["line"]) == ("warning", 18)
    assert finding["message"].startswith("Both ranks wrote the same checkpoint `runs/latest.pt` (torch.save at "
                                         "cc021_helper_checkpoint.py:18, 2 times each)")
    assert finding["evidence"]["path"] == str(SCRIPTS / "runs" / "latest.pt")
    assert not (SCRIPTS / "runs").exists()


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--per-rank", "--dcp"])
def test_per_rank_files_and_distributed_checkpoints_are_quiet(tmp_path, flag: str) -> None:
    assert _run(tmp_path, flag) == []
