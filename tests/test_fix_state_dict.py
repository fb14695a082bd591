"""``convcheck fix-state-dict``: prefix surgery on real wrapper checkpoints, writing, bad input."""

from __future__ import annotations

import argparse
import errno
import importlib.util
import json
import os
import socket
import zipfile
from collections import OrderedDict
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from cc_testing import convcheck
from typer.testing import CliRunner

from convcheck import statedict
from convcheck.cli import app
from convcheck.exitcodes import ExitCode
from convcheck.statedict import (
    KeyPlan,
    common_wrapper_prefix,
    find_state_dicts,
    mixed_prefixes,
    plan_state_dict,
    rename_metadata,
)

# The model every checkpoint here comes from. ``block.module`` is a real submodule
# named like DDP's wrapper attribute: its keys have "module." in the middle, which
# a fix must leave alone (``k.replace("module.", "")`` would mangle them).
NET_SOURCE = '''
import torch.nn as nn


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.module = nn.Linear(3, 3)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.bn = nn.BatchNorm1d(3)
        self.block = Inner()

    def forward(self, x):
        return self.block.module(self.bn(self.fc(x)))


class Other(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 5)


def make():
    return Net()


def make_other():
    return Other()
'''

NET_KEYS = [
    "fc.weight", "fc.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
    "bn.num_batches_tracked", "block.module.weight", "block.module.bias",
]


