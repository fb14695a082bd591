"""The trace's event kinds, typed: the contract between what records (probes) and what judges (checks).

Every line of a trace file is one event, a JSON object whose ``ev`` names its kind. Each kind the
project writes has a ``TypedDict`` here listing the fields checks may rely on and their types
(``NotRequired``: written only sometimes; ``X | None``: written as null when unknown). Events stay
plain dicts at run time; a check that wants its events typed writes
``for step in cast("list[StepEvent]", proc.of("step")): ...``.

``validate_event`` tells a usable event from a damaged one (edited by hand, cut short, written by
a probe that broke its contract). A kind with no schema (a newer writer, a plug-in that declared
none) is accepted as it is; a plug-in declares its own kinds with ``register_event_schema``.
Fields not listed are allowed: the schema says what readers need, not all a writer may add.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Union

from typing_extensions import Annotated, Literal, NotRequired, Required, TypedDict, is_typeddict

if typing.TYPE_CHECKING:
    from pydantic import TypeAdapter

# pydantic is imported only to validate: a recorder in the user's process may declare its kinds here for free.


def _file_and_line(value: list[Any]) -> list[Any]:
    if len(value) != 2 or not isinstance(value[0], str) or not (value[1] is None or type(value[1]) is int):
        raise ValueError("not [file, line]")
    return value


@dataclass(frozen=True)
class _Label:
    """A constrained type: how a damaged line's message names it, and the check pydantic runs after the type's own."""

    text: str
    check: Any

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_after_validator_function(self.check, handler(source))


#: ``[file, line]`` of the user's code (JSON has no tuples); the line is null in the rare frame that has none.
FileLine = Annotated[list[Union[str, int, None]], _Label("[file, line]", _file_and_line)]
#: Where in the user's code a call was made: ``[file, line]``, or None when no user frame was on the stack.
Loc = Union[FileLine, None]
#: What the probe's ``_num`` writes: the value when it is a number (or bool), else a short repr; None stays None.
Scalar = Union[bool, int, float, str, None]


# -- nested records ---------------------------------------------------------------------------------------


class ParamInfo(TypedDict):
    """One parameter of a model: its index in this process (``id``), qualified name, shape (None while lazy)."""

    id: int
    name: str
    shape: list[int] | None
    requires_grad: bool
    dtype: str


class ModeModule(TypedDict):
    """A dropout or batch-norm submodule whose train/eval mode changes what it computes."""

    name: str
    cls: str


class ParamGroup(TypedDict):
    """An optimizer's parameter group: parameter indices, plus its numeric hyperparameters (lr, momentum...)."""

    params: list[int]


class GraphNode(TypedDict):
    """A node of the loss's autograd graph, breadth first: its parent's index and saved attributes."""

    name: str
    depth: int
    parent: int
    attrs: NotRequired[dict[str, Any]]


class StaleGrads(TypedDict):
    """Gradients the first backward after a step of optimizer ``opt`` adds to (present of ``of``, total norm)."""

    opt: int
    present: int
    of: int
    norm: float


class OwnedRng(TypedDict):
    """A random generator a dataset holds as an attribute."""

    attr: str
    cls: str


class StateDictSummary(TypedDict):
    """A state_dict-like mapping inside a checkpoint: where (``path`` of keys), how many keys, the first keys."""

    path: list[str]
    n_keys: int
    keys: list[str]


class ModuleFlag(TypedDict):
    """``requires_grad``/``require_grad`` set as a plain attribute on a module (module, cls, params) or a parameter."""

    attr: str
    value: Scalar
    module: NotRequired[str]
    cls: NotRequired[str]
    params: NotRequired[list[int]]
    param: NotRequired[str]
    id: NotRequired[int]


class Histogram(TypedDict):
    """TensorBoard's raw histogram fields for a parameter's weight or gradient."""

    param: int
    kind: str
    min: float
    max: float
    num: int
    sum: float
    sum_squares: float
    limits: list[float]
    counts: list[float]


class GradflowLayer(TypedDict):
    """A weight, embedding or ReLU layer in one forward (first call first): its calls, how many of them saw an
    all-zero input (weight layers) or gave an all-zero output (ReLU), and for ReLU the share of units zero
    for every sample on every call; ``param``/``trainable``: the weight it trains."""

    name: str
    cls: str
    kind: Literal["weight", "embedding", "relu"]
    calls: int
    zero_calls: int
    measured: int
    param: NotRequired[int | None]
    trainable: NotRequired[bool]
    dead_units: NotRequired[float]
    batch: NotRequired[int]


