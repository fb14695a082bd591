"""CC020 input-not-normalized: recorded first-layer inputs, and numpy HWC images turned into unscaled tensors."""

from __future__ import annotations

from pathlib import Path

import pytest
from cc_testing import SCRIPTS, convcheck, read_traces
from static_expect import context

from convcheck.checks.cc020_input_not_normalized import InputNotNormalized
from convcheck.runtime.trace import RunTrace, load_events

SOURCE = """
import torch
net = Net()
for x, y in loader:
    out = net(x)
"""

NORMALIZE = """
from torchvision import transforms
tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
net = Net()
for x, y in loader:
    out = net(x)
"""


def layer_input(lo: float, hi: float, mean: float, std: float, integer: bool, shape: list[int] | None = None,
                dtype: str = "torch.float32", cls: str = "Conv2d", weight: str = "torch.float32",
                root: dict | None = None) -> dict:
    return {"ev": "layer_input", "n": 1, "step": 0, "training": True, "layer": "conv1", "cls": cls,
            "weight_dtype": weight, "dtype": dtype, "shape": shape or [16, 1, 28, 28], "min": lo, "max": hi,
            "mean": mean, "std": std, "integer": integer, "root": root, "loc": ["train.py", 5]}


def runtime(*events: dict, source: str = SOURCE) -> list:
    proc = [{"ev": "process", "rank": None, "world_size": 1}, *events,
            {"ev": "backward", "n": 1, "step": 0, "loss": 1.0, "loc": ["train.py", 6]}]
    trace = RunTrace(processes=[load_events(proc)], world_size=1)
    return list(InputNotNormalized().check_runtime(trace, context(source)))


def test_pixels_in_0_255_reaching_the_first_conv_are_a_warning_at_the_model_call() -> None:
    [finding] = runtime(layer_input(0, 255, 33.3, 78.6, True))
    assert (finding.severity.value, finding.location.line) == ("warning", 5)
    assert finding.message == (
        "The first layer `conv1` (Conv2d) receives float32 images of whole numbers from 0 to 255 (mean 33.3, std "
        "78.6): 8-bit pixel values that were never scaled to [0, 1] or normalized.")
    assert finding.evidence["max"] == 255


def test_half_precision_pixels_are_pixels_too() -> None:
    [finding] = runtime(layer_input(0, 255, 33.3, 78.6, True, dtype="torch.bfloat16"))
    assert finding.message.startswith("The first layer `conv1` (Conv2d) receives bfloat16 images of whole numbers")


def test_a_declared_normalize_is_named_in_the_warning() -> None:
    [finding] = runtime(layer_input(0, 255, 33.3, 78.6, True), source=NORMALIZE)
    assert "although a Normalize is declared at line 3" in finding.message
    assert finding.evidence["normalize_mean_std"] == [[0.1307], [0.3081]]


def test_inputs_far_from_a_declared_normalize_are_info() -> None:
    [finding] = runtime(layer_input(0.0, 254.7, 33.1, 77.9, False), source=NORMALIZE)
    assert finding.severity.value == "info"
    assert finding.message.startswith(
        "The script declares `Normalize(mean=[0.1307], std=[0.3081])` (line 3), yet the first layer `conv1` (Conv2d) "
        "receives images with mean 33.1 and std 77.9")
    # The same input with no declared normalization: not sure enough to say anything.
    assert runtime(layer_input(0.0, 254.7, 33.1, 77.9, False)) == []


def test_scaled_standardized_or_small_whole_numbers_are_quiet() -> None:
    assert runtime(layer_input(0.0, 1.0, 0.13, 0.31, False)) == []
    assert runtime(layer_input(-0.42, 2.82, 0.0, 1.0, False), source=NORMALIZE) == []
    # Board-game planes or counts: whole numbers up to 16 are not read as pixels.
    assert runtime(layer_input(0, 8, 1.2, 2.0, True)) == []


def test_float64_images_into_a_float64_model_are_info() -> None:
    [finding] = runtime(layer_input(0.0, 1.0, 0.5, 0.29, False, dtype="torch.float64", weight="torch.float64"))
    assert (finding.severity.value, finding.evidence["dtype"]) == ("info", "torch.float64")


def test_what_is_not_an_image_is_not_judged() -> None:
    # Tabular features and sequences of a Linear layer.
    assert runtime(layer_input(0, 255, 100, 60, True, shape=[16, 20], cls="Linear")) == []
    assert runtime(layer_input(0, 255, 100, 60, True, shape=[4, 32, 64], cls="Linear")) == []
    # An embedding first: its input is integer ids, no statistics recorded.
    assert runtime({**layer_input(0, 0, 0, 0, False), "cls": "Embedding", "dtype": "torch.int64", "min": None,
                    "max": None}) == []


def test_images_flattened_inside_the_model_are_judged_from_the_model_input() -> None:
    image = {"dtype": "torch.float32", "shape": [16, 1, 28, 28], "min": 0.0, "max": 255.0}
    [finding] = runtime(layer_input(0, 255, 33.3, 78.6, True, shape=[16, 784], cls="Linear", root=image))
    assert finding.severity.value == "warning"
    # uint8 images the model scales itself: the first layer receives [0, 1].
    raw = {"dtype": "torch.uint8", "shape": [16, 1, 28, 28], "min": 0.0, "max": 255.0}
    assert runtime(layer_input(0.0, 1.0, 0.13, 0.3, False, root=raw)) == []


def test_one_finding_per_model_call() -> None:
    event = layer_input(0, 255, 33.3, 78.6, True)
    assert len(runtime(event, {**event, "n": 2}, {**event, "n": 3})) == 1


@pytest.mark.slow
def test_numpy_hwc_images_permuted_and_never_scaled(tmp_path: Path) -> None:
    script = SCRIPTS / "cc020_numpy_hwc.py"
    result = convcheck("run", "--format", "json", "--fail-on", "never", "--select", "CC020", "--trace-dir",
                       tmp_path / "t", script, cwd=script.parent)
    assert result.code == 0, result.stderr
    [finding] = result.findings("CC020")
    assert (finding["severity"], finding["location"]["line"]) == ("warning", 51)
    assert "although a Normalize is declared at line 40" in finding["message"]
    assert finding["evidence"]["shape"] == [16, 3, 24, 24]
    # The first 3 forwards only, besides the script's own warm-up call with zeros, which is not counted.
    [trace] = read_traces(tmp_path / "t")
    inputs = [e for e in trace if e["ev"] == "layer_input"]
    assert [(e["n"], e["layer"], e["max"]) for e in inputs] == [
        (1, "0", 0.0), (2, "0", 255.0), (3, "0", 255.0), (4, "0", 255.0)]

    scaled = convcheck("run", "--format", "json", "--fail-on", "never", "--select", "CC020", script, "--scaled",
                       cwd=script.parent)
    assert scaled.code == 0, scaled.stderr
    assert scaled.findings() == []
