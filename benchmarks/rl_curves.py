"""Does RL raise the mean reward? `pagelens train rsgrpo|grpo` from an SFT'd tiny Qwen2.5-VL, several seeds, on the
sample corpus's 20 questions, on the CPU (issue 11: the mean over the last quarter of steps beats the first
quarter's, for each of at least 3 seeds).

The starting model is part 1's loop, made here unless `--model` gives one: the extractive policy records `--runs`
runs with the protocol the RL loop uses (evisrag for rsgrpo, pagelens for grpo) on the sample questions and on
questions cut from the pages' text lines, `pagelens tiny-model qwen2.5-vl --vocab-size 4096 --hidden-size 128`
is SFT'd on them for `--sft-steps` steps (`--lr 3e-3`). Then, per seed, `pagelens train KIND` runs `--steps`
steps as a user runs it, and this script reads its metrics.jsonl.

    python benchmarks/rl_curves.py --kind rsgrpo [--seeds 0 1 2] [--steps 24] [--model SFT_DIR] [--json]
    python benchmarks/rl_curves.py --kind grpo --protocol pagelens --runs 700 --sft-steps 700 [--save-model DIR]
    python benchmarks/rl_curves.py --kind grpo --model tests/data/models/sft-pagelens-tiny --n 8   # README figures

Multi-turn GRPO needs a model that closes an answer in some rollouts (VRAG-RL's reward is 0 otherwise): 700 runs
and 700 SFT steps make one; n 8 gives each step enough rollouts that answered to rise on every seed tried.

Each seed's line: reward_mean per step, the first and last quarters' means and their difference. `--plot FILE.png`
draws the curves (PIL, no plotting library needed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pagelens.training.recording import record_extractive_runs

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "servers" / "sample"
PROTOCOL = {"rsgrpo": "evisrag"}


def pagelens(*args: str, home: Path, threads: int) -> None:
    env = {**os.environ, "PAGELENS_HOME": str(home), "OMP_NUM_THREADS": str(threads)}
    subprocess.run([sys.executable, "-m", "pagelens", *args], env=env, check=True, stdout=subprocess.DEVNULL)


def index_sample(home: Path) -> None:
    from pagelens.tools.corpus.ingest import index_paths
    from pagelens.tools.corpus.store import PageStore, StoreSettings

    with PageStore(StoreSettings(home=home)) as store:
        index_paths(store, sorted(SAMPLE.glob("*.pdf")), progress=False)


def sft_model(work: Path, home: Path, protocol: str, args) -> Path:
    runs = work / "runs" / "runs.jsonl"
    runs.parent.mkdir(parents=True)
    record_extractive_runs(home, [q["question"] for q in json.loads((SAMPLE / "questions.json").read_text())],
                           args.runs, runs, protocol)
    pagelens("tiny-model", "qwen2.5-vl", str(work / "tiny"), "--vocab-size", "4096", "--hidden-size", "128",
             home=home, threads=args.threads)
    pagelens("train", "sft", "--model", str(work / "tiny"), "--data", str(runs), "--out", str(work / "sft"),
             "--lr", "3e-3", "--max-steps", str(args.sft_steps), "--save-steps", str(10 * args.sft_steps),
             "--no-gradient-checkpointing", home=home, threads=args.threads)
    return work / "sft"


def save_model(model: Path, folder: Path) -> None:
    """The files that load and serve the model (no optimiser state, no loss history)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in model.iterdir():
        if path.is_file() and path.name != "trainer_state.json":
            shutil.copy2(path, folder / path.name)