@pytest.fixture(scope="module")
def netdef(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    path = tmp_path_factory.mktemp("netdef") / "netdef.py"
    path.write_text(NET_SOURCE)
    spec = importlib.util.spec_from_file_location("netdef", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.PATH = path
    return module


@pytest.fixture(scope="module")
def net(netdef: ModuleType) -> nn.Module:
    torch.manual_seed(0)
    model = netdef.Net()
    model(torch.randn(8, 4))  # BatchNorm running stats move away from their defaults
    return model.eval()


@pytest.fixture(scope="module")
def process_group():
    """A one-process gloo group, enough for a real DistributedDataParallel on CPU."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"tcp://127.0.0.1:{port}")
    yield
    dist.destroy_process_group()


def fix(*args: object) -> "object":
    """Invoke ``convcheck fix-state-dict ARGS`` in process."""
    return CliRunner().invoke(app, ["fix-state-dict", *map(str, args)])


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def assert_same_tensors(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert torch.equal(a[key].reshape(-1).view(torch.uint8), b[key].reshape(-1).view(torch.uint8)), key


def assert_no_leftovers(folder: Path, expected: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == expected


# --------------------------------------------------------------------------- pure helpers


def test_common_wrapper_prefix() -> None:
    assert common_wrapper_prefix(["module.fc.weight", "module.fc.bias"]) == "module."
    assert common_wrapper_prefix(["_orig_mod.fc.weight"]) == "_orig_mod."
    assert common_wrapper_prefix(["module._orig_mod.a.w", "module._orig_mod.b"]) == "module._orig_mod."
    assert common_wrapper_prefix(["_orig_mod.module.a.w", "_orig_mod.module.b"]) == "_orig_mod.module."
    assert common_wrapper_prefix(["fc.weight", "block.module.weight"]) is None
    assert common_wrapper_prefix(["module.fc.weight", "fc.bias"]) is None
    assert common_wrapper_prefix(["model.fc.weight"], ("module.", "model.")) == "model."
    assert common_wrapper_prefix([]) is None
    assert common_wrapper_prefix(["module.", "module.x"]) is None  # nothing would be left of a key


def test_mixed_prefixes_and_force_plan() -> None:
    keys = ["module.fc.weight", "module.fc.bias", "head.weight"]
    assert mixed_prefixes(keys) == {"module.": 2}
    plan = plan_state_dict(("model",), keys)
    assert plan.report.status == "mixed" and plan.report.mixed == {"module.": 2}
    forced = plan_state_dict(("model",), keys, force=True)
    assert forced.report.status == "fix" and forced.report.keys_changed == 2
    assert [forced.plan.rename(k) for k in keys] == ["fc.weight", "fc.bias", "head.weight"]
    # DDP around a model whose own top-level submodule is called "module": one prefix, not mixed
    wrapped = plan_state_dict((), ["module.module.weight", "module.head.weight"])
    assert wrapped.report.status == "fix"
    assert [wrapped.plan.rename(k) for k in wrapped.keys] == ["module.weight", "head.weight"]
    with pytest.raises(statedict.CheckpointError, match="same name"):
        plan_state_dict((), ["module.fc.weight", "fc.weight"], force=True)


def test_find_state_dicts_in_nested_checkpoint() -> None:
    t = torch.zeros(1)
    payload = {
        "model": OrderedDict([("module.fc.weight", t)]),
        "ema": {"decay": 0.99, "shadow": {"_orig_mod.fc.weight": t}},
        "optimizer": {"state": {0: {"exp_avg": t, "step": t}}, "param_groups": [{"lr": 0.1, "params": [0]}]},
        "models": [{"a.b": t}],
        "epoch": 3,
    }
    assert [path for path, _ in find_state_dicts(payload)] == [("model",), ("ema", "shadow"), ("models", 0)]
    assert find_state_dicts({"a.b": t}) == [((), {"a.b": t})]
    assert find_state_dicts({"a.b": t, "config": "x"}) == []


def test_metadata_renamed_like_the_unwrapped_model() -> None:
    ddp_compiled = OrderedDict([
        ("", {"version": 1}), ("module", {"version": 1}), ("module._orig_mod", {"version": 1}),
        ("module._orig_mod.fc", {"version": 1}), ("module._orig_mod.bn", {"version": 2}),
    ])
    plan = KeyPlan(strip="module._orig_mod.")
    assert rename_metadata(ddp_compiled, plan) == OrderedDict(
        [("", {"version": 1}), ("fc", {"version": 1}), ("bn", {"version": 2})]
    )
    added = rename_metadata(OrderedDict([("", {"version": 1}), ("fc", {"version": 1})]), KeyPlan(add="model."))
    assert added == OrderedDict([("model", {"version": 1}), ("model.fc", {"version": 1})])


# --------------------------------------------------------------------------- real wrappers


def test_ddp_training_checkpoint(tmp_path: Path, net: nn.Module, process_group: None) -> None:
    ddp = nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    ddp(torch.randn(4, 4)).sum().backward()
    opt.step()
    source = tmp_path / "ddp.pth"
    torch.save({"model": ddp.state_dict(), "optimizer": opt.state_dict(), "epoch": 5, "best": 0.25}, source)
    before = snapshot(source)

    result = fix(source, "--output", tmp_path / "fixed.pth")

    assert result.exit_code == ExitCode.OK, result.output
    assert snapshot(source) == before
    assert_no_leftovers(tmp_path, {"ddp.pth", "fixed.pth"})
    fixed = torch.load(tmp_path / "fixed.pth", weights_only=True)
    original = torch.load(source, weights_only=True)
    expected = net.state_dict()
    assert list(fixed["model"]) == NET_KEYS == list(expected)
    assert_same_tensors(fixed["model"], expected)
    assert dict(fixed["model"]._metadata) == dict(expected._metadata)
    assert fixed["epoch"] == 5 and fixed["best"] == 0.25
    assert fixed["optimizer"]["param_groups"] == original["optimizer"]["param_groups"]
    for index, state in original["optimizer"]["state"].items():
        assert_same_tensors(fixed["optimizer"]["state"][index], state)
    net.load_state_dict(fixed["model"], strict=True)
    assert zipfile.ZipFile(tmp_path / "fixed.pth").testzip() is None  # every CRC-32 is right
    assert "wrote" in result.stdout and "remove module." in result.stdout


def test_dataparallel_dry_run_changes_nothing(tmp_path: Path, net: nn.Module) -> None:
    source = tmp_path / "dp.pt"
    torch.save(nn.DataParallel(net).state_dict(), source)
    before = snapshot(source)

    result = fix(source)

    assert result.exit_code == ExitCode.OK
    assert snapshot(source) == before
    assert_no_leftovers(tmp_path, {"dp.pt"})
    lines = result.stdout.splitlines()
    assert lines[1] == "  checkpoint  9 keys: remove module. (every key starts with it) → 9 keys renamed"
    assert lines[2:6] == [
        "      module.fc.weight → fc.weight",
        "      module.fc.bias → fc.bias",
        "      module.bn.weight → bn.weight",
        "      …and 6 more",
    ]
    assert lines[-1] == "dry run: nothing written. Write the fix with --output FILE, or --in-place (keeps FILE.bak)."


def test_compiled_model(tmp_path: Path, net: nn.Module) -> None:
    compiled = torch.compile(net, backend="eager")
    source = tmp_path / "compiled.pt"
    torch.save({"state_dict": compiled.state_dict(), "step": 100}, source)

    result = fix(source, "-o", tmp_path / "out.pt", "--format", "json")

    assert result.exit_code == ExitCode.OK
    report = json.loads(result.stdout)
    assert report["status"] == "fixed"
    assert [(s["path"], s["removed_prefix"], s["keys_changed"]) for s in report["state_dicts"]] == [
        (["state_dict"], "_orig_mod.", 9)
    ]
    fixed = torch.load(tmp_path / "out.pt", weights_only=True)
    assert_same_tensors(fixed["state_dict"], net.state_dict())
    assert fixed["step"] == 100


def test_compiled_then_ddp(tmp_path: Path, net: nn.Module, process_group: None) -> None:
    wrapped = nn.parallel.DistributedDataParallel(torch.compile(net, backend="eager"))
    assert next(iter(wrapped.state_dict())) == "module._orig_mod.fc.weight"
    source = tmp_path / "both.pt"
    torch.save(wrapped.state_dict(), source)

    result = fix(source, "-o", tmp_path / "out.pt")

    assert result.exit_code == ExitCode.OK, result.output
    fixed = torch.load(tmp_path / "out.pt", weights_only=True)
    assert_same_tensors(fixed, net.state_dict())
    assert dict(fixed._metadata) == dict(net.state_dict()._metadata)


def test_nested_checkpoint_keeps_everything_else(tmp_path: Path, net: nn.Module) -> None:
    shared = torch.arange(12.0)
    payload = {
        "state_dict": nn.DataParallel(net).state_dict(),
        "ema": {"decay": 0.999, "shadow": torch.compile(net, backend="eager").state_dict()},
        "tied": {"module.a.weight": shared, "module.b.weight": shared, "module.c.weight": shared[4:].view(2, 4)},
        "config": {"lr": 3e-4, "layers": [1, 2, 3], "name": "run-7", "nan": float("nan")},
        "rng": torch.get_rng_state(),
        "history": (0.5, 0.25),
    }
    source = tmp_path / "train.ckpt"
    torch.save(payload, source)

    result = fix(source, "-o", tmp_path / "out.ckpt", "--format", "json")

    assert result.exit_code == ExitCode.OK, result.output
    report = json.loads(result.stdout)
    assert [(s["location"], s["removed_prefix"]) for s in report["state_dicts"]] == [
        ('checkpoint["state_dict"]', "module."),
        ('checkpoint["ema"]["shadow"]', "_orig_mod."),
        ('checkpoint["tied"]', "module."),
    ]
    assert report["verification"]["tensors"] == 9 + 9 + 3 + 1
    # state_dict and ema share the model's tensors, the tied ones share one storage: each is stored once
    assert report["verification"]["storages"] == 9 + 1 + 1
    fixed = torch.load(tmp_path / "out.ckpt", weights_only=True)
    assert_same_tensors(fixed["state_dict"], net.state_dict())
    assert_same_tensors(fixed["ema"]["shadow"], net.state_dict())
    assert fixed["ema"]["decay"] == 0.999
    assert list(fixed["tied"]) == ["a.weight", "b.weight", "c.weight"]
    tied = fixed["tied"]
    assert tied["a.weight"].untyped_storage().data_ptr() == tied["c.weight"].untyped_storage().data_ptr()
    assert torch.equal(tied["c.weight"], shared[4:].view(2, 4))
    assert fixed["config"]["layers"] == [1, 2, 3] and fixed["config"]["name"] == "run-7"
    assert torch.equal(fixed["rng"], payload["rng"])
    assert fixed["history"] == (0.5, 0.25)


def test_safetensors(tmp_path: Path, net: nn.Module) -> None:
    st = pytest.importorskip("safetensors.torch")
    from safetensors import safe_open

    source = tmp_path / "model.safetensors"
    st.save_file(nn.DataParallel(net).state_dict(), str(source), metadata={"format": "pt", "epoch": "3"})
    before = snapshot(source)

    result = fix(source, "-o", tmp_path / "fixed.safetensors")

    assert result.exit_code == ExitCode.OK, result.output
    assert snapshot(source) == before
    loaded = st.load_file(str(tmp_path / "fixed.safetensors"))
    assert sorted(loaded) == sorted(NET_KEYS)
    expected = net.state_dict()
    assert_same_tensors({k: loaded[k] for k in NET_KEYS}, expected)
    with safe_open(str(tmp_path / "fixed.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "epoch": "3"}


def test_safetensors_against_a_model(tmp_path: Path, net: nn.Module, netdef: ModuleType) -> None:
    st = pytest.importorskip("safetensors.torch")
    source = tmp_path / "model.safetensors"
    st.save_file(nn.DataParallel(net).state_dict(), str(source))

    result = fix(source, "--model", f"{netdef.PATH}:make", "--strict", "--in-place", "--format", "json")

    assert result.exit_code == ExitCode.OK, result.output
    report = json.loads(result.stdout)
    assert report["model"]["strict_ok"] is True and report["status"] == "fixed"
    assert_same_tensors({k: v for k, v in sorted(st.load_file(str(source)).items())},
                        dict(sorted(net.state_dict().items())))


def test_plain_torch_save_path_writes_the_same_checkpoint(tmp_path: Path, net: nn.Module,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "ddp.pt"
    torch.save({"model": nn.DataParallel(net).state_dict(), "epoch": 2}, source)
    assert fix(source, "-o", tmp_path / "fast.pt").exit_code == ExitCode.OK
    monkeypatch.setattr(statedict._TorchReader, "_fast_path_possible", lambda self: False)
    assert fix(source, "-o", tmp_path / "plain.pt").exit_code == ExitCode.OK
    fast = torch.load(tmp_path / "fast.pt", weights_only=True)
    plain = torch.load(tmp_path / "plain.pt", weights_only=True)
    assert_same_tensors(fast["model"], plain["model"])
    assert fast["epoch"] == plain["epoch"] == 2 and dict(fast["model"]._metadata) == dict(plain["model"]._metadata)


def test_module_in_the_middle_of_a_key_is_left_alone(tmp_path: Path, net: nn.Module) -> None:
    source = tmp_path / "plain.pt"
    torch.save({"model": net.state_dict()}, source)
    before = snapshot(source)

    result = fix(source, "--in-place")

    assert result.exit_code == ExitCode.OK
    assert "no wrapper prefix, unchanged" in result.stdout and "nothing to fix" in result.stdout
    assert snapshot(source) == before
    assert_no_leftovers(tmp_path, {"plain.pt"})


def test_output_and_in_place(tmp_path: Path, net: nn.Module) -> None:
    source = tmp_path / "ddp.pt"
    torch.save({"model": nn.DataParallel(net).state_dict()}, source)
    original = source.read_bytes()

    assert fix(source, "--output", tmp_path / "copy.pt").exit_code == ExitCode.OK
    assert source.read_bytes() == original

    result = fix(source, "--in-place")

    assert result.exit_code == ExitCode.OK, result.output
    assert (tmp_path / "ddp.pt.bak").read_bytes() == original
    assert_no_leftovers(tmp_path, {"ddp.pt", "ddp.pt.bak", "copy.pt"})
    assert list(torch.load(source, weights_only=True)["model"]) == NET_KEYS
    assert source.read_bytes() != original
    assert "original kept as" in result.stdout

    again = fix(source, "--in-place")  # now clean: left untouched, the backup too
    assert again.exit_code == ExitCode.OK and "nothing to fix" in again.stdout
    assert (tmp_path / "ddp.pt.bak").read_bytes() == original


def test_in_place_through_a_symlink_fixes_the_file_it_points_to(tmp_path: Path, net: nn.Module) -> None:
    real = tmp_path / "real.pt"
    torch.save(nn.DataParallel(net).state_dict(), real)
    original = real.read_bytes()
    (tmp_path / "link.pt").symlink_to(real)

    result = fix(tmp_path / "link.pt", "--in-place")

    assert result.exit_code == ExitCode.OK, result.output
    assert (tmp_path / "link.pt").is_symlink()
    assert list(torch.load(tmp_path / "link.pt", weights_only=True)) == NET_KEYS
    assert (tmp_path / "real.pt.bak").read_bytes() == original


def test_output_of_a_clean_checkpoint_is_an_identical_copy(tmp_path: Path, net: nn.Module) -> None:
    source = tmp_path / "clean.pt"
    torch.save({"model": net.state_dict(), "epoch": 1}, source)

    result = fix(source, "-o", tmp_path / "copy.pt", "--format", "json")

    assert result.exit_code == ExitCode.OK
    report = json.loads(result.stdout)
    assert (report["status"], report["output"], report["verification"]["ok"]) == ("unchanged-copy", str(tmp_path / "copy.pt"), True)
    copy = torch.load(tmp_path / "copy.pt", weights_only=True)
    assert_same_tensors(copy["model"], net.state_dict()) and copy["epoch"] == 1


def test_in_place_refuses_to_overwrite_a_different_backup(tmp_path: Path, net: nn.Module) -> None:
    source = tmp_path / "ddp.pt"
    torch.save(nn.DataParallel(net).state_dict(), source)
    (tmp_path / "ddp.pt.bak").write_bytes(b"an older backup")
    before = snapshot(source)

    result = fix(source, "--in-place")

    assert result.exit_code == ExitCode.CANNOT_RUN
    assert "already exists and differs" in result.stderr
    assert snapshot(source) == before and (tmp_path / "ddp.pt.bak").read_bytes() == b"an older backup"


def test_legacy_format(tmp_path: Path, net: nn.Module) -> None:
    source = tmp_path / "old.pth"
    torch.save({"model": nn.DataParallel(net).state_dict()}, source, _use_new_zipfile_serialization=False)

    result = fix(source, "-o", tmp_path / "new.pth")

    assert result.exit_code == ExitCode.OK, result.output
    assert "legacy (non-zip) format" in result.stdout
    assert_same_tensors(torch.load(tmp_path / "new.pth", weights_only=True)["model"], net.state_dict())


def test_custom_and_added_prefix(tmp_path: Path, net: nn.Module) -> None:
    lightning = tmp_path / "lightning.ckpt"
    inner = OrderedDict((f"model.{k}", v) for k, v in net.state_dict().items())
    torch.save({"state_dict": inner, "global_step": 10}, lightning)
    result = fix(lightning, "--prefix", "model", "-o", tmp_path / "plain.pt")
    assert result.exit_code == ExitCode.OK, result.output
    assert list(torch.load(tmp_path / "plain.pt", weights_only=True)["state_dict"]) == NET_KEYS

    plain = tmp_path / "net.pt"
    torch.save(net.state_dict(), plain)
    result = fix(plain, "--add-prefix", "module.", "-o", tmp_path / "wrapped.pt")
    assert result.exit_code == ExitCode.OK, result.output
    wrapped = torch.load(tmp_path / "wrapped.pt", weights_only=True)
    assert list(wrapped) == [f"module.{k}" for k in NET_KEYS]
    nn.DataParallel(type(net)()).load_state_dict(wrapped, strict=True)


def test_model_before_and_after(tmp_path: Path, net: nn.Module, netdef: ModuleType) -> None:
    source = tmp_path / "ddp.pt"
    torch.save({"model": nn.DataParallel(net).state_dict()}, source)

    result = fix(source, "--model", f"{netdef.PATH}:make", "--strict", "--format", "json")

    assert result.exit_code == ExitCode.OK, result.output
    model = json.loads(result.stdout)["model"]
    check = model["state_dicts"][0]
    assert (check["before"]["missing"], check["before"]["unexpected"]) == (9, 9)
    assert (check["after"]["missing"], check["after"]["unexpected"]) == (0, 0)
    assert model["strict_ok"] is True and model["model_class"] == "Net"


def test_strict_fails_for_the_wrong_model(tmp_path: Path, net: nn.Module, netdef: ModuleType) -> None:
    source = tmp_path / "ddp.pt"
    torch.save({"model": nn.DataParallel(net).state_dict()}, source)

    result = fix(source, "--model", f"{netdef.PATH}:make_other", "--strict", "-o", tmp_path / "out.pt")

    assert result.exit_code == ExitCode.FINDINGS
    assert "strict load of checkpoint[\"model\"]: fails" in result.stdout
    assert_no_leftovers(tmp_path, {"ddp.pt"})


def test_trust_is_explicit(tmp_path: Path, net: nn.Module) -> None:
    source = tmp_path / "args.pt"
    torch.save({"model": nn.DataParallel(net).state_dict(), "args": argparse.Namespace(lr=0.1)}, source)
    before = snapshot(source)

    refused = fix(source, "-o", tmp_path / "out.pt")

    assert refused.exit_code == ExitCode.CANNOT_RUN
    assert "argparse.Namespace" in refused.stderr and "--trust" in refused.stderr
    assert "Traceback" not in refused.output
    assert snapshot(source) == before
    assert_no_leftovers(tmp_path, {"args.pt"})

    trusted = fix(source, "-o", tmp_path / "out.pt", "--trust")

    assert trusted.exit_code == ExitCode.OK, trusted.output
    fixed = torch.load(tmp_path / "out.pt", weights_only=False)
    assert fixed["args"] == argparse.Namespace(lr=0.1) and list(fixed["model"]) == NET_KEYS


def test_numpy_scalar_is_named(tmp_path: Path, net: nn.Module) -> None:
    np = pytest.importorskip("numpy")
    source = tmp_path / "np.pt"
    torch.save({"model": nn.DataParallel(net).state_dict(), "best": np.float64(0.5)}, source)

    result = fix(source)

    assert result.exit_code == ExitCode.CANNOT_RUN
    assert "numpy" in result.stderr and "scalar" in result.stderr and "--trust" in result.stderr


# --------------------------------------------------------------------------- bad input


def test_missing_file_in_a_real_process(tmp_path: Path) -> None:
    result = convcheck("fix-state-dict", tmp_path / "nope.pt")
    assert result.code == ExitCode.CANNOT_RUN
    assert result.stderr == (
        f"convcheck: {tmp_path / 'nope.pt'} does not exist: give the path of a checkpoint file "
        "(.pt, .pth, .bin, .ckpt or .safetensors).\n"
    )
    assert result.stdout == ""


def test_missing_file_json(tmp_path: Path) -> None:
    result = fix(tmp_path / "nope.pt", "--format", "json")
    assert result.exit_code == ExitCode.CANNOT_RUN
    assert json.loads(result.stdout)["error"]["kind"] == "bad-input"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"hello, this is a text file\n", "is not a checkpoint"),
        (b"", "is empty"),
        (b"PK\x03\x04" + b"\0" * 100, "truncated or corrupted"),
    ],
)
def test_not_a_checkpoint(tmp_path: Path, content: bytes, message: str) -> None:
    source = tmp_path / "thing.pt"
    source.write_bytes(content)
    result = fix(source)
    assert result.exit_code == ExitCode.CANNOT_RUN
    assert message in result.stderr and "Traceback" not in result.output


def test_no_state_dict_inside(tmp_path: Path) -> None:
    source = tmp_path / "numbers.pt"
    torch.save({"epoch": 3, "losses": [0.5, 0.25]}, source)
    result = fix(source)
    assert result.exit_code == ExitCode.CANNOT_RUN
    assert "No state_dict found" in result.stderr and "'epoch', 'losses'" in result.stderr


def test_truncated_file(tmp_path: Path, net: nn.Module) -> None:
    good = tmp_path / "good.pt"
    torch.save({"model": nn.DataParallel(net).state_dict()}, good)
    source = tmp_path / "truncated.pt"
    source.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    result = fix(source, "-o", tmp_path / "out.pt")
    assert result.exit_code == ExitCode.CANNOT_RUN
    assert "truncated or corrupted" in result.stderr
    assert_no_leftovers(tmp_path, {"good.pt", "truncated.pt"})


def _record(path: Path, suffix: str) -> zipfile.ZipInfo:
    with zipfile.ZipFile(path) as zf:
        return next(i for i in zf.infolist() if i.filename.endswith(suffix))


def test_corrupted_tensor_bytes_are_caught(tmp_path: Path, net: nn.Module) -> None:
    source = tmp_path / "bitrot.pt"
    torch.save({"model": nn.DataParallel(net).state_dict()}, source)
    raw = bytearray(source.read_bytes())
    offset = torch._C.PyTorchFileReader(str(source)).get_record_offset("data/0")
    raw[offset + 1] ^= 0xFF  # a flipped bit in a weight: torch.load itself does not notice
    source.write_bytes(raw)
    before = snapshot(source)

    result = fix(source, "-o", tmp_path / "out.pt")

    assert result.exit_code == ExitCode.CANNOT_RUN
    assert "is corrupted" in result.stderr and "CRC-32" in result.stderr
    assert snapshot(source) == before
    assert_no_leftovers(tmp_path, {"bitrot.pt"})


def test_corrupted_pickle(tmp_path: Path, net: nn.Module) -> None:
    source = tmp_path / "bad.pt"
    torch.save({"model": nn.DataParallel(net).state_dict()}, source)
    raw = bytearray(source.read_bytes())
    info = _record(source, "data.pkl")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[start + 2 : start + 40] = b"\xff" * 38
    source.write_bytes(raw)
    result = fix(source)
    assert result.exit_code == ExitCode.CANNOT_RUN
    assert "corrupted" in result.stderr and "Traceback" not in result.output


def test_mixed_prefixes_need_force(tmp_path: Path, net: nn.Module) -> None:
    sd = nn.DataParallel(net).state_dict()
    sd["head.weight"] = torch.ones(2)
    source = tmp_path / "mixed.pt"
    torch.save({"model": sd}, source)
    before = snapshot(source)

    refused = fix(source, "-o", tmp_path / "out.pt")

    assert refused.exit_code == ExitCode.CANNOT_RUN
    assert "mixed prefixes" in refused.stderr and "9 of 10 keys start with 'module.'" in refused.stderr
    message = " ".join(refused.stderr.split())
    assert ("(prefixed: 'module.fc.weight', 'module.fc.bias', 'module.bn.weight'; without a prefix: "
            "'head.weight')") in message
    assert "--force" in refused.stderr
    assert snapshot(source) == before
    assert_no_leftovers(tmp_path, {"mixed.pt"})

    forced = fix(source, "-o", tmp_path / "out.pt", "--force")

    assert forced.exit_code == ExitCode.OK, forced.output
    assert list(torch.load(tmp_path / "out.pt", weights_only=True)["model"]) == NET_KEYS + ["head.weight"]


def test_output_not_writable(tmp_path: Path, net: nn.Module) -> None:
    source = tmp_path / "ddp.pt"
    torch.save(nn.DataParallel(net).state_dict(), source)
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-folder").mkdir()
    for target, message in [
        (tmp_path / "a-file" / "out.pt", "is not a folder"),
        (tmp_path / "missing" / "out.pt", "does not exist"),
        (tmp_path / "a-folder", "it is a folder"),
        (source, "is the input itself"),
    ]:
        result = fix(source, "-o", target)
        assert result.exit_code == ExitCode.CANNOT_RUN, target
        assert message in result.stderr and "Traceback" not in result.output
    assert_no_leftovers(tmp_path, {"ddp.pt", "a-file", "a-folder"})


def _disk_full(*args: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("mode", ["--output", "--in-place"])
def test_disk_full_while_copying_tensors(tmp_path: Path, net: nn.Module, monkeypatch: pytest.MonkeyPatch,
                                         mode: str) -> None:
    source = tmp_path / "ddp.pt"
    torch.save({"model": nn.DataParallel(net).state_dict()}, source)
    before = snapshot(source)
    monkeypatch.setattr(statedict.torch_checkpoint, "_copy_range", _disk_full)

    result = fix(source, *([mode, tmp_path / "out.pt"] if mode == "--output" else [mode]))

    assert result.exit_code == ExitCode.CANNOT_RUN
    assert "disk is full" in result.stderr and "input is unchanged" in result.stderr
    assert snapshot(source) == before
    # A failed --in-place replaced nothing, so it keeps no backup either: the message matches the disk.
    assert_no_leftovers(tmp_path, {"ddp.pt"})


def test_disk_full_during_torch_save(tmp_path: Path, net: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "old.pt"
    torch.save(nn.DataParallel(net).state_dict(), source, _use_new_zipfile_serialization=False)
    before = snapshot(source)
    real_save = torch.save

    def half_save(obj: object, path: object, *args: object, **kwargs: object) -> None:
        real_save(obj, path, *args, **kwargs)
        Path(path).write_bytes(Path(path).read_bytes()[:100])  # half-written, then the disk fills up
        _disk_full()

    monkeypatch.setattr(torch, "save", half_save)
    result = fix(source, "-o", tmp_path / "out.pt")

    assert result.exit_code == ExitCode.CANNOT_RUN
    assert "disk is full" in result.stderr
    assert snapshot(source) == before
    assert_no_leftovers(tmp_path, {"old.pt"})


def test_safetensors_disk_full(tmp_path: Path, net: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    st = pytest.importorskip("safetensors.torch")
    source = tmp_path / "m.safetensors"
    st.save_file(nn.DataParallel(net).state_dict(), str(source))
    monkeypatch.setattr(statedict.safetensors_checkpoint, "_copy_range", _disk_full)
    result = fix(source, "-o", tmp_path / "out.safetensors")
    assert result.exit_code == ExitCode.CANNOT_RUN and "disk is full" in result.stderr
    assert_no_leftovers(tmp_path, {"m.safetensors"})


def test_verification_failure_leaves_nothing(tmp_path: Path, net: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "ddp.pt"
    torch.save(nn.DataParallel(net).state_dict(), source)
    before = snapshot(source)
    monkeypatch.setattr(statedict.torch_checkpoint, "_compare_ranges", lambda *args: (False, 0))

    result = fix(source, "--in-place")

    assert result.exit_code == ExitCode.FINDINGS
    assert "did not match the source" in result.stderr
    assert snapshot(source) == before
    # "Nothing was written" is true on disk too: no backup of a file that was not replaced.
    assert_no_leftovers(tmp_path, {"ddp.pt"})


def test_corrupted_safetensors_header(tmp_path: Path) -> None:
    source = tmp_path / "broken.safetensors"
    source.write_bytes((200).to_bytes(8, "little") + b'{"a.b": {"dtype": "F32"')
    result = fix(source)
    assert result.exit_code == ExitCode.CANNOT_RUN
    assert "not a valid safetensors file" in result.stderr
