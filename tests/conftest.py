"""Shared fixtures: a small corpus cut from the bundled one, and a tiny recipe that trains in seconds."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LLMFORGE_CACHE_DIR", tempfile.mkdtemp(prefix="llmforge-test-cache-"))  # not the user's
os.environ["COLUMNS"] = "200"  # rich wraps at 80 columns otherwise, splitting messages tests look for
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "examples" / "data" / "corpus"


@pytest.fixture(scope="session")
def corpus_text() -> str:
    """About 60 kB of real English prose in blank-line paragraphs."""
    return (CORPUS / "pride_and_prejudice.txt").read_text(encoding="utf-8")[:60_000]


@pytest.fixture
def corpus_file(tmp_path: Path, corpus_text: str) -> Path:
    path = tmp_path / "corpus" / "book.txt"
    path.parent.mkdir()
    path.write_text(corpus_text, encoding="utf-8")
    return path


def tiny_recipe_dict(corpus: Path, **train: object) -> dict:
    """A recipe small enough to train in a few seconds on one CPU thread."""
    return {
        "name": "tiny-test",
        "data": {"source": "text", "path": str(corpus), "documents": "paragraph", "val_fraction": 0.1, "seed": 7},
        "tokenizer": {"vocab_size": 400},
        "model": {"n_layer": 1, "n_embd": 32, "n_head": 2, "context_length": 32},
        "train": {
            "max_steps": 6,
            "batch_size": 4,
            "lr": 3e-3,
            "eval_every": 3,
            "save_every": 3,
            "log_every": 1,
            "seed": 3,
            **train,
        },
    }


@pytest.fixture
def tiny_recipe(corpus_file: Path):
    from llmforge import Recipe

    return Recipe.from_dict(tiny_recipe_dict(corpus_file))


def tiny_gpt2(attn: str = "sdpa", vocab_size: int = 50, n_positions: int = 32, eos: int = 0):
    """A 2-layer, 32-wide GPT-2 without dropout or cache, seeded: a model forward in a few milliseconds."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=eos,
        eos_token_id=eos,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        use_cache=False,
    )
    return GPT2LMHeadModel._from_config(cfg, attn_implementation=attn)


def stream_recipe_dict(tmp_path: Path, docs: list[str], **train: object) -> dict:
    """The tiny recipe reading `docs` as a streamed hub dataset (a local jsonl through `datasets`' json builder);
    rows 0-29 are the validation set."""
    import json

    path = tmp_path / "stream.jsonl"
    path.write_text("".join(json.dumps({"text": d, "n": i}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")
    recipe = tiny_recipe_dict(tmp_path, **train)
    recipe["data"] = {
        "source": "hub",
        "name": "json",
        "data_files": str(path),
        "streaming": True,
        "val_documents": 30,
        "options": {"cache_dir": str(tmp_path / "hf-cache")},
    }
    return recipe


def packed_document_logits(model, doc1: list[int], doc2: list[int], eos: int) -> tuple:
    """Logits of `doc2` packed after `doc1` (positions restarting, as training calls the model), of `doc2` alone,
    and of `doc2` after `doc1` with plain causal attention (what a leak would look like)."""
    from llmforge.data.batches import PackedCollator

    collate = PackedCollator(eos)
    packed, alone = collate([{"input_ids": doc1 + doc2}]), collate([{"input_ids": doc2}])
    with torch.no_grad():
        in_row = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits
        by_itself = model(input_ids=alone["input_ids"], position_ids=alone["position_ids"], use_cache=False).logits
        leaky = model(input_ids=packed["input_ids"], use_cache=False).logits
    return in_row[0, len(doc1) :], by_itself[0], leaky[0, len(doc1) :]
