"""What one training epoch of the SASRec model costs on this machine, under its cost levers.

One full epoch of the test cut-off's history per variant, from the same initial weights, in
one process and interleaved over `--repeats` rounds, so the ratios to the reference (full
softmax, random batches: the defaults) hold under shared load even where the seconds do not.
Variants: the full softmax or `--negatives` sampled items, crossed with random or length
batches (sequence.batching). Also counts the positions an epoch pads to under each batching.
Writes benchmarks/sequence_cost_<dataset>.json.

    .venv/bin/python pipelines/benchmark_sequence_cost.py --dataset movielens-1m [--negatives 512] [--repeats 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fuserank import atomic, schema  # noqa: E402
from fuserank.config import load_config, to_dict  # noqa: E402
from fuserank.data.cutoffs import build_cutoffs  # noqa: E402
from fuserank.progress import set_quiet  # noqa: E402
from fuserank.provenance import command_line  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    import torch

    from fuserank.jobs.train_evaluate import load_data
    from fuserank.retrieval.sequence_training import build_network, epoch_batches, train_epoch, training_sequences
    from fuserank.torch_threads import torch_threads

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="movielens-1m")
    parser.add_argument("--negatives", type=int, default=512, help="sampled items of the sampled variants")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    set_quiet(True)

    config = load_config(None, [f"data.dataset={args.dataset}", "sequence.enabled=true", *args.overrides])
    items, interactions = load_data(config)
    item_ids = items[schema.ITEM_ID].to_list()
    history = build_cutoffs(interactions, config.split).test.history
    data = training_sequences(history, item_ids, config.sequence.max_length)
    lengths = np.asarray([len(row) for row in data.train], dtype=np.int64)

    variants = {
        f"{'full softmax' if negatives == 0 else f'{negatives} sampled'}, {batching} batches":
            dataclasses.replace(config.sequence, negatives=negatives, batching=batching)
        for negatives in (0, args.negatives) for batching in ("random", "length")
    }
    reference = next(iter(variants))
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    with torch_threads(config.sequence.threads):
        torch.manual_seed(config.seed)
        start = build_network(len(item_ids), config.sequence, "cpu").state_dict()
        for _ in range(args.repeats):
            for name, settings in variants.items():
                network = build_network(len(item_ids), settings, "cpu")
                network.load_state_dict(start)
                network.train()
                optimiser = torch.optim.Adam(network.parameters(), lr=settings.learning_rate)
                generator = torch.Generator().manual_seed(config.seed)
                began = time.perf_counter()
                train_epoch(network, optimiser, data.train, settings, generator, "cpu", 1)
                seconds[name].append(time.perf_counter() - began)

    def padded(batching: str) -> int:
        generator = torch.Generator().manual_seed(config.seed)
        batches = epoch_batches(lengths, config.sequence.batch_size, batching, generator)
        return int(sum((lengths[rows].max() - 1) * len(rows) for rows in batches))

    median = {name: statistics.median(values) for name, values in seconds.items()}
    report = {
        "command": "python " + command_line(["pipelines/benchmark_sequence_cost.py",
                                             *(argv if argv is not None else sys.argv[1:])]),
        "dataset": args.dataset,
        "sequence": to_dict(config.sequence),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_1min": os.getloadavg()[0]},
        "catalog_items": len(item_ids),
        "training_users": len(data.train),
        "positions_per_epoch": {"real": int((lengths - 1).sum()), "padded, random batches": padded("random"),
                                "padded, length batches": padded("length")},
        "reference": reference,
        "epoch_seconds": {name: {"runs": [round(v, 2) for v in values], "median": round(median[name], 2),
                                 "ratio_to_reference": round(median[name] / median[reference], 3)}
                          for name, values in seconds.items()},
    }
    out = Path(args.out or f"benchmarks/sequence_cost_{args.dataset}.json")
    atomic.write_json(out, report)
    for name, values in report["epoch_seconds"].items():
        print(f"{name}: {values['median']:.1f} s an epoch, {values['ratio_to_reference']:.3f} of the reference")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
