from pathlib import Path

import pytest

from cmi.params import ParamsError, load_params, params_from_dict, section_dict

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_repo_params_load_with_documented_defaults() -> None:
    params = load_params(REPO_ROOT / "params.yaml")
    assert params.ensemble.w_lgbm == 0.4
    assert params.ensemble.w_torch == 0.6
    assert params.torch.pad_percentile == 95
    assert isinstance(params.torch.conv_channels, tuple)


def test_unknown_key_is_named() -> None:
    with pytest.raises(ParamsError, match="w_trch"):
        params_from_dict({"ensemble": {"w_trch": 0.7}})
    with pytest.raises(ParamsError, match="ensembel"):
        params_from_dict({"ensembel": {}})


def test_ints_become_floats_where_floats_are_expected() -> None:
    params = params_from_dict({"ensemble": {"w_torch": 1}})
    assert isinstance(params.ensemble.w_torch, float)
    assert section_dict(params.ensemble)["w_torch"] == 1.0
