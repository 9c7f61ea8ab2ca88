"""Name tables and sampler lookup."""
import pytest

from nodes.samplers.names import (
    COMFY_SAMPLER_NAMES,
    SAMPLER_NAMES,
    SCHEDULER_NAMES,
    available_samplers,
    get_sampler,
    is_cfg_pp,
)
from nodes.samplers.ode import ODE_SAMPLERS
from tests.samplers.golden import manifest


def test_sampler_names_are_comfyuis_in_order_then_ours():
    assert list(COMFY_SAMPLER_NAMES) == manifest()["generator"]["sampler_names"]
    assert SAMPLER_NAMES[: len(COMFY_SAMPLER_NAMES)] == COMFY_SAMPLER_NAMES
    assert SAMPLER_NAMES[len(COMFY_SAMPLER_NAMES):] == ("plms",)
    assert list(SCHEDULER_NAMES) == manifest()["generator"]["scheduler_names"]


def test_every_table_entry_is_a_listed_name():
    assert set(available_samplers()) <= set(SAMPLER_NAMES)
    assert set(ODE_SAMPLERS) <= set(SAMPLER_NAMES)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_get_sampler_resolves_every_name(name):
    if name not in available_samplers():
        with pytest.raises(NotImplementedError):
            get_sampler(name)
    else:
        assert callable(get_sampler(name))


def test_ddim_is_euler_and_unknown_names_raise():
    assert get_sampler("ddim") is get_sampler("euler")
    with pytest.raises(ValueError, match="unknown sampler"):
        get_sampler("k_euler")


def test_cfg_pp_names():
    assert is_cfg_pp("euler_cfg_pp") and is_cfg_pp("gradient_estimation_cfg_pp")
    assert not is_cfg_pp("euler") and not is_cfg_pp("dpmpp_2m")
