"""Stage 4b: the posterior result.

A :class:`PosteriorResult` holds its draws in ``idata``: an ``xarray.DataTree`` with
ArviZ 1.x's groups (what ``arviz_base.from_dict`` / ``convert_to_datatree`` produce; it
replaced ArviZ 0.x's ``InferenceData`` in bayeslmm 0.2.0, and ``idata.posterior``,
``idata.log_likelihood`` etc. read as before). One layout, whatever sampler or
parametrization made it:

- ``posterior``: ``beta`` (term), ``sigma``, and per bar with label L (the group name;
  a second bar on the same group is ``L.1``): ``sd_L`` (``L__term``), ``cor_L``
  (``L__pair``, correlated bars with two or more terms), ``r_L`` (``L__level``,
  ``L__term``), the group effects;
- ``log_likelihood``: ``y`` (obs), for LOO; ``observed_data``: ``y``; ``sample_stats``
  (``diverging``, ...) from the sampler;
- ``posterior.attrs``: formula, sampler, parametrization, priors, package version,
  data columns.

It answers the same verbs as the REML result (``fixef``, ``varcorr``, ``ranef``,
``coef``, ``summary``) with posterior means, sds, intervals and convergence diagnostics.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import BayesLMMError, SamplingWarning
from ..frontend.design import Design
from ..priors import PriorSet
from ..sampling.bayes import bar_labels, correlation_pairs
from .point import FitResult, merge_by_group, varcorr_layout, varcorr_values

#: above this many (draws x observations) the pointwise log-likelihood is not stored
_MAX_LOGLIK_CELLS = 50_000_000


def probability_of_direction(draws: np.ndarray) -> np.ndarray:
    """Share of draws (rows) on the majority side of zero, per column (bayestestR's ``pd``)."""
    draws = np.asarray(draws, dtype=float)
    return np.maximum(np.mean(draws > 0, axis=0), np.mean(draws < 0, axis=0))


def _interval(draws: np.ndarray, prob: float, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    tail = (1.0 - prob) / 2.0
    return np.quantile(draws, tail, axis=axis), np.quantile(draws, 1.0 - tail, axis=axis)


@dataclass(frozen=True, eq=False)
class PosteriorResult(FitResult):
    """Posterior draws of a linear mixed model (see the module docstring for the layout).

    Build it with :meth:`LMM.sample`; load a saved one with :func:`bayeslmm.load`.
    Construction checks convergence and warns (:class:`SamplingWarning`) naming every
    parameter with R-hat > 1.01 or bulk ESS < 400, and the number of divergences.

    Attributes
    ----------
    idata : xarray.DataTree
        The draws, in ArviZ 1.x's layout (groups ``posterior``, ``sample_stats``,
        ``log_likelihood``, ``observed_data``); pass it to ``arviz`` functions
        (``az.plot_trace(post.idata)``). The name is kept from bayeslmm 0.1.0, where it was
        an ``arviz.InferenceData``.
    design, prior_set
        The design and the priors the posterior was sampled under.
    """

    design: Design
    idata: object = field(repr=False)
    prior_set: PriorSet = field(repr=False)
    check: bool = True

    def __post_init__(self):
        if self.check:
            message = self.diagnostic_message()
            if message:
                warnings.warn(message, SamplingWarning, stacklevel=4)

    # ---------------------------------------------------------- primitives
    def _stacked(self, name: str) -> np.ndarray:
        """Draws of a posterior variable with chains and draws flattened first."""
        values = self.idata.posterior[name].to_numpy()
        return values.reshape((-1,) + values.shape[2:])

    def fixef_draws(self) -> np.ndarray:
        return self._stacked("beta")

    def sigma_draws(self) -> np.ndarray:
        return self._stacked("sigma")

    def cov_draws(self) -> list[np.ndarray]:
        covs = []
        for label, block in zip(bar_labels(self.design), self.design.blocks):
            sd = self._stacked(f"sd_{label}")
            corr = np.broadcast_to(np.eye(block.n_terms), (len(sd), block.n_terms, block.n_terms)).copy()
            if block.correlated and block.n_terms > 1:
                cor = self._stacked(f"cor_{label}")
                for c, (i, j, _) in enumerate(correlation_pairs(block.terms)):
                    corr[:, i, j] = corr[:, j, i] = cor[:, c]
            covs.append(corr * sd[:, :, None] * sd[:, None, :])
        return covs

    def ranef_draws(self) -> list[np.ndarray]:
        return [self._stacked(f"r_{label}") for label in bar_labels(self.design)]

    @property
    def n_draws(self) -> int:
        return int(self.idata.posterior.sizes["chain"] * self.idata.posterior.sizes["draw"])

    # ---------------------------------------------------------- diagnostics
    def diagnostics(self) -> pd.DataFrame:
        """R-hat, bulk and tail ESS of every reported parameter (not the group effects)."""
        from arviz_stats import summary

        names = ["beta", "sigma"] + [v for v in self.idata.posterior.data_vars
                                     if v.startswith(("sd_", "cor_"))]
        with warnings.catch_warnings():
            # ArviZ's shape notices (one chain, few draws) are replaced by our own message
            warnings.simplefilter("ignore")
            # unrounded, so that R-hat 1.0143 is compared as such with 1.01
            table = summary(self.idata, var_names=names, kind="diagnostics", round_to="none")
        return table[["r_hat", "ess_bulk", "ess_tail"]].astype(float)

    @property
    def divergences(self) -> int:
        stats = self.idata.children.get("sample_stats")
        if stats is None or "diverging" not in stats.data_vars:
            return 0
        return int(stats["diverging"].sum())

    def diagnostic_message(self) -> str:
        """Text naming the convergence problems, or '' when there are none."""
        problems = []
        if self.idata.posterior.sizes["chain"] > 1:
            table = self.diagnostics()
            bad_rhat = table.index[~(table["r_hat"] <= 1.01)].tolist()  # NaN (one draw) is a problem too
            if bad_rhat:
                problems.append(f"R-hat > 1.01 for {', '.join(bad_rhat)}")
        else:
            table = self.diagnostics()
        bad_ess = table.index[~(table["ess_bulk"] >= 400)].tolist()  # NaN (one draw) is a problem too
        if bad_ess:
            problems.append(f"bulk ESS < 400 for {', '.join(bad_ess)}")
        if self.divergences:
            problems.append(f"{self.divergences} divergent transition(s)")
        if not problems:
            return ""
        return ("sampling problems: " + "; ".join(problems) + ". Remedies: more tune and draws "
                "(sample(tune=2000, draws=2000)); a higher target_accept (0.95 or 0.99) for "
                "divergences; a simpler random part ('||' or fewer terms) or more informative "
                "priors on the sds if they persist.")

    # ---------------------------------------------------------- tables
    def fixef(self, prob: float = 0.95) -> pd.DataFrame:
        """Posterior mean, sd, equal-tailed interval, probability of direction (``pd``,
        the posterior probability that the effect has the sign of its median, between 0.5
        and 1; the Bayesian counterpart of a p-value, Makowski et al. 2019), R-hat and ESS
        of each fixed effect."""
        draws = self.fixef_draws()
        lower, upper = _interval(draws, prob)
        diag = self.diagnostics()
        keys = [f"beta[{name}]" for name in self.design.fixed_names]
        return pd.DataFrame({"mean": draws.mean(axis=0), "sd": draws.std(axis=0, ddof=1),
                             "lower": lower, "upper": upper, "pd": probability_of_direction(draws),
                             "rhat": diag.loc[keys, "r_hat"].to_numpy(),
                             "ess_bulk": diag.loc[keys, "ess_bulk"].to_numpy(),
                             "ess_tail": diag.loc[keys, "ess_tail"].to_numpy()},
                            index=pd.Index(self.design.fixed_names, name="term"))

    def varcorr(self, prob: float = 0.95) -> pd.DataFrame:
        """Variance components in the rows of R's ``as.data.frame(VarCorr())``.

        Columns: ``group, var1, var2``; ``vcov`` and ``sdcor`` (posterior means);
        ``sdcor_sd``, ``lower``, ``upper`` (posterior sd and equal-tailed ``prob``
        interval of ``sdcor``); ``vcov_sd``, ``vcov_lower``, ``vcov_upper`` (the same
        for ``vcov``).
        """
        layout = varcorr_layout(self.design)
        values = varcorr_values(layout, self.cov_draws(), self.sigma_draws())
        lower, upper = _interval(values[:, :, 1], prob)
        vcov_lower, vcov_upper = _interval(values[:, :, 0], prob)
        frame = layout[["group", "var1", "var2"]].copy()
        frame["vcov"] = values[:, :, 0].mean(axis=0)
        frame["sdcor"] = values[:, :, 1].mean(axis=0)
        frame["sdcor_sd"] = values[:, :, 1].std(axis=0, ddof=1)
        frame["lower"] = lower
        frame["upper"] = upper
        frame["vcov_sd"] = values[:, :, 0].std(axis=0, ddof=1)
        frame["vcov_lower"] = vcov_lower
        frame["vcov_upper"] = vcov_upper
        return frame

    def _tidy_effects(self, per_block: list[np.ndarray], prob: float) -> pd.DataFrame:
        frames = []
        for block, draws in zip(self.design.blocks, per_block):
            lower, upper = _interval(draws, prob)
            frames.append(pd.DataFrame({
                "group": block.group,
                "level": np.repeat(block.levels, block.n_terms),
                "term": np.tile(block.terms, block.n_levels),
                "mean": draws.mean(axis=0).ravel(), "sd": draws.std(axis=0, ddof=1).ravel(),
                "lower": lower.ravel(), "upper": upper.ravel()}))
        return pd.concat(frames, ignore_index=True)

    def ranef(self, tidy: bool = False, prob: float = 0.95):
        """Group effects: dict group -> DataFrame of posterior means (lme4's layout), or
        with ``tidy=True`` one long frame with ``group, level, term, mean, sd, lower, upper``."""
        draws = self.ranef_draws()
        if tidy:
            return self._tidy_effects(draws, prob)
        return merge_by_group(self.design, [d.mean(axis=0) for d in draws])

    def coef(self, tidy: bool = False, prob: float = 0.95):
        """Fixed plus group effects per level, summarised over draws (so each group's
        coefficient carries its posterior sd and interval, which lme4 cannot give)."""
        beta = self.fixef_draws()
        names = list(self.design.fixed_names)
        totals = []
        for block, b in zip(self.design.blocks, self.ranef_draws()):
            total = b.copy()
            for t, term in enumerate(block.terms):
                if term in names:
                    total[:, :, t] += beta[:, names.index(term), None]
            totals.append(total)
        if tidy:
            return self._tidy_effects(totals, prob)
        return merge_by_group(self.design, [t.mean(axis=0) for t in totals])

    def summary(self, prob: float = 0.95) -> str:
        """lmer-like summary with posterior means, sds, intervals, R-hat and ESS."""
        from ..reporting.summary import posterior_summary

        return posterior_summary(self, prob)

    def __repr__(self) -> str:
        return self.summary()

    # ---------------------------------------------------------- persistence
    def to_netcdf(self, path) -> str:
        """Save the posterior with what :func:`bayeslmm.load` needs to rebuild the result:
        formula, priors, the data used (as CSV text), data column names and package version.

        The file is netCDF4 (HDF5, through h5netcdf) with one group per ``idata`` group,
        the layout ArviZ 0.x's ``InferenceData.to_netcdf`` wrote too."""
        from .. import __version__
        tree = self.idata.copy()
        data = self.design.data
        tree["posterior"].attrs = {**_netcdf_attrs(self.idata.posterior.attrs),
            "bayeslmm_version": __version__,
            "formula": self.design.formula.text,
            "priors": self.prior_set.describe(self.design),
            "priors_json": json.dumps(priors_to_json(self.prior_set, self.design)),
            "data_columns": json.dumps([str(c) for c in data.columns]),
            "data_dtypes": json.dumps({str(c): str(t) for c, t in data.dtypes.items()}),
            "data_schema": json.dumps(frame_schema(data)),
            "data_csv": frame_to_csv(data),
        }
        for node in tree.subtree:
            if node is not tree["posterior"]:
                node.attrs = _netcdf_attrs(node.attrs)
        path = _as_path(path, "to_netcdf")
        tree.to_netcdf(str(path), engine="h5netcdf")
        return str(path)


def _netcdf_attrs(attrs) -> dict:
    """Attributes netCDF can store: ArviZ's list-valued ones (``sample_dims``) as JSON text."""
    return {key: json.dumps(value) if isinstance(value, (list, tuple, dict)) else value
            for key, value in attrs.items()}


# The data travel as CSV text plus a schema, so that loading rebuilds the same design:
# a Categorical keeps its categories and their order (its codes are written, not its
# labels), nullable and small integer types keep their dtype, and text stays text (a level
# called "NA" is not read back as missing).
_MISSING = "<NA:bayeslmm>"


def _json_value(value):
    return value.item() if hasattr(value, "item") else value


def frame_schema(data: pd.DataFrame) -> list[dict]:
    """Per column: its name, dtype and, for a Categorical, its categories and order."""
    schema = []
    for name, column in data.items():
        entry = {"name": str(name), "dtype": str(column.dtype)}
        if isinstance(column.dtype, pd.CategoricalDtype):
            cats = column.cat.categories
            entry.update(categories=[_json_value(c) for c in cats], categories_dtype=str(cats.dtype),
                         ordered=bool(column.cat.ordered))
        schema.append(entry)
    return schema


def frame_to_csv(data: pd.DataFrame) -> str:
    out = data.copy()
    out.columns = [str(c) for c in out.columns]
    for name, column in out.items():
        if isinstance(column.dtype, pd.CategoricalDtype):
            out[name] = column.cat.codes  # -1 for missing
    return out.to_csv(index=False, na_rep=_MISSING)


def frame_from_csv(text: str, schema: list[dict]) -> pd.DataFrame:
    """Inverse of :func:`frame_to_csv` given :func:`frame_schema`."""
    raw = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[_MISSING])
    data = {}
    for entry in schema:
        name, dtype, column = entry["name"], entry["dtype"], raw[entry["name"]]
        if dtype == "category":
            cats = pd.Index(entry["categories"])
            if entry["categories_dtype"] != "object":
                cats = cats.astype(entry["categories_dtype"])
            data[name] = pd.Categorical.from_codes(column.astype(int), categories=cats, ordered=entry["ordered"])
        elif dtype in ("bool", "boolean"):
            data[name] = column.map({"True": True, "False": False}).astype(dtype)
        elif dtype.startswith("datetime64"):
            data[name] = pd.to_datetime(column).astype(dtype)
        elif dtype.startswith("timedelta64"):
            data[name] = pd.to_timedelta(column).astype(dtype)
        elif dtype in ("object", "string", "str"):
            data[name] = column.astype(dtype)
        else:  # numbers of every width, nullable or not; anything rarer stays text
            try:
                data[name] = pd.to_numeric(column).astype(dtype)
            except (ValueError, TypeError):
                data[name] = column
    return pd.DataFrame(data)


def priors_to_json(prior_set: PriorSet, design: Design) -> dict:
    """The priors the user set, keyed as the user keyed them (the defaults follow from
    the data, which are saved too), so that loading gives the same prior set."""
    def enc(prior):
        return {"class": type(prior).__name__, "kwargs": prior.kwargs()}

    by_parameter = {}
    if prior_set.intercept is not None:
        by_parameter["Intercept"] = prior_set.intercept
    by_parameter.update({f"b_{term}": prior for term, prior in prior_set.fixed.items()})
    by_parameter.update({f"sd_{design.blocks[k].group}__{term}": prior for (k, term), prior in prior_set.sd.items()})
    by_parameter.update({f"cor_{design.blocks[k].group}": prior for k, prior in prior_set.cor.items()})
    by_parameter["sigma"] = prior_set.sigma
    return {prior_set.sources[name]: enc(prior) for name, prior in by_parameter.items()
            if prior_set.sources[name] != "default"}


def priors_from_json(spec: dict) -> dict:
    from .. import priors as P
    return P.priors_from_mapping(spec)  # the prior classes only, never any name of the module


class PosteriorFileError(BayesLMMError, ValueError):
    """A file given to :func:`bayeslmm.load` is not a readable posterior saved by
    :meth:`PosteriorResult.to_netcdf`, or its contents disagree with each other."""


#: the attributes :meth:`PosteriorResult.to_netcdf` writes and :func:`load` needs
_REQUIRED_ATTRS = ("formula", "data_csv", "priors_json")


def _as_path(path, verb: str) -> Path:
    """A file name as a Path, or a PosteriorFileError: ``None``, a number or a list would
    otherwise become a raw TypeError, or a file literally named 'None'."""
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise PosteriorFileError(f"{verb}() needs a file name (a str or pathlib.Path), not "
                                 f"{type(path).__name__} {path!r}"[:200])
    return Path(path)


def _read_tree(path: Path):
    """The file as an in-memory DataTree, or a PosteriorFileError saying why not."""
    import xarray as xr

    if not path.exists():
        raise PosteriorFileError(f"{path}: no such file")
    if path.is_dir():
        raise PosteriorFileError(f"{path} is a folder; give the posterior.nc file inside it")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(8)
    except OSError as exc:
        raise PosteriorFileError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    if magic != b"\x89HDF\r\n\x1a\n":
        raise PosteriorFileError(f"{path} is not a netCDF4/HDF5 file (it does not start with the HDF5 "
                                 "signature): load() reads files written by PosteriorResult.to_netcdf")
    try:
        tree = xr.open_datatree(str(path), engine="h5netcdf")
        try:
            tree.load()  # into memory, so that the file is closed on return
        finally:
            tree.close()
    except Exception as exc:  # h5py/h5netcdf/xarray raise OSError, KeyError, ValueError, ...
        raise PosteriorFileError(f"{path} is damaged or truncated: it cannot be read as netCDF4 "
                                 f"({type(exc).__name__}: {exc})") from exc
    return tree


def _check_consistent(path: Path, tree, design: Design) -> None:
    """The draws in ``tree`` have the shape and labels the rebuilt ``design`` implies."""
    posterior = tree["posterior"]

    def labels(name, dim):
        if name not in posterior.data_vars:
            raise PosteriorFileError(f"{path}: the posterior has no variable {name!r}, which the saved "
                                     f"formula {design.formula.text!r} needs (the file was edited or is "
                                     "not bayeslmm's)")
        variable = posterior[name]
        if variable.dims[:2] != ("chain", "draw"):
            raise PosteriorFileError(f"{path}: {name} has dims {variable.dims}, not (chain, draw, ...)")
        if dim not in variable.dims:
            raise PosteriorFileError(f"{path}: {name} has dims {variable.dims}, without {dim!r}")
        return [str(v) for v in variable[dim].values]

    def same(name, dim, expected):
        found = labels(name, dim)
        if found != [str(v) for v in expected]:
            raise PosteriorFileError(f"{path}: {name} is labelled {found[:5]}{'...' if len(found) > 5 else ''} "
                                     f"along {dim}, but the saved formula and data give "
                                     f"{list(expected)[:5]}{'...' if len(expected) > 5 else ''}: the file "
                                     "was edited or its parts do not belong together")

    same("beta", "term", design.fixed_names)
    if "sigma" not in posterior.data_vars or posterior["sigma"].dims != ("chain", "draw"):
        raise PosteriorFileError(f"{path}: the posterior has no scalar sigma")
    for label, block in zip(bar_labels(design), design.blocks):
        same(f"sd_{label}", f"{label}__term", block.terms)
        same(f"r_{label}", f"{label}__level", block.levels)
        same(f"r_{label}", f"{label}__term", block.terms)
        if block.correlated and block.n_terms > 1:
            same(f"cor_{label}", f"{label}__pair", [name for _, _, name in correlation_pairs(block.terms)])
    for group in ("observed_data", "log_likelihood"):
        node = tree.children.get(group)
        if node is not None and "y" in node.data_vars and node["y"].sizes.get("obs") != design.nobs:
            raise PosteriorFileError(f"{path}: {group} has {node['y'].sizes.get('obs')} observations, the "
                                     f"saved data {design.nobs}: the file was edited")
    observed = tree.children.get("observed_data")
    if observed is not None and "y" in observed.data_vars:
        if not np.allclose(observed["y"].to_numpy(), design.y, rtol=1e-12, atol=0.0, equal_nan=True):
            raise PosteriorFileError(f"{path}: the observed response differs from the response of the saved "
                                     "data: the file was edited")


def load(path) -> PosteriorResult:
    """Load a posterior saved with :meth:`PosteriorResult.to_netcdf`.

    Reads files of this release and of bayeslmm 0.1.0 (ArviZ 0.23's ``InferenceData``
    netCDF has the same groups). ``idata`` of the result is an ``xarray.DataTree``.

    Raises
    ------
    PosteriorFileError
        (a :class:`BayesLMMError`) for a missing, truncated or foreign file, one without
        bayeslmm's attributes, or one whose draws, formula and data disagree (edited).
    """
    from ..model import LMM

    path = _as_path(path, "load")
    tree = _read_tree(path)
    if "posterior" not in tree.children:
        raise PosteriorFileError(f"{path} has no posterior group (groups: {sorted(tree.children) or 'none'}): "
                                 "it was not written by bayeslmm's to_netcdf")
    attrs = tree["posterior"].attrs
    missing = [key for key in _REQUIRED_ATTRS if key not in attrs]
    if missing:
        raise PosteriorFileError(f"{path} was not written by bayeslmm's to_netcdf (its posterior lacks the "
                                 f"attributes {', '.join(missing)})")
    try:
        if "data_schema" in attrs:
            data = frame_from_csv(attrs["data_csv"], json.loads(attrs["data_schema"]))
        else:  # files written before the schema: numbers and text only
            dtypes = json.loads(attrs["data_dtypes"])
            text_columns = {c: str for c, t in dtypes.items() if not (t.startswith(("int", "float", "bool")))}
            data = pd.read_csv(io.StringIO(attrs["data_csv"]), dtype=text_columns)
        priors = priors_from_json(json.loads(attrs["priors_json"]))
    except BayesLMMError as exc:
        raise PosteriorFileError(f"{path}: its saved priors are not valid: {exc}") from exc
    except Exception as exc:  # bad JSON, a schema that names no column, unparsable CSV
        raise PosteriorFileError(f"{path}: its saved data or priors cannot be read back "
                                 f"({type(exc).__name__}: {exc}); the file was edited or damaged") from exc
    try:
        model = LMM(attrs["formula"], data, priors=priors)
        prior_set = model.resolved_priors()
    except BayesLMMError as exc:
        raise PosteriorFileError(f"{path}: its saved formula, data and priors do not make a model: {exc}") from exc
    _check_consistent(path, tree, model.design)
    for node in tree.subtree:  # ArviZ 1.x keeps sample_dims as a list
        if isinstance(node.attrs.get("sample_dims"), str):
            try:
                node.attrs["sample_dims"] = json.loads(node.attrs["sample_dims"])
            except ValueError:
                pass
    return PosteriorResult(design=model.design, idata=tree, prior_set=prior_set, check=False)


def as_dataset(group):
    """An ``xarray.Dataset`` from a DataTree node (or a Dataset, returned as is)."""
    import xarray as xr

    return group.to_dataset(inherit=False) if isinstance(group, xr.DataTree) else group


def _group(raw, name: str):
    """Group ``name`` of a sampler's output (a DataTree, or a dict of Datasets), or None."""
    if isinstance(raw, dict):
        value = raw.get(name)
    else:
        value = raw.children.get(name)
    return None if value is None else as_dataset(value)


def add_group(idata, name: str, dataset) -> None:
    """Add (or replace) group ``name`` of a posterior's DataTree."""
    import xarray as xr

    idata[name] = xr.DataTree(dataset=as_dataset(dataset))


def to_inference_data(design: Design, idata, prior_set: PriorSet, sampler: str, parametrization: str,
                      loglik: bool = True):
    """The contract's layout as an ``xarray.DataTree`` (ArviZ 1.x's groups).

    ``idata``: the sampler's output, a DataTree (nutpie, PyMC) or a dict of Datasets with
    ``posterior`` and optionally ``sample_stats``. Keeps only the contract's variables, adds
    log-likelihood (unless ``loglik`` is False or the table would be too large), observed
    data and attrs."""
    import xarray as xr

    from .. import __version__
    raw_posterior = _group(idata, "posterior")
    keep = ["beta", "sigma"] + [name for label in bar_labels(design)
                                for name in (f"sd_{label}", f"cor_{label}", f"r_{label}")]
    posterior = raw_posterior[[name for name in keep if name in raw_posterior.data_vars]]
    posterior.attrs = {key: value for key, value in raw_posterior.attrs.items()
                       if key in ("created_at", "sample_dims", "creation_library", "creation_library_version")}
    posterior.attrs.update({"formula": design.formula.text, "sampler": sampler,
                            "parametrization": parametrization, "priors": prior_set.describe(design),
                            "bayeslmm_version": __version__,
                            "data_columns": json.dumps([str(c) for c in design.data.columns])})
    groups = {"posterior": posterior,
              "observed_data": xr.Dataset({"y": ("obs", design.y)}, coords={"obs": np.arange(design.nobs)})}
    stats = _group(idata, "sample_stats")
    if stats is not None:
        groups["sample_stats"] = stats
    out = xr.DataTree.from_dict(groups)
    result = PosteriorResult(design=design, idata=out, prior_set=prior_set, check=False)
    n_chain, n_draw = posterior.sizes["chain"], posterior.sizes["draw"]
    if loglik and n_chain * n_draw * design.nobs <= _MAX_LOGLIK_CELLS:
        mu = result.fitted_draws()
        sigma = result.sigma_draws()
        # the normal log density in place (scipy's norm.logpdf takes ~10x longer on 16M cells)
        loglik = np.subtract(design.y[None, :], mu, out=mu)
        loglik /= sigma[:, None]
        loglik *= loglik
        loglik *= -0.5
        loglik -= (np.log(sigma) + 0.5 * np.log(2.0 * np.pi))[:, None]
        add_group(out, "log_likelihood", xr.Dataset(
            {"y": (("chain", "draw", "obs"), loglik.reshape(n_chain, n_draw, design.nobs))},
            coords={"chain": posterior.chain.values, "draw": posterior.draw.values, "obs": np.arange(design.nobs)}))
    return out
