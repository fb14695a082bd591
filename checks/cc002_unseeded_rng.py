"""CC002 unseeded-rng: a run that cannot be repeated, verified by running the script twice, with the RNGs to blame."""

from __future__ import annotations

import ast
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from convcheck.findings import Finding, Severity
from convcheck.registry import Check, CheckOptionError, RunVariant
from convcheck.runtime.trace import ProcessTrace, RunTrace
from convcheck.static.context import StaticContext, dotted_name
from convcheck.static.flow import import_aliases, last_segment, resolved_call, user_location

#: Steps compared between the two runs (the repeat runs at most this many).
COMPARED_STEPS = 5
_REL_TOL = 1e-6

_SEED_CALLS = frozenset({
    "manual_seed", "manual_seed_all", "seed", "seed_everything", "set_seed", "set_random_seed", "fix_seed",
    "setup_seed", "init_seeds", "seed_all", "fix_seeds", "set_seeds", "set_all_seeds", "seed_torch",
})
_RNG_LABELS = {"python": "Python's `random`", "numpy": "NumPy's global RNG (`np.random`)", "torch": "torch's RNG",
               "cuda": "the CUDA RNG"}
_SEED_HINT = {"python": "random.seed(seed)", "numpy": "np.random.seed(seed)", "torch": "torch.manual_seed(seed)",
              "cuda": "torch.cuda.manual_seed_all(seed)"}
_TORCH_DRAWS = frozenset({"rand", "randn", "randint", "randperm", "normal", "bernoulli", "multinomial", "rand_like",
                          "randn_like", "randint_like", "poisson"})
_MODEL_FACTORIES = frozenset({"create_model", "from_pretrained", "resnet18", "resnet34", "resnet50", "vit_b_16"})

_FIX = (
    "Seed every RNG the script uses once, at the very start, before the model and the data are built: "
    "`random.seed(s)`, `np.random.seed(s)`, `torch.manual_seed(s)` (also seeds CUDA). For DataLoader workers pass "
    "`generator=torch.Generator().manual_seed(s)` and a `worker_init_fn` that reseeds any RNG the dataset owns "
    "from `torch.initial_seed()`."
)
_FIX_BENCHMARK = "Set `torch.backends.cudnn.benchmark = False` when runs must repeat exactly."
_FIX_WORKERS = (
    "Do not keep a RandomState/Generator in the Dataset object, or reseed it per worker: "
    "`worker_init_fn=lambda i: torch.utils.data.get_worker_info().dataset.rng.seed(torch.initial_seed() % 2**32)`; "
    "or draw from torch's RNG (or NumPy's global RNG), which PyTorch seeds differently in every worker."
)


