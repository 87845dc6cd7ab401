"""The `llmforge` command line: a thin layer over the Python API.

An `LlmforgeError` prints as one red line and exits with code 2 (no traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from llmforge.errors import LlmforgeError


def cmd_run(args: argparse.Namespace, console: Console) -> None:
    from llmforge.recipe import Recipe

    recipe = Recipe.from_yaml(args.recipe, overrides=args.set)
    recipe.run(args.out, only=args.only, console=console)


def cmd_generate(args: argparse.Namespace, console: Console) -> None:
    from llmforge.generate import generate, load

    model, tok = load(args.model_dir)
    text = generate(
        model,
        tok,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        greedy=args.greedy,
        seed=args.seed,
    )
    console.print(args.prompt, style="bold", end="")
    console.print(text, markup=False, highlight=False)


def cmd_plugins(args: argparse.Namespace, console: Console) -> None:
    from llmforge.plugins import get_plugins

    plugins = get_plugins()
    table = Table(title="llmforge plugins")
    for col in ("plugin", "package", "version", "module", "registers"):
        table.add_column(col)
    for info in plugins.infos:
        registers = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in info.registered.items())
        table.add_row(info.name, info.package, info.version, info.module, registers or "hooks only")
    console.print(table)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmforge", description="From raw text to a trained language model.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a recipe's stages (finished, unchanged stages are skipped)")
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--only", help="rerun this one stage (the earlier ones must be done)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="STAGE.KEY=VALUE",
        help="override a recipe value, e.g. --set train.max_steps=10 (repeatable)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("generate", help="continue a prompt with a finished model dir")
    p.add_argument("model_dir")
    p.add_argument("prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--repetition-penalty", type=float, default=1.1)
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("plugins", help="list installed plugins and what they register")
    p.set_defaults(func=cmd_plugins)
    return parser


def main(argv: list[str] | None = None) -> int:
    console = Console()
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace, Console], None] = args.func
    try:
        func(args, console)
    except LlmforgeError as exc:
        Console(stderr=True).print(f"[bold red]llmforge error:[/] {exc}", markup=True, highlight=False)
        return 2
    except KeyboardInterrupt:
        Console(stderr=True).print("[red]interrupted[/]")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
