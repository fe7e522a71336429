import pytest
from torch import nn

from models.registry import (
    UnknownModelError,
    build_model,
    get_entry,
    list_models,
    option_to_parameter,
    register_model,
)


def test_original_spellings_resolve():
    for spelling in ("StackedHourGlass", "stackedhourglass", "StackedHourglass"):
        assert get_entry(spelling).name == "StackedHourGlass"
    with pytest.raises(UnknownModelError, match="did you mean 'StackedHourGlass'"):
        get_entry("Hourglass")  # no aliases: a near miss is named, never silently taken


def test_unknown_model_suggests_closest():
    with pytest.raises(UnknownModelError, match="did you mean 'StackedHourGlass'"):
        get_entry("StackHourGlass")


def test_option_names_map_to_parameters():
    assert option_to_parameter("nChannels") == "n_channels"
    assert option_to_parameter("LRNSize") == "lrn_size"
    assert option_to_parameter("IterSize") == "iter_size"
    assert option_to_parameter("hhKernel") == "hh_kernel"


def test_builder_receives_only_its_own_options():
    received = {}

    @register_model("_Probe", target="regression")
    def probe(n_joints: int = 16, width: int = 4) -> nn.Module:
        received.update(n_joints=n_joints, width=width)
        return nn.Linear(1, 1)

    try:
        model = build_model("_Probe", nJoints=17, nStack=8, LR=0.1, width=None)
        assert received == {"n_joints": 17, "width": 4}  # None leaves the builder default
        assert model.target_type == "regression"
    finally:
        from models import registry

        registry.MODEL_REGISTRY.remove("_Probe")


def test_duplicate_registration_rejected():
    with pytest.raises(ValueError, match="already registered"):
        register_model("stackedhourglass")(lambda: nn.Identity())


def test_every_registered_model_declares_a_target_type():
    from datasets.codecs import target_types

    for name in list_models():
        assert get_entry(name).target_type in target_types()
    assert get_entry("DLCM").target_type == "compositional"


def test_every_builder_parameter_has_a_config_key():
    from utils.options import build_parser

    reachable = {option_to_parameter(action.dest) for action in build_parser()._actions}
    # a joint order and a hierarchy of parts are properties of the dataset's joint set (the options
    # derive ``hierarchy`` from it), not something to type on a command line
    not_configurable = {"chain_order", "hierarchy"}
    for name in list_models():
        missing = set(get_entry(name).parameter_names()) - reachable - not_configurable
        assert not missing, f"{name}: no config key for {sorted(missing)}"
