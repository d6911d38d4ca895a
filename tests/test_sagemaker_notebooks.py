"""The example notebooks, executed top to bottom in LOCAL mode (moto + a real `serve`), and
kept in step with the script that writes them."""

from __future__ import annotations


import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO
from tiny_models import default_model_dir

NOTEBOOKS = REPO / "sagemaker_examples" / "notebooks"
NAMES = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
CELL_TIMEOUT_S = 600

pytestmark = pytest.mark.slow


def test_there_are_the_five_notebooks():
    assert NAMES == ["01_llm_from_serving_properties.ipynb", "02_custom_handler.ipynb",
                     "03_streaming.ipynb", "04_tensor_parallel.ipynb", "05_benchmark.ipynb"]


def test_notebooks_match_their_generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_notebooks",
                                                  NOTEBOOKS / "make_notebooks.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    for name, cells in generator.NOTEBOOKS.items():
        committed = nbformat.read(NOTEBOOKS / name, as_version=4)
        assert [c.source for c in committed.cells] == [c.source for c in cells], \
            f"{name} differs from make_notebooks.py: run it again"
        assert all(not c.get("outputs") for c in committed.cells if c.cell_type == "code")


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_in_local_mode(name, monkeypatch):
    model = default_model_dir()
    assert model is not None, "SmolLM2 is not built: run `make default-model` (make test does)"
    monkeypatch.setenv("SERVE_EXAMPLES_LOCAL", "1")
    monkeypatch.setenv("SERVE_DEFAULT_MODEL", str(model))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for key in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SAGEMAKER",
                "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()          # raises CellExecutionError, with the cell and traceback, on failure
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("LOCAL mode" in o.get("text", "") for o in outputs)
