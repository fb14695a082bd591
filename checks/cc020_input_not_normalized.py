"""CC020 input-not-normalized: image inputs that reach the first layer as 0-255 pixel values, as float64, or far
from the normalization the script declares."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from typing import Any

from convcheck.findings import Finding, Severity
from convcheck.registry import Check
from convcheck.runtime.trace import Event, RunTrace
from convcheck.static.context import StaticContext, call_name
from convcheck.static.flow import user_location

_PIXEL_FIX = (
    "Scale the pixels before the first layer: `x = x.float() / 255` (then, optionally, subtract the data set's mean "
    "and divide by its std), or build the data with `transforms.ToTensor()` (which scales uint8 images to [0, 1]) "
    "followed by `transforms.Normalize(mean, std)`."
)
_FLOAT64_FIX = (
    "Keep the images and the model in float32: `x = x.float()` (numpy arrays are float64 by default: "
    "`torch.from_numpy(a).float()` or `a.astype(np.float32)`) and leave `model.double()` out."
)
_CLAIM_FIX = (
    "Apply the declared normalization to the data the model trains on (the transform passed to the training data "
    "set), or compute the mean and std of the data as it reaches the model and declare those."
)
#: Floating dtypes, as the trace writes them.
_FLOATS = ("torch.float", "torch.bfloat")
#: A whole-number maximum above this (and at most 255) reads as 8-bit pixel values rather than small counts.
_PIXEL_MAX = 16
#: Normalized data has a mean near 0 and a std near 1: beyond these it is not what Normalize promised.
_FAR_MEAN = 3.0
_FAR_STD = 5.0


class InputNotNormalized(Check):
    """## What it does
    Looks at what the first layer of a model receives on its first forward passes: the input of the first Conv or
    Linear layer the forward calls (not the model's own input: a model may convert uint8 images itself). For
    image-like inputs (a channel dimension of 1, 3 or 4; or a model that receives such images and flattens them)
    it reports floats that are whole numbers between 0 and 255 (pixel values never scaled), float64 images fed to
    a float64 model, and inputs whose mean and std are far from the `transforms.Normalize(mean, std)` the script
    declares.

    ## Why is this bad?
    Weights are initialized for inputs of order 1. Pixels in 0-255 make the first layer's pre-activations a
    hundred times too large: activations saturate, gradients of the first layer are huge next to the others, and
    a learning rate that suits the rest of the network diverges or stalls. A declared Normalize that never reaches
    the training data (the transform given to the test set only, a `.data` tensor read directly) has the same
    effect while the script looks right. float64 doubles memory and is many times slower, for nothing.

    ## Example
    ```python
    images = torch.from_numpy(uint8_images).float()   # 0..255
    logits = model(images)
    ```

    ## Use instead
    ```python
    images = torch.from_numpy(uint8_images).float() / 255
    logits = model(images)
    ```

    ## Fix
    Scale pixels to [0, 1] (`/ 255` or `ToTensor()`) and normalize with the data set's mean and std; keep inputs
    and model in float32. 0-255 pixels are a warning; float64 and a mismatch with a declared Normalize are info.

    ## Known limits
    What is measured is the input of the first Conv/Linear layer a forward calls, not the model's own input (so a
    model that scales its uint8 input itself is fine), on the first three forward passes (a constant input, such as
    a warm-up call with zeros, is not counted), from a strided sample of a large input; a model that starts with a
    norm layer or an embedding is not judged. A model whose input
    is already flattened before the call (`model(x.view(-1, 784))`) is not recognized as taking images. Whole
    numbers up to 16 (counts, board-game planes) are not read as pixels. The Normalize claim is read from literal
    arguments in the script itself.
    """

    code = "CC020"
    name = "input-not-normalized"
    severity = Severity.WARNING
    summary = "Images reach the first layer as 0-255 pixel values, as float64, or far from the declared Normalize."
    needs = frozenset({"inputs"})

    def check_runtime(self, run: RunTrace, ctx: StaticContext) -> Iterable[Finding]:
        procs = run.trainers or [p for p in run.processes if p.of("layer_input")]
        if not procs:
            return []
        claim = _declared_normalize(ctx) if ctx is not None else None
        findings: list[Finding] = []
        seen: set[Any] = set()
        for event in procs[0].of("layer_input"):
            if event.get("max") is None or not str(event.get("dtype", "")).startswith(_FLOATS):
                continue
            if not _image_like(event):
                continue
            key = (tuple(event.get("loc") or ()), event.get("layer"))
            if key in seen:
                continue
            finding = self._judge(event, claim, ctx)
            if finding is not None:
                seen.add(key)
                findings.append(finding)
        return findings

    def _judge(self, event: Event, claim: tuple[int, list[float], list[float]] | None,
               ctx: StaticContext) -> Finding | None:
        where = user_location(event.get("loc"), ctx)
        low, high, mean, std = event["min"], event["max"], event.get("mean"), event.get("std")
        layer = f"`{event.get('layer')}` ({event.get('cls')})"
        evidence: dict[str, Any] = {
            "layer": event.get("layer"), "layer_class": event.get("cls"), "dtype": event.get("dtype"),
            "shape": event.get("shape"), "min": low, "max": high, "mean": _round(mean), "std": _round(std),
            "whole_numbers": event.get("integer"), "model_input": event.get("root"),
        }
        if claim is not None:
            evidence["normalize_declared_at"] = f"{ctx.display_path}:{claim[0]}"
            evidence["normalize_mean_std"] = [claim[1], claim[2]]
        if event.get("integer") and low >= 0 and _PIXEL_MAX < high <= 255:
            declared = (f" although a Normalize is declared at line {claim[0]}" if claim is not None else "")
            dtype = str(event.get("dtype")).replace("torch.", "")
            message = (
                f"The first layer {layer} receives {dtype} images of whole numbers from {_n(low)} to "
                f"{_n(high)} (mean {_n(mean)}, std {_n(std)}){declared}: 8-bit pixel values that were never scaled "
                "to [0, 1] or normalized."
            )
            return self.finding(message, fix=_PIXEL_FIX, location=where, evidence=evidence,
                                severity=Severity.WARNING, headline="max")
        if event.get("dtype") == "torch.float64" and event.get("weight_dtype") == "torch.float64":
            message = (
                f"The first layer {layer} receives float64 images and computes in float64: twice the memory and "
                "many times the time of float32, which is what the rest of the ecosystem (and any GPU) is fast at."
            )
            return self.finding(message, fix=_FLOAT64_FIX, location=where, evidence=evidence, severity=Severity.INFO,
                                headline="dtype")
        if claim is not None and mean is not None and std is not None and (
                abs(mean) > _FAR_MEAN or std > _FAR_STD):
            message = (
                f"The script declares `Normalize(mean={claim[1]}, std={claim[2]})` (line {claim[0]}), yet the first "
                f"layer {layer} receives images with mean {_n(mean)} and std {_n(std)} (range {_n(low)} to "
                f"{_n(high)}): the normalization does not reach this data. Info: the declared transform may belong "
                "to other data."
            )
            return self.finding(message, fix=_CLAIM_FIX, location=where, evidence=evidence, severity=Severity.INFO,
                                headline="mean")
        return None


def _image_like(event: Event) -> bool:
    """Whether the first layer's input, or the model's own input, is shaped like images."""
    root = event.get("root") or {}
    shape = event.get("shape") or []
    # One unbatched CHW image goes to a convolution; a 3-D input of a Linear layer is a sequence of features.
    own = _image_shape(shape) and (len(shape) != 3 or "Conv" in str(event.get("cls")))
    return own or (
        _image_shape(root.get("shape") or []) and str(root.get("dtype", "")).startswith((*_FLOATS, "torch.uint8")))


def _image_shape(shape: list[int]) -> bool:
    """NCHW/NHWC batches, NCTHW video, or one CHW image, with 1, 3 or 4 channels."""
    if len(shape) == 4:
        return (shape[1] in (1, 3, 4) and min(shape[2:]) >= 4) or (shape[3] in (1, 3, 4) and min(shape[1:3]) >= 8)
    if len(shape) == 5:
        return shape[1] in (1, 3, 4) and min(shape[3:]) >= 4
    if len(shape) == 3:
        return shape[0] in (1, 3, 4) and min(shape[1:]) >= 8
    return False


def _declared_normalize(ctx: StaticContext) -> tuple[int, list[float], list[float]] | None:
    """The line, mean and std of the script's first ``Normalize(mean, std)`` with literal arguments."""
    for call in ctx.calls():
        if (call_name(call) or "").rsplit(".", 1)[-1] != "Normalize":
            continue
        args = list(call.args) + [None, None]
        keywords = {k.arg: k.value for k in call.keywords}
        mean, std = _numbers(keywords.get("mean", args[0])), _numbers(keywords.get("std", args[1]))
        if mean and std:
            return call.lineno, mean, std
    return None


def _numbers(node: Any) -> list[float] | None:
    """A literal number or tuple/list of numbers."""
    if node is None:
        return None
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        return None
    values = list(value) if isinstance(value, (tuple, list)) else [value]
    return [float(v) for v in values] if values and all(isinstance(v, (int, float)) for v in values) else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _n(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{int(value)}" if float(value).is_integer() else f"{value:.3g}"