# -- events ------------------------------------------------------------------------------------------------


class ProcessEvent(TypedDict):
    """The first event of every process: who it is (role entry/child/forked-child). ``Probe.header``."""

    ev: Literal["process"]
    pid: int
    ppid: int
    role: str
    argv: list[str]
    rank: int | None
    local_rank: int | None
    world_size: int | None
    torch: str
    python: str
    steps_budget: int


class StepEvent(TypedDict):
    """An optimizer step (``n``: steps so far); norms, parameter states when sampled. ``Probe.optimizer_post_hook``."""

    ev: Literal["step"]
    opt: int
    n: int
    backwards: int
    lrs: list[Scalar]
    grad: list[int]
    loc: Loc
    param_norms: NotRequired[list[float]]
    grad_norms: NotRequired[list[float]]
    update_norms: NotRequired[list[float | None]]
    update_ratios: NotRequired[list[float | None]]
    nonfinite_grad_fraction: NotRequired[float]
    changed: NotRequired[list[int]]
    frozen: NotRequired[list[int]]
    outside: NotRequired[list[int]]
    outside_grad: NotRequired[list[int]]
    closure: NotRequired[bool]


class BackwardEvent(TypedDict):
    """A backward() call: the unscaled loss; graph and stale gradients when sampled. ``Probe.on_backward``."""

    ev: Literal["backward"]
    n: int
    step: int
    loss: float | None
    loc: Loc
    loss_scale: NotRequired[float]
    graph: NotRequired[list[GraphNode]]
    stale_grads: NotRequired[StaleGrads]
    eval_modules: NotRequired[list[str]]
    eval_roots: NotRequired[list[list[int]]]


class ModelEvent(TypedDict):
    """A model's first forward: its parameters and mode-sensitive submodules. ``Probe._register_root``."""

    ev: Literal["model"]
    cls: str
    obj: int
    params: list[ParamInfo]
    wrapper: bool
    mode_modules: list[ModeModule]
    shared_memory: NotRequired[bool]


class OptimizerEvent(TypedDict):
    """An optimizer's first step (or scaler call): its groups and where it was built. ``Probe._optimizer_index``."""

    ev: Literal["optimizer"]
    opt: int
    cls: str
    groups: list[ParamGroup]
    loc: Loc


class ZeroGradEvent(TypedDict):
    """A zero_grad() of an optimizer (``opt`` once known) or a module. ``_install_patches`` (wrap_zero_grad)."""

    ev: Literal["zero_grad"]
    kind: str
    step: int
    opt: int | None
    backwards: int
    loc: Loc


class LoaderEvent(TypedDict):
    """A DataLoader built: batch size, workers, sampler, dataset. ``_patch_data`` (wrap_loader_init)."""

    ev: Literal["loader"]
    id: int
    batch_size: int | None
    num_workers: int
    sampler: str
    batch_sampler: str
    batch_sampler_inner: str | None
    sampler_id: int | None
    worker_init_fn: bool
    generator: bool
    drop_last: bool
    dataset: str
    dataset_len: int | None
    loc: Loc
    dataset_rngs: list[OwnedRng]
    persistent_workers: bool


class LoaderEpochEvent(TypedDict):
    """A DataLoader epoch closed: batches, indices, their digest, the first batch. ``Probe._close_epoch``."""

    ev: Literal["loader_epoch"]
    loader: int
    epoch: int
    batches: int
    n_indices: int
    digest: str
    indices: list[int]
    complete: bool
    step: int
    step_start: int | None
    first_batch: str | None


class SamplerEvent(TypedDict):
    """A DistributedSampler built, with its settings as the user gave them. ``_patch_data`` (wrap_sampler_init)."""

    ev: Literal["sampler"]
    id: int
    cls: str
    shuffle: bool
    num_replicas: int | None
    rank: int | None
    seed: int | None
    #: As the user passed it: any truthy value drops the last samples.
    drop_last: bool | int | None
    loc: Loc


