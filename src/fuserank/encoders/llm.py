"""A causal LLM behind three cached calls: `generate`, `embed_hidden` and `yes_logprob`.

Loading: `load_causal_lm` takes a local model folder, a GGUF file (dequantised once with
transformers + gguf and saved as safetensors in the cache, so later loads take seconds rather
than ~25 s) or a hub id. Decoding is greedy with a fixed seed, batched with left padding (each
batch holds prompts of similar length), on CUDA when present, with `threads` torch threads on
the CPU (SmolLM2-135M generated several times slower with 2 threads than 1 on 2 shared cores;
the thread count is restored after every call).

Caching: every result is stored under sha256(model identity, template version, settings,
input) in shards written atomically as batches finish (one shard per `chunk` batches), so a
rerun costs no model call and an interrupted run resumes after its last finished shard.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fuserank import progress
from fuserank.atomic import write_atomic
from fuserank.data.sources import file_sha256
from fuserank.encoders.cache import EmbeddingCache, content_key
from fuserank.encoders.prompts import Prompt
from fuserank.encoders.text import model_fingerprint, resolve_device
from fuserank.torch_threads import torch_threads

log = logging.getLogger(__name__)


@dataclass
class CausalLM:
    """A loaded causal LM and what identifies it.

    Attributes:
        model, tokenizer: transformers objects (model in eval mode on `device`; the tokenizer
            pads on the left).
        identity: sha256 hex of the weights and tokenizer files (or the hub id), the model part
            of every cache key.
        device: torch device string.
        threads: torch CPU threads used inside each call.
        calls: model invocations so far (one per batch), for tests and benchmarks.
    """

    model: Any
    tokenizer: Any
    identity: str
    device: str = "cpu"
    threads: int = 1
    calls: int = field(default=0)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)


def load_causal_lm(source: Path | str, cache_root: Path | None = None, device: str = "auto", threads: int = 1) -> CausalLM:
    """Load a causal LM from a folder, a `.gguf` file or a hub id.

    Args:
        source: a transformers model folder, a GGUF file, or a hub id ("org/name").
        cache_root: where a GGUF file's safetensors conversion is kept (`<cache_root>/llm/`);
            None converts in memory on every load.
        device: "auto" (cuda when available), "cpu", "cuda".
        threads: torch CPU threads for generation and embedding (>= 1).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    path = Path(source)
    if path.is_file() and path.suffix == ".gguf":
        identity = file_sha256(path)
        folder = _converted_gguf(path, identity, cache_root)
    elif path.is_dir():
        folder, identity = path, model_fingerprint(path)
    elif isinstance(source, str) and source.count("/") == 1 and not path.exists():
        folder, identity = source, content_key("hub", source)
    else:
        raise FileNotFoundError(f"LLM not found: {source} (want a model folder, a .gguf file or a hub id)")
    local = not isinstance(folder, str)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=local)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = resolve_device(device)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=local).to(device).eval()
    return CausalLM(model, tokenizer, identity, device, threads)


def _converted_gguf(gguf: Path, identity: str, cache_root: Path | None) -> Path:
    """Folder with the GGUF's weights as safetensors; converted on the first call only."""

    target = (Path(cache_root) if cache_root else Path(tempfile.gettempdir())) / "llm" / f"{gguf.stem}-{identity[:16]}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with progress.step(f"convert {gguf.name} to safetensors") as s:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The weights are dequantised float32 now; the GGUF quantizer only blocks saving them.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
        try:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            try:
                os.replace(staging, target)
            except OSError:
                if not (target / "config.json").is_file():  # another process won the race otherwise
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        s.done(str(target))
    return target


class TextCache:
    """Strings under string keys, in JSON shards written atomically (one per `put`)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._values: dict[str, str] | None = None

    def get(self, key: str) -> str | None:
        return self._load().get(key)

    def put(self, keys: Sequence[str], values: Sequence[str]) -> None:
        if not keys:
            return
        store = self._load()
        name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        payload = json.dumps({"keys": list(keys), "values": list(values)})
        write_atomic(self.folder / name, lambda tmp: tmp.write_text(payload, encoding="utf-8"))
        store.update(zip(keys, values))

    def __len__(self) -> int:
        return len(self._load())

    def _load(self) -> dict[str, str]:
        if self._values is None:
            self._values = {}
            for shard in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []:
                try:
                    data = json.loads(shard.read_text(encoding="utf-8"))
                    self._values.update(zip(data["keys"], data["values"], strict=True))
                except (OSError, ValueError, KeyError, TypeError) as err:  # costs a recomputation only
                    log.warning("skipping unreadable LLM cache shard %s: %s", shard, err)
        return self._values


def render(lm: CausalLM, prompt: Prompt) -> str:
    """The prompt as the model's chat template lays it out (plain text without a template)."""
    tokenizer = lm.tokenizer
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": prompt.system}, {"role": "user", "content": prompt.user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{prompt.system}\n\n{prompt.user}\n\nAnswer:"


def _batched(
    keys: Sequence[str], inputs: Sequence[str], batch_size: int, chunk: int, desc: str,
    run: Callable[[list[str]], list[Any]], store: Callable[[list[str], list[Any]], None],
    found: dict[str, Any],
) -> dict[str, Any]:
    """Run the inputs whose key is not in `found` through `run` in batches of similar length,
    storing results every `chunk` batches; returns key -> result for every key."""
    todo: dict[str, str] = {}
    for key, text in zip(keys, inputs):
        if key not in found and key not in todo:
            todo[key] = text
    order = sorted(todo, key=lambda k: (-len(todo[k]), k))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    pending_keys: list[str] = []
    pending_values: list[Any] = []
    for number, batch in enumerate(progress.bar(batches, desc=desc, total=len(batches), unit="batch"), start=1):
        values = run([todo[k] for k in batch])
        found.update(zip(batch, values))
        pending_keys += batch
        pending_values += values
        if number % chunk == 0 or number == len(batches):
            store(pending_keys, pending_values)
            pending_keys, pending_values = [], []
    return found


