"""Raw TensorRT toolchain: FP32 / FP16 / implicit INT8 (IInt8EntropyCalibrator2, TensorRT 10.x) and
explicit Q/DQ INT8 (strongly typed, TensorRT 10.x and 11.x) engines from the suite's ONNX models.

Modules: plan (pure build decisions), calib (calibration batch stream), cache (calibration and
engine caches with version/GPU headers), qdq (ModelOpt-ONNX index), gpu (cuda-python buffers,
streams, CUDA-event timing), trt_backend (the TensorRT calls), route (the command).
Importing this package imports neither tensorrt nor cuda-python.
"""
