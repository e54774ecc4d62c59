"""The notebooks run top to bottom on a tiny catalog (tracking to a temporary store) and draw
their figures; they import fuserank and define nothing of their own."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest
import yaml
from nbclient import NotebookClient

from fuserank.data.synthetic import GENRES, generate_catalog, write_catalog
from tiny_models import save_tiny_bert

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"
NAMES = ("quickstart.ipynb", "compare_experiments.ipynb")


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("notebooks")
    items, interactions = generate_catalog(n_items=120, n_users=80, seed=5)
    items_path, interactions_path = write_catalog(root / "catalog", items, interactions)
    model = save_tiny_bert(root / "bert", words=["a", "story", "number", *GENRES])
    values = {
        "output_dir": str(root / "outputs"),
        "data": {"dataset": "catalog", "items_path": str(items_path), "interactions_path": str(interactions_path)},
        "sources": {"cache_dir": str(root / "cache"), "text_model": str(model)},
        "retrieval": {"ann_candidates": 30, "popular_candidates": 10},
        "split": {"label_cutoffs": 2},
        "ranker": {"n_estimators": 40, "min_child_samples": 10},
        "eval": {"top_k": 20},
        "tracking": {"tracking_uri": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
                     "artifact_root": str(root / "mlruns" / "artifacts"), "experiment": "notebooks"},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize("name", NAMES)
def test_notebook_defines_nothing_reusable(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            tree = ast.parse("\n".join(line for line in cell.source.splitlines() if not line.startswith("%")))
            assert not [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Lambda))]
    assert any("fuserank" in cell.source for cell in notebook.cells if cell.cell_type == "code")


@pytest.mark.slow  # three tiny training runs in a kernel: about a minute (two on a busy machine)
def test_notebooks_execute_on_tiny_data(tiny_config, monkeypatch, tmp_path):
    monkeypatch.setenv("FUSERANK_NOTEBOOK_CONFIG", str(tiny_config))
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    images = {}
    for name in NAMES:  # in this order: the comparison reads the quickstart's run too
        notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
        NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
        outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
        assert not [o for o in outputs if o.output_type == "error"]
        images[name] = sum("image/png" in o.get("data", {}) for o in outputs)
        text = "".join(o.get("text", "") for o in outputs)
        if name == "quickstart.ipynb":
            assert "test_ndcg_at_10" in text
        else:
            assert "(baseline)" in text and "no-popularity" in text
    assert images == {"quickstart.ipynb": 2, "compare_experiments.ipynb": 2}
