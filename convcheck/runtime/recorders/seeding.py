"""RNG seeding: every seed call with its line, and which global RNGs were drawn from before any seed (CC002)."""

from __future__ import annotations

import sys
from typing import Any

from convcheck.runtime.fields import loc, num
from convcheck.runtime.locate import caller_file, is_torch_file
from convcheck.runtime.recorders.base import Recorder


class SeedingRecorder(Recorder):
    """Seeding calls (``torch.manual_seed``, ``torch.cuda.manual_seed[_all]``, ``random.seed``,
    ``numpy.random.seed``), and the global RNGs' states at start and at each seed: a later difference
    means the RNG was drawn from. Adds ``rng_drawn``, ``rng_seeded`` and ``rng_unseeded_draws`` to ``final``."""

    name = "seeding"
    events = ("seed",)

    def __init__(self, probe: Any) -> None:
        super().__init__(probe)
        #: Global RNG states at install or at the user's last seeding.
        self.base: dict[str, Any] = {}
        self.seeded: set[str] = set()
        #: RNGs drawn from before any seeding.
        self.unseeded_draws: set[str] = set()
        #: Inside a seeding call (torch.manual_seed seeds CUDA itself): record the user's call only.
        self.seeding = False
        self.torch: Any = None

    def install(self, torch: Any, patches: Any) -> None:
        import random

        self.torch = torch
        # Seeding functions are plain module functions with no hook.
        patches.wrap(torch, "manual_seed", self._wrapper("torch"))
        patches.wrap(torch.random, "manual_seed", self._wrapper("torch"))
        patches.wrap(torch.cuda, "manual_seed", self._wrapper("cuda"))
        patches.wrap(torch.cuda, "manual_seed_all", self._wrapper("cuda"))
        patches.wrap(random, "seed", self._wrapper("python"))
        # The states the process starts with: a later difference means the RNG was drawn from.
        try:
            self.base.update(self.states())
        except Exception:
            pass
        try:
            import numpy.random
        except ImportError:
            return
        patches.wrap(numpy.random, "seed", self._wrapper("numpy"))

    def _wrapper(self, rng: str) -> Any:
        recorder, probe = self, self.probe

        def make(original: Any) -> Any:
            def seed(*args: Any, **kwargs: Any) -> Any:
                if recorder.seeding:
                    return original(*args, **kwargs)
                value = args[0] if args else kwargs.get("seed", kwargs.get("a"))
                # torch seeds each DataLoader worker itself: such calls are marked internal. Seeding
                # helpers of other libraries (transformers.set_seed, seed_everything) are the user's.
                internal = is_torch_file(caller_file())
                drawn_before = False if internal else recorder.note(rng, before_seed=True)
                probe.emit("seed", rng=rng, value=num(value), loc=loc(3), step=probe.step_count,
                           internal=internal, drawn_before=drawn_before)
                recorder.seeding = True
                try:
                    return original(*args, **kwargs)
                finally:
                    recorder.seeding = False
                    if not internal:
                        recorder.note(rng, before_seed=False)

            return seed

        return make

    def states(self) -> dict[str, Any]:
        """The global RNGs' current states, compared by equality only."""
        import random

        states: dict[str, Any] = {"python": random.getstate(), "torch": self.torch.random.get_rng_state()}
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            try:
                state = numpy.random.get_state()
                states["numpy"] = (state[0], state[1].tobytes(), state[2], state[3], state[4])
            except Exception:
                pass
        return states

    def drawn(self, rng: str) -> bool:
        """Whether ``rng`` was drawn from since install or its last seeding."""
        base = self.base.get(rng)
        current = self.states().get(rng)
        if base is None or current is None:
            return False
        if rng == "torch":
            return not self.torch.equal(base, current)
        return base != current

    def note(self, rng: str, before_seed: bool) -> bool:
        """Around a user's seeding: before it, whether the RNG was drawn from while still unseeded."""
        if rng not in self.base:
            return False
        drawn = False
        if before_seed:
            drawn = self.drawn(rng)
            if drawn and rng not in self.seeded:
                self.unseeded_draws.add(rng)
        else:
            self.seeded.add(rng)
            self.base[rng] = self.states()[rng]
        return drawn

    def final_fields(self) -> dict[str, Any]:
        drawn = {}
        for rng in list(self.base):
            drawn[rng] = self.drawn(rng)
            if drawn[rng] and rng not in self.seeded:
                self.unseeded_draws.add(rng)
        return {"rng_drawn": drawn, "rng_seeded": sorted(self.seeded),
                "rng_unseeded_draws": sorted(self.unseeded_draws)}
