"""Reading what a model is (its traits) must stay cheap: the app asks at start-up, before the first frame."""
from __future__ import annotations

import subprocess
import sys
import threading

import torch

from ferkit.models.registry import _SkipRandomFills, model_traits


def test_traits_of_every_architecture_do_not_import_torch_dynamo() -> None:
    """``normal_`` on meta tensors imports torch._dynamo (1-3 CPU s of the app's start); traits skip it."""
    code = (
        "import sys\n"
        "from ferkit.models.registry import architectures_with\n"
        "from ferkit.models.weights import weights_with\n"
        "assert weights_with('gates') and architectures_with('identity')\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


def test_traits_read_from_a_meta_build_match_a_real_build() -> None:
    traits = model_traits("lightcnn9")
    real = __import__("ferkit.models.registry", fromlist=["create_model"]).create_model("lightcnn9")
    assert traits.num_classes == real.num_classes
    assert traits.input_size == real.input_size


def test_skipping_fills_leaves_other_threads_initialising() -> None:
    """A model built in a worker thread while the app reads traits keeps its random initialisation."""
    filled: dict[str, float] = {}

    def worker() -> None:
        w = torch.zeros(1000)
        w.normal_()
        filled["std"] = float(w.std())

    with _SkipRandomFills():
        t = threading.Thread(target=worker)
        t.start()
        t.join()
        here = torch.zeros(10)
        here.normal_()
    assert filled["std"] > 0.5
    assert float(here.abs().sum()) == 0.0
