"""A third model, declared the way a user declares one (bench --models-file): a Llama-style decoder built from its
Hugging Face config (grouped-query attention, a gated MLP, rotary positions), trained offline for one epoch on the
embedded corpus. tests/common/test_third_model.py runs it through torch and onnxruntime."""
from models.catalog import CAUSAL_LM, LM_SCOPES, ModelDecl

MODELS = [
    ModelDecl(
        "tiny-llama", CAUSAL_LM, "hf:llama", batches=(1, 2), calib_samples=16,
        scopes=LM_SCOPES,
        embedded={"hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "max_position_embeddings": 64, "vocab_size": 512,
                  "corpus": "pydoc_data.topics", "tokenizer": "tokenizers.ByteLevelBPE", "epochs": 1,
                  "batch_size": 16, "lr": 3e-3, "seed": 0, "version": 1},
        datasets={"embedded": "pydoc-topics"},
        prepare_seconds={"embedded": 40.0},
        doc="a 2-layer Llama (64 wide, 4 query and 2 key-value heads) trained for one epoch on the pydoc topics",
    ),
]