class UnseededRng(Check):
    """## What it does
    Runs the script a second time for the same first steps and compares the two runs: the loss of every
    backward pass and a digest of the parameters after each step. If they differ, the run is not
    reproducible and the finding names why: which RNGs (Python `random`, NumPy's global RNG, torch, CUDA)
    were drawn from without being seeded, seeds set only after the model or the data were built, a
    `RandomState`/`Generator` owned by a Dataset that every DataLoader worker copies, DataLoader workers with
    no `generator`, `cudnn.benchmark` left on while determinism is requested. From the source it finds
    scripts with no seeding call and seeds set after the model or data were built. Several processes
    updating one model in shared memory without locks (Hogwild) differ from run to run by design: that is
    said at info, and seeding is not judged from such a run.

    ## Why is this bad?
    Without seeds every run starts from different weights and sees the data in a different order: a
    change that seems to help (or hurt) may be noise, a divergence cannot be reproduced to debug it, and two
    people get different numbers from the same code. A random generator stored on a Dataset is copied
    into each DataLoader worker: all workers draw the same "random" augmentations, epoch after epoch.

    ## Example
    ```python
    model = Net()            # weights drawn from torch's RNG
    torch.manual_seed(0)     # too late: the weights were already random
    ```

    ## Use instead
    ```python
    torch.manual_seed(0)
    model = Net()
    ```

    ## Fix
    Seed Python, NumPy and torch once at the start of the script, before building anything; give DataLoaders
    a seeded `generator`, and reseed dataset-owned RNGs in a `worker_init_fn`. A script whose two runs match
    is not reported.

    The repeat compares the first 5 steps (`repeat-steps = N` under `[tool.convcheck.checks.CC002]`; 0 makes
    no repeat, and what the run saw of its RNGs is then a warning at most). It runs beside the main run when
    the machine has a core for each of its processes. When the main run's processes already fill the cores,
    each repeated step would be training added to the verdict, so the repeat is made after the main run and
    only when there is a reason to doubt: an RNG drawn from before it was seeded, a seed that looks like the
    clock or none given (`random.seed()`), a script that seeds too late or not at all; it is then stopped
    as soon as it differs from the main run. `repeat-always = true` makes it anyway. The JSON report's
    `run.extra_runs` says whether the repeat was made, when, and for how many steps.

    ## Known limits
    It compares the first steps of two runs on this machine: nondeterminism that only a GPU shows (cuDNN
    kernel choice, atomics in scatter/index_add) cannot appear on the CPU, and an unseeded RNG first used
    after the compared steps is not seen. When the cores are full and the run gave no reason to doubt, seeds
    taken from the clock in a way that does not look like it, the order of sets and unseeded local generators
    (`np.random.default_rng()`) are not compared. Several processes updating shared weights without locks
    (Hogwild) differ by design and are not judged. The line named as an RNG's first draw comes from the source and can
    miss draws made inside libraries.
    """

    code = "CC002"
    name = "unseeded-rng"
    severity = Severity.ERROR
    summary = "Two runs of the script differ: RNGs drawn from without seeding, seeds set too late, worker RNG copies."
    needs = frozenset({"seeding"})

    _pending: list[Finding]

    def extra_runs(self, nproc_per_node: int | None, steps: int, ctx: StaticContext) -> dict[str, RunVariant]:
        compared = repeat_steps(self.options.get("repeat-steps", COMPARED_STEPS))
        if compared == 0:
            return {}
        always = self.options.get("repeat-always", False)
        if not isinstance(always, bool):
            raise CheckOptionError(f"repeat-always = {always!r}: give true or false.")
        # The repeat verifies what the source and the main run suggest. Where it would take cores from the
        # main run, it is made only when the main run gave a reason to doubt its seeding.
        return {"repeat": RunVariant(nproc_per_node=nproc_per_node, steps=min(steps, compared),
                                     needed=None if always else lambda run: doubtful(run, ctx),
                                     left_out=_LEFT_OUT, settled=differ)}

    # -- static ------------------------------------------------------------------------------

    def check_static(self, ctx: StaticContext) -> Iterable[Finding]:
        found = list(self._static(ctx))
        return self.defer_static(found)

    def _static(self, ctx: StaticContext) -> Iterable[Finding]:
        benchmark = static_benchmark_with_determinism(ctx)
        if benchmark is not None:
            yield self.finding(
                "`cudnn.benchmark = True` is set while determinism is requested (`cudnn.deterministic = True` or "
                "`torch.use_deterministic_algorithms(True)`): benchmark mode picks convolution kernels by timing, so "
                "GPU runs can still differ.",
                fix=_FIX_BENCHMARK, location=(ctx.display_path, benchmark), severity=Severity.WARNING,
                source="static", evidence={"kind": "benchmark", "cudnn_benchmark": True},
            )
        facts = static_seeding(ctx)
        if facts.late_seed is not None:
            seed_line, build_line = facts.late_seed
            yield self.finding(
                f"The seed is set on line {seed_line}, after line {build_line} already drew random numbers "
                "(model weights or data): those are different in every run.",
                fix=_FIX, location=(ctx.display_path, seed_line), severity=Severity.WARNING, source="static",
                evidence={"seed_line": seed_line, "first_draw_line": build_line, "kind": "late"},
            )
        elif not facts.seed_lines and facts.first_draw is not None:
            yield self.finding(
                "No RNG is seeded anywhere in this script, and it draws random numbers (weights, data, "
                "shuffling): every run differs.",
                # Many scripts leave seeding out on purpose: without a second run to show it matters, advice.
                fix=_FIX, location=(ctx.display_path, facts.first_draw), severity=Severity.INFO, source="static",
                evidence={"seed_calls": 0, "kind": "missing"},
            )

    # -- runtime -----------------------------------------------------------------------------

    def check_runtime(self, run: RunTrace, ctx: StaticContext) -> Iterable[Finding]:
        pending = list(getattr(self, "_pending", []))
        self._pending = []
        trainers = run.trainers
        if not trainers:
            return pending
        findings = list(self._worker_copies(trainers[0], ctx))
        hogwild = _hogwild_finding(self, len(trainers)) if _hogwild(trainers) else None
        if hogwild is not None:
            # Lock-free updates of shared weights from several processes differ from run to run by design:
            # comparing two runs says nothing about seeding.
            return [*findings, *[p for p in pending if p.evidence.get("kind") != "missing"], hogwild]
        repeat = run.variants.get("repeat")
        other = repeat.trainers if repeat is not None else []
        if not other:
            # Nothing to compare with (traces recorded elsewhere): what the run saw is a warning at most.
            return [*findings, *pending, *self._unverified(trainers[0], ctx)]
        for mine in trainers:
            theirs = _same_rank(mine, other)
            if theirs is None:
                continue
            difference = compare(mine, theirs)
            if difference is None:
                continue
            finding = self._differs(mine, difference, ctx, pending, theirs)
            if "dataset-rng" in finding.evidence["causes"]:
                # The error already names the dataset's RNG: no second finding for it.
                findings = [f for f in findings if "rngs" not in f.evidence]
            return [finding, *findings, *_benchmark(pending)]
        # The two runs matched: the run is reproducible whatever the source suggested (cudnn aside: a CPU
        # run cannot show what benchmark mode does on a GPU).
        return [*findings, *_benchmark(pending)]

    def _differs(self, proc: ProcessTrace, difference: dict[str, Any], ctx: StaticContext,
                 pending: list[Finding], other: ProcessTrace | None = None) -> Finding:
        causes, where = causes_of(proc, ctx)
        if other is not None:
            changing = _changing_seeds(proc, other, ctx)
            if changing:
                # A seed that changes between runs explains its RNG's draws before it too (picking the seed
                # with `random.randint` draws from `random` itself): no second, "built before" cause for it.
                changed = {c["kind"].split(":", 1)[1] for c in changing}
                causes = [*changing, *(c for c in causes if not (c["kind"].startswith("late-seed:")
                                                                and c.get("rng") in changed))]
                where = user_location(changing[0]["loc"], ctx) or where
        seeding = [p for p in pending if p.evidence.get("kind") in ("late", "missing")]
        static = seeding[0] if seeding else None
        location: Any = where or (static.location if static is not None else None)
        source = "runtime"
        if static is not None and static.location is not None and (
            where is None or (static.location.path, static.location.line) == tuple(where)
        ):
            source = "static+runtime"
        rank = f" on rank {proc.rank}" if proc.rank is not None else ""
        causes = _dedupe(causes)
        listed = [c["text"] for c in causes[:_MAX_CAUSES]]
        if len(causes) > _MAX_CAUSES:
            listed.append(f"and {len(causes) - _MAX_CAUSES} more (see the evidence)")
        message = (
            f"Two runs of this script differ{rank}: {difference['what']}. "
            + ("Cause: " + "; ".join(listed) + "." if causes else
               "Every global RNG was seeded before use: look for other sources (unseeded local generators such as "
               "`np.random.default_rng()`, time, hash-randomized set order, thread timing).")
        )
        evidence = {**difference, "causes": [c["kind"] for c in causes], "details": causes[:_MAX_DETAILS]}
        headline = "losses" if "losses" in evidence else "what"
        return self.finding(message, fix=_FIX, location=location, evidence=evidence, source=source, headline=headline)

    def _unverified(self, proc: ProcessTrace, ctx: StaticContext) -> Iterable[Finding]:
        final = proc.first("final") or {}
        unseeded = [r for r in final.get("rng_unseeded_draws", []) if r in _RNG_LABELS]
        if unseeded:
            labels = ", ".join(_RNG_LABELS[r] for r in unseeded)
            yield self.finding(
                f"{labels} {'was' if len(unseeded) == 1 else 'were'} drawn from before any seeding (not verified by "
                "a second run).",
                fix=_FIX, severity=Severity.WARNING, evidence={"unseeded": unseeded},
            )

    def _worker_copies(self, proc: ProcessTrace, ctx: StaticContext) -> Iterable[Finding]:
        """A Dataset-owned RNG copied into several DataLoader workers: the same draws in every worker."""
        for loader in proc.of("loader"):
            owned = loader.get("dataset_rngs") or []
            if not owned or (loader.get("num_workers") or 0) < 2 or loader.get("worker_init_fn"):
                continue
            names = ", ".join(f"`{loader.get('dataset')}.{r['attr']}` ({r['cls']})" for r in owned)
            yield self.finding(
                f"{names} is owned by the dataset, and each of the {loader.get('num_workers')} DataLoader workers "
                "gets an identical copy of it: every worker draws the same random numbers (the same augmentations), "
                "and again every epoch.",
                fix=_FIX_WORKERS, location=user_location(loader.get("loc"), ctx), severity=Severity.WARNING,
                evidence={"dataset": loader.get("dataset"), "rngs": owned, "num_workers": loader.get("num_workers"),
                          "worker_init_fn": False, "persistent_workers": loader.get("persistent_workers")},
            )


