"""Shared argument checks: what they accept, and errors that name the owner and the argument."""

from dataclasses import dataclass

import pytest

from medmoe.nn.checks import check_positive_fields, check_positive_ints, positive_int


def test_positive_int_returns_the_value():
    assert positive_int("Layer", "dim", 3) == 3


@pytest.mark.parametrize("bad", [0, -2, 1.5, "4", None, True])
def test_positive_int_refuses_non_positive_ints_and_bools(bad):
    with pytest.raises(ValueError, match=r"^Layer: dim must be a positive integer, got "):
        positive_int("Layer", "dim", bad)


def test_check_positive_ints_names_the_first_bad_argument():
    check_positive_ints("Adapter", dim=8, bottleneck=2)
    with pytest.raises(ValueError, match=r"Adapter: bottleneck must be a positive integer, got 0"):
        check_positive_ints("Adapter", dim=8, bottleneck=0, other=-1)


def test_check_positive_fields_names_the_config_class():
    @dataclass
    class ToyConfig:
        depth: int = 2
        heads: int = 0

    check_positive_fields(ToyConfig(), "depth")
    with pytest.raises(ValueError, match=r"^ToyConfig\.heads must be a positive integer, got 0$"):
        check_positive_fields(ToyConfig(), "depth", "heads")


def test_layers_and_configs_use_them():
    from medmoe.models.mil.transmil import TransMILConfig
    from medmoe.nn.mammoth import Mammoth

    with pytest.raises(ValueError, match=r"Mammoth: num_slots must be a positive integer"):
        Mammoth(input_dim=8, dim=8, num_slots=0)
    with pytest.raises(ValueError, match=r"TransMILConfig\.num_heads must be a positive integer"):
        TransMILConfig(in_dim=8, num_classes=2, num_heads=0)
