"""One sentence that proves a finding, written from its evidence for the people who read the text report.

The JSON, SARIF and JUnit reports keep the evidence as the checks recorded it; a person wants the
number that matters in words ("same sample order in epochs 1–5 on rank 0"), not a key=value dump.
Each phrasing reads the keys it knows and gives way to the next when they are missing; a check
that records something new still gets a plain sentence from the generic fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from convcheck.findings import Finding

Evidence = dict[str, Any]


def proof(finding: Finding) -> str:
    """The finding's evidence as one sentence ('' when it recorded none)."""
    evidence = finding.evidence
    if not evidence:
        return ""
    for phrase in _PHRASES:
        try:
            sentence = phrase(evidence)
        except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError):
            sentence = None
        if sentence:
            return _sentence(sentence)
    return _sentence(_generic(finding))


# -- numbers and lists in words ------------------------------------------------------------------


def _num(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value)}"
    return f"{value:.4g}"


def _names(values: list[Any], limit: int = 3) -> str:
    shown = ", ".join(f"`{v}`" for v in values[:limit])
    more = len(values) - limit
    return shown + (f" and {more} more" if more > 0 else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith((".", "?", "!", "…")) else ".")


# -- phrasings, most specific first ----------------------------------------------------------------


def _same_order(e: Evidence) -> str | None:
    n = e["epochs_observed"]
    epochs = e.get("sampler_epoch_each_time") or []
    stayed = f" (the sampler's epoch stayed {epochs[0]})" if epochs and len(set(epochs)) == 1 else ""
    return f"same sample order in epochs 1–{n} on rank {e.get('rank', 0)}{stayed}"


def _ranks_share(e: Evidence) -> str | None:
    ranks, shared, per_rank = e["ranks"], e["shared_indices"], e["indices_per_rank"]
    return (f"ranks {ranks[0]} and {ranks[1]} drew {shared} of their {per_rank[0]} samples in common in epoch "
            f"{e.get('loader_epoch', 1)}")


def _no_set_epoch(e: Evidence) -> str | None:
    if e["set_epoch_calls"] != 0:
        return None
    return f"no `set_epoch` call anywhere in the script (sampler built at {e['sampler_built_at']})"


def _lr_by_world_size(e: Evidence) -> str | None:
    lrs, batches = e["lr_by_world_size"], e.get("global_batch") or {}
    (one, lr_one), (many, lr_many) = list(lrs.items())[:2]
    grew = ""
    if isinstance(batches, dict) and len(batches) == 2:
        (_, b_one), (_, b_many) = list(batches.items())
        grew = f" while the global batch went from {b_one} to {b_many}"
    if lr_one == lr_many:
        return f"the same lr {_num(lr_one[0])} with {one} process and with {many} processes{grew}"
    return f"an lr of {_num(lr_one[0])} with {one} process and {_num(lr_many[0])} with {many} processes{grew}"


def _lr_observed(e: Evidence) -> str | None:
    batch = f" and a global batch of {e['global_batch']}" if e.get("global_batch") else ""
    return (f"an lr of {_num(e['observed_lr'])} with {e['world_size']} processes{batch}; the {e.get('rule', 'scaling')} "
            f"rule suggests {_num(e['suggested_lr'])}")


def _lr_expression(e: Evidence) -> str | None:
    return f"`lr={e['lr_expression']}` of {e['optimizer']} never reads the world size"


def _divisors(e: Evidence) -> str | None:
    divisors = " × ".join(_num(d) for d in e["divisors"]) or "nothing"
    k = e.get("backwards_per_step", 1)
    if k and k > 1 and not e["divisors"]:
        return f"{k} backward passes per optimizer step, and the loss is not divided by {k}"
    return (f"a {e.get('reduction', 'mean')}-reduced loss over a batch of {e['batch_size']} was divided by {divisors} "
            f"({k} backward pass{'es' if k != 1 else ''} per step)")


def _static_divisor(e: Evidence) -> str | None:
    return f"`{e['loss']}` is {e.get('reduction', 'mean')}-reduced and then divided by `{e['divisor']}`"