class SamplerIterEvent(TypedDict):
    """A DistributedSampler iterated: its epoch and the digest of its order. ``_patch_data`` (wrap_sampler_iter)."""

    ev: Literal["sampler_iter"]
    id: int | None
    epoch: int | float | None
    digest: str
    n: int
    step: int


class SetEpochEvent(TypedDict):
    """DistributedSampler.set_epoch called. ``_patch_data`` (wrap_set_epoch)."""

    ev: Literal["set_epoch"]
    id: int | None
    epoch: Scalar
    loc: Loc


class SeedEvent(TypedDict):
    """A seeding call (torch, cuda, python, numpy); ``internal`` when torch made it. The ``seeding`` recorder."""

    ev: Literal["seed"]
    rng: str
    value: Scalar
    loc: Loc
    step: int
    internal: bool
    drawn_before: bool


class SaveEvent(TypedDict):
    """torch.save: the user's path, where the write went instead, the state_dicts saved. ``_patch_checkpoints``."""

    ev: Literal["save"]
    path: str | None
    redirected_to: str | None
    state_dicts: list[StateDictSummary]
    loc: Loc
    step: int
    internal: NotRequired[bool]


class LoadEvent(TypedDict):
    """torch.load: the user's path, the run's copy read instead, the state_dicts loaded. ``_patch_checkpoints``."""

    ev: Literal["load"]
    path: str | None
    redirected_from: str | None
    state_dicts: list[StateDictSummary]
    loc: Loc
    step: int


class LoadStateDictEvent(TypedDict):
    """Module.load_state_dict: keys expected, given, missing and unexpected. ``_patch_checkpoints``."""

    ev: Literal["load_state_dict"]
    module: str
    strict: bool
    n_expected: int
    n_given: int
    n_loaded: int
    missing: list[str]
    unexpected: list[str]
    n_missing: int
    n_unexpected: int
    loc: Loc


class ScalerEvent(TypedDict):
    """A GradScaler call (scale, unscale_, step, update) and the scale after it. ``_patch_amp`` (record_call)."""

    ev: Literal["scaler"]
    call: str
    scale: float | None
    step: int
    opt: NotRequired[int]
    skipped: NotRequired[bool]
    loc: NotRequired[Loc]


class ScalerPassthroughEvent(TypedDict):
    """The first call of a disabled GradScaler (a pass-through). ``_patch_amp`` (record_call)."""

    ev: Literal["scaler_passthrough"]
    call: str
    step: int
    loc: Loc


class AutocastEvent(TypedDict):
    """An autocast region entered (fp16 ones only in the first backwards). ``_patch_amp`` (wrap_enter)."""

    ev: Literal["autocast"]
    device: str
    dtype: str
    enabled: bool
    loc: Loc
    step: int


class ClipEvent(TypedDict):
    """clip_grad_norm_: the limit and the norm it measured. ``_patch_amp`` (wrap_clip)."""

    ev: Literal["clip"]
    kind: str
    max_norm: Scalar
    total_norm: Scalar
    loc: Loc
    step: int


class SchedStepEvent(TypedDict):
    """An lr scheduler's step: the lrs after it; its settings on its first step. The ``schedulers`` recorder."""

    ev: Literal["sched_step"]
    cls: str
    sched: int | None
    step: int
    internal: bool
    lrs: list[Scalar]
    loc: Loc
    settings: NotRequired[dict[str, Union[bool, int, float, list[int]]]]


class GradflowEvent(TypedDict):
    """One training forward of the first steps: its layers in call order. The ``gradflow`` recorder."""

    ev: Literal["gradflow"]
    step: int
    root: int | None
    loc: Loc
    layers: list[GradflowLayer]


class TrainModeEvent(TypedDict):
    """The outermost Module.train()/eval() call: the mode set and on which module. The ``modes`` recorder."""

    ev: Literal["train_mode"]
    mode: bool
    cls: str
    obj: int
    step: int
    loc: Loc


class ModuleFlagsEvent(TypedDict):
    """Freezes that freeze nothing (``requires_grad`` set as a plain attribute). ``Probe.emit_module_flags``."""

    ev: Literal["module_flags"]
    when: str
    root: str
    flags: list[ModuleFlag]


class WarningEvent(TypedDict):
    """A Python warning shown (the first 50): category, message, where it was raised. The ``warnings`` recorder."""

    ev: Literal["warning"]
    category: str
    message: str
    origin: FileLine
    loc: Loc
    step: int


