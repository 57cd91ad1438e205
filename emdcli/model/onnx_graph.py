"""ONNX graph surgery for quantization: a model's image input and node names, and Pads folded.

:func:`fold_static_padding` rewrites the run-time "same" padding of exported EfficientNets
(amounts computed from the (B, 3, S, S) input's shape) as constant Pad amounts, in pixels, for
the fixed input side S; the quantizer would otherwise quantize that arithmetic too. Needs the
``onnx`` package (the ``export`` extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ModelError


def image_input_name(model_path: Path) -> str:
    """The one image input of an ONNX model (its graph inputs that are not initializers)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if len(names) != 1:
        raise ModelError(f"{model_path}: expected one image input, found {len(names)}")
    return str(names[0])


def node_names(model_path: Path) -> list[str]:
    """Names of the nodes of an ONNX model, in graph order."""
    import onnx

    return [n.name for n in onnx.load(str(model_path), load_external_data=False).graph.node]


def excluded_nodes(model_path: Path, keep_fp32: Sequence[str]) -> list[str]:
    """The nodes of ``model_path`` whose names start with one of the prefixes ``keep_fp32``."""
    return [n for n in node_names(model_path) if any(n.startswith(p) for p in keep_fp32)]


def fold_static_padding(source_onnx: Path, out_path: Path, input_size: int) -> tuple[Path, int]:
    """Write ``source_onnx`` with every Pad's amounts as constants; returns (``out_path``, Pads folded).

    The exported EfficientNets pad "same" as TensorFlow does, computing each Pad's amounts at run
    time from the input's shape (Shape, Gather, Div, Ceil ... in float). Left in, the quantizer
    quantizes that arithmetic too and the pads come out wrong (a 6 x 6 map instead of 7 x 7). The
    input side is fixed by the manifest, so the amounts are computed once here (at batch 1 and 2,
    which must agree) and the nodes that only computed them are removed.
    """
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(str(source_onnx))
    graph = model.graph
    constants = {i.name for i in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output
    }
    pads = [n.input[1] for n in graph.node if n.op_type == "Pad" and len(n.input) > 1 and n.input[1]]
    targets = sorted({name for name in pads if name not in constants})
    if not targets:
        onnx.save(model, str(out_path))
        return out_path, 0
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in targets)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    values = [
        session.run(None, {input_name: np.zeros((batch, 3, input_size, input_size), np.float32)}) for batch in (1, 2)
    ]
    for name, one, two in zip(targets, values[0], values[1], strict=True):
        if not np.array_equal(one, two):
            raise ModelError(f"{source_onnx}: the amounts of padding {name} depend on the batch size")
    renamed = {t: f"{t}_static" for t in targets}
    graph.initializer.extend(
        numpy_helper.from_array(np.asarray(v), renamed[t]) for t, v in zip(targets, values[0], strict=True)
    )
    for node in graph.node:
        if node.op_type == "Pad" and len(node.input) > 1 and node.input[1] in renamed:
            node.input[1] = renamed[node.input[1]]
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(list(graph.node)):  # graph order is topological: walk it backwards
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    used = {i for n in graph.node for i in n.input}
    live = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(live)
    known = {o for n in graph.node for o in n.output}
    infos = [v for v in graph.value_info if v.name in known]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))
    return out_path, len(targets)