def _still_training(e: Evidence) -> str | None:
    names = e["parameters_still_training"]
    return (f"`{e['module']}.{e.get('attr', 'requires_grad')} = {e.get('value')}` left "
            f"{_plural(len(names), 'parameter')} of `{e['module']}` training: {_names(names)}")


def _params(key: str, how: str) -> Callable[[Evidence], str | None]:
    def phrase(e: Evidence) -> str | None:
        names = e[key]
        if not names:
            return None
        return f"{_plural(len(names), 'parameter')} {how}: {_names(names)}"

    return phrase


def _never_changed(e: Evidence) -> str | None:
    names = e["never_changed"]
    lrs = ", ".join(_num(v) for v in e.get("learning_rates") or [])
    return f"{_plural(len(names), 'parameter')} got gradients and never changed (learning rate {lrs}): {_names(names)}"


def _attribute_freeze(e: Evidence) -> str | None:
    return f"`{e['target']}.{e['attr']}` is assigned as a plain attribute, which freezes nothing"


def _overflow(e: Evidence) -> str | None:
    return (f"`{e['module']}` ({e.get('module_class', 'module')}) produced {_num(e['fp32_max_abs'])} at step "
            f"{e.get('step')}, above fp16's largest value {_num(e.get('fp16_max', 65504))}")


def _clip_scaled(e: Evidence) -> str | None:
    return (f"clip_grad_norm_ saw a total norm of {_num(e['total_norm_seen'])} (max_norm {_num(e.get('max_norm'))}) "
            f"on gradients still multiplied by the scale {_num(e.get('scale'))}")


def _skipped(e: Evidence) -> str | None:
    scale = ""
    if e.get("first_scale") is not None and e.get("final_scale") is not None:
        scale = f"; the scale went from {_num(e['first_scale'])} to {_num(e['final_scale'])}"
    return f"the GradScaler skipped {e['skipped_steps']} of {e['scaler_steps']} steps{scale}"


def _stale(e: Evidence) -> str | None:
    stale = e["stale_gradient"]
    return (f"before step {stale['before_step']} the gradients already had norm {_num(stale['norm'])} from earlier "
            "steps")


def _not_cleared(e: Evidence) -> str | None:
    steps = e["steps_without_clear"]
    return f"{len(steps)} of {e['steps_total']} optimizer steps ran without clearing the gradients first"


def _wiped(e: Evidence) -> str | None:
    return (f"the gradients were {'set to None' if e['gradients_at_step'] == 'none' else 'zeroed'} between backward() "
            f"and step() in {len(e.get('steps') or [])} of {e.get('steps_total')} steps")


def _eval_mode(e: Evidence) -> str | None:
    steps = e.get("steps_in_eval") or []
    return (f"{_plural(len(e['modules_in_eval']), 'module')} in eval mode during {len(steps)} of "
            f"{e.get('steps_total')} training steps: {_names(e['modules_in_eval'])}")


def _graph_path(e: Evidence) -> str | None:
    path = e["graph_path"]
    shown = " → ".join(path) if isinstance(path, list) else str(path)
    return f"{e['loss']} was fed {e['input']} outputs ({shown})"


def _lr_at_step_1(e: Evidence) -> str | None:
    return (f"the first optimizer step already used lr {_num(e['lr_at_step_1'])} instead of the initial "
            f"{_num(e['initial_lr'])}")


def _scheduler_per_batch(e: Evidence) -> str | None:
    observed = e["lr_by_scheduler_step"]
    return (f"{e['scheduler']} stepped {e['scheduler_steps']} times in {e['optimizer_steps']} optimizer steps; lr "
            f"{_num(e['initial_lr'])} → {_num(observed[-1])}")


def _flat_curve(e: Evidence) -> str | None:
    return (f"loss {_num(e['first_loss'])} → {_num(e['last_loss'])} over {e['steps']} steps "
            f"(lowest {_num(e['lowest_loss'])})")


