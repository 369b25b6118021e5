import pytest
import torch

from quantization.modelopt_tripy import get_submodule
from utils.errors import SuiteError


def test_dotted_paths_return_the_same_objects(tiny_gpt2):
    m = tiny_gpt2
    assert get_submodule(m, "transformer") is m.transformer
    assert get_submodule(m, "transformer.h.0.attn.c_attn") is m.transformer.h[0].attn.c_attn
    assert get_submodule(m, "transformer.h.1.mlp.c_proj") is m.transformer.h[1].mlp.c_proj
    assert get_submodule(m, "transformer.h.1") is m.transformer.h[1]  # ModuleList index
    assert get_submodule(m, "lm_head") is m.lm_head


def test_module_dict_and_sequential():
    inner = torch.nn.Linear(2, 3)
    root = torch.nn.Module()
    root.blocks = torch.nn.ModuleDict({"first": torch.nn.Sequential(torch.nn.ReLU(), inner)})
    assert get_submodule(root, "blocks.first.1") is inner
    assert get_submodule(root, "blocks.first") is root.blocks["first"]


def test_quantizer_paths(quantized):
    q = quantized("int8-weight-only")
    lin = q.transformer.h[0].mlp.c_fc
    assert get_submodule(q, "transformer.h.0.mlp.c_fc.weight_quantizer") is lin.weight_quantizer
    assert get_submodule(q, "transformer.h.0.mlp.c_fc.input_quantizer") is lin.input_quantizer


@pytest.mark.parametrize("path,part", [("transformer.h.7.attn", "'7'"), ("transformer.nope.c_attn", "'nope'"),
                                       ("transformer.h.x", "'x'"), ("lm_head.weight.foo", "'foo'")])
def test_bad_path_names_the_failing_part(tiny_gpt2, path, part):
    with pytest.raises(SuiteError) as e:
        get_submodule(tiny_gpt2, path)
    assert part in str(e.value) and path in str(e.value)


def test_module_dict_missing_key():
    root = torch.nn.Module()
    root.d = torch.nn.ModuleDict({"a": torch.nn.ReLU()})
    with pytest.raises(SuiteError, match="'b'.*d"):
        get_submodule(root, "d.b")
