"""OpenVINO + NNCF toolchain: NNCF post-training INT8 quantization (`nncf.quantize`) and weight-only
compression (`nncf.compress_weights`) of the suite's ONNX models, run by the OpenVINO CPU plugin.

Modules: ov (pure functions over openvino/nncf: read, quantize, compress, compile with pinned CPU
properties, fast predict, runtime precisions, atomic IR cache). The route that writes rows wraps them.
Importing this package imports neither openvino nor nncf.
"""