def _shapes(e: Evidence) -> str | None:
    return f"model output {e['output_shape']} against target {e['target_shape']}: the loss broadcasts them"


def _shuffled_apart(e: Evidence) -> str | None:
    return (f"inputs and labels come from two loaders whose samples match in {e['positions_matching']} of "
            f"{e['positions']} positions")


def _indexed_apart(e: Evidence) -> str | None:
    inputs, targets = e["first_rows"]
    return (f"inputs and targets were picked by different index vectors in all {e['batches']} batches "
            f"seen (first rows {', '.join(map(str, inputs[:4]))} against {', '.join(map(str, targets[:4]))})")


def _one_column(e: Evidence) -> str | None:
    losses = e["losses"]
    return f"cross-entropy over logits of shape {e['shape']}: the loss was {_num(losses[0])} every step"


def _leaf_loss(e: Evidence) -> str | None:
    if not e["loss_is_leaf"]:
        return None
    return f"the loss had no graph back to the parameters in {e['steps']} steps"


def _unregistered_saved(e: Evidence) -> str | None:
    saved = e["saved"][0]
    return (f"the checkpoint holds {_plural(saved['n_keys'], 'key')}, none of the {e['parameters']} parameters of "
            f"{_names([layer['name'] for layer in e['layers']])}")


def _unregistered_by_hand(e: Evidence) -> str | None:
    if e["not_in_optimizer"]:
        return None
    return (f"{e['parameters']} parameters of {_names([layer['name'] for layer in e['layers']])} are in the optimizer "
            "but not in the model's parameters() or state_dict()")


def _plain_container(e: Evidence) -> str | None:
    return (f"`{e['class']}.{e['attribute']}` is a plain {e['container']} of {_names(sorted(set(e['layers'])))} "
            f"used in `{e['used_in']}`")


def _empty_mask(e: Evidence) -> str | None:
    shape = "×".join(str(n) for n in e["mask_shape"])
    losses = (f"; loss {_num(e['first_loss'])} → {_num(e['last_loss'])}"
              if e.get("first_loss") is not None and e.get("last_loss") is not None else "")
    return f"the {shape} mask masked nothing in all {e['calls']} sampled calls{losses}"


def _constant_loss(e: Evidence) -> str | None:
    losses = e["losses"]
    if len(set(losses)) != 1:
        return None
    return f"the same loss {_num(losses[0])} in all {e['backwards']} backward passes"


def _chance_level(e: Evidence) -> str | None:
    return f"first loss {_num(e['first_loss'])} where {e['task']} starts near {_num(e['expected'])}"


def _replicas(e: Evidence) -> str | None:
    norms = ", ".join(f"rank {r}: {_num(v)}" for r, v in e["norms_by_rank"].items())
    return (f"after step {e['step']}, {e['parameters_differing']} of {e['parameters']} parameters differ across ranks "
            f"(`{e['example_parameter']}`: {norms})")


def _tiny_batch(e: Evidence) -> str | None:
    return (f"BatchNorm normalizes over {e['per_process_batch']} samples per process ({e['world_size']} processes, "
            f"global batch {e['global_batch']}), without SyncBatchNorm")


def _label_blocks(e: Evidence) -> str | None:
    expected, changes, seen = e["label_changes_if_shuffled"], e["label_changes"], e["samples_seen"]
    if expected < 1:
        return (f"all {e['batches_seen']} batches drawn in stored order hold class "
                f"{e['majority_label_per_batch'][0]} only")
    return (f"the labels of {seen} samples drawn in stored order changed {_plural(changes, 'time')}; shuffled, "
            f"about {round(expected)}")


def _split_apart(e: Evidence) -> str | None:
    ranks = e["ranks"]
    return (f"ranks {ranks[0]} and {ranks[1]} hold different subsets of `{e['dataset_part']}`: "
            f"{e['shared_indices']} of {e['indices_compared']} indices in common")


