"""The modelopt_onnx route package (quantization/modelopt_onnx/route.py: ROUTE, main)."""
