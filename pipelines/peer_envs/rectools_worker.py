"""RecTools SASRec inside its own venv (built from rectools.lock.txt): fit on a history, rank users.

Run by fuserank.evaluation.peer_env, never imported by fuserank (this venv has numpy < 2,
pandas < 3; fuserank's has neither):

    <venv>/bin/python rectools_worker.py REQUEST.npz RESULT.npz

REQUEST.npz (peer_env.write_request): `user`, `item` int64 codes of the history rows in event
order (row order is time order, so ties in timestamps keep fuserank's order), `n_items`,
`score_users` int64 codes to rank for, `k`, `seed`, `params` (a JSON string).
RESULT.npz: `items` int64 (n_score_users, k) item codes, best first, -1 padded; `scores` float32
of the same shape; `meta` a JSON string (epochs run, best epoch, validation losses, seconds,
library versions).

Training follows RecTools' own recipe for early stopping: each user's last history item (users
with at least `min_history` items) is held out as the validation target through
`get_val_mask_func`; Lightning's EarlyStopping watches RecTools' `val_loss` with `patience`, a
ModelCheckpoint keeps the best epoch, whose weights rank. The validation rows are left out of
training but not out of ranking: a user's list is computed from their whole history.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time


def last_item_mask(interactions, min_history: int = 3):
    """True on each user's newest row, for users with at least `min_history` rows (RecTools'
    get_val_mask_func contract: a boolean array over the interactions frame)."""
    import numpy as np

    order = interactions.groupby("user_id", sort=False).cumcount(ascending=False)
    counts = interactions.groupby("user_id", sort=False)["item_id"].transform("size")
    return ((order == 0) & (counts >= min_history)).to_numpy(dtype=np.bool_)


def main(request_path: str, result_path: str) -> int:
    import numpy as np

    request = np.load(request_path, allow_pickle=False)
    params = json.loads(str(request["params"]))
    seed, k = int(request["seed"]), int(request["k"])
    threads = int(params.pop("threads", 1))
    patience = int(params.pop("patience", 5))
    max_epochs = int(params.pop("max_epochs", 100))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))

    import pandas as pd
    import pytorch_lightning as pl_lightning
    import rectools
    import torch
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
    from rectools import Columns
    from rectools.dataset import Dataset
    from rectools.models import SASRecModel

    torch.set_num_threads(threads)
    pl_lightning.seed_everything(seed, workers=True, verbose=False)
    n_rows = len(request["user"])
    # Row position as the time: RecTools sorts by datetime, and equal timestamps would lose the order.
    frame = pd.DataFrame({
        Columns.User: request["user"].astype(np.int64),
        Columns.Item: request["item"].astype(np.int64),
        Columns.Weight: np.ones(n_rows, dtype=np.float32),
        Columns.Datetime: pd.to_datetime(np.arange(n_rows, dtype=np.int64), unit="s"),
    })
    dataset = Dataset.construct(frame)
    checkpoint_dir = tempfile.mkdtemp(prefix="rectools-sasrec-")
    checkpoint = ModelCheckpoint(dirpath=checkpoint_dir, monitor="val_loss", mode="min", save_top_k=1)
    stopper = EarlyStopping(monitor="val_loss", mode="min", patience=patience)

    def trainer() -> pl_lightning.Trainer:
        return pl_lightning.Trainer(
            max_epochs=max_epochs, deterministic=True, enable_progress_bar=False, enable_model_summary=False,
            logger=False, callbacks=[checkpoint, stopper], accelerator="cpu", devices=1,
        )

    model = SASRecModel(
        n_factors=int(params["n_factors"]), n_blocks=int(params.get("n_blocks", 2)),
        n_heads=int(params.get("n_heads", 1)), dropout_rate=float(params.get("dropout", 0.2)),
        session_max_len=int(params["session_max_len"]), lr=float(params.get("lr", 1e-3)),
        batch_size=int(params.get("batch_size", 128)), loss="softmax", epochs=max_epochs,
        deterministic=True, item_net_block_types=(rectools.models.nn.item_net.IdEmbeddingsItemNet,),
        get_val_mask_func=last_item_mask, get_trainer_func=trainer,
        recommend_torch_device="cpu", verbose=0,
    )
    start = time.perf_counter()
    model.fit(dataset)
    fit_seconds = time.perf_counter() - start
    # RecTools fits a deep copy of the trainer: its callbacks, not ours, saw the epochs.
    fitted = model.fit_trainer.checkpoint_callback
    epochs = int(model.fit_trainer.current_epoch)
    model.load_weights_from_checkpoint(fitted.best_model_path)
    best_epoch = int(torch.load(fitted.best_model_path, map_location="cpu", weights_only=False)["epoch"]) + 1
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    start = time.perf_counter()
    users = request["score_users"].astype(np.int64)
    # RecTools only ranks users it has seen; the rest get no list (the caller's users all have history).
    known = np.isin(users, frame[Columns.User].unique())
    reco = model.recommend(users[known], dataset, k=k, filter_viewed=True)
    rank_seconds = time.perf_counter() - start
    items = np.full((len(users), k), -1, dtype=np.int64)
    scores = np.full((len(users), k), -np.inf, dtype=np.float32)
    row_of = {int(u): r for r, u in enumerate(users)}
    rows = np.array([row_of[int(u)] for u in reco[Columns.User]], dtype=np.int64)
    cols = reco[Columns.Rank].to_numpy(dtype=np.int64) - 1
    items[rows, cols] = reco[Columns.Item].to_numpy(dtype=np.int64)
    scores[rows, cols] = reco[Columns.Score].to_numpy(dtype=np.float32)
    meta = {
        "library": f"rectools {rectools.__version__}", "torch": torch.__version__,
        "epochs": epochs, "best_epoch": best_epoch, "best_val_loss": float(fitted.best_model_score),
        "fit_seconds": fit_seconds, "rank_seconds": rank_seconds, "threads": threads,
        "users_without_list": int((~known).sum()),
    }
    np.savez(result_path, items=items, scores=scores, meta=np.array(json.dumps(meta)))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
