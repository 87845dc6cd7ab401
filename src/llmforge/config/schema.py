"""The stage configs: one dataclass per stage, the single source of truth for recipe keys.

Each field's `help` metadata is its documentation; the recipe reference in docs/ is generated from
these classes. `from_mapping` turns a YAML mapping into a config and rejects unknown keys and wrong
types with the key's full name and the closest valid key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, Union

from llmforge.errors import ConfigError, did_you_mean


def _f(default: Any, help: str) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class DataConfig:
    """Where the text comes from and how it is split into training and validation documents."""

    source: str = _f("text", "Data-source plugin name: text, jsonl, json, parquet, csv, hub, or a plugin's.")
    path: str | list[str] | None = _f(None, "File, directory or glob (or a list of them) for file sources.")
    text_column: str | None = _f(
        "text", "Column (or JSON field) that holds each document's text; null keeps every column of each row."
    )
    documents: Literal["file", "paragraph", "line"] = _f(
        "file", "For plain text files: one document per file, per blank-line paragraph, or per line."
    )
    encoding: str = _f("utf-8", "Text encoding of plain text and CSV files.")
    name: str | None = _f(None, "Hub dataset name (source: hub), e.g. HuggingFaceFW/fineweb, or a builder.")
    config: str | None = _f(None, "Hub dataset configuration name, e.g. sample-10BT.")
    split: str = _f("train", "Hub dataset split to read.")
    data_files: str | list[str] | dict[str, Any] | None = _f(None, "data_files for datasets.load_dataset.")
    streaming: bool = _f(
        False,
        "Pretrain from the stream: documents are read batch by batch, tokenized and packed while training (no copy "
        "on disk); a checkpoint stores the exact stream position. The first val_documents are held out. "
        "Needs train.max_steps.",
    )
    max_documents: int | None = _f(None, "Read at most this many documents (useful with streaming).")
    val_fraction: float = _f(
        0.05,
        "Share of the text held out for validation: whole documents holding about this share of the characters, "
        "or the last part of every document when they are too few and long for that (one file, a few novels).",
    )
    val_documents: int = _f(
        1000, "With streaming: the first N documents (rows) of the stream are the validation set, never trained on."
    )
    seed: int = _f(1234, "Seed of the train/validation split.")
    num_proc: int | None = _f(None, "Processes for tokenization; default: the CPU count (at most 8).")
    options: dict[str, Any] = _f({}, "Extra keyword options passed to the data-source plugin.")


@dataclass
class TokenizerConfig:
    """Train a byte-level BPE tokenizer on the training documents, or load an existing one."""

    train: bool | None = _f(
        None, "Train a new byte-level BPE tokenizer on the training split; default: yes, unless path is set."
    )
    path: str | None = _f(None, "Load this tokenizer (local dir or hub name) instead of training one.")
    vocab_size: int | Literal["auto"] = _f(
        8192,
        "Vocabulary size of a trained tokenizer, special tokens included; auto: chosen for the training budget "
        "(train.max_time, max_steps or epochs).",
    )
    min_frequency: int = _f(2, "Minimum pair frequency for a BPE merge.")
    special_tokens: list[str] = _f(["<|endoftext|>", "<|pad|>"], "Special tokens of a trained tokenizer.")
    eos_token: str = _f("<|endoftext|>", "End-of-document token; documents are joined with it.")
    pad_token: str | None = _f(
        "<|pad|>", "Padding token. Set it equal to eos_token only if you mean it; null keeps a loaded one's."
    )
    max_documents: int | None = _f(None, "Train the tokenizer on at most this many documents.")

    def __post_init__(self) -> None:
        if self.train is None:  # a path alone loads that tokenizer
            self.train = self.path is None


MODEL_DEFAULTS = {"arch": "qwen3", "n_layer": 4, "n_embd": 128, "n_head": 4, "context_length": 256}


@dataclass
class ModelConfig:
    """The network: built from a config by name (or a size preset), or loaded from existing weights.

    A `preset` fills arch, n_layer, n_embd, n_head, n_kv_head and context_length; each of them given
    here wins over the preset's value. Without a preset the defaults in MODEL_DEFAULTS apply.
    """

    arch: str | None = _f(
        None, "transformers model_type to build from scratch (qwen3, llama, gpt2, ...); default qwen3 or the preset's."
    )
    from_pretrained: str | None = _f(None, "Start from these weights (local dir or hub name) instead.")
    preset: str | None = _f(
        None,
        "Size preset (gpt2, gpt2-medium, gpt2-large, gpt2-1b, gpt2-xl, llama-124m, ... or a plugin's), or auto: "
        "n_layer, n_embd and n_head chosen for the training budget (train.max_time, max_steps or epochs).",
    )
    n_layer: int | None = _f(None, "Transformer blocks (default 4, or the preset's).")
    n_embd: int | None = _f(None, "Hidden width (default 128, or the preset's).")
    n_head: int | None = _f(None, "Attention heads; must divide n_embd (default 4, or the preset's).")
    n_kv_head: int | None = _f(
        None, "Key/value heads for grouped-query attention (families that have it); default n_head, or the preset's."
    )
    context_length: int | None = _f(
        None, "Tokens per training block and the model's positions (default 256, or the preset's)."
    )
    dropout: float = _f(0.0, "Dropout everywhere; 0 keeps the fast attention kernel for pretraining.")
    tie_embeddings: bool = _f(True, "Share the input embedding and output projection weights.")
    attn_implementation: str = _f("sdpa", "Attention kernel: sdpa or eager.")
    trust_remote_code: bool = _f(False, "Allow from_pretrained to run code from the model repository.")
    extra: dict[str, Any] = _f(
        {}, "Further keys of the family's transformers config (e.g. intermediate_size, rope_theta), validated."
    )

    def __post_init__(self) -> None:
        if self.preset is None:  # with a preset, llmforge.models.families.apply_preset fills what is left unset
            for key, value in MODEL_DEFAULTS.items():
                if getattr(self, key) is None:
                    setattr(self, key, value)


@dataclass
class TrainConfig:
    """Pretraining with transformers' Trainer on packed, document-aware blocks."""

    epochs: float = _f(1.0, "Passes over the training blocks (ignored when max_steps is set).")
    max_steps: int | None = _f(None, "Optimizer steps to train; overrides epochs.")
    max_time: str | float | None = _f(
        None,
        "A wall-clock budget for this stage's training (90s, 3m, 2h, 1d; a number is seconds): the learning-rate "
        "schedule's warmup and decay run on its clock, training stops at the first step past it and saves the "
        "model there, and a resumed run gets only the time left. Without max_steps, epochs repeat until it ends.",
    )
    batch_size: int = _f(8, "Blocks per device per micro-batch.")
    grad_accum: int = _f(1, "Micro-batches per optimizer step.")
    lr: float | None = _f(
        None,
        "Peak learning rate. Unset: 2e-3 up to 256 wide, then 2e-3 x 256 / width (6.7e-4 at 768), the rate "
        "measured best at 256 wide falling as AdamW's best rate does with width (docs/performance.md).",
    )
    optimizer: Literal["adamw", "muon"] = _f(
        "muon",
        "muon: Muon (Newton-Schulz in the training's precision) on the hidden weight matrices and AdamW on "
        "embeddings, head, biases and norms, one lr and weight_decay for both (Muon's update scaled to AdamW's "
        "size); or adamw (fused) for everything. muon is the default: lower held-out loss in the same time on both "
        "benchmark corpora (docs/performance.md).",
    )
    schedule: Literal["cosine", "linear", "wsd", "constant"] = _f(
        "wsd",
        "Learning-rate schedule after warmup: wsd (warmup-stable-decay: constant, then linear to zero over the last "
        "20%), cosine or linear to zero, or constant. wsd is the default: lowest held-out loss of the three on both "
        "benchmark corpora (docs/performance.md).",
    )
    warmup: float = _f(0.05, "Warmup: a fraction of the steps if below 1, else a number of steps.")
    weight_decay: float = _f(0.1, "AdamW weight decay.")
    adam_beta1: float = _f(0.9, "AdamW beta1.")
    adam_beta2: float = _f(0.999, "AdamW beta2.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 disables clipping).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _f(
        "auto",
        "Numeric precision. auto: bf16 autocast on GPUs that have it; on a bf16-capable CPU, whichever of fp32 and "
        "bf16 a few timed steps on this model and row shape find faster (cached per machine and shape); else fp32.",
    )
    eval_every: int | None = _f(None, "Evaluate on the validation blocks every N steps (default: at the end).")
    save_every: int | None = _f(None, "Save a checkpoint every N steps (default: only the final model).")
    keep_last: int = _f(2, "Checkpoints to keep.")
    log_every: int = _f(10, "Log loss, learning rate and tokens/s every N steps.")
    early_stopping: int | None = _f(None, "Stop after this many evaluations without a lower validation loss.")
    final_model: Literal["best", "last"] = _f(
        "best",
        "With eval_every: the model saved as final is the evaluated checkpoint with the lowest validation loss "
        "(best; checkpoints are then saved at each evaluation unless save_every says otherwise) or the last step's "
        "(last). The summary names the step it came from.",
    )
    seed: int = _f(1234, "Seed for initialisation, data order and dropout.")
    torch_compile: bool = _f(False, "Compile the model with torch.compile (pays off on long runs).")
    document_aware: bool = _f(True, "Packed documents do not attend to each other.")
    keep_freed_memory: bool = _f(
        True, "CPU training on Linux: reuse freed memory instead of returning it to the OS (fewer page faults)."
    )
    fused_loss: bool = _f(
        False,
        "Compute the loss in chunks without materialising the logits (families in "
        "llmforge.training.trainer.FUSED_LOSS_FAMILIES). Saves memory; measured slower than the model's own loss on a "
        "CPU (docs/performance.md), so off by default.",
    )
    report_to: list[str] = _f(["none"], "Trainer integrations: tensorboard, wandb, mlflow or none.")
    on_nan: Literal["stop", "skip_batch"] = _f(
        "stop", "A NaN/inf loss stops the run (last complete checkpoint kept), or skips the batch."
    )
    max_skipped_batches: int = _f(10, "With on_nan: skip_batch, stop after this many skipped batches.")
    divergence_factor: float | None = _f(
        5.0, "Stop when a logged loss exceeds this multiple of the lowest logged loss (null: never)."
    )
    gradient_checkpointing: bool = _f(
        False, "Recompute each block's activations in the backward pass: far less memory, about a third more compute."
    )
    auto_batch_size: bool = _f(
        False, "On out-of-memory, halve batch_size and double grad_accum (same effective batch) and retry."
    )
    dataloader_workers: int = _f(0, "DataLoader worker processes.")


