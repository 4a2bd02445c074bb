"""Tests of flowpost/methods/base.py: discovery and registration (the name written once), the
constructor contract (a user's model, objects a method does not take), renamed keys, and that
docs/methods/config.md lists exactly the renamed keys."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from flowpost.config import ConfigError, from_dict, option
from flowpost.data.base import Batch, DataSpec
from flowpost.methods import base
from flowpost.methods.adversarial import AdversarialFlow, AFConfig
from flowpost.methods.base import (
    Method,
    MethodConfig,
    OptimizerSpec,
    Updater,
    build_method,
    method_registry,
    register_method,
)
from flowpost.methods.fail import FAILConfig, FAILMethod
from flowpost.methods.flow_matching import FlowMatching, FlowMatchingConfig
from flowpost.methods.reward import RewardConfig, RewardMethod
from flowpost.nets.config import DiscriminatorConfig, NetConfig

torch.set_num_threads(1)
SPEC, NET = DataSpec((2,)), NetConfig(hidden=8, depth=1)


class Velocity(nn.Module):
    """A user's own network: forward(x, t, cond=None), no end-time input."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.lin(torch.cat([x, t[:, None]], 1))


def test_every_method_module_is_discovered_and_named_once() -> None:
    registry = method_registry()
    assert {"flow_matching", "fail", "adversarial", "reward"} <= set(registry)
    for name, cls in registry.items():
        assert cls.name == name and cls.config_class.method_name == name
        assert cls.config_class().name == name
    init = Path(base.__file__).with_name("__init__.py").read_text()
    assert "import" not in init  # nothing is listed: discovery finds the modules


@pytest.fixture
def scratch_registry():  # type: ignore[no-untyped-def]
    saved = dict(base._REGISTRY)
    yield
    base._REGISTRY.clear()
    base._REGISTRY.update(saved)


@dataclass
class ToyConfig(MethodConfig):
    scale: float = option(1.0, "a scale")


def _toy_method(config_class: type[MethodConfig]) -> type[Method]:
    class Toy(Method):
        def optimizers(self) -> dict[str, OptimizerSpec]:
            return {}

        def train_step(self, batch: Batch, step: int, update: Updater) -> dict[str, float]:
            return {}

    Toy.config_class = config_class
    return Toy


def test_register_binds_the_name_to_the_config(scratch_registry) -> None:  # type: ignore[no-untyped-def]
    toy = register_method("toy_one")(_toy_method(ToyConfig))
    assert method_registry()["toy_one"] is toy and ToyConfig().name == "toy_one"
    # the same config class under a second name gets its own subclass, not a rebinding
    other = register_method("toy_two")(_toy_method(ToyConfig))
    assert other.config_class is not ToyConfig and other.config_class().name == "toy_two"
    assert ToyConfig().name == "toy_one"
    with pytest.raises(ValueError, match="registered twice"):
        register_method("toy_one")(FlowMatching)


def test_a_config_name_field_must_agree(scratch_registry) -> None:  # type: ignore[no-untyped-def]
    @dataclass
    class Named(MethodConfig):
        name: str = option("something_else", "method name")  # type: ignore[assignment]

    with pytest.raises(ValueError, match="drop the field"):
        register_method("toy_named")(_toy_method(Named))


def test_user_model_replaces_the_network_and_the_reference_is_a_frozen_copy() -> None:
    user = Velocity()
    fm = FlowMatching(FlowMatchingConfig(), SPEC, NET, model=user)
    assert fm.policy is user
    cfg = FAILConfig(discriminator=DiscriminatorConfig(hidden=8, depth=1))
    fail = FAILMethod(cfg, SPEC, NET, model=Velocity())
    assert fail.reference is not fail.policy
    assert all(
        torch.equal(a, b) for a, b in zip(fail.policy.parameters(), fail.reference.parameters())
    )
    assert not any(p.requires_grad for p in fail.reference.parameters())
    x = fail.generate(torch.randn(5, 2), nfe=2)
    assert x.shape == (5, 2) and torch.isfinite(x).all()


def test_adversarial_with_a_model_without_end_time() -> None:
    d = DiscriminatorConfig(hidden=8, depth=1)
    m = AdversarialFlow(AFConfig(nfe=2, discriminator=d), SPEC, NET, model=Velocity())
    assert not m.end_time and m.generate(torch.randn(3, 2), nfe=2).shape == (3, 2)
    with pytest.raises(ValueError, match="needs a generator that takes the end time"):
        AdversarialFlow(AFConfig(nfe=0, discriminator=d), SPEC, NET, model=Velocity())


def test_reward_callables_with_one_or_two_arguments() -> None:
    one = RewardMethod(RewardConfig(), SPEC, NET, reward=lambda x: x[:, 0])
    two = RewardMethod(RewardConfig(), SPEC, NET, reward=lambda x, cond: x[:, 1])
    x = torch.tensor([[1.0, 2.0]])
    assert one.reward(x, None).tolist() == [1.0] and two.reward(x, None).tolist() == [2.0]
    bad = RewardMethod(RewardConfig(), SPEC, NET, reward=lambda x: x)
    with pytest.raises(ValueError, match="one value per sample"):
        bad.reward(torch.zeros(3, 2), None)
    with pytest.raises(ValueError, match="has no reward"):
        RewardMethod(RewardConfig(), SPEC, NET).reward(x, None)


def test_build_method_refuses_objects_a_method_does_not_take() -> None:
    m = build_method(
        "flow_matching", FlowMatchingConfig(), SPEC, NET, model=Velocity(), reward=None
    )
    assert isinstance(m.policy, Velocity)
    with pytest.raises(ValueError, match=r"takes no reward= \(it takes: model\)"):
        build_method("flow_matching", FlowMatchingConfig(), SPEC, NET, reward=lambda x: x)


def test_renamed_key_names_the_new_one() -> None:
    with pytest.raises(ConfigError, match="'method.r1_weight' was renamed to 'method.gp_weight'"):
        from_dict(FAILConfig, {"r1_weight": 1.0}, prefix="method")


def test_docs_list_exactly_the_renamed_keys() -> None:
    doc = Path(__file__).parents[2] / "docs" / "methods" / "config.md"
    rows = re.findall(r"^\| ([a-z_, ]+) \| `(\w+)` \| `(\w+)` \|$", doc.read_text(), re.M)
    documented = {(m.strip(), old, new) for methods, old, new in rows for m in methods.split(",")}
    actual = {
        (name, old, new)
        for name, cls in method_registry().items()
        for old, new in cls.config_class.renamed_keys.items()
    }
    assert documented == actual
