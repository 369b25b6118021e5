"""The torch route package (quantization/torch/route.py: ROUTE, main)."""
