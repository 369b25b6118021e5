import numpy as np
import pytest
import torch

from quantization.modelopt_tripy import create_forward_loop
from quantization.modelopt_tripy.calibration import calibration_texts, ids_forward_loop
from utils.errors import SuiteError
from utils.text import embedded_corpus

from .conftest import make_gpt2


class RowCounter:
    """Counts the rows/batches a loop feeds to a real model (a forward hook, the model still runs)."""

    def __init__(self, model):
        self.rows, self.batches, self.shapes = 0, 0, []
        model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        ids = kwargs["input_ids"]
        self.rows += ids.shape[0]
        self.batches += 1
        self.shapes.append(tuple(ids.shape))


@pytest.mark.parametrize("num_samples,batch_size,sizes", [(10, 4, [4, 4, 2]), (8, 4, [4, 4]), (3, 8, [3]), (5, 1, [1] * 5)])
def test_exact_sample_and_batch_counts(tiny_gpt2, tiny_tokenizer, num_samples, batch_size, sizes):
    model = make_gpt2(len(tiny_tokenizer), n_layer=1)
    loop = create_forward_loop(model, "embedded", tiny_tokenizer, "cpu", batch_size, num_samples)
    assert callable(loop)
    assert loop.num_samples == num_samples and len(loop) == len(sizes)
    assert [ids.shape[0] for ids, _ in loop.batches] == sizes
    counter = RowCounter(model)
    loop(model)
    assert counter.rows == num_samples and counter.batches == len(sizes)
    assert all(s[1] == model.config.n_positions for s in counter.shapes)  # truncated to the context
    loop(model)  # re-callable (AWQ runs the loop more than once)
    assert counter.rows == 2 * num_samples


def test_padding_without_a_pad_token(tiny_tokenizer):
    model = make_gpt2(len(tiny_tokenizer), n_layer=1, n_positions=1024)  # longer than most paragraphs
    loop = create_forward_loop(model, "pydoc-topics", tiny_tokenizer, "cpu", 4, 6)
    ids = torch.cat([b[0] for b in loop.batches])
    mask = torch.cat([b[1] for b in loop.batches])
    assert ids.shape == (6, 1024) and mask.shape == (6, 1024)
    assert tiny_tokenizer.pad_token is None  # the caller's tokenizer is not modified
    eos = tiny_tokenizer.eos_token_id
    lengths = mask.sum(1)
    assert bool((lengths < 1024).any())  # some rows are padded
    for row, n in zip(ids, lengths):
        assert bool((row[n:] == eos).all()) and bool((mask[0, :1] == 1).all())


def test_texts_come_from_train_not_validation():
    corpus = embedded_corpus()
    texts = calibration_texts("embedded", 12)
    assert len(texts) == 12 and len(set(texts)) == 12
    for t in texts:
        assert t in corpus["train"] and t not in corpus["validation"]


def test_ids_loop_counts():
    ids = np.arange(7 * 16, dtype=np.int64).reshape(7, 16)
    loop = ids_forward_loop(ids, 3)
    assert [b[0].shape[0] for b in loop.batches] == [3, 3, 1] and loop.num_samples == 7
    assert torch.equal(torch.cat([b[0] for b in loop.batches]), torch.from_numpy(ids))


def test_errors(tiny_gpt2, tiny_tokenizer):
    with pytest.raises(SuiteError, match="unknown calibration dataset 'nope'.*cnn_dailymail"):
        create_forward_loop(tiny_gpt2, "nope", tiny_tokenizer, "cpu", 2, 2)
    with pytest.raises(SuiteError, match="batch_size"):
        create_forward_loop(tiny_gpt2, "embedded", tiny_tokenizer, "cpu", 0, 2)
    with pytest.raises(SuiteError, match="num_samples"):
        create_forward_loop(tiny_gpt2, "embedded", tiny_tokenizer, "cpu", 2, 0)


def test_cnn_dailymail_offline_is_one_clear_error(tiny_gpt2, tiny_tokenizer, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        loop = create_forward_loop(tiny_gpt2, "cnn_dailymail", tiny_tokenizer, "cpu", 2, 3)
    except SuiteError as exc:  # offline and not cached (the build machines)
        msg = str(exc)
        assert "cnn_dailymail" in msg and "embedded" in msg and "\n" not in msg
    else:  # cached from an online run: then it must obey the counts
        assert loop.num_samples == 3 and [b[0].shape[0] for b in loop.batches] == [2, 1]
