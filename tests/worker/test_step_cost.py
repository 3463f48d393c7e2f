"""The guarded Trainer's per-step shortcuts change no result: train() still puts every module in
training mode, zero_grad still clears every gradient there is, the FLOP tally is the Trainer's."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from trainconsole.engine.train.step_cost import SteadyModel, cache_lomo_check  # noqa: E402


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frozen = torch.nn.Linear(4, 4)
        self.adapter = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.Dropout(0.5), torch.nn.Linear(2, 4))
        self.frozen.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.frozen(x))


def _trainable(net: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in net.parameters() if p.requires_grad]


def test_train_still_sets_every_module_after_any_mode_change() -> None:
    net = _Net()
    opt = torch.optim.AdamW(_trainable(net))
    steady = SteadyModel(net, opt)
    assert net.train() is net and all(m.training for m in net.modules())
    net.adapter[1].eval()  # one submodule switched on its own, not through the root
    net.train()
    assert all(m.training for m in net.modules())
    net.eval()
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    net.train(False)
    assert not any(m.training for m in net.modules())
    steady.remove()
    assert "train" not in net.__dict__ and "zero_grad" not in net.__dict__
    assert net.train().training


def test_zero_grad_clears_every_gradient() -> None:
    net = _Net()
    opt = torch.optim.AdamW(_trainable(net))
    SteadyModel(net, opt)
    net(torch.randn(3, 4)).sum().backward()
    assert all(p.grad is not None for p in _trainable(net))
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    net(torch.randn(3, 4)).sum().backward()
    net.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in _trainable(net))


def test_a_trainable_parameter_outside_the_optimiser_keeps_the_real_zero_grad() -> None:
    net = _Net()
    opt = torch.optim.AdamW(list(net.adapter[0].parameters()))  # the last layer is not in it
    steady = SteadyModel(net, opt)
    assert steady.trainable is None and "zero_grad" not in net.__dict__
    net(torch.randn(3, 4)).sum().backward()
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_lomo_lookup_is_cached_and_gives_the_same_answer() -> None:
    acc_optimizer = pytest.importorskip("accelerate.optimizer")
    from accelerate.utils.imports import is_lomo_available

    cache_lomo_check()
    assert acc_optimizer.is_lomo_available() == is_lomo_available()
    cached = acc_optimizer.is_lomo_available
    cache_lomo_check()  # twice: not wrapped again
    assert acc_optimizer.is_lomo_available is cached


def test_flop_tally_matches_the_trainers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    from trainconsole.engine.train.trainer_setup import guarded_trainer_class

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2)
    model = LlamaForCausalLM(cfg)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    plain = Trainer(model=model, args=args)
    guarded = guarded_trainer_class()(model=model, args=args, hooks=None)
    inputs = {"input_ids": torch.zeros((3, 7), dtype=torch.long)}
    assert guarded.floating_point_ops(inputs) == plain.floating_point_ops(inputs) > 0
    assert guarded.floating_point_ops({"labels": inputs["input_ids"]}) == 0
