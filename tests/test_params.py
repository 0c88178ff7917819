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


def test_dataclass_defaults_match_params_yaml_for_lgbm_ensemble_eval() -> None:
    # A stage run without params.yaml (or a test building Params()) trains what the repo does.
    repo = load_params(REPO_ROOT / "params.yaml")
    default = params_from_dict({})
    for section in ("lgbm", "ensemble", "eval"):
        assert getattr(repo, section) == getattr(default, section), section


def test_lgbm_refit_full_is_a_documented_bool() -> None:
    params = load_params(REPO_ROOT / "params.yaml")
    assert params.lgbm.refit_full is True
    assert params.lgbm.early_stopping_rounds > 0
    assert params_from_dict({"lgbm": {"refit_full": False}}).lgbm.refit_full is False
    with pytest.raises(ParamsError, match="refit"):
        params_from_dict({"lgbm": {"refit": True}})
