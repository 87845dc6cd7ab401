"""Built-in benchmarks: MMLU and HellaSwag, scored by lm-eval's own task definitions.

Registered through the `llmforge` entry-point group like any third-party plugin. Where the data comes
from, in this order:

1. `DATA_DIR/<benchmark>/` exists (`evaluate.data_dir`, `llmforge eval --data-dir`): local files in the
   original datasets' schema. A generated lm-eval task folder `include:`s each installed task file and
   overrides only the dataset, so prompts, metrics and group weights stay lm-eval's.
2. The hub is reachable, or the dataset is in the Hugging Face cache: lm-eval's own tasks.
3. Otherwise (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set, no local files, no cache): one error that says
   which files to put where.
"""

from __future__ import annotations

import abc
import json
from pathlib import Path
from typing import Any

import yaml

from llmforge import Benchmark, DataError, TaskSet, did_you_mean, hookimpl, hub_offline, lm_eval_tasks_dir

SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
MMLU_CATEGORIES = ("humanities", "social_sciences", "stem", "other")


@hookimpl
def register_benchmarks(register) -> None:
    register("mmlu", MMLU())
    register("hellaswag", HellaSwag())


class LocalOrHub(Benchmark, abc.ABC):
    """An lm-eval benchmark that runs over local files when `DATA_DIR/<name>/` exists, else the hub."""

    name: str = ""
    dataset: str = ""  # the hub dataset lm-eval's task reads
    folder: str = ""  # lm-eval's task folder, relative to lm_eval/tasks
    layout: str = ""  # the local files, for messages

    def __init__(self) -> None:
        super().__init__(tasks=self.tasks, rows=self.rows, builtin=False, data_help=self.help())

    def resolve(self, data_dir: Path | None, workdir: Path) -> TaskSet:
        builtin = lm_eval_tasks_dir() / self.folder
        local = data_dir / self.name if data_dir is not None else None
        if local is not None and local.is_dir():
            out = workdir / self.name
            out.mkdir(parents=True, exist_ok=True)
            self.write_tasks(local, builtin, out)
            return TaskSet(list(self.tasks), [builtin, out], builtin=False, source=f"local files in {local}")
        if hub_offline():
            if not hub_cached(self.dataset):
                where = f" and {local} does not exist" if local is not None else " and no --data-dir was given"
                raise DataError(
                    f"Benchmark '{self.name}' has no data: the hub is offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE), "
                    f"{self.dataset} is not in the Hugging Face cache{where}. {self.help()}"
                )
            return TaskSet(list(self.tasks), [builtin], builtin=False, source=f"{self.dataset} from the HF cache")
        return TaskSet(list(self.tasks), [builtin], builtin=False, source=f"{self.dataset} from the hub")

    def help(self) -> str:
        return (
            f"For local {self.name} files, put {self.layout} in DATA_DIR/{self.name}/ and pass --data-dir DATA_DIR "
            "(evaluate.data_dir in a recipe); examples/data/benchmarks holds a sample."
        )

    @abc.abstractmethod
    def write_tasks(self, local: Path, builtin: Path, out: Path) -> None:
        """Write lm-eval task YAMLs into `out` that run lm-eval's tasks in `builtin` over the files in `local`."""


