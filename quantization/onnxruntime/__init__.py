"""The onnxruntime route package (quantization/onnxruntime/route.py: ROUTE, main)."""
