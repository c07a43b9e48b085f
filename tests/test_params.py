import argparse

import pytest

from core.errors import StudioError
from core.models.inspect import inspect_model
from core.params import (
    ATTENTION_KEYS,
    TrainingParams,
    add_arguments,
    default_rank,
    params_from_args,
    validate_params,
)


def test_defaults_follow_the_brief():
    p = TrainingParams()
    assert (p.learning_rate, p.epochs, p.batch_size, p.lora_layers) == (1e-4, 3, 4, 8)
    assert p.keys is None  # the model's own attention projections, once it is known
    assert p.validation_split == 0.2


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("rank", 0, "1 <= rank <= 256"),
        ("rank", 257, "1 <= rank <= 256"),
        ("alpha", 0, "0 < alpha"),
        ("alpha", -2.0, "0 < alpha"),
        ("learning_rate", 0, "0 < learning_rate <= 1"),
        ("learning_rate", 1.5, "0 < learning_rate <= 1"),
        ("epochs", 0, "1 <= epochs"),
        ("batch_size", 0, "1 <= batch_size"),
        ("validation_split", 1.0, "0 < validation_split < 1"),
    ],
)
def test_each_guard_names_field_value_and_range(field, value, allowed):
    with pytest.raises(StudioError) as caught:
        validate_params({field: value})
    message = caught.value.message
    assert f"{field} = {value}" in message
    assert allowed in message
    assert message.count("\n- ") == 1  # exactly one complaint


def test_every_failure_is_reported_at_once():
    with pytest.raises(StudioError) as caught:
        validate_params({"rank": 0, "epochs": 0, "batch_size": -1})
    assert caught.value.message.count("\n- ") == 3


def test_lora_layers_zero_and_unknown_keys_are_refused():
    with pytest.raises(StudioError, match="lora_layers = 0"):
        validate_params({"lora_layers": 0})
    for bad in (["../x"], ["a b"], []):  # not a module's name: refused before any model
        with pytest.raises(StudioError, match="keys"):
            validate_params({"keys": bad})


def test_model_dependent_rules(toy_model):
    info = inspect_model(toy_model)
    with pytest.raises(StudioError, match="has 4 layers") as caught:
        TrainingParams(lora_layers=8).for_model(info)
    assert "-1 for all" in caught.value.hint
    resolved = TrainingParams(lora_layers=-1).for_model(info)
    assert (resolved.rank, resolved.alpha, resolved.scale) == (8, 16.0, 2.0)
    assert TrainingParams(rank=4, lora_layers=2).for_model(info).alpha == 8.0
    assert TrainingParams(rank=4, alpha=4, lora_layers=2).for_model(info).scale == 1.0
    assert set(resolved.keys) == set(ATTENTION_KEYS) == set(info.attention_keys())
    with pytest.raises(StudioError, match="no self_attn.nonsense modules") as caught:
        TrainingParams(keys=["self_attn.nonsense"], lora_layers=2).for_model(info)
    assert "mlp.down_proj" in caught.value.hint and "self_attn.q_proj" in caught.value.hint


def test_rank_rule_by_model_size():
    assert [default_rank(n) for n in (135e6, 3e9, 70e9)] == [8, 16, 32]


def test_flags_round_trip():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    original = TrainingParams(rank=4, learning_rate=3e-4, mask_prompt=False, keys=["mlp.up_proj"])
    assert params_from_args(parser.parse_args(original.to_argv())) == original
