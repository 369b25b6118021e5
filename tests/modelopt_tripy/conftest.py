"""Tiny offline GPT-2 fixtures for the modelopt-tripy tests (random init, BPE tokenizer trained here)."""
from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("modelopt.torch.quantization")

N_EMBD = 128  # INT4 blocks are 128 input channels wide: the smallest width with whole blocks
N_POS = 64


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