T = TypeVar("T")


@dataclass
class LoraConfig:
    """Low-rank adapters through peft instead of a full fine-tune."""

    r: int = _f(16, "Adapter rank.")
    alpha: float = _f(32.0, "Adapter scaling numerator (the update is scaled by alpha / r).")
    dropout: float = _f(0.05, "Dropout on the adapter input.")
    target_modules: list[str] | Literal["all-linear"] = _f(
        "all-linear",
        "Modules to adapt: all-linear (peft's: every linear or Conv1D layer but the output head, in any family), "
        "or a list of names or dotted suffixes (e.g. [q_proj, v_proj]).",
    )
    dora: bool = _f(False, "Weight-decomposed adapters (DoRA, peft's use_dora): a magnitude per output row as well.")
    rslora: bool = _f(False, "Rank-stabilised scaling alpha / sqrt(r) instead of alpha / r (peft's use_rslora).")
    merge: bool = _f(
        True, "Write a merged plain HF model dir; false saves only the adapter, which names its base model dir."
    )
    quantize: Literal["nf4", "fp4"] | None = _f(
        None,
        "Load the frozen base in 4 bits through bitsandbytes (QLoRA: nf4, with double quantization) and train "
        "the adapters on it; a merged model is merged into the base in full precision.",
    )


