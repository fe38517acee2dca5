"""Posterior files (bayeslmm.results.posterior.load): files written by bayeslmm 0.1.0 (PyMC 5.28,
ArviZ 0.23 InferenceData netCDF) load with the numbers 0.1.0 itself reported; a missing,
truncated, foreign or edited file raises a BayesLMMError saying what is wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import bayeslmm as blm
from bayeslmm.results.posterior import PosteriorFileError

DATA = Path(__file__).resolve().parent / "data"


@pytest.mark.parametrize("name", ["dyestuff", "awkward"])
def test_files_written_by_0_1_0_load_with_the_same_numbers(name):
    expected = json.loads((DATA / f"v0.1.0_{name}.json").read_text())
    post = blm.load(DATA / f"v0.1.0_{name}.nc")
    assert isinstance(post.idata, xr.DataTree)
    assert post.idata.posterior.attrs["bayeslmm_version"] == expected["version"] == "0.1.0"
    assert post.design.formula.text == expected["formula"]
    fixef = post.fixef()["mean"]
    assert list(fixef.index) == list(expected["fixef_mean"])
    np.testing.assert_allclose(fixef.to_numpy(), list(expected["fixef_mean"].values()), rtol=1e-12)
    np.testing.assert_allclose(post.varcorr()["sdcor"], expected["varcorr_sdcor"], rtol=1e-12)
    for group, row in expected["ranef_first"].items():
        np.testing.assert_allclose(post.ranef()[group].iloc[0].to_numpy(), list(row.values()), rtol=1e-12)
    assert post.prior_set.describe(post.design) == expected["priors"]
    assert post.divergences == int(post.idata.sample_stats["diverging"].sum())
    assert post.idata.log_likelihood["y"].shape == (2, 50, post.nobs)  # for loo(); 50 draws are too few to run it


def _edited(tmp_path, edit, source="v0.1.0_dyestuff.nc") -> Path:
    """A copy of a saved posterior with ``edit(tree)`` applied."""
    tree = xr.open_datatree(DATA / source, engine="h5netcdf").load()
    edit(tree)
    path = tmp_path / "edited.nc"
    tree.to_netcdf(path, engine="h5netcdf")
    return path


def test_missing_folder_truncated_and_foreign_files(tmp_path):
    with pytest.raises(PosteriorFileError, match="no such file"):
        blm.load(tmp_path / "nothing.nc")
    with pytest.raises(blm.BayesLMMError, match="is a folder"):
        blm.load(tmp_path)
    truncated = tmp_path / "truncated.nc"
    raw = (DATA / "v0.1.0_dyestuff.nc").read_bytes()
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(PosteriorFileError, match="damaged or truncated"):
        blm.load(truncated)
    text = tmp_path / "data.csv"
    blm.datasets.load("dyestuff").to_csv(text)
    with pytest.raises(PosteriorFileError, match="not a netCDF4/HDF5 file"):
        blm.load(text)
    foreign = tmp_path / "foreign.nc"
    xr.DataTree.from_dict({"results": xr.Dataset({"a": ("x", np.arange(3.0))})}).to_netcdf(foreign, engine="h5netcdf")
    with pytest.raises(PosteriorFileError, match=r"no posterior group \(groups: \['results'\]\)"):
        blm.load(foreign)
    bare = tmp_path / "bare.nc"
    xr.DataTree.from_dict({"posterior": xr.Dataset({"beta": (("chain", "draw"), np.zeros((1, 3)))})}).to_netcdf(
        bare, engine="h5netcdf")
    with pytest.raises(PosteriorFileError, match="lacks the attributes formula, data_csv, priors_json"):
        blm.load(bare)


def _set_attr(key, value):
    def edit(tree):
        tree["posterior"].attrs[key] = value(tree["posterior"].attrs[key])
    return edit


@pytest.mark.parametrize("edit, message", [
    # another formula than the one sampled: its variables are not in the file
    (_set_attr("formula", lambda f: "Yield ~ 1 + (1 | Sample)"), "not a column|Sample"),
    (_set_attr("formula", lambda f: "Yield ~ 1 + (1 | Batch) + (1 | Batch2)"), "not a column|Batch2"),
    # a level renamed in the saved data: the draws are labelled with the old one
    (_set_attr("data_csv", lambda t: t.replace("\nA,", "\nQ,")), "labelled .* along Batch__level"),
    # a row dropped from the saved data
    (_set_attr("data_csv", lambda t: "\n".join(t.split("\n")[:-2]) + "\n"), "observations, the saved data 29"),
    # a response value changed
    (_set_attr("data_csv", lambda t: t.replace("1545", "1546", 1)), "observed response differs"),
    (_set_attr("priors_json", lambda t: t[:-1]), "cannot be read back .*JSONDecodeError"),
    (_set_attr("priors_json", lambda t: '{"sd_Batch": {"class": "HalfNormal", "kwargs": {"sigma": -1}}}'),
     "saved priors are not valid"),
])
def test_edited_files_are_refused(tmp_path, edit, message):
    with pytest.raises(PosteriorFileError, match=message):
        blm.load(_edited(tmp_path, edit))


def test_edited_draws_are_refused(tmp_path):
    def drop_sd(tree):
        tree["posterior"] = xr.DataTree(tree["posterior"].to_dataset().drop_vars("sd_Batch"))

    with pytest.raises(PosteriorFileError, match="no variable 'sd_Batch'"):
        blm.load(_edited(tmp_path, drop_sd))

    def relabel_terms(tree):
        ds = tree["posterior"].to_dataset()
        tree["posterior"] = xr.DataTree(ds.assign_coords(term=["Intercept"]))

    with pytest.raises(PosteriorFileError, match="beta is labelled \\['Intercept'\\] along term"):
        blm.load(_edited(tmp_path, relabel_terms))


def test_round_trip_of_this_release_keeps_arviz_attrs(tmp_path):
    """A file this release wrote loads as a DataTree whose posterior ArviZ 1.x can summarise."""
    from arviz_stats import summary

    post = blm.load(DATA / "v0.1.0_dyestuff.nc")
    again = blm.load(post.to_netcdf(tmp_path / "again.nc"))
    assert again.idata.posterior.attrs["bayeslmm_version"] == blm.__version__
    pd.testing.assert_frame_equal(again.fixef(), post.fixef())
    table = summary(again.idata, var_names=["beta"], kind="stats", round_to="none")
    assert table.loc["beta[(Intercept)]", "mean"] == pytest.approx(post.fixef().loc["(Intercept)", "mean"])
    shutil.copy(DATA / "v0.1.0_dyestuff.nc", tmp_path / "copy.nc")  # the shipped file is not modified by loading
    blm.load(tmp_path / "copy.nc")
    assert (tmp_path / "copy.nc").read_bytes() == (DATA / "v0.1.0_dyestuff.nc").read_bytes()


def test_arviz_1_functions_take_post_idata():
    """post.idata is what ArviZ 1.x works with: its summary and trace plot run on it (no
    warning, no conversion) and agree with bayeslmm's own verbs."""
    import arviz as az
    import matplotlib.pyplot as plt

    post = blm.load(DATA / "v0.1.0_dyestuff.nc")
    table = az.summary(post.idata, var_names=["beta", "sigma"], round_to="none")
    assert table.loc["beta[(Intercept)]", "mean"] == pytest.approx(post.fixef().loc["(Intercept)", "mean"])
    assert table.loc["sigma", "r_hat"] == pytest.approx(post.diagnostics().loc["sigma", "r_hat"])
    collection = az.plot_trace(post.idata, var_names=["beta", "sigma"])
    assert set(collection.viz["plot"].data_vars) == {"beta", "sigma"}  # one panel each
    plt.close("all")
