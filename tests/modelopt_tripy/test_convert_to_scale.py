import pytest
import torch

from quantization.modelopt_tripy import convert_to_scale
from quantization.modelopt_tripy.weights import modelopt_fp8_scale
from utils.errors import SuiteError


@pytest.mark.parametrize("maxbound", [127, 7, 448.0])
def test_scale_is_amax_over_maxbound(maxbound):
    amax = torch.tensor([[0.5], [1.27], [3.0], [448.0]], dtype=torch.float32)  # per-channel (out, 1)
    s = convert_to_scale(amax, maxbound)
    assert s.dtype == torch.float32
    assert s.shape == (4,)  # the trailing 1 is squeezed
    assert torch.equal(s, amax.squeeze(1) / maxbound)
    assert s[1].item() == pytest.approx(1.27 / maxbound, rel=1e-6)


def test_known_values():
    assert convert_to_scale(torch.tensor(127.0), 127).item() == 1.0
    assert convert_to_scale(torch.tensor(7.0), 7).item() == 1.0
    assert convert_to_scale(torch.tensor(448.0), 448.0).item() == 1.0
    assert convert_to_scale(torch.tensor(2.54), 127).item() == pytest.approx(0.02, rel=1e-6)
    assert convert_to_scale(torch.tensor(0.7), 7).item() == pytest.approx(0.1, rel=1e-6)
    assert convert_to_scale(torch.tensor(44.8), 448.0).item() == pytest.approx(0.1, rel=1e-6)


def test_scalar_and_block_shapes_and_dtype():
    s = convert_to_scale(torch.tensor(3.5, dtype=torch.float16), 448.0)  # fp8 per-tensor amax is a scalar
    assert s.dim() == 0 and s.dtype == torch.float32
    blocks = torch.rand(384 * 2, 1) + 0.1  # INT4 AWQ: (out*in/128, 1)
    sb = convert_to_scale(blocks, 7)
    assert sb.shape == (768,) and torch.allclose(sb * 7, blocks.squeeze(1))
    assert not sb.requires_grad


def test_bad_maxbound():
    with pytest.raises(SuiteError, match="maxbound"):
        convert_to_scale(torch.tensor(1.0), 0)


def test_modelopt_fp8_rounding_is_within_one_ulp_of_amax_over_448():
    amax = torch.rand(1000) * 10 + 1e-3
    a = convert_to_scale(amax, 448.0)
    b = torch.stack([modelopt_fp8_scale(x) for x in amax])
    ulp = 2 * torch.finfo(torch.float32).eps * a.abs()  # one ulp is between eps and 2 eps times |a|
    assert bool(((a - b).abs() <= ulp).all())