def quarters(values: list[float]) -> tuple[float, float]:
    quarter = max(1, len(values) // 4)
    return statistics.fmean(values[:quarter]), statistics.fmean(values[-quarter:])


def plot(curves: dict[int, list[float]], path: Path, title: str) -> None:
    from PIL import Image, ImageDraw

    width, height, margin = 640, 360, 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    low = min(min(values) for values in curves.values())
    top = max(max(values) for values in curves.values())
    span = (top - low) or 1.0
    steps = max(len(values) for values in curves.values())
    draw.rectangle([margin, margin, width - margin, height - margin], outline="black")
    draw.text((margin, 10), f"{title}: reward_mean per step ({low:.2f} to {top:.2f}), {steps} steps", fill="black")
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    for (seed, values), color in zip(sorted(curves.items()), colors * 4):
        points = [(margin + (width - 2 * margin) * i / max(1, steps - 1),
                   height - margin - (height - 2 * margin) * (value - low) / span) for i, value in enumerate(values)]
        draw.line(points, fill=color, width=2)
        draw.text((width - margin - 60, margin + 12 * seed), f"seed {seed}", fill=color)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=["rsgrpo", "grpo"], required=True)
    parser.add_argument("--protocol", choices=["vrag", "pagelens"], default="pagelens", help="grpo's protocol")
    parser.add_argument("--model", type=Path, help="an SFT'd checkpoint (default: made here, see the module doc)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--prompts-per-step", type=int, default=2)
    parser.add_argument("--lr", default="3e-4")
    parser.add_argument("--max-new-tokens", type=int, default=320, help="EVisRAG scores replies under 200 tokens -1")
    parser.add_argument("--max-turns", type=int, default=3, help="grpo's turns a rollout")
    parser.add_argument("--runs", type=int, default=400, help="runs recorded for the SFT model")
    parser.add_argument("--sft-steps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save-model", type=Path, metavar="DIR",
                        help="keep the SFT'd starting model in DIR (tests/data/models/ holds the one CI starts from)")
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    protocol = PROTOCOL.get(args.kind, args.protocol)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        home = work / "store"
        index_sample(home)
        started = time.perf_counter()
        model = args.model or sft_model(work, home, protocol, args)
        sft_seconds = time.perf_counter() - started if args.model is None else None
        if args.save_model:
            save_model(model, args.save_model)
        result = {"kind": args.kind, "protocol": protocol, "steps": args.steps, "n": args.n,
                  "prompts_per_step": args.prompts_per_step, "lr": args.lr, "max_new_tokens": args.max_new_tokens,
                  "sft_seconds": sft_seconds, "seeds": {}}
        for seed in args.seeds:
            out = work / f"{args.kind}-{seed}"
            command = ["train", args.kind, "--model", str(model), "--data", str(SAMPLE / "questions.jsonl"),
                       "--out", str(out), "--seed", str(seed), "--steps", str(args.steps), "--n", str(args.n),
                       "--prompts-per-step", str(args.prompts_per_step), "--lr", args.lr,
                       "--max-new-tokens", str(args.max_new_tokens), "--device", "cpu"]
            if args.kind == "rsgrpo":  # the online filter would drop the groups that earn nothing yet
                command.append("--no-filter")
            else:
                command += ["--protocol", protocol, "--max-turns", str(args.max_turns)]
            started = time.perf_counter()
            pagelens(*command, home=home, threads=args.threads)
            seconds = time.perf_counter() - started
            curve = [json.loads(line)["reward_mean"] for line in (out / "metrics.jsonl").read_text().splitlines()]
            first, last = quarters(curve)
            result["seeds"][seed] = {"reward_mean": curve, "first_quarter": first, "last_quarter": last,
                                     "rise": last - first, "seconds": seconds}
            if not args.json:
                print(f"seed {seed}: first quarter {first:.3f}, last quarter {last:.3f} "
                      f"({last - first:+.3f}), {seconds:.0f} s", flush=True)
        result["all_rise"] = all(entry["rise"] > 0 for entry in result["seeds"].values())
        if args.plot:
            plot({seed: entry["reward_mean"] for seed, entry in result["seeds"].items()}, args.plot,
                 f"pagelens train {args.kind}")
    print(json.dumps(result, indent=1) if args.json else f"every seed rose: {result['all_rise']}")


if __name__ == "__main__":
    main()