def generate(
    lm: CausalLM, prompts: Sequence[Prompt], cache_dir: Path | None = None, max_new_tokens: int = 48,
    batch_size: int = 16, seed: int = 0, chunk: int = 1, desc: str = "llm generate",
) -> list[str]:
    """Greedy completions of `prompts`, in order (each distinct prompt is run once).

    Args:
        lm: the loaded model.
        prompts: chat prompts (prompts.py).
        cache_dir: text cache folder; None disables caching.
        max_new_tokens: tokens generated per prompt at most.
        batch_size: prompts per model call (left padded).
        seed: torch seed set before each batch (greedy decoding does not sample; the seed only
            pins anything a custom model might draw).
        chunk: batches between two cache shards.

    Returns:
        One completion per prompt, special tokens removed, whitespace stripped.
    """
    import torch

    rendered = [render(lm, p) for p in prompts]
    keys = [content_key(lm.identity, p.version, f"generate:{max_new_tokens}", text) for p, text in zip(prompts, rendered)]
    cache = TextCache(cache_dir) if cache_dir is not None else None
    found = {k: v for k in keys if cache is not None and (v := cache.get(k)) is not None}

    def run(texts: list[str]) -> list[str]:
        torch.manual_seed(seed)
        enc = lm.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(lm.device)
        with torch.inference_mode():
            out = lm.model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                pad_token_id=lm.tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None,
            )
        lm.calls += 1
        new = out[:, enc["input_ids"].shape[1] :]
        return [t.strip() for t in lm.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def store(batch_keys: list[str], values: list[str]) -> None:
        if cache is not None:
            cache.put(batch_keys, values)

    with torch_threads(lm.threads):
        found = _batched(keys, rendered, batch_size, chunk, desc, run, store, found)
    return [found[k] for k in keys]


def embed_hidden(
    lm: CausalLM, texts: Sequence[str], version: str, cache_dir: Path | None = None, batch_size: int = 32,
    max_length: int = 256, chunk: int = 4, desc: str = "llm embed",
) -> np.ndarray:
    """Mean-pooled last hidden states of `texts` (no generation).

    Args:
        version: the template version the texts were built with (prompts.py), part of the key.
        max_length: tokens kept per text (the end is cut).

    Returns:
        float32 (len(texts), hidden_size), rows L2-normalised (zero rows for empty texts).
    """
    import torch

    dim = lm.hidden_size
    keys = [content_key(lm.identity, version, f"hidden:{max_length}", t) for t in texts]
    cache = EmbeddingCache(Path(cache_dir), dim) if cache_dir is not None else None
    found: dict[str, np.ndarray] = {}
    if cache is not None:
        vectors, hit = cache.get(keys)
        found = {k: v for k, v, h in zip(keys, vectors, hit) if h}
    base = lm.model.base_model

    def run(batch: list[str]) -> list[np.ndarray]:
        enc = lm.tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=max_length).to(lm.device)
        with torch.inference_mode():
            hidden = base(**enc).last_hidden_state.float()
        lm.calls += 1
        weights = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return list(pooled.cpu().numpy().astype(np.float32))

    def store(batch_keys: list[str], values: list[np.ndarray]) -> None:
        if cache is not None:
            cache.put(batch_keys, np.stack(values))

    for key, text in zip(keys, texts):
        if not text.strip():  # nothing to embed: a zero row, never a model call
            found[key] = np.zeros(dim, dtype=np.float32)
    with torch_threads(lm.threads):
        found = _batched(keys, texts, batch_size, chunk, desc, run, store, found)
    return np.stack([found[k] for k in keys]).astype(np.float32) if keys else np.zeros((0, dim), np.float32)


def yes_logprob(
    lm: CausalLM, prompts: Sequence[Prompt], answer: str, cache_dir: Path | None = None, batch_size: int = 16,
    chunk: int = 4, desc: str = "llm relevance",
) -> np.ndarray:
    """log P(first token of `answer` | prompt) for each prompt: float32 (len(prompts),)."""
    import torch

    answer_id = lm.tokenizer(answer, add_special_tokens=False)["input_ids"][0]
    rendered = [render(lm, p) for p in prompts]
    keys = [content_key(lm.identity, p.version, f"yes:{answer}", t) for p, t in zip(prompts, rendered)]
    cache = EmbeddingCache(Path(cache_dir), 1) if cache_dir is not None else None
    found: dict[str, Any] = {}
    if cache is not None:
        vectors, hit = cache.get(keys)
        found = {k: float(v[0]) for k, v, h in zip(keys, vectors, hit) if h}

    def run(batch: list[str]) -> list[float]:
        enc = lm.tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(lm.device)
        with torch.inference_mode():
            logits = lm.model(**enc).logits[:, -1, :].float()
        lm.calls += 1
        return torch.log_softmax(logits, dim=-1)[:, answer_id].cpu().tolist()

    def store(batch_keys: list[str], values: list[float]) -> None:
        if cache is not None:
            cache.put(batch_keys, np.asarray(values, dtype=np.float32).reshape(-1, 1))

    with torch_threads(lm.threads):
        found = _batched(keys, rendered, batch_size, chunk, desc, run, store, found)
    return np.asarray([found[k] for k in keys], dtype=np.float32)