class NonfiniteEvent(TypedDict):
    """The first module with an inf/NaN output in a step, its input, an fp32 rerun. ``Probe._record_nonfinite``."""

    ev: Literal["nonfinite"]
    module: str
    cls: str
    step: int
    dtype: str
    fp16_autocast: bool
    input_range: list[float] | None
    input_finite: bool | None
    loc: Loc
    fp32_finite: NotRequired[bool]
    fp32_max_abs: NotRequired[float | None]


class HistogramsEvent(TypedDict):
    """Weight and gradient histograms of the largest parameters, first and last step. ``Probe.emit_histograms``."""

    ev: Literal["histograms"]
    when: str
    step: int
    tensors: list[Histogram]


class FinalEvent(TypedDict):
    """What a process that trained ends with: a parameter digest, determinism flags, and what the recorders add
    (RNG use from ``seeding``). ``Probe.record_final``."""

    ev: Literal["final"]
    steps: int
    param_sum: float | None
    params_summed: NotRequired[int]
    param_norms: list[float]
    rng_drawn: NotRequired[dict[str, bool]]
    rng_seeded: NotRequired[list[str]]
    rng_unseeded_draws: NotRequired[list[str]]
    cudnn_benchmark: bool
    cudnn_deterministic: bool
    deterministic_algorithms: bool


class DistInitEvent(TypedDict):
    """init_process_group: backend, rank and world size. ``_patch_distributed`` (wrap_init)."""

    ev: Literal["dist_init"]
    backend: str
    rank: int
    world_size: int
    loc: Loc


class DdpInitEvent(TypedDict):
    """A module wrapped in DistributedDataParallel. ``_patch_distributed`` (wrap_ddp_init)."""

    ev: Literal["ddp_init"]
    module: str
    loc: Loc
    step: int


class DdpModuleMovedEvent(TypedDict):
    """A DDP-wrapped module moved or cast after wrapping (``how``: the method). ``_patch_distributed`` (wrap_apply)."""

    ev: Literal["ddp_module_moved"]
    how: str
    cls: str
    loc: Loc
    step: int


class DdpSyncEvent(TypedDict):
    """Whether backward ``n`` all-reduced its gradients (its DDP forward ran outside ``no_sync()``). ``DdpSyncRecorder``."""

    ev: Literal["ddp_sync"]
    n: int
    step: int
    synced: bool
    static_graph: bool


class AmpDeviceEvent(TypedDict):
    """The CUDA device in use at the first backward, and whether it supports bfloat16 natively. ``AmpDeviceRecorder``."""

    ev: Literal["amp_device"]
    step: int
    cuda: bool
    bf16_supported: bool | None
    capability: list[int] | None
    device_name: str | None


class UnregisteredModuleEvent(TypedDict):
    """A layer called in a model's forward that the model does not own (a plain list); ``root`` is the model's
    index among the "model" events, None when it owns no parameter (and so has none). ``Probe._check_registered``."""

    ev: Literal["unregistered_module"]
    cls: str
    root: int | None
    root_cls: str
    container: str | None
    holder: str | None
    params: list[ParamInfo]
    loc: Loc


class ActivationCheckpointEvent(TypedDict):
    """One of the first torch.utils.checkpoint calls: ``use_reentrant`` as passed (None: not passed, so the
    reentrant default), whether grad mode was on, whether a tensor input and the output require grad, the trainable
    parameters of the modules it ran. The ``checkpointing`` recorder."""

    ev: Literal["activation_checkpoint"]
    use_reentrant: bool | None
    reentrant: bool
    sequential: bool
    grad_enabled: bool
    n_tensors: int
    input_requires_grad: bool
    output_requires_grad: bool | None
    function: str
    params: list[int]
    loc: Loc
    step: int


class AttentionMaskEvent(TypedDict):
    """A mask applied to attention scores in the first steps: ``masked_fill`` with a -inf (very negative) value or
    ``scaled_dot_product_attention``'s ``attn_mask``; its shape, whether it is square over the last two dimensions
    and shared by the batch (``shared``: leading dimensions of 1), and whether it masks nothing. The
    ``attention_masks`` recorder."""

    ev: Literal["attention_mask"]
    kind: str
    mask_shape: list[int]
    q_len: int | None
    k_len: int | None
    square: bool
    shared: bool
    masks_nothing: bool
    fill: float | str | None
    dtype: str
    loc: Loc
    step: int


