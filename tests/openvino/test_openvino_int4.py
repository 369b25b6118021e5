"""The openvino route's int4-wo (NNCF INT4_SYM, group 128) on a 256-wide GPT-2-shaped net, group by group.

tests/onnx_tiny.py's wide_linear_net: GPT-2's four linear kinds at 256 wide (Gemm, weight (in, out)), a
Gemm(transB=1) weight (out, in) and a MatMul LM head; every weight has >= 2 groups of 128 inputs per output and
each group its own magnitude. The IR is the route's own (route.make_ir, default Options, read back from its
cache), and each INT4 weight's decompression subgraph is evaluated from that IR:
- groups run along each MatMul's reduction (input) axis, |scale| = the group's max |w| / 8, the codes are
  round-to-nearest of w / scale in [-8, 7], and the decompressed weight is codes * scale within half a step;
- the same codes and scales read with the groups along the other axis fail, by shape or by value;
- NNCF's backup mode keeps the LM head (the last MatMul) INT8_ASYM.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from quantization.openvino import ov as O  # noqa: E402
from quantization.openvino.route import WEIGHT_ONLY  # noqa: E402


def decompressed_weights(model) -> dict:
    """source weight name -> {weight, codes, scale, transpose_b, type} for each MatMul with a constant weight,
    by running the IR's own decompression subgraphs (Constant -> Convert -> Multiply [-> Reshape] -> Convert)."""
    import openvino as ov

    found = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul":
            continue
        chain, n = [], op.input_value(1).get_node()
        while True:
            chain.append(n)
            if n.get_input_size() == 0:
                break
            n = n.input_value(0).get_node()
        if chain[-1].get_type_name() != "Constant":
            continue  # an activation x activation MatMul
        mul = next(x for x in chain if x.get_type_name() == "Multiply")
        found[chain[-1].get_friendly_name()] = (op.input_value(1), mul.input_value(0), mul.input_value(1),
                                                bool(op.get_attributes()["transpose_b"]),
                                                chain[-1].get_element_type().get_type_name())
    outs = [o for v in found.values() for o in v[:3]]
    res = list(ov.Core().compile_model(ov.Model(outs, [], "weights"), "CPU")({}).values())
    return {name: {"weight": res[3 * k], "codes": res[3 * k + 1], "scale": res[3 * k + 2], "transpose_b": v[3],
                   "type": v[4]} for k, (name, v) in enumerate(found.items())}


@pytest.fixture(scope="module")
def int4_ir(wide_net_path, tmp_path_factory):
    """The route's own int4-wo IR (route.make_ir with the route's default Options), read back from its cache."""
    from types import SimpleNamespace

    from quantization.openvino import route
    from utils.atomic import sha256_file

    opts = route.Options()
    assert (WEIGHT_ONLY["int4-wo"] or opts.int4_mode, opts.group_size) == ("int4_sym", 128)  # the defaults
    ctx = SimpleNamespace(state={"src": (wide_net_path, sha256_file(wide_net_path))},
                          task=SimpleNamespace(kind="language-model"), cache_dir=tmp_path_factory.mktemp("ov_int4"))
    xml, meta, reused = route.make_ir(ctx, "int4-wo", opts)
    assert not reused and xml.suffix == ".xml" and xml.with_suffix(".bin").is_file()
    return O.load_model(xml), meta["info"]


def test_int4_wo_groups_dequantize_to_the_weights_group_by_group(wide_net_path, int4_ir, h):
    model, info = int4_ir
    assert info["group_size"] == 128
    src = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(wide_net_path)).graph.initializer}
    got = decompressed_weights(model)
    assert set(got) == set(h.WIDE_WEIGHTS), sorted(got)
    assert got["lm_head"]["type"] == "u8"  # the last MatMul: NNCF's INT8_ASYM backup
    for name, (shape, op, in_axis) in h.WIDE_WEIGHTS.items():
        if name == "lm_head":
            continue
        g, w = got[name], src[name]
        assert g["type"] == "i4", name
        assert g["transpose_b"] == (in_axis == 1) and g["weight"].shape == shape, (name, op)
        nb = shape[in_axis] // 128
        assert nb >= 2, name
        # codes / scales grouped along the input axis: (nb, 128, out) for (in, out), (out, nb, 128) for (out, in)
        if in_axis == 0:
            assert g["codes"].shape == (nb, 128, shape[1]) and g["scale"].shape == (nb, 1, shape[1]), name
            codes, scale = g["codes"].reshape(shape), g["scale"][:, 0, :]
            amax = np.abs(w).reshape(nb, 128, shape[1]).max(axis=1)
        else:
            assert g["codes"].shape == (shape[0], nb, 128) and g["scale"].shape == (shape[0], nb, 1), name
            codes, scale = g["codes"].reshape(shape), g["scale"][:, :, 0]
            amax = np.abs(w).reshape(shape[0], nb, 128).max(axis=2)
        scale = scale.astype(np.float32)
        assert np.allclose(np.abs(scale), amax / 8, rtol=1e-3), name  # f16 scale of the group's max |w| / 8
        full = np.repeat(scale, 128, axis=in_axis)
        assert codes.min() >= -8 and codes.max() <= 7, name
        rtn = np.clip(np.round(w / full), -8, 7)
        assert np.mean(rtn != codes) <= 2e-3, (name, float(np.mean(rtn != codes)))  # f16 ties only
        deq = g["weight"]
        assert np.allclose(deq, h.blocked_dequantize(codes, scale, in_axis, 128), rtol=1e-3, atol=0), name
        inside = np.abs(w / full) <= 7.5
        step = np.abs(deq - w) / np.abs(full)
        assert step[inside].max() <= 0.5 + 2e-3, (name, float(step[inside].max()))
        # the same codes and scales with the groups along the other axis
        try:
            wrong = h.blocked_dequantize(codes, np.ascontiguousarray(scale.T), 1 - in_axis, 128)
        except ValueError:
            assert shape[0] != shape[1], name  # out != in: caught by shape
        else:
            bad = (np.abs(wrong - w) / np.abs(full))[inside]
            assert bad.max() > 1.0, (name, float(bad.max()))  # square: caught by value


def test_int4_wo_outputs_stay_close_to_fp32(wide_net_path, int4_ir):
    model, _ = int4_ir
    x = np.random.default_rng(3).standard_normal((8, 256)).astype(np.float32)
    ref = O.predict_fn(O.compile_cpu(O.read_onnx(wide_net_path), 1)[0])(x)
    got = O.predict_fn(O.compile_cpu(model, 1)[0])(x)
    rel = float(np.abs(got - ref).max() / np.abs(ref).max())
    assert 1e-4 < rel < 0.2, rel