class MMLU(LocalOrHub):
    """MMLU: overall accuracy and its four categories (lm-eval's size-weighted groups)."""

    name = "mmlu"
    dataset = "cais/mmlu"
    folder = "mmlu/default"
    layout = (
        "one folder per subject, SUBJECT/test.jsonl and SUBJECT/dev.jsonl "
        "(rows: question, subject, choices[4], answer 0-3)"
    )
    tasks = ["mmlu"]
    rows = [
        ("MMLU", "mmlu", "acc"),
        ("MMLU humanities", "mmlu_humanities", "acc"),
        ("MMLU social sciences", "mmlu_social_sciences", "acc"),
        ("MMLU STEM", "mmlu_stem", "acc"),
        ("MMLU other", "mmlu_other", "acc"),
    ]

    def write_tasks(self, local: Path, builtin: Path, out: Path) -> None:
        known = sorted(p.stem.removeprefix("mmlu_") for p in builtin.glob("mmlu_*.yaml"))
        subjects = sorted(p for p in local.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not subjects:
            raise DataError(f"{local} holds no subject folder. {self.help()}")
        categories = set()
        for subject in subjects:
            if subject.name not in known:
                raise DataError(
                    f"{subject} is not an MMLU subject{did_you_mean(subject.name, known)}. Subject folders are "
                    f"named like lm-eval's tasks: {', '.join(known[:6])}, ... ({len(known)} in all)."
                )
            task_file = builtin / f"mmlu_{subject.name}.yaml"
            files = {split: split_files(subject, split, self) for split in ("test", "dev")}
            check_fields(files["test"][0], {"question", "choices", "answer"}, self)
            write_yaml(
                out / f"mmlu_{subject.name}.yaml",
                {"include": str(task_file), "task": f"mmlu_{subject.name}", **dataset_override(files)},
            )
            tag = (yaml.safe_load(task_file.read_text()) or {}).get("tag", "")
            categories.add(tag.removeprefix("mmlu_").removesuffix("_tasks"))
        # The top-level group lists only the categories with local subjects: a category left out would
        # keep lm-eval's hub subjects and fail offline. Each category group aggregates over its tag,
        # which the local subject tasks above redefine.
        write_yaml(
            out / "_mmlu.yaml",
            {"include": str(builtin / "_mmlu.yaml"), "task": [f"mmlu_{c}" for c in MMLU_CATEGORIES if c in categories]},
        )


class HellaSwag(LocalOrHub):
    """HellaSwag: accuracy and length-normalised accuracy on the validation split."""

    name = "hellaswag"
    dataset = "Rowan/hellaswag"
    folder = "hellaswag"
    layout = (
        "validation.jsonl (scored) and train.jsonl (few-shot examples) with rows: activity_label, "
        "ctx (or ctx_a and ctx_b), endings[4], label 0-3"
    )
    tasks = ["hellaswag"]
    rows = [("HellaSwag acc", "hellaswag", "acc"), ("HellaSwag acc_norm", "hellaswag", "acc_norm")]

    def write_tasks(self, local: Path, builtin: Path, out: Path) -> None:
        files = {split: split_files(local, split, self) for split in ("train", "validation")}
        for split, paths in files.items():
            columns = check_fields(paths[0], {"activity_label", "endings", "label"}, self)
            if not {"ctx_a", "ctx_b"} <= columns:
                if "ctx" not in columns:
                    raise DataError(f"{paths[0]} has neither ctx nor ctx_a and ctx_b. {self.help()}")
                files[split] = [split_ctx(paths, out / f"{split}.jsonl", self)]
        write_yaml(out / "hellaswag.yaml", {"include": str(builtin / "hellaswag.yaml"), **dataset_override(files)})


# --- helpers ----------------------------------------------------------------------------------------------


def split_files(folder: Path, split: str, bench: LocalOrHub) -> list[Path]:
    """`SPLIT.jsonl`, `SPLIT.json`, `SPLIT.parquet` or `SPLIT-*.parquet` (the hub's shards) in `folder`."""
    hits = [folder / f"{split}{suffix}" for suffix in SUFFIXES if (folder / f"{split}{suffix}").is_file()]
    hits = hits or sorted(folder.glob(f"{split}-*.parquet"))
    if not hits:
        raise DataError(f"{folder} has no {split}.jsonl. {bench.help()}")
    if len({SUFFIXES[p.suffix] for p in hits}) > 1 or len(hits) > 1 and hits[0].suffix != ".parquet":
        raise DataError(f"{folder} has several {split} files ({', '.join(p.name for p in hits)}): keep one.")
    return hits


def dataset_override(files: dict[str, list[Path]]) -> dict[str, Any]:
    """The only keys a local task changes: where the dataset comes from (one builder for all splits)."""
    builders = {SUFFIXES[p.suffix] for paths in files.values() for p in paths}
    if len(builders) > 1:
        raise DataError(f"Mixed file types ({', '.join(sorted(builders))}) for one benchmark: use one type.")
    return {
        "dataset_path": builders.pop(),
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: [str(p) for p in paths] for split, paths in files.items()}},
    }


def check_fields(path: Path, required: set[str], bench: LocalOrHub) -> set[str]:
    """The columns of the file's first row; a missing required one is an error naming the file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        columns = set(pq.read_schema(path).names)
    else:
        row = first_row(path)
        columns = set(row)
    missing = required - columns
    if missing:
        raise DataError(
            f"{path} has no {', '.join(sorted(missing))} field (it has {', '.join(sorted(columns)) or 'none'}). "
            f"{bench.help()}"
        )
    return columns


def first_row(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            if path.suffix == ".json":
                data = json.load(fh)
                rows = data if isinstance(data, list) else next(iter(data.values()), [])
                return rows[0] if rows else {}
            for line in fh:
                if line.strip():
                    return json.loads(line)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"Cannot read {path}: {exc}. Each line must be one JSON object.") from exc
    raise DataError(f"{path} is empty.")


def split_ctx(paths: list[Path], out: Path, bench: LocalOrHub) -> Path:
    """HellaSwag rows with only `ctx`: lm-eval's preprocessing reads ctx_a + ' ' + ctx_b, so set
    ctx_a = ctx and ctx_b = '' (the same prompt after lm-eval's strip)."""
    import datasets

    ds = datasets.load_dataset(SUFFIXES[paths[0].suffix], data_files=[str(p) for p in paths], split="train")
    with open(out, "w", encoding="utf-8") as fh:
        for row in ds:
            fh.write(json.dumps({**row, "ctx_a": row["ctx"], "ctx_b": ""}, default=str) + "\n")
    return out


def write_yaml(path: Path, config: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def hub_cached(dataset: str) -> bool:
    """Whether a hub dataset has a copy in the Hugging Face hub or datasets cache."""
    from datasets import config as ds_config
    from huggingface_hub import constants

    hub = Path(constants.HF_HUB_CACHE) / f"datasets--{dataset.replace('/', '--')}"
    arrow = Path(ds_config.HF_DATASETS_CACHE) / dataset.replace("/", "___")
    return hub.is_dir() or arrow.is_dir()
