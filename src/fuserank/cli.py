"""`fuserank <command>`: the command-line edge. Parses arguments, sets the process up, calls the job."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fuserank.config import RunConfig


def _configure_process() -> None:
    # Busy-waiting OpenMP threads made LightGBM fit times swing 100x on 2 shared cores.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Tokenizer worker threads would be forked into any child process and hang it.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
    return parser


def main(argv: list[str] | None = None) -> int:
    _configure_process()
    args = build_parser().parse_args(argv)
    from fuserank.config import ConfigError, load_config
    from fuserank.progress import set_quiet

    set_quiet(args.quiet)
    try:
        config = load_config(args.config, args.overrides)
    except (ConfigError, OSError) as err:
        print(f"fuserank: {err}", file=sys.stderr)
        return 2
    from fuserank.data.validate import DataError
    from fuserank.sources import SourceError

    try:
        return _run(args, config)
    except (DataError, SourceError) as err:
        print(f"fuserank: {err}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, config: RunConfig) -> int:
    command = args.command
    if command == "fetch":
        from fuserank.config import cache_dir
        from fuserank.sources import resolve

        refs = [config.sources.text_model]
        if config.data.dataset == "movielens-100k":
            refs.append(config.sources.movielens_100k)
        for ref in refs:
            print(f"{ref} -> {resolve(ref, cache_dir(config.sources))}")
        return 0
    if command == "ablate":
        from fuserank.ablation import format_table
        from fuserank.train_evaluate import ablate

        table, folder = ablate(config)
        print(format_table(table))
        print(f"outputs: {folder}")
        return 0
    if command == "train-evaluate":
        from fuserank.train_evaluate import format_summary, train_evaluate

        metrics, folder = train_evaluate(config)
        print(format_summary(metrics))
        print(f"outputs: {folder}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