@dataclass
class FinetuneConfig(TrainConfig):
    """Instruction fine-tuning: a data source of conversations, a format, a chat template, a loss mask."""

    source: str = _f("jsonl", "Data-source plugin of the instruction data (same sources as data.source).")
    path: str | list[str] | None = _f(None, "File, directory or glob of the instruction data.")
    name: str | None = _f(None, "Hub dataset name (source: hub).")
    config: str | None = _f(None, "Hub dataset configuration name.")
    split: str = _f("train", "Hub dataset split.")
    data_files: str | list[str] | dict[str, Any] | None = _f(None, "data_files for datasets.load_dataset.")
    encoding: str = _f("utf-8", "Text encoding of the files.")
    options: dict[str, Any] = _f({}, "Extra keyword options passed to the data-source plugin.")
    max_examples: int | None = _f(None, "Use at most this many examples.")
    val_fraction: float = _f(0.1, "Share of examples held out for validation.")
    format: str = _f("alpaca", "Row format plugin: alpaca, dolly, sharegpt, messages, or a plugin's.")
    chat_template: str = _f("chatml", "Chat template plugin: chatml, minimal, tokenizer, or a plugin's.")
    loss_mask: str = _f(
        "assistant_only",
        "Loss mask plugin: all, assistant_only (every assistant turn with its end-of-turn token), last_assistant, "
        "completion_only (everything after the prompt of a one-answer example), or a plugin's.",
    )
    system_prompt: str | None = _f(None, "System message added to conversations that have none.")
    max_length: int | None = _f(None, "Longest example in tokens (default: the model's context length).")
    length_policy: Literal["filter", "truncate", "error"] = _f(
        "filter", "Examples longer than max_length: drop (counted), truncate, or stop with an error."
    )
    packing: bool = _f(
        False, "Pack short examples into rows of max_length; loss masks, positions and attention stay per example."
    )
    neftune_alpha: float | None = _f(
        None, "NEFTune: uniform noise * alpha / sqrt(example length * width) on the input embeddings, training only."
    )
    lora: LoraConfig | None = _f(None, "Train low-rank adapters (peft) instead of every weight.")
    base: str | None = _f(
        None,
        "Model dir (any local HF causal LM) to fine-tune; default: this run's train/final. "
        "A recipe with only a finetune block needs it.",
    )
    batch_size: int = _f(8, "Examples (or packed rows) per device per micro-batch.")
    epochs: float = _f(3.0, "Passes over the training examples (ignored when max_steps is set).")
    lr: float = _f(1e-4, "Peak learning rate.")
    optimizer: Literal["adamw", "muon"] = _f(
        "adamw", "adamw (fused), or muon as in train: a model pretrained elsewhere was trained with AdamW."
    )
    schedule: Literal["cosine", "linear", "wsd", "constant"] = _f(
        "cosine", "Learning-rate schedule after warmup: cosine, linear, wsd (as in train), or constant."
    )
    warmup: float = _f(0.03, "Warmup: a fraction of the steps if below 1, else a number of steps.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    adam_beta2: float = _f(0.95, "AdamW beta2.")


@dataclass
class EvaluateConfig:
    """Perplexity on the held-out blocks and lm-eval benchmarks on the finished model."""

    perplexity: bool = _f(True, "Loss and perplexity on the validation blocks, prepared like the training data.")
    benchmarks: list[str] = _f([], "Benchmark plugins to run through lm-eval, e.g. [mmlu, hellaswag].")
    data_dir: str | None = _f(None, "Local benchmark files (one sub-directory per benchmark) for offline runs.")
    limit: int | None = _f(None, "Evaluate at most this many examples per task.")
    num_fewshot: int | None = _f(None, "Few-shot examples per prompt (default: each task's own).")
    batch_size: int = _f(8, "Batch size for lm-eval and perplexity.")
    model: Literal["latest", "train", "finetune"] = _f(
        "latest", "Which model to evaluate: the fine-tuned one if there is one (latest), or a named stage's."
    )
    base: bool = _f(
        True, "Evaluating the fine-tuned model: score the model fine-tuning started from too, side by side."
    )


def from_mapping(cls: type[T], mapping: Any, where: str) -> T:
    """Build `cls` from a mapping, naming `where.key` in every error."""
    if mapping is None:
        mapping = {}
    if dataclasses.is_dataclass(mapping) and isinstance(mapping, cls):
        return mapping
    if not isinstance(mapping, dict):
        raise ConfigError(f"'{where}' must be a mapping of keys to values, got {type(mapping).__name__}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in mapping.items():
        if key not in hints:
            raise ConfigError(
                f"Unknown key '{where}.{key}'{did_you_mean(str(key), names)}. Valid keys: {', '.join(names)}."
            )
        values[key] = check_type(value, hints[key], f"{where}.{key}")
    return cls(**values)


def check_type(value: Any, hint: Any, key: str) -> Any:
    """Return `value` (coerced where harmless: int -> float, '6e-4' -> 6e-4) or raise naming `key`."""
    ok, coerced = _match(value, hint, key)
    if not ok:
        raise ConfigError(f"'{key}' must be {_describe(hint)}, got {value!r} ({type(value).__name__}).")
    return coerced


def _match(value: Any, hint: Any, key: str) -> tuple[bool, Any]:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return True, value
    if dataclasses.is_dataclass(hint):  # a nested block, e.g. finetune.lora
        if isinstance(value, hint):
            return True, value
        if isinstance(value, dict):
            return True, from_mapping(hint, value, key)
        return False, value
    if hint is type(None):
        return value is None, value
    if origin in (Union, types.UnionType):
        for arg in args:
            ok, coerced = _match(value, arg, key)
            if ok:
                return True, coerced
        return False, value
    if origin is Literal:
        return value in args, value
    if origin is list:
        if not isinstance(value, list):
            return False, value
        out = []
        for item in value:
            ok, coerced = _match(item, args[0] if args else Any, key)
            if not ok:
                return False, value
            out.append(coerced)
        return True, out
    if origin is dict:
        return isinstance(value, dict), value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):  # YAML 1.1 reads 6e-4 as a string
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if hint is str:
        return isinstance(value, str), value
    return isinstance(value, hint), value


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        if not args:
            return "a list"
        item = _describe(args[0])
        return "a list of strings" if args[0] is str else f"a list of {item}"
    if origin is dict:
        return "a mapping"
    if hint is type(None):
        return "null"
    if dataclasses.is_dataclass(hint):
        return f"a mapping ({', '.join(f.name for f in dataclasses.fields(hint))})"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def field_docs(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) for each field: the raw material of the recipe reference."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append((f.name, _describe(hints[f.name]), default, f.metadata.get("help", "")))
    return rows
