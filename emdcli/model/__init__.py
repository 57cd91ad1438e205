"""The backbone: a manifest and its verified ONNX file (:mod:`.manifest`), onnxruntime sessions
(:mod:`.backbone`), and exporting a torch model to ONNX (:mod:`.export`, optional extra)."""