class RepeatBatchEvent(TypedDict):
    """The overfit-one-batch run starts repeating a loader's first batch. ``Probe.repeated_batch``."""

    ev: Literal["repeat_batch"]
    loader: int
    step: int
    fingerprint: str


class StopEvent(TypedDict):
    """The step budget was met. ``Probe._check_budget``."""

    ev: Literal["stop"]
    reason: str
    steps: int


class CrashEvent(TypedDict):
    """The user's script raised: the error and its traceback. ``convcheck.runtime.worker.run_entry``."""

    ev: Literal["crash"]
    error: str | None
    traceback: str
    step: int


class EndEvent(TypedDict):
    """The last event of a process: how it ended, steps and backwards. ``Probe.finish``."""

    ev: Literal["end"]
    status: str
    steps: int
    backwards: int


class EpochCapEvent(TypedDict):
    """A training loop's loader whose epochs are shortened (once per loader): to how many batches, of how many,
    and the loop's line. ``Probe.count_batch``."""

    ev: Literal["epoch_cap"]
    loader: int
    batches: int
    steps: int | None
    full_batches: int | None
    step: int
    loc: Loc


class IndexPick(TypedDict):
    """One side of a batch pairing: which tensor (a token), its rows, the index vector's size and base."""

    source: int
    rows: int
    n: int
    base: int
    permutation: bool
    distinct: bool
    head: list[int]
    loc: Loc


class BatchPairingEvent(TypedDict):
    """A backward whose model input and loss target were both drawn by an integer index vector: from which
    tensors, by which vectors. The ``provenance`` recorder."""

    ev: Literal["batch_pairing"]
    n: int
    step: int
    same_index: bool
    input: IndexPick
    target: IndexPick


class RecordersEvent(TypedDict):
    """The recorders installed in this process and the patches they made. ``Probe._install_recorders``."""

    ev: Literal["recorders"]
    names: list[str]
    patched: list[str]


class ProbeErrorEvent(TypedDict):
    """convcheck's own recording failed (``where``); the user's call ran unrecorded. ``Probe._probe_error``."""

    ev: Literal["probe_error"]
    traceback: str
    where: NotRequired[str]


class SelfSpawnEvent(TypedDict):
    """A script that spawns its own ranks was started N times by --nproc-per-node. ``_patch_distributed``."""

    ev: Literal["self_spawn"]
    loc: Loc
    nproc_per_node: int


class DeviceMapEvent(TypedDict):
    """The first use of each CUDA-to-CPU mapping (``library``: a library's call). ``CudaShim.record``."""

    ev: Literal["device_map"]
    what: str
    loc: Loc
    step: int
    library: NotRequired[bool]


class DeviceMapActiveEvent(TypedDict):
    """The CUDA-to-CPU mapping is installed (pretended CUDA or not). ``CudaShim.install``."""

    ev: Literal["device_map_active"]
    pretend_cuda: bool
    torch_cuda: bool


class DeviceUnmappableEvent(TypedDict):
    """A CUDA feature with no CPU equivalent was used. ``CudaShim`` (refuse)."""

    ev: Literal["device_unmappable"]
    what: str
    loc: Loc
    step: int


class AcceleratorQueryEvent(TypedDict):
    """The user's code asked whether a GPU is there and was told no. ``CudaShim._watch_availability``."""

    ev: Literal["accelerator_query"]
    what: str
    answer: bool
    loc: Loc


class StoredLabels(TypedDict):
    """A dataset's own labels, where it holds them whole: how many, classes, sum of squared class shares, label
    changes in stored order, the commonest ``[label, count]``."""

    n: int
    classes: int
    sum_sq: float
    changes: int
    counts: list[list[int]]


class BatchLabelsEvent(TypedDict):
    """The class labels of one of an epoch's first batches, summarized: how many distinct, the majority and its
    share, label changes from sample to sample, the first and last label, the commonest counts. The ``labels``
    recorder."""

    ev: Literal["batch_labels"]
    loader: int
    epoch: int
    batch: int
    #: Where in the batch the labels were: ``[1]``, ``['label']``.
    field: str
    n: int
    distinct: int
    majority: int
    share: float
    changes: int
    run: int
    first: int
    last: int
    sorted: bool
    #: ``[label, count]`` of the commonest labels, most common first.
    counts: list[list[int]]
    step: int
    #: On a loader's first batch, the dataset's own labels where it stores them whole.
    dataset: NotRequired[StoredLabels]


