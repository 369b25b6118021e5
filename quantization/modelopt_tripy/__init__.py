"""ModelOpt -> Tripy route for GPT-2 (docs/routes/modelopt-tripy.md).

ModelOpt quantizes the Hugging Face GPT-2 (fake quant, CPU or GPU); its amax values become scales that a
Tripy GPT (tripy_model.py, nvtripy imported lazily) and a CPU reference runtime (reference.py) load.
"""
from quantization.modelopt_tripy.calibration import create_forward_loop
from quantization.modelopt_tripy.quantize import modelopt_quantize
from quantization.modelopt_tripy.weights import (build_tripy_state_dict, convert_to_scale, get_submodule,
                                                 load_quant_weights_from_hf)

__all__ = ["modelopt_quantize", "create_forward_loop", "convert_to_scale", "get_submodule",
           "load_quant_weights_from_hf", "build_tripy_state_dict"]
