"""INT4 block layout, several blocks per row: ModelOpt INT4-AWQ -> the loader's Tripy state dict -> dequantized weight.

ModelOpt blocks a linear's (out, in) weight in 128-input blocks, one amax per (output channel, input block),
row-major (out, in/128). The loader stores codes (in, out) and scales (in/128, out) so that Tripy's dim-0
blocks are ModelOpt's input blocks. With one block per row (in = 128) a transpose and a reshape of the
(out, 1) scales are the same tensor, so a wrongly blocked axis cannot show; these tests use fixtures with
>= 2 blocks per row (conftest: the 256-wide GPT-2 and a Linear stack with out != in everywhere) and check:
- every block's dequantized weight equals an independent round-to-nearest INT4 reference of that block
  (scale = block max |w| / 7) and ModelOpt's own fake-quant weight;
- wrong layouts of the same codes and scales (scales reshaped instead of transposed, blocks along the output
  axis, untransposed codes, TensorRT-Incubator's upstream reshape) are each caught, by shape or by value.
"""
import torch

from quantization.modelopt_tripy import build_tripy_state_dict, convert_to_scale
from quantization.modelopt_tripy.modes import INT4_BLOCK, QUANT_LINEARS
from quantization.modelopt_tripy.reference import dequantize_weight_in_out
from quantization.modelopt_tripy.weights import _weight_out_in, quantized_linear_params
from utils.errors import SuiteError

MODE = "int4-weight-only"
STEP_TOL = 1e-3  # max |deq - reference| in units of the block's scale (float32 rounding only)


