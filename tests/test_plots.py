"""Figures (bayeslmm/plots.py) render for sleepstudy and Exam, on REML fits and short
posteriors: each is saved as a PNG in the test's temporary directory, must be non-empty
and must have the expected panels, titles and axis labels."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from matplotlib.quiver import Quiver

import bayeslmm as blm

from conftest import reference_fit, short_posterior

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def sleep_post(sleep_rs_posterior):
    return sleep_rs_posterior


@pytest.fixture(scope="module")
def exam_post():
    return short_posterior("normexam ~ standLRT + (standLRT | school)", blm.datasets.load("exam"), 22)


@pytest.fixture(params=["reml", "posterior"])
def sleep_fit(request, sleep_post):
    return reference_fit("sleep_rs") if request.param == "reml" else sleep_post


@pytest.fixture(params=["reml_ri", "reml_rs", "posterior_rs"])
def exam_fit(request, exam_post):
    return {"reml_ri": lambda: reference_fit("exam_ri"), "reml_rs": lambda: reference_fit("exam_rs"),
            "posterior_rs": lambda: exam_post}[request.param]()


def _visible_axes(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def _saved(fig, path):
    fig.savefig(path, dpi=60)
    assert path.stat().st_size > 5_000  # a real picture, not an empty canvas
    return path


def _labelled(ax):
    return bool(ax.get_title()) and bool(ax.get_xlabel())


def test_plot_ranef_sleepstudy(sleep_fit, tmp_path):
    fig = sleep_fit.plot_ranef(prob=0.9)
    _saved(fig, tmp_path / "ranef_sleep.png")
    axes = _visible_axes(fig)
    assert [ax.get_title() for ax in axes] == ["Subject: (Intercept)", "Subject: Days"]
    assert all(_labelled(ax) for ax in axes)
    # 18 subjects, sorted by their intercept effect
    table = sleep_fit.ranef(tidy=True)
    column = "mean" if "mean" in table.columns else "estimate"
    est = table.loc[table["term"] == "(Intercept)", column].to_numpy()
    xs = axes[0].lines[0].get_xdata()
    np.testing.assert_allclose(xs, np.sort(est))


def test_plot_ranef_exam(exam_fit, tmp_path):
    fig = exam_fit.plot_ranef()
    _saved(fig, tmp_path / "ranef_exam.png")
    assert len(_visible_axes(fig)) == exam_fit.design.blocks[0].n_terms
    assert len(_visible_axes(fig)[0].lines[0].get_xdata()) == 65

def test_plot_shrinkage_sleepstudy(sleep_fit, tmp_path):
    fig = sleep_fit.plot_shrinkage()
    _saved(fig, tmp_path / "shrinkage_sleep.png")
    (ax,) = _visible_axes(fig)  # intercept and slope: one 2-D panel
    assert ax.get_xlabel() == "(Intercept)" and ax.get_ylabel() == "Days"
    assert "Shrinkage" in ax.get_title()
    (arrows,) = [c for c in ax.collections if isinstance(c, Quiver)]
    assert len(arrows.U) == 18  # one arrow per subject


def test_plot_shrinkage_exam(exam_fit, tmp_path):
    fig = exam_fit.plot_shrinkage()
    _saved(fig, tmp_path / "shrinkage_exam.png")
    assert len(_visible_axes(fig)) == 1  # 2-D for (standLRT | school), 1-D for (1 | school)
    assert fig.axes[0].get_xlabel() in ("(Intercept)", "(Intercept) estimate")

def test_shrinkage_contours_are_centred_on_the_fixed_effects_and_outliers_stay_in_view():
    """Exam's school 48 has two pupils; its separate slope (-6.9) is drawn at the edge of
    the view instead of squeezing the 64 other schools into a strip."""
    fit = reference_fit("exam_rs")
    fig = fit.plot_shrinkage()
    ax = fig.axes[0]
    by_label = {line.get_label(): line for line in ax.lines}
    (off_label,) = [label for label in by_label if "off the scale" in label]
    assert "1 of 65 groups" in off_label
    contour = by_label["95% of the population distribution"]
    centre = np.array([contour.get_xdata().mean(), contour.get_ydata().mean()])
    np.testing.assert_allclose(centre, fit.fixef()["estimate"].to_numpy(), atol=1e-2)
    partial = by_label["partial pooling (mixed model)"].get_ydata()
    assert ax.get_ylim()[0] > -1.0 and np.ptp(partial) > 0.2 * np.ptp(ax.get_ylim())
    # nothing off the scale on sleepstudy
    lines = reference_fit("sleep_rs").plot_shrinkage().axes[0].lines
    assert not any("off the scale" in line.get_label() for line in lines)


def test_plot_groups_sleepstudy(sleep_fit, tmp_path):
    fig = sleep_fit.plot_groups(max_panels=8)
    _saved(fig, tmp_path / "groups_sleep.png")
    axes = _visible_axes(fig)
    assert len(axes) == 8
    assert axes[0].get_title() == "Subject 308" and axes[0].get_xlabel() == "Days"
    assert "first 8 of 18" in fig.get_suptitle()
    labels = axes[0].get_legend_handles_labels()[1]
    assert labels == ["complete pooling", "no pooling", "partial pooling"]


def test_plot_groups_exam(exam_fit, tmp_path):
    fig = exam_fit.plot_groups(max_panels=6)
    _saved(fig, tmp_path / "groups_exam.png")
    assert len(_visible_axes(fig)) == 6
    assert _visible_axes(fig)[0].get_xlabel() == "standLRT"
    with pytest.raises(blm.BayesLMMError, match="max_panels"):
        exam_fit.plot_groups(max_panels=0)


def test_plot_groups_title_clears_the_panels_with_many_groups():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = reference_fit("exam_rs").plot_groups(max_panels=65)
    canvas = FigureCanvasAgg(fig)  # matplotlib 3.11: a bare Figure's canvas has no renderer
    canvas.draw()
    renderer = canvas.get_renderer()
    title_bottom = fig._suptitle.get_window_extent(renderer).y0
    top_panel = max(ax.get_tightbbox(renderer).y1 for ax in _visible_axes(fig))
    assert title_bottom >= top_panel - 1

def test_plot_icc_sleepstudy(sleep_fit, tmp_path):
    fig = sleep_fit.plot_icc(x="Days")
    _saved(fig, tmp_path / "icc_sleep.png")
    (ax,) = _visible_axes(fig)
    assert ax.get_xlabel() == "Days" and "ICC" in ax.get_ylabel()
    curve = ax.lines[0].get_ydata()
    assert np.all((curve > 0) & (curve < 1))
    assert curve[-1] > curve[0]  # subjects diverge over the days of deprivation


def test_plot_icc_exam(exam_fit, tmp_path):
    if exam_fit.design.blocks[0].n_terms == 1:  # (1 | school): no slope to vary over
        with pytest.raises(blm.BayesLMMError, match="intercepts only"):
            exam_fit.plot_icc(x="standLRT")
    else:
        fig = exam_fit.plot_icc(x="standLRT")
        _saved(fig, tmp_path / "icc_exam.png")
        ax = fig.axes[0]
        assert ax.get_xlabel() == "standLRT" and ax.get_title() == "Intraclass correlation as a function of standLRT"
        grid = ax.lines[0].get_xdata()
        assert grid.min() < -2 and grid.max() > 2  # spans the observed standLRT range

def test_ppc_figure_sleepstudy(sleep_fit, tmp_path):
    check = sleep_fit.ppc(draws=40, random_seed=1)
    _saved(check.figure, tmp_path / "ppc_sleep.png")
    axes = _visible_axes(check.figure)
    assert len(axes) == 6  # density overlay + five statistics
    assert axes[0].get_xlabel() == "Reaction" and axes[0].get_ylabel() == "density"
    assert len(axes[0].lines) == 41  # 40 replicates and the data
    assert "p = " in axes[-1].get_title()


def test_ppc_figure_exam(exam_fit, tmp_path):
    check = exam_fit.ppc(draws=20, random_seed=1)
    _saved(check.figure, tmp_path / "ppc_exam.png")
    assert "sd of school means" in _visible_axes(check.figure)[-1].get_title()

def test_check_residuals_sleepstudy(sleep_fit, tmp_path):
    fig = sleep_fit.check_residuals(draws=50)
    _saved(fig, tmp_path / "residuals_sleep.png")
    axes = _visible_axes(fig)
    assert len(axes) == 4  # density, vs fitted, QQ of the intercept and of the slope effects
    assert [ax.get_title() for ax in axes[2:]] == ["Subject: (Intercept) effects (QQ)", "Subject: Days effects (QQ)"]
    assert all(_labelled(ax) for ax in axes)


def test_check_residuals_exam(exam_fit, tmp_path):
    fig = exam_fit.check_residuals(draws=30)
    _saved(fig, tmp_path / "residuals_exam.png")
    assert len(_visible_axes(fig)) == 2 + exam_fit.design.blocks[0].n_terms

def test_posterior_figures_show_bands(sleep_post):
    """On a posterior, uncertainty is drawn as bands (PolyCollections), not single lines."""
    from matplotlib.collections import PolyCollection

    fig = sleep_post.check_residuals(draws=50)
    assert all(any(isinstance(c, PolyCollection) for c in ax.collections) for ax in _visible_axes(fig))
    fig = sleep_post.plot_icc(x="Days")
    assert any(isinstance(c, PolyCollection) for c in fig.axes[0].collections)
    point = reference_fit("sleep_rs").plot_icc(x="Days")
    assert not any(isinstance(c, PolyCollection) for c in point.axes[0].collections)


@pytest.mark.parametrize("case", ["dyestuff2", "penicillin", "exam_sex"])
def test_figures_render_on_singular_crossed_and_three_term_fits(case, tmp_path):
    """dyestuff2 is singular (all group effects 0), penicillin crossed, exam_sex a
    three-term bar (1-D shrinkage panels)."""
    fit = reference_fit(case)
    n_terms = sum(block.n_terms for block in fit.design.blocks)
    assert len(_visible_axes(fit.plot_ranef())) == n_terms
    assert len(_visible_axes(fit.check_residuals())) == 2 + n_terms
    shrink = fit.plot_shrinkage()
    _saved(shrink, tmp_path / f"shrinkage_{case}.png")
    first = fit.design.blocks[0].n_terms
    assert len(_visible_axes(shrink)) == (1 if first == 2 else first)
    _saved(fit.plot_groups(max_panels=4), tmp_path / f"groups_{case}.png")
