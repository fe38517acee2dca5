"""The ``bayeslmm`` command.

    bayeslmm fit models/sleepstudy.toml [--out DIR] [--method reml|ml|map|sample|all]
    bayeslmm fit --data sleepstudy --formula "Reaction ~ Days + (Days | Subject)" --out DIR
    bayeslmm datasets

``fit`` prints the lmer-style summary of the point fit and the posterior summary, and
writes to DIR: ``summary.txt``, ``posterior.nc``, the figures as PNG and ``report.html``.
Bad input prints the message and exits with status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from .errors import BayesLMMError

FAST = {"draws": 200, "tune": 200, "chains": 2}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bayeslmm", description="Bayesian linear mixed models with lme4 formulas")
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("fit", help="fit a model file, or --data/--formula")
    fit.add_argument("model", nargs="?", help="a model file (TOML), see the README")
    fit.add_argument("--data", help="a bundled data set name or a CSV file (with --formula)")
    fit.add_argument("--formula", help="an lme4 formula (with --data)")
    fit.add_argument("--out", help="folder for summary.txt, posterior.nc, figures and report.html")
    fit.add_argument("--method", choices=["reml", "ml", "map", "sample", "all"],
                     help="what to fit (default: the model file's method, else all)")
    fit.add_argument("--draws", type=int)
    fit.add_argument("--tune", type=int)
    fit.add_argument("--chains", type=int)
    fit.add_argument("--seed", type=int)
    fit.add_argument("--family", choices=["gaussian", "binomial", "poisson", "negative_binomial"],
                     help="response family (default: the model file's, else gaussian: an LMM)")
    fit.add_argument("--link", help="link function of a GLMM family (logit, probit, cloglog, log)")
    fit.add_argument("--fast", action="store_true", help="few draws (200 x 2 chains): a quick look")
    fit.add_argument("--no-progress", action="store_true", help="no progress bar while sampling")
    commands.add_parser("datasets", help="list the bundled data sets")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "datasets":
            return _datasets()
        return _fit(args)
    except BayesLMMError as exc:
        print(f"bayeslmm: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the user gave: a folder for a file, a file for a folder, no permission
        print(f"bayeslmm: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bayeslmm: interrupted", file=sys.stderr)
        return 130


def _datasets() -> int:
    from .datasets import list_datasets

    table = list_datasets()
    for name, row in table.iterrows():
        print(f"{name:12s} {row['rows']:>6d} rows  {row['description']}")
        print(f"{'':12s} columns: {row['columns']}")
    return 0


def _spec(args):
    from .frontend.modelfile import ModelSpec, read_model_file

    if args.model:
        if args.data or args.formula:
            raise BayesLMMError("give either a model file or --data and --formula, not both")
        return read_model_file(args.model)
    if not (args.data and args.formula):
        raise BayesLMMError("give a model file, or both --data and --formula")
    return ModelSpec(name=Path(args.data).stem, data=args.data, formula=args.formula)


def _fit(args) -> int:
    import numpy as np

    from .frontend.modelfile import check_sample_settings
    from .model import LMM

    spec = _spec(args)
    method = args.method or spec.method
    settings = {"draws": 1000, "tune": 1000, "chains": 4, "seed": None, **spec.sample}
    if args.fast:
        settings.update(FAST)
    for key in ("draws", "tune", "chains", "seed"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    check_sample_settings({k: v for k, v in settings.items() if v is not None}, "the command line")
    out = Path(args.out) if args.out else None
    if out:
        if out.exists() and not out.is_dir():
            raise BayesLMMError(f"--out {out} is a file; give a folder (it is created if missing)")
        blocking = next((parent for parent in out.parents if parent.exists() and not parent.is_dir()), None)
        if blocking is not None:
            raise BayesLMMError(f"--out {out} cannot be created: {blocking} is a file, not a folder")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BayesLMMError(f"--out {out} cannot be created: {exc.strerror or exc}") from exc

    data = spec.load_data()
    family = args.family or spec.family
    if family != "gaussian":
        return _fit_glmm(args, spec, data, family, method, settings, out)
    model = LMM(spec.formula, data, priors=spec.priors or None)
    texts: list[tuple[str, str]] = []
    point = post = None
    if method in ("reml", "ml", "map", "all"):
        kind = method if method != "all" else ("reml" if spec.reml else "ml")
        point = model.fit(kind)
        texts.append((f"Point estimates ({kind.upper()})", point.summary()))
        print(texts[-1][1], "\n", flush=True)
    if method in ("sample", "all"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            post = model.sample(draws=settings["draws"], tune=settings["tune"], chains=settings["chains"],
                                random_seed=settings["seed"], progressbar=not args.no_progress,
                                **{k: v for k, v in settings.items() if k in ("target_accept", "sampler",
                                                                             "parametrization")})
        for warning in caught:
            print(f"warning: {warning.message}", file=sys.stderr)
        texts.append(("Posterior", post.summary()))
        print(texts[-1][1], flush=True)
    if out:
        _write_outputs(out, spec, model, point, post, texts, np)
        print(f"\nwrote {out}/summary.txt, figures and {out}/report.html")
    return 0


def _fit_glmm(args, spec, data, family, method, settings, out) -> int:
    """A GLMM from the command line or a model file: the ML (glmer) or MAP fit, and the
    posterior; with ``--out``, summary.txt."""
    from .model import GLMM

    if method == "reml":
        raise BayesLMMError(f"--method reml is for Gaussian models; a {family} model takes ml, map, sample or all")
    model = GLMM(spec.formula, data, family=family, link=args.link or spec.link, priors=spec.priors or None)
    texts = []
    if method in ("ml", "map", "all"):
        kind = "ml" if method == "all" else method
        point = model.fit(kind)
        texts.append((f"Point estimates ({kind.upper()})", point.summary()))
        print(texts[-1][1], "\n", flush=True)
    if method in ("sample", "all"):
        post = model.sample(draws=settings["draws"], tune=settings["tune"], chains=settings["chains"],
                            random_seed=settings["seed"], progressbar=not args.no_progress,
                            **{k: v for k, v in settings.items() if k == "target_accept"})
        texts.append(("Posterior", post.summary()))
        print(texts[-1][1], flush=True)
    if out:
        (out / "summary.txt").write_text("\n\n".join(f"{title}\n{text}" for title, text in texts) + "\n")
        _write_glmm_report(out, spec, model, point if method in ("ml", "map", "all") else None, texts)
        print(f"\nwrote {out}/summary.txt, checks.png and {out}/report.html")
    return 0


def _write_glmm_report(out: Path, spec, model, point, texts) -> None:
    from .reporting.glmm_checks import plot_checks
    from .reporting.report_html import write_report

    sections: list[tuple[str, object]] = list(texts)
    figures = []
    if point is not None:
        sections.append(("ICC (Nakagawa, latent scale)", point.icc().to_frame("value")))
        sections.append(("R2 (Nakagawa, latent scale)", point.r2().to_frame("value")))
        sections.append(("Simulated quantile residuals: tests", point.quantile_residuals(random_seed=1).table()))
        figure = plot_checks(point)
        figure.savefig(out / "checks.png", dpi=90, bbox_inches="tight")
        figures.append(("Quantile residuals, rootogram or binned residuals, link-scale shrinkage",
                        out / "checks.png"))
    meta = {"formula": spec.formula, "data": spec.data, "family": model.family.describe(),
            "observations": str(model.design.nobs)}
    write_report(out / "report.html", f"bayeslmm: {spec.name}", meta, sections, figures)


def _write_outputs(out: Path, spec, model, point, post, texts, np) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .reporting.report_html import write_report

    (out / "summary.txt").write_text("\n\n".join(f"== {title} ==\n{text}" for title, text in texts) + "\n",
                                     encoding="utf-8")
    result = post if post is not None else point
    sections: list[tuple[str, object]] = [(title, text) for title, text in texts]
    if post is not None:
        post.to_netcdf(out / "posterior.nc")
    figures = []

    def save(name: str, caption: str, make) -> None:
        try:
            figure = make()
        except BayesLMMError as exc:  # a figure that does not apply to this model
            print(f"note: no {name} figure: {exc}", file=sys.stderr)
            return
        figure = getattr(figure, "figure", figure)
        path = out / f"{name}.png"
        figure.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(figure)
        figures.append((caption, path))

    save("shrinkage", "No, complete and partial pooling: how far each group was pulled", result.plot_shrinkage)
    save("group_effects", "Group effects with intervals (caterpillar plot)", result.plot_ranef)
    slopes = [t for b in model.design.blocks for t in b.terms if t != "(Intercept)"]
    if slopes:
        save("icc", f"ICC as a function of {slopes[0]}", lambda: result.plot_icc(x=slopes[0]))
    elif post is not None:
        save("icc", "Posterior of the intraclass correlation", lambda: _icc_histogram(result))
    else:
        save("icc", "Intraclass correlation at the point estimates", lambda: _icc_bars(result))
    save("ppc", "Posterior predictive check" if post is not None else
         "Predictive check: data replicated at the point estimates", lambda: result.ppc(random_seed=1))
    save("residuals", "Residual checks: level-1 residuals and random-effect normality",
         lambda: result.check_residuals(random_seed=1))
    sections.append(("ICC (Nakagawa)", result.icc()))
    sections.append(("R2 (Nakagawa)", result.r2()))
    meta = {"formula": spec.formula, "data": spec.data, "observations": str(model.design.nobs)}
    if spec.description:
        meta["description"] = spec.description
    write_report(out / "report.html", f"bayeslmm: {spec.name}", meta, sections, figures)


def _icc_histogram(result):
    import matplotlib.pyplot as plt

    draws = result.icc(draws=True)
    figure, axis = plt.subplots(figsize=(6, 3.5))
    values = draws["adjusted"] if hasattr(draws, "columns") and "adjusted" in draws else draws
    axis.hist(values, bins=30, color="#4c72b0", edgecolor="white")
    axis.set_xlabel("adjusted ICC")
    axis.set_ylabel("posterior draws")
    axis.set_title("Intraclass correlation: share of variance between groups")
    return figure


def _icc_bars(result):
    """A point fit's ICCs (adjusted and per grouping factor) as labelled bars."""
    import matplotlib.pyplot as plt

    table = result.icc()["estimate"]
    figure, axis = plt.subplots(figsize=(6, 1.2 + 0.5 * len(table)))
    axis.barh(range(len(table)), table.to_numpy(), color="#4c72b0")
    axis.set_yticks(range(len(table)), [str(name) for name in table.index])
    for i, value in enumerate(table.to_numpy()):
        axis.text(min(value, 0.85) + 0.01, i, f"{value:.3f}", va="center")
    axis.set_xlim(0, 1)
    axis.invert_yaxis()
    axis.set_xlabel("ICC (share of variance between groups)")
    axis.set_title("Intraclass correlation (point estimates)")
    figure.tight_layout()
    return figure


if __name__ == "__main__":
    sys.exit(main())