class DatasetPart(TypedDict):
    """One digested part of a dataset: where (``dataset.indices``), what (subset indices, a tensor, a list of
    names or values), its length, an order digest and an order-free digest, the first indices or names."""

    path: str
    kind: str
    n: int
    digest: str
    set_digest: str | None
    indices: NotRequired[list[int]]
    head: NotRequired[list[str]]
    #: The smallest hashes of the names (a bottom-k sketch of the set).
    sketch: NotRequired[list[str]]


class DatasetDigestEvent(TypedDict):
    """A DataLoader's dataset digested without reading a sample: its class, length and parts. The ``datasets``
    recorder."""

    ev: Literal["dataset_digest"]
    loader: int
    cls: str
    len: int | None
    parts: list[DatasetPart]


class InputSummary(TypedDict):
    """A tensor's dtype, shape and range."""

    dtype: str
    shape: list[int]
    min: float | None
    max: float | None


class LayerInputEvent(TypedDict):
    """The input of the first parameterized layer a model's forward called (sampled forwards): the layer, its
    weight's dtype, the input's statistics, whether its values are whole numbers, and the model's own input.
    The ``inputs`` recorder."""

    ev: Literal["layer_input"]
    n: int
    step: int
    training: bool
    layer: str
    cls: str
    weight_dtype: str | None
    dtype: str
    shape: list[int]
    min: float | None
    max: float | None
    mean: float | None
    std: float | None
    integer: bool | None
    root: InputSummary | None
    loc: Loc


#: Event kind -> its TypedDict. Read it freely; add to it only through ``register_event_schema``.
SCHEMAS: dict[str, type] = {
    "process": ProcessEvent, "step": StepEvent, "backward": BackwardEvent, "model": ModelEvent,
    "optimizer": OptimizerEvent, "zero_grad": ZeroGradEvent, "loader": LoaderEvent, "loader_epoch": LoaderEpochEvent,
    "sampler": SamplerEvent, "sampler_iter": SamplerIterEvent, "set_epoch": SetEpochEvent, "seed": SeedEvent,
    "save": SaveEvent, "load": LoadEvent, "load_state_dict": LoadStateDictEvent, "scaler": ScalerEvent,
    "scaler_passthrough": ScalerPassthroughEvent, "autocast": AutocastEvent, "clip": ClipEvent,
    "sched_step": SchedStepEvent, "gradflow": GradflowEvent, "train_mode": TrainModeEvent, "module_flags": ModuleFlagsEvent,
    "warning": WarningEvent, "nonfinite": NonfiniteEvent, "histograms": HistogramsEvent, "final": FinalEvent,
    "dist_init": DistInitEvent, "ddp_init": DdpInitEvent, "ddp_module_moved": DdpModuleMovedEvent,
    "ddp_sync": DdpSyncEvent, "amp_device": AmpDeviceEvent,
    "unregistered_module": UnregisteredModuleEvent, "activation_checkpoint": ActivationCheckpointEvent,
    "attention_mask": AttentionMaskEvent, "repeat_batch": RepeatBatchEvent, "stop": StopEvent,
    "crash": CrashEvent, "end": EndEvent, "probe_error": ProbeErrorEvent, "recorders": RecordersEvent, "epoch_cap": EpochCapEvent, "batch_pairing": BatchPairingEvent, "self_spawn": SelfSpawnEvent,
    "device_map": DeviceMapEvent, "device_map_active": DeviceMapActiveEvent,
    "device_unmappable": DeviceUnmappableEvent, "accelerator_query": AcceleratorQueryEvent,
    "batch_labels": BatchLabelsEvent, "dataset_digest": DatasetDigestEvent, "layer_input": LayerInputEvent,
}
_adapters: dict[str, TypeAdapter[Any]] = {}


def register_event_schema(kind: str, schema: type) -> None:
    """Declare the fields of a kind a plug-in writes, so that damaged events of that kind are left out.

    Registering the same schema again does nothing; a kind already declared with another schema is refused.
    """
    if not is_typeddict(schema):
        raise TypeError(f"the schema of event kind {kind!r} must be a TypedDict, not {schema!r}")
    known = SCHEMAS.get(kind)
    if known is not None and known is not schema:
        raise ValueError(f"event kind {kind!r} is already declared by {known.__module__}.{known.__qualname__}")
    SCHEMAS[kind] = schema
    _adapters.pop(kind, None)