def _lists_apart(e: Evidence) -> str | None:
    ranks = e["ranks"]
    if e.get("same_samples_other_order"):
        return (f"ranks {ranks[0]} and {ranks[1]} list the same {e['samples_per_rank']} samples of "
                f"`{e['dataset_part']}` in different orders")
    return (f"ranks {ranks[0]} and {ranks[1]} built `{e['dataset_part']}` from different samples "
            f"(about {e['estimated_shared_share']:.0%} in common)")


def _pixels(e: Evidence) -> str | None:
    return (f"the first layer `{e['layer']}` received {str(e['dtype']).replace('torch.', '')} values "
            f"{_num(e['min'])} to {_num(e['max'])} (mean {_num(e['mean'])}, std {_num(e['std'])})")


def _two_runs(e: Evidence) -> str | None:
    return f"two runs of the script: {e['what']}"


def _late_seed(e: Evidence) -> str | None:
    return f"seeded on line {e['seed_line']}, after line {e['first_draw_line']} had drawn random numbers"


def _no_seed(e: Evidence) -> str | None:
    return None if e["seed_calls"] != 0 else "no seed call anywhere in the script, and it draws random numbers"


def _unseeded(e: Evidence) -> str | None:
    return f"drawn from without a seed: {', '.join(e['unseeded'])}"


def _worker_rngs(e: Evidence) -> str | None:
    return f"{e['num_workers']} DataLoader workers each get a copy of the dataset's RNG ({', '.join(map(str, e['rngs']))})"


def _prefix_saved(e: Evidence) -> str | None:
    return f"{_plural(e['n_keys'], 'key')} saved with the `{e['prefix']}` prefix, e.g. {_names(e.get('example_keys') or [])}"


def _load_mismatch(e: Evidence) -> str | None:
    return (f"{e['n_loaded']} of {e['n_expected']} keys loaded; {e['n_missing']} missing and {e['n_unexpected']} "
            f"unexpected (e.g. {_names((e.get('unexpected_examples') or []) + (e.get('missing_examples') or []), 2)})")


def _wrapper_saved(e: Evidence) -> str | None:
    return f"`{e['saved']}` of a {e['wrapper']} saves every key with `{e['prefix']}`"


def _unchecked_load(e: Evidence) -> str | None:
    if e["strict"] is not False or e["result_used"] is not False:
        return None
    return "load_state_dict(strict=False) whose result (missing and unexpected keys) is never looked at"


_PHRASES: list[Callable[[Evidence], str | None]] = [
    _same_order, _ranks_share, _no_set_epoch,
    _lr_by_world_size, _lr_observed, _lr_expression,
    _divisors, _static_divisor,
    _unregistered_saved, _unregistered_by_hand, _plain_container,
    _still_training, _params("not_in_optimizer", "in no optimizer"),
    _params("never_given_a_gradient", "never received a gradient"), _never_changed,
    _params("frozen", "frozen (requires_grad=False)"), _attribute_freeze,
    _overflow, _clip_scaled, _skipped,
    _stale, _not_cleared, _wiped,
    _eval_mode, _graph_path, _lr_at_step_1, _scheduler_per_batch,
    _flat_curve, _shapes, _shuffled_apart, _indexed_apart, _one_column, _leaf_loss, _constant_loss, _chance_level,
    _replicas, _tiny_batch, _label_blocks, _split_apart, _lists_apart, _pixels, _empty_mask,
    _two_runs, _late_seed, _no_seed, _unseeded, _worker_rngs,
    _prefix_saved, _load_mismatch, _wrapper_saved, _unchecked_load,
]


def _generic(finding: Finding) -> str:
    """The finding's headline evidence (else its first) as 'what: value'."""
    evidence = finding.evidence
    key = finding.headline if finding.headline in evidence else next(iter(evidence))
    value = evidence[key]
    if isinstance(value, list):
        shown = ", ".join(_num(v) for v in value[:5]) + (" …" if len(value) > 5 else "")
    elif isinstance(value, dict):
        shown = "; ".join(f"{k}: {_num(v)}" for k, v in list(value.items())[:5])
    else:
        shown = _num(value)
    return f"{key.replace('_', ' ')}: {shown}"