# -- comparing two runs -------------------------------------------------------------------------


def repeat_steps(option: Any) -> int:
    """How many steps the repeat run compares, from the ``repeat-steps`` option (0: no repeat)."""
    if isinstance(option, bool) or not isinstance(option, int) or option < 0:
        raise CheckOptionError(f"repeat-steps = {option!r}: give a whole number of steps (0 makes no repeat run).")
    return option


_LEFT_OUT = (
    "nothing in the run or the source casts doubt on its seeding; seeds from changing values, set order and "
    "unseeded local generators were not compared (`repeat-always = true` under `[tool.convcheck.checks.CC002]` "
    "makes the repeat)"
)


def doubtful(run: RunTrace, ctx: StaticContext) -> bool:
    """Whether the main run or the source gives a reason to think two runs differ (the repeat then proves it)."""
    trainers = run.trainers
    if _hogwild(trainers):
        return False  # differs by design; seeding is not judged
    facts = static_seeding(ctx)
    if facts.late_seed is not None or (not facts.seed_lines and facts.first_draw is not None):
        return True
    for proc in trainers:
        # Benchmark mode picks GPU kernels; a CPU repeat cannot show what it does.
        if any(c["kind"] != "cudnn-benchmark" for c in causes_of(proc, ctx)[0]):
            return True
        # A seed taken from the clock, or none at all (`random.seed()` draws one from the OS).
        if any(_like_the_clock(e.get("value")) or e.get("value") is None
               for e in proc.of("seed") if not e.get("internal")):
            return True
    return False


