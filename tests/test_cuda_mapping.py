"""Scripts written for CUDA run on this CPU-only machine with their CUDA usage mapped."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from cc_testing import SCRIPTS, convcheck, read_traces


def _events(traces: list[list[dict]], kind: str) -> list[dict]:
    return [e for t in traces for e in t if e["ev"] == kind]


def test_torchrun_ddp_amp_script_written_for_cuda(tmp_path: Path) -> None:
    traces = tmp_path / "t"
    result = convcheck(
        "run", "--ignore", "CC002", "--nproc-per-node", "2", "--steps", "5", "--max-batches-per-epoch", "3", "--format", "json",
        "--fail-on", "never",
        "--trace-dir", traces, SCRIPTS / "cuda_ddp_amp.py",
    )
    assert result.code == 0, result.stdout + result.stderr
    run = result.report["run"]
    assert run["status"] == "stopped-at-budget"
    assert sorted(p["rank"] for p in run["processes"]) == [0, 1] and all(p["steps"] == 5 for p in run["processes"])
    mapped = {m["what"]: m["line"] for m in run["device_mapping"]}
    assert mapped == {
        "backend nccl -> gloo": 9, "torch.cuda.set_device": 11, "Module.to(cuda)": 13, "DDP device_ids -> CPU": 14,
        "GradScaler('cuda') -> CPU": 16, "Tensor.cuda()": 23, "Tensor.to(cuda)": 23,
        "autocast('cuda') -> CPU fp16": 25, "torch.cuda.synchronize": 32,
    }
    events = read_traces(traces)
    # AMP is real: CPU fp16 autocast and a CPU GradScaler that scales, unscales, steps and updates.
    assert {(e["device"], e["dtype"], e["enabled"]) for e in _events(events, "autocast")} == {
        ("cpu", "torch.float16", True)
    }
    calls = [e["call"] for e in _events(events, "scaler")[:4]]
    assert calls == ["scale", "unscale_", "step", "update"]
    # The loss is recorded unscaled: a 2-class cross-entropy near ln 2, not 65536 times that.
    backward = _events(events, "backward")[0]
    assert backward["loss_scale"] == 65536.0 and 0.2 < backward["loss"] < 2.0
    assert {e["backend"] for e in _events(events, "dist_init")} == {"gloo"}


def test_mp_spawn_trainer_written_for_cuda_with_pretend(tmp_path: Path) -> None:
    snapshot = tmp_path / "snapshot.pt"
    result = convcheck(
        "run", "--ignore", "CC002", "--pretend-cuda", "--cuda-devices", "2", "--steps", "6", "--format", "json",
        "--fail-on", "never",
        SCRIPTS / "cuda_spawn.py", snapshot,
    )
    assert result.code == 0, result.stdout + result.stderr
    run = result.report["run"]
    assert run["status"] == "completed"
    children = sorted((p["rank"], p["steps"]) for p in run["processes"] if p["role"] == "child")
    assert children == [(0, 6), (1, 6)]
    mapped = {m["what"] for m in run["device_mapping"]}
    assert {"torch.cuda.is_available (pretended)", "torch.cuda.device_count (pretended)",
            "device='cuda' in a tensor factory", "autocast('cuda') -> CPU fp16"} <= mapped
    # The snapshot the script saved went to the scratch folder.
    assert not snapshot.exists()
    assert run["redirected_saves"][0]["path"] == str(snapshot)


def test_without_pretend_is_available_tells_the_truth() -> None:
    result = convcheck("run", "--ignore", "CC002", "--format", "json", SCRIPTS / "cuda_spawn.py", "x.pt")
    assert result.code == 2
    assert "AssertionError: this script needs a GPU" in result.report["run"]["error"]


def test_unmappable_call_is_named_with_its_line() -> None:
    result = convcheck("run", "--ignore", "CC002", "--format", "json", SCRIPTS / "cuda_stream.py", cwd=SCRIPTS)
    assert result.code == 3
    run = result.report["run"]
    assert run["unmappable"] == [{"what": "torch.cuda.Stream", "file": str(SCRIPTS / "cuda_stream.py"), "line": 9}]
    assert run["processes"][0]["steps"] == 1
    assert "torch.cuda.Stream at cuda_stream.py:9 has no CPU equivalent" in run["error"]  # relative to the cwd


def test_device_cuda_maps_nothing() -> None:
    result = convcheck("run", "--ignore", "CC002", "--device", "cuda", "--format", "json", SCRIPTS / "cuda_stream.py")
    assert result.code == 2
    assert result.report["run"]["device_mapping"] == []


def test_syncbatchnorm_keeps_batchnorm_on_the_cpu() -> None:
    result = convcheck("run", "--nproc-per-node", "2", "--steps", "3", "--select", "CC014", "--format", "json",
                       SCRIPTS / "cuda_syncbn.py")
    assert result.code == 0, result.stdout + result.stderr
    run = result.report["run"]
    assert run["status"] == "stopped-at-budget"
    assert {m["what"]: m["line"] for m in run["device_mapping"]}["SyncBatchNorm -> BatchNorm (per process)"] == 7


def test_mapped_moves_copy_as_a_gpu_does(tmp_path: Path) -> None:
    traces = tmp_path / "t"
    result = convcheck("run", "--format", "json", "--trace-dir", traces, SCRIPTS / "cuda_copy_semantics.py")
    assert result.code == 0, result.stdout + result.stderr
    assert result.report["run"]["status"] == "completed"
    assert "RESULT ok" in (traces / "stdout-0.txt").read_text()
    mapped = [m["what"] for m in result.report["run"]["device_mapping"]]
    assert "Module.cuda(): 2 shared-memory tensors copied (a GPU gives each process its own copy)" in mapped


def test_a_model_shared_with_spawned_ranks_gets_a_private_copy_per_rank() -> None:
    """Built in the parent, passed through mp.spawn (shared memory), moved to each rank's GPU: each rank
    trains its own replica, kept in step by DDP, and a weight offloaded with .cpu() survives its freed storage."""
    result = convcheck("run", "--steps", "12", "--format", "json", SCRIPTS / "cuda_shared_model.py")
    assert result.code == 0, result.stdout + result.stderr
    assert result.report["findings"] == []
    assert [p["steps"] for p in result.report["run"]["processes"] if p["steps"]] == [12, 12]


def test_torch_accelerator_scripts_run_with_pretend_cuda_and_say_why_without() -> None:
    script = SCRIPTS / "accelerator_ddp.py"
    plain = convcheck("run", "--nproc-per-node", "2", "--steps", "4", "--format", "json", script, cwd=SCRIPTS)
    run = plain.report["run"]
    assert run["status"] == "no-training-step"
    assert ("The script asked torch.accelerator.is_available() at accelerator_ddp.py:12 and was told no GPU is available: "
            "run with --pretend-cuda") in run["error"]
    assert run["error"].endswith("The script's last output:\nThis example needs an accelerator; none found, exiting.")
    pretended = convcheck("run", "--nproc-per-node", "2", "--steps", "4", "--pretend-cuda", "--cuda-devices", "2",
                          "--format", "json", script)
    assert pretended.code == 0, pretended.stdout + pretended.stderr
    run = pretended.report["run"]
    assert run["status"] == "stopped-at-budget" and [p["steps"] for p in run["processes"]] == [4, 4]
    mapped = {m["what"]: m["line"] for m in run["device_mapping"]}
    assert mapped["torch.accelerator.set_device_index"] == 16
    assert mapped["torch.accelerator.current_accelerator -> cuda (on the CPU)"] == 17
    assert mapped["backend nccl -> gloo"] == 19
    assert pretended.findings() == []


def test_dataparallel_runs_on_one_cpu_device_under_pretend_cuda() -> None:
    result = convcheck("run", "--pretend-cuda", "--cuda-devices", "2", "--format", "json",
                       SCRIPTS / "cuda_dataparallel.py")
    assert result.code == 0, result.stdout + result.stderr
    run = result.report["run"]
    assert run["status"] == "completed" and run["processes"][0]["steps"] == 8
    assert {"what": "DataParallel -> one CPU device", "file": str(SCRIPTS / "cuda_dataparallel.py"), "line": 8} \
        in run["device_mapping"]


_ML_LIBRARIES = ("transformers", "accelerate", "lightning", "pytorch_lightning", "torchvision", "torchaudio", "timm",
                 "torchmetrics", "peft", "diffusers")


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_installed_ml_libraries_import_under_the_mapping(device: str) -> None:
    installed = [name for name in _ML_LIBRARIES if importlib.util.find_spec(name) is not None]
    if not installed:
        pytest.skip("none of the supported ML libraries is installed")
    result = convcheck("run", "--device", device, "--steps", "1", "--format", "json", "--fail-on", "never",
                       SCRIPTS / "import_libraries.py", *installed, timeout=300)
    assert result.code == 0, result.stdout + result.stderr
    run = result.report["run"]
    assert run["error"] is None and run["processes"][0]["steps"] == 1


def test_an_unmappable_class_stays_a_type(tmp_path: Path) -> None:
    script = tmp_path / "annotations.py"
    script.write_text(
        "import torch\n"
        "Maybe = torch.cuda.CUDAGraph | None\n"
        "assert issubclass(torch.cuda.Stream, torch._C._CudaStreamBase) and isinstance(torch.cuda.Event, type)\n"
        "class MyStream(torch.cuda.Stream):\n"
        "    pass\n"
        "MyStream()\n"
    )
    result = convcheck("run", "--format", "json", script)
    assert result.code == 2, result.stdout + result.stderr  # no step was taken before it
    run = result.report["run"]
    assert run["unmappable"] == [{"what": "torch.cuda.Stream", "file": str(script), "line": 6}]
    assert f"torch.cuda.Stream at {script}:6 has no CPU equivalent" in run["error"]


def test_mappings_made_inside_libraries_are_not_the_users(tmp_path: Path) -> None:
    traces = tmp_path / "t"
    result = convcheck("run", "--format", "json", "--trace-dir", traces, SCRIPTS / "cuda_library_calls.py")
    assert result.code == 0, result.stdout + result.stderr
    mapped = {m["what"]: m["line"] for m in result.report["run"]["device_mapping"]}
    assert mapped == {"Tensor.cuda()": 14, "torch.cuda.synchronize": 16}
    library = [(e["what"], e["library"]) for e in _events(read_traces(traces), "device_map") if "library" in e]
    assert library == [("torch.cuda.empty_cache", True)]
