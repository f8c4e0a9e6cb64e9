"""Checkpoints cross over between transformers' PyTorch BERT classes and ours, both ways.

Tiny random models with odd sizes (2 layers, hidden 36, 3 heads, FFN 37,
vocab 101, sequence 7) on a padded batch. Every weight is random (no zero
biases, no unit LayerNorm scales) so a mis-mapped tensor cannot hide.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from distill.arch import BertArch
from distill.model.bert import build_model
from distill.model.store import load_bert, save_bert

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.torch

TOL = 2e-5

# head -> (HF task class name, num_labels, our labels when saving)
HEADS = {
    "none": ("BertModel", 0, ()),
    "classification": ("BertForSequenceClassification", 3, ("a", "b", "c")),
    "regression": ("BertForSequenceClassification", 1, ()),
    "tagging": ("BertForTokenClassification", 5, ("O", "B-X", "I-X", "B-Y", "I-Y")),
    "span": ("BertForQuestionAnswering", 2, ()),
}
AUTO = {
    "none": "AutoModel",
    "classification": "AutoModelForSequenceClassification",
    "regression": "AutoModelForSequenceClassification",
    "tagging": "AutoModelForTokenClassification",
    "span": "AutoModelForQuestionAnswering",
}


def _hf_config(arch: BertArch, num_labels: int):
    return transformers.BertConfig(
        vocab_size=arch.vocab_size,
        hidden_size=arch.hidden_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads[0],
        intermediate_size=arch.ffn_sizes[0],
        max_position_embeddings=arch.max_position_embeddings,
        hidden_act="gelu",
        num_labels=max(num_labels, 1),
        attn_implementation="eager",
    )


def _random_hf_model(arch: BertArch, head: str, seed: int = 0):
    cls_name, num_labels, _ = HEADS[head]
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(_hf_config(arch, num_labels))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if name.endswith("LayerNorm.weight") else 0.0))
    return model.eval()


def _hf_forward(model, batch) -> dict[str, np.ndarray]:
    """HF outputs in our conventions: logits, hidden states, pooled output, attention probabilities."""
    ids, types, mask = (torch.as_tensor(x, dtype=torch.long) for x in batch)
    kw = dict(input_ids=ids, token_type_ids=types, attention_mask=mask)
    with torch.no_grad():
        out = model(**kw, output_hidden_states=True, output_attentions=True)
        encoder = model if isinstance(model, transformers.BertModel) else model.bert
        pooled = encoder(**kw).pooler_output if encoder.pooler is not None else None
    if hasattr(out, "start_logits"):
        logits = torch.stack([out.start_logits, out.end_logits], dim=-1)
    else:
        logits = getattr(out, "logits", None)
    to_np = lambda t: None if t is None else t.numpy()  # noqa: E731
    return {
        "logits": to_np(logits),
        "hidden_states": [t.numpy() for t in out.hidden_states],
        "pooled": to_np(pooled),
        "attentions": [t.numpy() for t in out.attentions],
    }


def _our_forward(arch: BertArch, head: str, num_labels: int, params, batch) -> dict[str, np.ndarray]:
    model = build_model(arch, head, num_labels)
    out = jax.jit(model.apply, static_argnames=("output_hidden_states", "output_attentions"))(
        {"params": params}, *batch, output_hidden_states=True, output_attentions=True
    )
    mask = np.asarray(batch[2], bool)[:, None, None, :]
    probs = [np.asarray(jax.nn.softmax(np.where(mask, s, -np.inf), axis=-1)) for s in out.attention_scores]
    return {
        "logits": None if out.logits is None else np.asarray(out.logits),
        "hidden_states": [np.asarray(h) for h in out.hidden_states],
        "pooled": None if out.pooled_output is None else np.asarray(out.pooled_output),
        "attentions": probs,
    }


def _assert_same(ours, hf, arch: BertArch, head: str, mask: np.ndarray) -> None:
    assert (ours["logits"] is None) == (head == "none")
    if ours["logits"] is not None:
        if head == "regression":
            assert ours["logits"].shape == hf["logits"].shape == (len(mask), 1)
        np.testing.assert_allclose(ours["logits"], hf["logits"], atol=TOL, rtol=0, err_msg="logits")
    assert len(ours["hidden_states"]) == len(hf["hidden_states"]) == arch.num_layers + 1
    for i, (a, b) in enumerate(zip(ours["hidden_states"], hf["hidden_states"])):
        np.testing.assert_allclose(a, b, atol=TOL, rtol=0, err_msg=f"hidden state {i}")
    assert (ours["pooled"] is None) == (hf["pooled"] is None) == (head in ("tagging", "span"))
    if ours["pooled"] is not None:
        np.testing.assert_allclose(ours["pooled"], hf["pooled"], atol=TOL, rtol=0, err_msg="pooled output")
    keys = mask.astype(bool)[:, None, None, :]
    for i, (a, b) in enumerate(zip(ours["attentions"], hf["attentions"])):
        n = arch.num_heads[i]
        np.testing.assert_allclose(a, b[:, :n], atol=TOL, rtol=0, err_msg=f"attention probabilities {i}")
        # Zero padding heads (heterogeneous archs) attend uniformly over the real tokens.
        uniform = np.broadcast_to(keys / keys.sum(-1, keepdims=True), b[:, n:].shape)
        np.testing.assert_allclose(b[:, n:], uniform, atol=1e-6, err_msg=f"padding heads {i}")


def _flat(params) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(params)}


# --------------------------------------------------------------- HF -> ours
@pytest.mark.parametrize("head", list(HEADS))
def test_hf_checkpoint_loads_and_matches(head, tiny_arch, tiny_tokenizer, padded_batch, tmp_path):
    hf_model = _random_hf_model(tiny_arch, head)
    hf_model.save_pretrained(tmp_path, safe_serialization=True)
    tiny_tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()

    _, num_labels, _ = HEADS[head]
    bert = load_bert(tmp_path, head=head, num_labels=num_labels)
    assert bert.arch == tiny_arch
    assert bert.num_labels == (num_labels if head != "none" else 0)
    ours = _our_forward(bert.arch, head, bert.num_labels, bert.params, padded_batch)
    _assert_same(ours, _hf_forward(hf_model, padded_batch), tiny_arch, head, padded_batch[2])


# --------------------------------------------------------------- ours -> HF
@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("which", ["uniform", "hetero"])
def test_saved_model_loads_in_transformers(
    which, head, tiny_arch, hetero_arch, tiny_tokenizer, random_params, padded_batch, tmp_path
):
    arch = tiny_arch if which == "uniform" else hetero_arch
    _, num_labels, labels = HEADS[head]
    params = random_params(arch, head, num_labels, seed=1)
    out = save_bert(tmp_path / "model", arch, params, tiny_tokenizer, head=head, labels=labels)

    auto = getattr(transformers, AUTO[head])
    hf_model, info = auto.from_pretrained(out, output_loading_info=True, attn_implementation="eager")
    hf_model.eval()
    assert type(hf_model).__name__ == HEADS[head][0]
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    if head == "regression":
        assert hf_model.config.num_labels == 1 and hf_model.config.problem_type == "regression"

    ours = _our_forward(arch, head, num_labels, params, padded_batch)
    _assert_same(ours, _hf_forward(hf_model, padded_batch), arch, head, padded_batch[2])

    # Round trip: our loader restores the arch, head and exactly the saved params.
    back = load_bert(out)
    assert back.arch == arch and back.head == head
    assert back.num_labels == build_model(arch, head, num_labels).num_labels
    saved, loaded = _flat(params), _flat(back.params)
    assert saved.keys() == loaded.keys()
    for key, value in saved.items():
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)


def test_finetuned_classifier_has_label_names_in_transformers(
    tiny_arch, tiny_tokenizer, random_params, tmp_path
):
    labels = ("negative", "positive")
    params = random_params(tiny_arch, "classification", len(labels), seed=2)
    out = save_bert(tmp_path / "sst2", tiny_arch, params, tiny_tokenizer, head="classification", labels=labels)

    hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert hf_model.config.num_labels == 2
    assert hf_model.config.id2label == {0: "negative", 1: "positive"}
    assert hf_model.config.label2id == {"negative": 0, "positive": 1}
    assert json.loads((out / "config.json").read_text())["bertnas"]["labels"] == list(labels)

    # The saved tokenizer is the one transformers uses.
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    texts = ["a good movie !", "the plot was awful"]
    enc = tokenizer(texts, padding=True, return_tensors="np")
    assert enc["input_ids"].tolist() == tiny_tokenizer(texts, padding=True)["input_ids"]
    assert tokenizer.unk_token_id not in enc["input_ids"]
    batch = (enc["input_ids"], enc["token_type_ids"], enc["attention_mask"])
    with torch.no_grad():
        hf_logits = hf_model(**{k: torch.as_tensor(v) for k, v in enc.items()}).logits.numpy()
    model = build_model(tiny_arch, "classification", len(labels))
    ours = np.asarray(model.apply({"params": params}, *batch).logits)
    np.testing.assert_allclose(ours, hf_logits, atol=TOL, rtol=0)
    predicted = [hf_model.config.id2label[i] for i in hf_logits.argmax(-1)]
    assert predicted == [labels[i] for i in ours.argmax(-1)]


def test_crf_tagger_loads_in_transformers_with_the_same_emissions(
    tiny_arch, tiny_tokenizer, random_params, padded_batch, tmp_path
):
    """transformers has no CRF: it loads the token classifier (the emissions) and reports the CRF scores
    as unexpected keys; our loader brings the CRF back."""
    _, num_labels, labels = HEADS["tagging"]
    params = random_params(tiny_arch, "tagging", num_labels, seed=3, crf=True)
    out = save_bert(tmp_path / "crf", tiny_arch, params, tiny_tokenizer, head="tagging", labels=labels)
    hf_model, info = transformers.AutoModelForTokenClassification.from_pretrained(
        out, output_loading_info=True, attn_implementation="eager"
    )
    assert sorted(info["unexpected_keys"]) == ["crf.end", "crf.start", "crf.transitions"]
    assert not info["missing_keys"] and not info["mismatched_keys"]
    emissions = {k: v for k, v in params.items() if k != "crf"}  # the CRF model's logits are these
    ours = _our_forward(tiny_arch, "tagging", num_labels, emissions, padded_batch)
    _assert_same(ours, _hf_forward(hf_model.eval(), padded_batch), tiny_arch, "tagging", padded_batch[2])
    back = load_bert(out)
    assert back.crf and back.model.crf
    for name, value in params["crf"].items():
        np.testing.assert_array_equal(np.asarray(back.params["crf"][name]), value)