def differ(main: RunTrace, repeat: RunTrace) -> bool:
    """Whether the repeat, as far as it got, already differs from the main run (more steps cannot undo it)."""
    others = repeat.trainers
    for mine in main.trainers:
        theirs = _same_rank(mine, others)
        if theirs is not None and compare(mine, theirs) is not None:
            return True
    return False


def _like_the_clock(value: Any) -> bool:
    """A seed within a day of now in seconds, milliseconds, microseconds or nanoseconds since the epoch."""
    import time

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    now = time.time()
    return any(abs(value / scale - now) < 86_400 for scale in (1, 1e3, 1e6, 1e9))


_FIX_HOGWILD = (
    "Nothing to fix if the nondeterminism is accepted. To check the seeding, run the training function in one "
    "process (e.g. `--num-processes 1`): a seeded single process must repeat exactly."
)
_MAX_CAUSES = 4
_MAX_DETAILS = 20


def _dedupe(causes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One cause per kind and line: a seed called per sample repeats the same cause thousands of times."""
    kept: dict[tuple[Any, ...], dict[str, Any]] = {}
    for cause in causes:
        key = (cause["kind"], tuple(cause["loc"]) if cause.get("loc") else cause["text"])
        if key in kept:
            kept[key]["repeats"] = kept[key].get("repeats", 1) + 1
        else:
            kept[key] = dict(cause)
    for cause in kept.values():
        if cause.get("repeats"):
            cause["text"] += f" ({cause['repeats']} times)"
    return list(kept.values())


def _hogwild_finding(check: Check, count: int) -> Finding:
    return check.finding(
        f"{count} processes update one model in shared memory without locks (Hogwild): the order of their "
        "updates changes from run to run, so two runs differ whatever the seeds. Seeding was not compared; "
        "run with one training process to check it.",
        fix=_FIX_HOGWILD, severity=Severity.INFO, evidence={"kind": "hogwild", "processes": count},
    )


def _benchmark(pending: list[Finding]) -> list[Finding]:
    return [p for p in pending if p.evidence.get("kind") == "benchmark"]


def _changing_seeds(a: ProcessTrace, b: ProcessTrace, ctx: StaticContext) -> list[dict[str, Any]]:
    """Seeding calls made with a different value in each run (a seed from the clock, the pid, os.urandom)."""
    seeds_a = [e for e in a.of("seed") if not e.get("internal")]
    seeds_b = [e for e in b.of("seed") if not e.get("internal")]
    found = []
    for x, y in zip(seeds_a, seeds_b):
        if x.get("rng") == y.get("rng") and x.get("value") != y.get("value"):
            loc = user_location(x.get("loc"), ctx)
            at = f" on line {loc[1]}" if loc else ""
            found.append({"kind": f"changing-seed:{x.get('rng')}", "loc": x.get("loc"),
                          "text": f"{_RNG_LABELS.get(x.get('rng'), x.get('rng'))} is seeded{at} with a value that "
                                  f"changes from run to run ({' and '.join(_apart(x.get('value'), y.get('value')))})"})
    return found


def _same_rank(proc: ProcessTrace, others: list[ProcessTrace]) -> ProcessTrace | None:
    return next((o for o in others if o.rank == proc.rank), None)


def compare(a: ProcessTrace, b: ProcessTrace) -> dict[str, Any] | None:
    """How two runs of the same script differ over their common steps; None when they match."""
    steps = min(a.steps, b.steps)
    if steps == 0:
        return None
    losses_a = [e.get("loss") for e in a.of("backward") if (e.get("step") or 0) < steps]
    losses_b = [e.get("loss") for e in b.of("backward") if (e.get("step") or 0) < steps]
    for index, (x, y) in enumerate(zip(losses_a, losses_b)):
        if not _same(x, y):
            one, other = _apart(x, y)
            return {"what": f"the loss of backward pass {index + 1} was {one} in one run and {other} in the other",
                    "backward": index + 1, "losses": [x, y], "steps_compared": steps}
    norms_a = {e.get("n"): e.get("param_norms") for e in a.of("step") if e.get("param_norms") is not None}
    norms_b = {e.get("n"): e.get("param_norms") for e in b.of("step") if e.get("param_norms") is not None}
    for n in sorted(set(norms_a) & set(norms_b)):
        if n > steps:
            continue
        pa, pb = norms_a[n], norms_b[n]
        if len(pa) != len(pb) or not all(_same(x, y) for x, y in zip(pa, pb)):
            return {"what": f"the parameters after step {n} differ (norms {' and '.join(_apart(sum(pa), sum(pb)))})",
                    "step": n, "steps_compared": steps}
    final_a, final_b = a.first("final") or {}, b.first("final") or {}
    sums = final_a.get("param_sum"), final_b.get("param_sum")
    # A digest one run lacks, or took over other parameters (an optimizer already collected), is no evidence.
    same_digest = all(final_a.get(key) == final_b.get(key) for key in ("steps", "params_summed"))
    if None not in sums and same_digest and not _same(*sums):
        return {"what": f"the parameters after step {final_a.get('steps')} differ (sums {' and '.join(_apart(*sums))})",
                "steps_compared": steps}
    return None


def causes_of(proc: ProcessTrace, ctx: StaticContext) -> tuple[list[dict[str, Any]], tuple[str, int | None] | None]:
    """What made the runs differ, most likely first, and the line to point at."""
    causes: list[dict[str, Any]] = []
    where = None
    final = proc.first("final") or {}
    seeds = [e for e in proc.of("seed") if not e.get("internal")]
    # Late: drawn from before its first seeding. Reseeding later (per epoch, per sample) after draws is not.
    first_seeds = {}
    for event in seeds:
        first_seeds.setdefault(event.get("rng"), event)
    late = [e for e in first_seeds.values() if e.get("drawn_before")]
    for event in late:
        rng = event.get("rng", "torch")
        loc = user_location(event.get("loc"), ctx)
        at = f" (line {loc[1]})" if loc else ""
        causes.append({"kind": f"late-seed:{rng}", "rng": rng, "loc": event.get("loc"),
                       "text": f"{_RNG_LABELS.get(rng, rng)} was seeded{at} only after it had been drawn from "
                               "(model weights or data were built before the seed)"})
        where = where or loc
    seeded = set(final.get("rng_seeded") or [])
    seeded.update(e.get("rng") for e in seeds)
    late_rngs = {e.get("rng") for e in late}
    unseeded = final.get("rng_unseeded_draws") or []
    for rng in sorted(unseeded, key=lambda r: (first_draw_of(ctx, r) or 1 << 30, r)):
        if rng in late_rngs:
            continue
        if rng not in seeded:
            line = first_draw_of(ctx, rng)
            # The line is the source's first draw: the run records that the RNG was drawn from, not where.
            at = f"; the script's first draw from it is on line {line}" if line else ""
            causes.append({"kind": f"unseeded:{rng}", "rng": rng,
                           "text": f"{_RNG_LABELS.get(rng, rng)} was drawn from and never seeded "
                                   f"(add `{_SEED_HINT.get(rng, 'a seed')}`{at})"})
            if line and where is None:
                where = (ctx.display_path, line)
    torch_seeded = "torch" in seeded
    for loader in proc.of("loader"):
        owned = loader.get("dataset_rngs") or []
        workers = loader.get("num_workers") or 0
        if owned and workers:
            names = ", ".join(f"{loader.get('dataset')}.{r['attr']} ({r['cls']})" for r in owned)
            causes.append({"kind": "dataset-rng", "text": f"the dataset owns {names}, which is not seeded by PyTorch "
                                                          f"in its {workers} DataLoader workers"})
            where = where or user_location(loader.get("loc"), ctx)
        if workers and not torch_seeded and not loader.get("generator") and not loader.get("worker_init_fn"):
            causes.append({"kind": "worker-seeds", "text": f"the {workers} DataLoader workers are seeded from the "
                                                           "unseeded torch RNG (no `generator=` or `worker_init_fn`)"})
    if final.get("cudnn_benchmark") and (final.get("cudnn_deterministic") or final.get("deterministic_algorithms")):
        causes.append({"kind": "cudnn-benchmark", "text": "cudnn.benchmark is on while determinism is requested: "
                                                          "it picks kernels by timing"})
    return causes, where


def _same(x: Any, y: Any) -> bool:
    if x is None or y is None:
        return x is y
    if isinstance(x, (int, float)) and isinstance(y, (int, float)):
        if math.isnan(x) and math.isnan(y):
            return True
        return math.isclose(x, y, rel_tol=_REL_TOL, abs_tol=1e-12)
    return x == y


def _apart(x: Any, y: Any) -> tuple[str, str]:
    """Two values written with as many digits as it takes to tell them apart (6 at least, 17 at most)."""
    if isinstance(x, (int, float)) and isinstance(y, (int, float)):
        for digits in range(6, 18):
            a, b = f"{x:.{digits}g}", f"{y:.{digits}g}"
            if a != b:
                return a, b
    return _g(x), _g(y)


def _g(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, (int, float)) else str(value)


# -- static analysis ----------------------------------------------------------------------------


@dataclass
class SeedingFacts:
    seed_lines: list[int]
    first_draw: int | None
    late_seed: tuple[int, int] | None


def static_seeding(ctx: StaticContext) -> SeedingFacts:
    """Seeding calls, the first line that draws random numbers, and a seed that comes after a draw in one scope."""
    aliases = import_aliases(ctx.tree)
    modules = _module_classes(ctx.tree, aliases)
    seed_lines: list[int] = []
    draws: list[int] = []
    late: tuple[int, int] | None = None
    for scope in [ctx.tree, *[n for n in ast.walk(ctx.tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]]:
        scope_seeds, scope_draws = [], []
        for call in _calls_in_scope(scope):
            name = resolved_call(call, aliases) or ""
            if _is_seed(name):
                scope_seeds.append(call.lineno)
            elif _draws(name, modules):
                scope_draws.append(call.lineno)
        seed_lines += scope_seeds
        draws += scope_draws
        if scope_seeds and scope_draws and late is None:
            first_seed = min(scope_seeds)
            earlier = [d for d in scope_draws if d < first_seed]
            if earlier:
                late = (first_seed, min(earlier))
    return SeedingFacts(sorted(seed_lines), min(draws) if draws else None, late)


def static_benchmark_with_determinism(ctx: StaticContext) -> int | None:
    """The line setting ``cudnn.benchmark = True`` in a script that also asks for deterministic algorithms."""
    benchmark = None
    deterministic = False
    for node in ast.walk(ctx.tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and node.value.value is True:
            for target in node.targets:
                name = dotted_name(target) or ""
                if name.endswith("cudnn.benchmark"):
                    benchmark = node.lineno if benchmark is None else min(benchmark, node.lineno)
                elif name.endswith("cudnn.deterministic"):
                    deterministic = True
        elif isinstance(node, ast.Call) and last_segment(dotted_name(node.func)) == "use_deterministic_algorithms":
            arg = node.args[0] if node.args else None
            deterministic = deterministic or (isinstance(arg, ast.Constant) and arg.value is True)
    return benchmark if deterministic else None


def first_draw_of(ctx: StaticContext, rng: str) -> int | None:
    """The first line of the script that draws from this global RNG (``random.*``, ``np.random.*``, torch)."""
    aliases = import_aliases(ctx.tree)
    modules = _module_classes(ctx.tree, aliases)
    lines = []
    for call in ctx.calls():
        name = resolved_call(call, aliases) or ""
        if not _draws(name, modules):
            continue
        kind = "python" if name.startswith("random.") else "numpy" if name.startswith("numpy.random.") else "torch"
        if kind == rng or (rng == "cuda" and kind == "torch"):
            lines.append(call.lineno)
    return min(lines) if lines else None


def _calls_in_scope(scope: ast.AST) -> list[ast.Call]:
    """Calls in a function or module body, not in the functions and classes it defines."""
    found = []
    todo = list(ast.iter_child_nodes(scope))
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Call):
            found.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return found


def _is_seed(name: str) -> bool:
    last = last_segment(name)
    if last not in _SEED_CALLS:
        return False
    if last == "seed":
        return name in ("random.seed", "numpy.random.seed") or name.endswith(("random.seed",))
    return True


def _draws(name: str, modules: set[str]) -> bool:
    """Whether a call draws from a global RNG: torch.rand*, np.random.*, random.*, building an nn layer or model."""
    last = last_segment(name)
    if name.startswith("torch.") and last in _TORCH_DRAWS and name.count(".") == 1:
        return True
    if name.startswith("numpy.random.") and last not in ("seed", "default_rng", "RandomState", "Generator",
                                                         "get_state", "set_state"):
        return True
    if name.startswith("random.") and last not in ("seed", "Random", "getstate", "setstate"):
        return True
    if name.startswith("torch.nn.") and last[:1].isupper() and last not in ("Module", "ModuleList", "ModuleDict",
                                                                            "Sequential", "ReLU", "Identity"):
        return name.split(".")[2] not in ("functional", "utils", "parallel", "init") if name.count(".") >= 2 else False
    return last in modules or last in _MODEL_FACTORIES


def _module_classes(tree: ast.AST, aliases: dict[str, str]) -> set[str]:
    """Classes defined in the script that subclass an nn.Module (building one draws initial weights)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                full = (dotted_name(base) or "")
                resolved = aliases.get(full.split(".")[0], full.split(".")[0]) + full[len(full.split(".")[0]):]
                if last_segment(resolved) == "Module" or resolved.startswith("torch.nn."):
                    found.add(node.name)
    return found


def _hogwild(trainers: list[ProcessTrace]) -> bool:
    """Several processes, outside any process group, train parameters held in shared memory."""
    shared = [p for p in trainers if any(m.get("shared_memory") for m in p.of("model"))]
    return len(shared) >= 2 and not any(p.first("dist_init") for p in shared)
