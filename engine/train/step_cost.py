"""Per-step work the Trainer repeats for nothing, removed for the guarded Trainer.

On a GPU a LoRA step takes 10-50 ms; the Trainer's own Python work per step (measured on CPU) was
a few milliseconds of it, most of it walks over every module or parameter of the model that give
the same answer at every step:

- ``model.train()`` at the start of each step recurses through every module (thousands in a
  30-layer model with adapters) to set a flag that is already set;
- ``model.zero_grad()`` after each optimiser step walks every parameter, frozen base weights
  included, where only the adapter's trainable ones ever hold a gradient;
- ``floating_point_ops`` recounts the model's parameters for the FLOP tally (``num_parameters``,
  another walk over every module);
- accelerate's optimiser wrapper asks importlib twice per step whether ``lomo_optim`` is installed
  (a search of ``sys.path``).

``SteadyModel`` shadows the model's ``train`` and ``zero_grad`` while a training loop runs:
``train()`` returns at once when every module is already in training mode (a flag read per module,
about a hundred times cheaper than the recursive call that sets it), and ``zero_grad`` clears the
trainable parameters' gradients only, when the optimiser holds every one of them (the others never
receive a gradient). Nothing changes in what is computed.
"""

from __future__ import annotations

import functools
from typing import Any


class SteadyModel:
    """Installs the shortcuts on ``model`` (an ``nn.Module``); ``remove`` restores the class's own
    methods."""

    def __init__(self, model: Any, optimizer: Any) -> None:
        self.model = model
        self.modules = list(model.modules())
        self._train = functools.partial(type(model).train, model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        in_optimizer = {id(p) for group in _param_groups(optimizer) for p in group["params"]}
        self.trainable = trainable if all(id(p) in in_optimizer for p in trainable) else None
        model.__dict__["train"] = self.train
        if self.trainable is not None:
            model.__dict__["zero_grad"] = self.zero_grad

    def train(self, mode: bool = True) -> Any:
        if mode and all(m.training for m in self.modules):
            return self.model
        return self._train(mode)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.trainable or ():
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_()
                p.grad.zero_()

    def remove(self) -> None:
        for name in ("train", "zero_grad"):
            self.model.__dict__.pop(name, None)


def _param_groups(optimizer: Any) -> list[dict[str, Any]]:
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the real one
    groups: list[dict[str, Any]] = inner.param_groups
    return groups


def cache_lomo_check() -> None:
    """accelerate's optimiser wrapper looks ``lomo_optim`` up on ``sys.path`` at every step; what
    is installed does not change while a worker runs, so the answer is looked up once."""
    try:
        from accelerate import optimizer as acc_optimizer
    except ImportError:
        return
    check = getattr(acc_optimizer, "is_lomo_available", None)
    if check is not None and not hasattr(check, "cache_info"):  # not wrapped already
        acc_optimizer.is_lomo_available = functools.cache(check)