def _adapter(kind: str) -> TypeAdapter[Any] | None:
    adapter = _adapters.get(kind)
    if adapter is None:
        schema = SCHEMAS.get(kind)
        if schema is None:
            return None
        from pydantic import TypeAdapter

        try:
            adapter = _adapters[kind] = TypeAdapter(schema)
        except Exception:
            # A plug-in's schema pydantic cannot use: its events are read unvalidated, never fatal.
            SCHEMAS.pop(kind, None)
            return None
    return adapter


def validate_event(event: dict[str, Any]) -> str | None:
    """Why an event breaks its kind's schema (the first field at fault), or None when it fits or has no schema."""
    kind = event.get("ev")
    if not isinstance(kind, str):
        return None
    adapter = _adapter(kind)
    if adapter is None:
        return None
    try:
        # Strict: a string is never taken for a number (checks read the event as written, not as
        # pydantic would convert it); an int is still a float.
        adapter.validate_python(event, strict=True)
    except Exception as exc:
        from pydantic import ValidationError

        if not isinstance(exc, ValidationError):
            raise
        return _describe_error(kind, SCHEMAS[kind], event, exc.errors(include_url=False))
    return None


def _describe_error(kind: str, schema: type, event: dict[str, Any], errors: list[Any]) -> str:
    """One clause about the first field at fault; a wrong value is told before a missing field."""
    wrong = [e for e in errors if e["loc"] and not (len(e["loc"]) == 1 and e["type"] == "missing")]
    error = (wrong or errors)[0]
    if not error["loc"]:
        return f"an event of kind {kind!r} that does not fit its schema ({error['msg']})"
    name = str(error["loc"][0])
    if error["type"] == "missing" and len(error["loc"]) == 1:
        return f"an event of kind {kind!r} without its field {name!r}"
    declared = _declared(schema)
    expected = _type_name(declared[name], top=True) if name in declared else "what its schema declares"
    value = event.get(name)
    path, item = _walk(value, error["loc"][1:], error["type"] == "missing")
    if not path and error["type"].endswith("_type"):
        return f"field {name!r} is {_json_name(value)}, not {expected}"
    if error["type"] == "missing":
        said = f"{path} is missing"
    elif error["type"].endswith("_type"):
        said = f"{path} is {_json_name(item)}"
    else:
        shown = repr(item)
        said = (f"{path} is " if path else "") + (shown if len(shown) <= 60 else shown[:57] + "...")
    return f"field {name!r} is not {expected}: {said}"


def _declared(schema: type) -> dict[str, Any]:
    """A schema's fields and their declared types (empty when a plug-in's annotations cannot be resolved)."""
    try:
        return typing.get_type_hints(schema, include_extras=True)
    except Exception:  # noqa: BLE001 - only the wording of a message depends on it
        return {}


def _walk(value: Any, loc: tuple[Any, ...], missing: bool) -> tuple[str, Any]:
    """Follow an error's location into a value; the parts that name a union's member are skipped."""
    path = ""
    for number, part in enumerate(loc, 1):
        if isinstance(value, dict) and part in value:
            value = value[part]
            path += f"[{part!r}]"
        elif isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
            value = value[part]
            path += f"[{part}]"
        elif missing and number == len(loc):
            path += f"[{part!r}]"
            value = None
    return path, value


def _json_name(value: Any) -> str:
    return type(value).__name__ if value is not None else "null"


def _type_name(annotation: Any, top: bool = False) -> str:
    """A declared type as a reader says it: ``int or None`` at the top, ``list[str | int]`` inside."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (NotRequired, Required):
        return _type_name(args[0], top)
    if origin is Annotated:
        label = next((m for m in annotation.__metadata__ if isinstance(m, _Label)), None)
        return label.text if label else _type_name(args[0], top)
    if origin is Union or type(annotation).__name__ == "UnionType":
        names = [_type_name(a) for a in args]
        return (" or " if top else " | ").join(names)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if annotation is type(None) or annotation is None:
        return "None"
    if annotation is Any:
        return "anything"
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation))