def block_reference(w_out_in):
    """Independent round-to-nearest INT4 (out, in) reference: per (output row, 128-input block) scale max|w|/7."""
    out_f, in_f = w_out_in.shape
    blocks = w_out_in.reshape(out_f, in_f // INT4_BLOCK, INT4_BLOCK)
    scale = blocks.abs().amax(-1, keepdim=True) / 7
    return ((blocks / scale).round().clamp(-8, 7) * scale).reshape(out_f, in_f), scale.squeeze(-1)


def block_errors(deq_in_out, ref_out_in, scale_oi):
    """max |deq - ref| / scale per (output row, input block), from an (in, out) dequantized weight."""
    out_f, nb = scale_oi.shape
    d = (deq_in_out.t() - ref_out_in).abs().reshape(out_f, nb, INT4_BLOCK).amax(-1)
    return d / scale_oi


def wrong_layouts(p):
    """The loader's {weight (in, out), weight_scale (in/128, out)} rearranged the ways a loader can get it wrong."""
    w, s = p["weight"], p["weight_scale"]
    nb, out_f = s.shape
    return {
        # ModelOpt's row-major (out, in/128) scales reshaped to (in/128, out) instead of transposed
        "scales reshaped, not transposed": {"weight": w, "weight_scale": s.t().contiguous().reshape(nb, out_f)},
        "codes left (out, in)": {"weight": w.t().contiguous(), "weight_scale": s},
        "input blocks in reverse order": {"weight": w, "weight_scale": s.flip(0)},
    }


def assert_layout_is_checked(p, ref_out_in, scale_oi, where):
    """The correct layout matches the reference in every block; each wrong layout fails (shape or value)."""
    deq = dequantize_weight_in_out(p, MODE)
    errs = block_errors(deq, ref_out_in, scale_oi)
    assert float(errs.max()) <= STEP_TOL, f"{where}: worst block off by {float(errs.max()):.3g} steps"
    for what, bad in wrong_layouts(p).items():
        try:
            got = dequantize_weight_in_out(bad, MODE)
        except SuiteError:
            continue  # caught by shape (out != in)
        if got.shape != deq.shape:
            continue
        worst = float(block_errors(got, ref_out_in, scale_oi).max())
        assert worst > 0.25, f"{where}: wrong layout '{what}' is not detected (worst block {worst:.3g} steps)"


def test_wide_fixtures_have_several_blocks_per_row(tiny_gpt2, wide_linears_int4):
    model, names = wide_linears_int4
    for name in names:
        lin = model.get_submodule(name)
        assert lin.in_features // INT4_BLOCK >= 2 and lin.in_features % INT4_BLOCK == 0
        assert lin.out_features != lin.in_features, name
    for lin in QUANT_LINEARS:
        w = tiny_gpt2.get_submodule(f"transformer.h.0.{lin}").weight  # HF Conv1D (in, out)
        assert w.shape[0] // INT4_BLOCK >= 2, (lin, tuple(w.shape))
    # attn.c_proj is n_embd -> n_embd in every GPT-2; the other three kinds have out != in
    assert sum(tiny_gpt2.get_submodule(f"transformer.h.0.{lin}").weight.shape[0]
               != tiny_gpt2.get_submodule(f"transformer.h.0.{lin}").weight.shape[1] for lin in QUANT_LINEARS) == 3


def test_linear_stack_blocks_match_reference_and_wrong_layouts_fail(wide_linears_int4):
    model, names = wide_linears_int4
    for name in names:
        mod = model.get_submodule(name)
        out_f, in_f = mod.out_features, mod.in_features
        p = quantized_linear_params(name, mod, MODE)
        nb = in_f // INT4_BLOCK
        assert p["weight"].shape == (in_f, out_f) and p["weight_scale"].shape == (nb, out_f)
        assert p["pre_quant_scale"].shape == (in_f,)
        raw, fq = _weight_out_in(mod)
        ref, scale_oi = block_reference(raw)
        # the per-block scales are ModelOpt's amax / 7, transposed to (in/128, out)
        assert torch.allclose(p["weight_scale"].t(), scale_oi, rtol=1e-6, atol=0)
        assert torch.equal(p["weight_scale"].t(), convert_to_scale(mod.weight_quantizer.amax, 7).reshape(out_f, nb))
        # ModelOpt's fake-quant weight is the same INT4 grid
        assert float(block_errors(fq.t(), ref, scale_oi).max()) <= STEP_TOL
        assert_layout_is_checked(p, ref, scale_oi, name)


def test_gpt2_every_linear_kind_blocks_match_reference(quantized):
    q = quantized(MODE)
    sd = build_tripy_state_dict(q, MODE)
    for i in range(q.config.n_layer):
        for lin in QUANT_LINEARS:
            name = f"transformer.h.{i}.{lin}"
            p = {k.rsplit(".", 1)[1]: v for k, v in sd.items() if k.startswith(name + ".")}
            raw, fq = _weight_out_in(q.get_submodule(name))
            ref, scale_oi = block_reference(raw)
            assert scale_oi.shape[1] >= 2, name
            assert float(block_errors(fq.t(), ref, scale_oi).max()) <= STEP_TOL, name
            assert_layout_is_checked(p, ref, scale_oi, name)


def test_upstream_reshape_puts_blocks_on_the_output_axis_of_every_linear_kind(quantized):
    """TensorRT-Incubator's loader takes the INT4 scale as amax.reshape(-1, in_features) for the (out, in)
    weight; with Tripy's dim-0 blocks that is blocks of 128 output channels. At 256 wide it is shape-valid
    for every linear kind (at 128 the 1-block layers hid it), and wrong in value for every one."""
    q = quantized(MODE)
    for lin in QUANT_LINEARS:
        mod = q.get_submodule(f"transformer.h.0.{lin}")
        out_f, in_f = mod.out_features, mod.in_features
        raw, fq = _weight_out_in(mod)
        ref, scale_oi = block_reference(raw)
        upstream = convert_to_scale(mod.weight_quantizer.amax.reshape(-1, in_f), 7)
        assert upstream.shape == (out_f // INT4_BLOCK, in_f), lin
        codes = torch.round(fq / scale_oi.repeat_interleave(INT4_BLOCK, dim=1)).clamp(-8, 7)
        deq_upstream = codes * upstream.repeat_interleave(INT4_BLOCK, dim=0)  # Tripy: scale[o // 128, i]
        worst = float(block_errors(deq_upstream.t(), ref, scale_oi).max())
        assert worst > 0.25, (lin, worst)
