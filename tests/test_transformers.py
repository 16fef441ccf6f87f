"""Real clients: Hugging Face BERT and GPT-2 train with fastdrop's dropout only.

Small models built from configs in code (random weights, no download), with eager and
SDPA attention: after `replace_dropout`, a training step runs no torch dropout, is
reproducible under ``torch.manual_seed``, gives the same gradients with gradient
checkpointing, and survives a ``save_pretrained``/``from_pretrained`` round trip.
"""
import os

import pytest

from tests.util import require

torch = require("torch", "torch")
transformers = require("transformers", "transformers")

import fastdrop.torch as ft  # noqa: E402  (needs torch)

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here downloads; make sure of it
transformers.logging.set_verbosity_error()

ATTENTION = ["eager", "sdpa"]
TORCH_DROPOUT = {"aten::bernoulli_", "aten::native_dropout", "aten::dropout",
                 "aten::feature_dropout", "aten::alpha_dropout"}
BATCH, LENGTH, VOCABULARY = 2, 16, 97


def bert(attention):
    config = transformers.BertConfig(
        vocab_size=VOCABULARY, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=LENGTH, num_labels=3,
        attn_implementation=attention)
    return transformers.BertForSequenceClassification(config)


def gpt2(attention):
    config = transformers.GPT2Config(
        vocab_size=VOCABULARY, n_embd=64, n_layer=2, n_head=4, n_positions=LENGTH,
        attn_implementation=attention)
    return transformers.GPT2LMHeadModel(config)


MODELS = {"bert": bert, "gpt2": gpt2}


def batch(name):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCABULARY, (BATCH, LENGTH), generator=generator)
    labels = torch.tensor([0, 2]) if name == "bert" else ids
    return {"input_ids": ids, "labels": labels}


def built(name, attention):
    torch.manual_seed(0)
    model = MODELS[name](attention)
    assert ft.replace_dropout(model) > 0
    return model.train()


def step(model, inputs, seed=5):
    """One training step under ``seed``: (loss, gradients), the weights updated by AdamW."""
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = model(**inputs).loss
    loss.backward()
    gradients = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    optimizer.step()
    optimizer.zero_grad()
    return loss.detach(), gradients


def same(first, second):
    return torch.equal(first[0], second[0]) and all(
        torch.equal(a, b) for a, b in zip(first[1], second[1], strict=True))


@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("name", MODELS)
def test_a_training_step_runs_no_torch_dropout(name, attention):
    model = built(name, attention)
    with torch.profiler.profile(record_shapes=True) as profile:
        step(model, batch(name))
    events = profile.events()
    names = {event.name for event in events}
    assert names & TORCH_DROPOUT == set()
    # torch's math path is where SDPA goes with dropout; without dropout it takes flash
    assert "aten::_scaled_dot_product_attention_math" not in names
    # fastdrop's ops (C++ path, operators) or its Python path's autograd Function
    assert any("fastdrop" in event or "EagerDropout" in event for event in names), names
    if attention == "sdpa":
        assert "fastdrop::attention_dropout" in names


@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("name", MODELS)
def test_reproducible_and_checkpointing_gives_the_same_gradients(name, attention):
    inputs = batch(name)
    first, second = step(built(name, attention), inputs), step(built(name, attention), inputs)
    assert same(first, second)
    assert not same(first, step(built(name, attention), inputs, seed=6))
    checkpointed = built(name, attention)
    # transformers 5 renames gradient_checkpointing_enable (which still works, with a warning)
    enable = getattr(checkpointed, "activation_checkpointing_enable", None)
    (enable or checkpointed.gradient_checkpointing_enable)()
    assert same(step(checkpointed, inputs), first)


@pytest.mark.parametrize("name", MODELS)
def test_save_pretrained_round_trip_trains(name, tmp_path):
    model = built(name, "sdpa")
    inputs = batch(name)
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).train()
    ft.replace_dropout(reloaded)
    assert same(step(reloaded, inputs), step(model, inputs))
