"""The `llmforge` command line: a thin layer over the Python API.

An `LlmforgeError` prints as one red line and exits with code 2 (no traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from llmforge.errors import LlmforgeError

# Each command imports what it runs inside its function: the stages pull in torch and transformers'
# Trainer (seconds), which `llmforge --help`, `plugins` or `plot` never need.
STAGE_NAMES = ("data", "tokenizer", "blocks", "model", "train", "finetune", "evaluate")  # == llmforge.stages.STAGES


def cmd_run(args: argparse.Namespace, console: Console) -> None:
    from llmforge.recipe import Recipe

    recipe = Recipe.from_yaml(args.recipe, overrides=args.set, smoke=args.smoke)
    recipe.run(
        args.out, only=args.only, console=console, restart=args.restart, resume=args.resume, discard=args.discard
    )


def cmd_prepare(args: argparse.Namespace, console: Console) -> None:
    from llmforge.data.tokenstore import prepare
    from llmforge.recipe import Recipe

    recipe = Recipe.from_yaml(args.recipe, overrides=args.set)
    prepare(recipe, args.store, args.out or f"{args.store}.work", num_proc=args.num_proc, console=console)


def cmd_plot(args: argparse.Namespace, console: Console) -> None:
    from llmforge.tools.plots import write_plots

    for path in write_plots(args.run_dir):
        console.print(f"wrote {path}")


def cmd_compare(args: argparse.Namespace, console: Console) -> None:
    import transformers
    from rich.markup import escape as esc

    from llmforge.tools.compare import compare

    transformers.utils.logging.disable_progress_bar()
    snaps = compare(
        args.run_dir,
        args.prompt,
        chat=args.chat,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        greedy=args.greedy,
    )
    table = Table(title=f"checkpoints of {args.run_dir}", show_lines=True)
    table.add_column("checkpoint")
    table.add_column("step", justify="right")
    table.add_column("val loss", justify="right")
    for prompt in args.prompt:
        table.add_column(esc(prompt if len(prompt) <= 40 else prompt[:37] + "..."), ratio=1)
    best = {}  # per stage: a fine-tune's validation loss is on other data than pretraining's
    for s in snaps:
        if s.val_loss is not None:
            best[s.stage] = min(best.get(s.stage, s.val_loss), s.val_loss)
    for s in snaps:
        loss = "-" if s.val_loss is None else f"{s.val_loss:.4f}"
        loss += " (computed)" if s.val_source == "computed" else ""
        if s.val_loss is not None and s.val_loss == best.get(s.stage):
            loss = f"[bold green]{loss}[/]"
        table.add_row(s.name, "-" if s.step is None else str(s.step), loss, *[esc(x) for x in s.samples])
    console.print(table)
    console.print(
        "val loss: logged by the Trainer at that step (metrics.jsonl); (computed): scored now on the validation "
        "blocks; -: no evaluation at that step. Lowest of each stage in green (a fine-tune is scored on its own "
        "validation examples). Samples share one seed."
    )


def cmd_data_report(args: argparse.Namespace, console: Console) -> None:
    from llmforge.recipe import Recipe
    from llmforge.tools.report import data_report

    recipe = Recipe.from_yaml(args.recipe, overrides=args.set, smoke=args.smoke)
    data_report(
        recipe,
        out=args.out,
        console=console,
        budget_flops=args.budget_flops,
        budget_hours=args.budget_hours,
        flops_per_second=args.flops_per_second,
        processes=args.processes,
    )


def cmd_generate(args: argparse.Namespace, console: Console) -> None:
    import transformers

    from llmforge.models.loading import load_model_dir
    from llmforge.tools.generate import chat, generate

    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar before the answer
    model_dir = Path(args.model_dir)
    if (model_dir / "recipe.yaml").is_file():  # a run dir: its latest finished model, as llmforge eval reads it
        from llmforge.recipe import Run

        model_dir = Run(model_dir).model_dir
    model, tok = load_model_dir(model_dir)
    sampling = dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        greedy=args.greedy,
        seed=args.seed,
    )
    if args.chat:
        reply = chat(model, tok, args.prompt, system=args.system, **sampling)
        console.print(reply.text, markup=False, highlight=False)
        if not reply.stopped:
            Console(stderr=True).print(
                f"[dim](no end-of-turn token within --max-new-tokens {args.max_new_tokens}; the reply is cut)[/]"
            )
        return
    text = generate(model, tok, args.prompt, **sampling)
    console.print(args.prompt, style="bold", end="")
    console.print(text, markup=False, highlight=False)


def cmd_show_example(args: argparse.Namespace, console: Console) -> None:
    from llmforge.recipe import Recipe
    from llmforge.tools.show_example import show_example

    recipe = Recipe.from_yaml(args.recipe, overrides=args.set)
    show_example(recipe, args.index, console, run_dir=args.out)


def cmd_plugins(args: argparse.Namespace, console: Console) -> None:
    from llmforge.plugin.manager import get_plugins

    plugins = get_plugins()
    table = Table(title="llmforge plugins")
    for col in ("plugin", "package", "version", "module", "registers"):
        table.add_column(col)
    for info in plugins.infos:
        registers = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in info.registered.items())
        table.add_row(info.name, info.package, info.version, info.module, registers or "hooks only")
    console.print(table)


def cmd_eval(args: argparse.Namespace, console: Console) -> None:
    from pathlib import Path

    import datasets
    import transformers

    from llmforge.eval.harness import evaluate, rich_table, write_results

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    out = Path(args.out)
    results = []
    for model_dir in args.model_dirs:
        console.print(f"[bold]{model_dir}")
        results.append(
            evaluate(
                model_dir,
                tasks=tasks,
                data_dir=args.data_dir,
                limit=args.limit,
                num_fewshot=args.num_fewshot,
                batch_size=args.batch_size,
                text=args.text,
                workdir=out / "tasks",
                console=console,
            )
        )
    console.print(rich_table(results))
    write_results(out, results, out / "tasks")
    console.print(f"wrote {out / 'results.json'} and {out / 'results.md'}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmforge", description="From raw text to a trained language model.")
    parser.add_argument("--version", action="version", version=f"llmforge {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a recipe's stages (finished, unchanged stages are skipped)")
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument(
        "--only",
        metavar="STAGE",
        help=f"rerun this one stage (the earlier ones must be done): {', '.join(STAGE_NAMES)}",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="STAGE.KEY=VALUE",
        help="override a recipe value, e.g. --set train.max_steps=10 (repeatable)",
    )
    p.add_argument(
        "--smoke", action="store_true", help="apply the recipe's smoke: block (a quick check run) before --set"
    )
    p.add_argument(
        "--restart",
        action="append",
        default=[],
        metavar="STAGE",
        help="redo STAGE and every stage after it from scratch, even if up to date (repeatable); a training "
        "stage's earlier run is kept in RUN/previous/",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="training stages go on from their last checkpoint even where a changed setting would train afresh",
    )
    p.add_argument(
        "--discard",
        action="store_true",
        help="a stage trained afresh deletes its earlier checkpoints and model (default: kept in RUN/previous/)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("prepare", help="tokenize and pack a recipe's data once into a sharded token store")
    p.add_argument("recipe", help="recipe YAML file (its data, tokenizer and model.context_length are used)")
    p.add_argument("--store", required=True, help="token store directory to write")
    p.add_argument("--out", help="run directory for the data and tokenizer stages (default: STORE.work)")
    p.add_argument("--num-proc", type=int, help="tokenizing processes (default: data.num_proc or the CPU count)")
    p.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE", help="override a recipe value")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("plot", help="draw RUN/loss.png and RUN/data/lengths.png from the run dir")
    p.add_argument("run_dir", metavar="RUN", help="run directory (the --out of llmforge run)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("compare", help="samples and validation loss of every saved checkpoint, side by side")
    p.add_argument(
        "run_dir", metavar="RUN", help="run directory (the --out of llmforge run) whose checkpoints to compare"
    )
    p.add_argument("--prompt", action="append", required=True, help="a prompt to continue (repeatable)")
    p.add_argument(
        "--chat",
        action="store_true",
        help="models with a chat template answer each prompt as a user turn; others continue it",
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=40, metavar="N", help="tokens sampled per prompt (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="one sampling seed for every checkpoint (default 0)")
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "data-report", help="documents, tokens, blocks, steps and tokens/parameter before training; size for a budget"
    )
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("--out", help="run dir for the data and tokenizer stages (reused by llmforge run); default: temp")
    p.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE", help="override a recipe value")
    p.add_argument("--smoke", action="store_true", help="apply the recipe's smoke: block")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget-flops", type=float, metavar="C", help="training compute budget in FLOPs")
    budget.add_argument("--budget-hours", type=float, metavar="H", help="training time budget in hours")
    p.add_argument(
        "--flops-per-second",
        type=float,
        metavar="F",
        help="with --budget-hours: assumed training FLOP/s (default: measured on this machine)",
    )
    p.add_argument("--processes", type=int, default=1, metavar="N", help="data-parallel processes (default 1)")
    p.set_defaults(func=cmd_data_report)

    p = sub.add_parser("generate", help="continue a prompt with a finished model dir")
    p.add_argument(
        "model_dir",
        metavar="DIR",
        help="a model dir (a run's finetune/final or train/final, a checkpoint, any HF causal-LM dir) or a run dir "
        "(its finetune/final if finished, else train/final)",
    )
    p.add_argument("prompt", metavar="PROMPT", help="the text to continue (with --chat: the user's message)")
    p.add_argument(
        "--max-new-tokens", type=int, default=64, metavar="N", help="generate at most N tokens (default: %(default)s)"
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=0.8,
        metavar="T",
        help="sampling temperature: lower is more predictable; 0 is greedy decoding (default: %(default)s)",
    )
    p.add_argument(
        "--top-k",
        type=int,
        default=50,
        metavar="K",
        help="sample among the K likeliest tokens only (default: %(default)s)",
    )
    p.add_argument(
        "--top-p",
        type=float,
        default=0.95,
        metavar="P",
        help="sample among the likeliest tokens whose probabilities add up to P (default: %(default)s)",
    )
    p.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.1,
        metavar="R",
        help="above 1, tokens already in the text become less likely; 1 turns it off (default: %(default)s)",
    )
    p.add_argument(
        "--greedy", action="store_true", help="greedy decoding (the likeliest token each step) instead of sampling"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="S",
        help="sampling seed: the same seed gives the same text (default: a new sample each time)",
    )
    p.add_argument("--chat", action="store_true", help="answer PROMPT as a user turn with the saved chat template")
    p.add_argument("--system", help="with --chat: a system message before the user turn")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("show-example", help="print one fine-tuning example with its loss-carrying tokens highlighted")
    p.add_argument("recipe", help="recipe YAML file with a finetune block")
    p.add_argument("--index", type=int, default=0, help="row of the finetune data, from 0 (default 0)")
    p.add_argument("--out", help="run dir whose train/final is the base (when finetune.base is not set)")
    p.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE", help="override a recipe value")
    p.set_defaults(func=cmd_show_example)

    p = sub.add_parser("plugins", help="list installed plugins and what they register")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("eval", help="benchmarks (lm-eval) and perplexity of model dirs, in one table")
    p.add_argument("model_dirs", nargs="+", metavar="DIR", help="HF model dirs or llmforge run dirs (two: compared)")
    p.add_argument(
        "--tasks", default="mmlu,hellaswag", metavar="NAMES", help="benchmarks, comma-separated (default: %(default)s)"
    )
    p.add_argument("--data-dir", metavar="D", help="local benchmark files, one folder per benchmark (for offline use)")
    p.add_argument("--limit", type=int, metavar="N", help="at most N examples per task (quick checks)")
    p.add_argument("--num-fewshot", type=int, metavar="K", help="few-shot examples (default: the task's own)")
    p.add_argument("--batch-size", type=int, default=8, metavar="B", help="default: %(default)s")
    p.add_argument("--text", metavar="FILE", help="also report the perplexity of this UTF-8 text file")
    p.add_argument(
        "--out", default="eval-results", metavar="OUTDIR", help="for results.json, results.md (default: %(default)s)"
    )
    p.set_defaults(func=cmd_eval)
    return parser


def _version() -> str:
    try:
        return version("llmforge")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def main(argv: list[str] | None = None) -> int:
    console = Console()
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace, Console], None] = args.func
    try:
        func(args, console)
    except LlmforgeError as exc:
        Console(stderr=True, soft_wrap=True).print(
            f"[bold red]llmforge error:[/] {escape(' '.join(str(exc).split()))}", highlight=False
        )
        return 2
    except KeyboardInterrupt:
        resume = " Rerun the same command to go on from the last complete checkpoint." if args.command == "run" else ""
        Console(stderr=True).print(f"\n[red]interrupted.[/]{resume}", highlight=False)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
