"""Batched vs one-at-a-time LLM generation throughput on the same prompts, in one run.

    .venv/bin/python pipelines/benchmark_llm.py --prompts 32 --batch-size 16 --max-new-tokens 32 --repeats 3

Prompts are the item-description prompts of the first MovieLens-100K items. Caches are off;
the two modes alternate within each repeat so machine load hits both alike. Writes
benchmarks/llm.json with prompts/s of each mode and their ratio (median over repeats), and
checks that both modes produced the same texts (greedy decoding, left padding).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/llm.json"))
    args = parser.parse_args()

    import torch

    from fuserank import atomic
    from fuserank.encoders import prompts
    from fuserank.config import RunConfig, cache_dir
    from fuserank.data.movielens import load_movielens_100k
    from fuserank.encoders.llm import generate, load_causal_lm
    from fuserank.ranking.llm_features import item_thin_text
    from fuserank.progress import set_quiet
    from fuserank.data.sources import resolve

    set_quiet(True)
    config = RunConfig()
    root = cache_dir(config.sources)
    items, _ = load_movielens_100k(resolve(config.sources.movielens_100k, root))
    asks = [prompts.item_description(t) for t in item_thin_text(items.head(args.prompts))]
    lm = load_causal_lm(resolve(config.llm.model, root), root, device="auto", threads=args.threads)

    def timed(batch_size: int) -> tuple[float, list[str]]:
        start = time.perf_counter()
        texts = generate(lm, asks, None, args.max_new_tokens, batch_size, seed=0)
        return time.perf_counter() - start, texts

    rates: dict[str, list[float]] = {"batched": [], "one_at_a_time": []}
    outputs: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        for mode, size in (("batched", args.batch_size), ("one_at_a_time", 1)):
            seconds, outputs[mode] = timed(size)
            rates[mode].append(len(asks) / seconds)
    batched, single = statistics.median(rates["batched"]), statistics.median(rates["one_at_a_time"])
    result = {
        "model": config.llm.model,
        "prompts": len(asks),
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "torch_threads": args.threads,
        "device": lm.device,
        "repeats": args.repeats,
        "prompts_per_s": {mode: [round(r, 4) for r in values] for mode, values in rates.items()},
        "batched_prompts_per_s": round(batched, 4),
        "one_at_a_time_prompts_per_s": round(single, 4),
        "batched_over_one_at_a_time": round(batched / single, 3),
        "same_texts": outputs["batched"] == outputs["one_at_a_time"],
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads available",
    }
    atomic.write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
