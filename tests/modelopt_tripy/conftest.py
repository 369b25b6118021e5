"""Tiny offline GPT-2 fixtures for the modelopt-tripy tests (random init, BPE tokenizer trained here)."""
from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("modelopt.torch.quantization")

# INT4 blocks are 128 input channels wide. At 128 wide (the embedded GPT-2) three of the four linear kinds hold
# one block per row, so blocks on the wrong axis cannot show; at 256 every linear kind holds >= 2 blocks per row:
# c_attn 256->768 (2), attn.c_proj 256->256 (2; square in every GPT-2), c_fc 256->1024 (2), mlp.c_proj 1024->256 (8)
N_EMBD = 256
N_POS = 64
# a plain Linear stack for the INT4 layout tests: out != in everywhere, 2, 3 and 5 blocks per row
WIDE_LINEARS = ((256, 384), (384, 640), (640, 256))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    from utils.text import embedded_corpus

    text = embedded_corpus()["train"][:150_000]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([text], vocab_size=512, min_frequency=2, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                  bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    assert tok.pad_token is None  # like GPT-2's own tokenizer
    return tok


def make_gpt2(vocab: int, n_layer: int = 2, n_positions: int = N_POS, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=n_layer, n_embd=N_EMBD, n_head=4, n_positions=n_positions, vocab_size=vocab,
                     bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_tokenizer):
    return make_gpt2(len(tiny_tokenizer))


@pytest.fixture(scope="session")
def calib_ids(tiny_gpt2):
    return np.random.default_rng(0).integers(0, tiny_gpt2.config.vocab_size, size=(8, N_POS), dtype=np.int64)


@pytest.fixture(scope="session")
def quantized(tiny_gpt2, calib_ids):
    """mode -> ModelOpt-quantized copy of tiny_gpt2 (computed once per session)."""
    from quantization.modelopt_tripy.calibration import ids_forward_loop
    from quantization.modelopt_tripy.quantize import modelopt_quantize

    cache = {}

    def get(mode):
        if mode not in cache:
            cache[mode] = modelopt_quantize(copy.deepcopy(tiny_gpt2), mode, forward_loop=ids_forward_loop(calib_ids, 4))
        return cache[mode]
    return get


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory, tiny_gpt2, tiny_tokenizer):
    d = tmp_path_factory.mktemp("tiny_gpt2")
    tiny_gpt2.save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def wide_linears_int4():
    """ModelOpt INT4-AWQ (the route's int4-weight-only config) of a Linear stack whose every layer has out != in
    and several 128-input blocks per row (WIDE_LINEARS); returns (quantized model, [layer names])."""
    import modelopt.torch.quantization as mtq

    from quantization.modelopt_tripy.quantize import quant_config

    torch.manual_seed(0)
    layers = []
    for i, (fan_in, fan_out) in enumerate(WIDE_LINEARS):
        layers += [torch.nn.Linear(fan_in, fan_out)] + ([torch.nn.GELU()] if i < len(WIDE_LINEARS) - 1 else [])
    model = torch.nn.Sequential(*layers).eval()
    with torch.no_grad():  # uneven per-block magnitudes: a scale taken from another block is visibly wrong
        for m in model:
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(torch.rand(m.weight.shape[0], m.weight.shape[1] // 128).add(0.1)
                              .repeat_interleave(128, dim=1))
    xs = [torch.randn(8, WIDE_LINEARS[0][0], generator=torch.Generator().manual_seed(k)) for k in range(4)]

    def loop(m):
        with torch.no_grad():
            for x in xs:
                m(x)
    model = mtq.quantize(model, quant_config("int4-weight-only"), loop)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(names) == len(WIDE_LINEARS)
    return model.eval(), names
