"""Write the tiny ONNX models the tests run (committed beside this script, so that the tests need no
``onnx`` package): ``tiny-c8.onnx`` and ``tiny-c6.onnx`` (average pooling to a 4 x 4 grid, then a fixed
1 x 1 convolution to 8 or 6 channels and a ReLU) and ``flat.onnx`` (a (B, 3) vector, not a feature map).

    python tests/models/make_tiny_models.py          # needs the onnx package (pip install '.[export]')

``tests/test_model.py`` checks that the committed files hold the graphs this script makes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
#: The input side of every tiny model, in pixels.
SIZE = 32
#: Channels of the feature-map models this script writes.
CHANNELS = (8, 6)


def feature_model(channels: int, size: int = SIZE) -> object:
    """The ONNX ModelProto of the tiny backbone with ``channels`` output channels."""
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).normal(size=(channels, 3, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Conv", ["pooled", "w"], ["conv"]),
        helper.make_node("Relu", ["conv"], ["features"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", channels, size // 8, size // 8])],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="emdcli tests")
    model.ir_version = 8
    return model


def flat_model() -> object:
    """The ONNX ModelProto of a model whose output is a (B, 3) vector."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["image"], ["p"]), helper.make_node("Flatten", ["p"], ["features"])],
        "flat",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="emdcli tests")
    model.ir_version = 8
    return model


def models() -> dict[str, object]:
    """File name -> ModelProto of every tiny model."""
    return {**{f"tiny-c{c}.onnx": feature_model(c) for c in CHANNELS}, "flat.onnx": flat_model()}


def main() -> None:
    import onnx

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    for name, model in models().items():
        onnx.save(model, str(out / name))
        print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
