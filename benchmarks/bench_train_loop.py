"""build -> train -> ProcessBench F1, as a user runs it: `prmforge train` then
`prmforge eval run --labels prm`, each a separate process, timed.

Usage: python benchmarks/bench_train_loop.py [--root DATA_ROOT] [--base-model M] [--set FILE]
                                             [--max-steps N] [--n 20] [--workdir DIR] [--quick]

Without --root a synthetic build is written; without --base-model a tiny randomly initialized
Llama with a BPE tokenizer trained on the build's texts is written (labelers.training.
write_tiny_model): the loop is real, the F1 of such a model means nothing. Without --set an
injected set of --n erroneous + --n correct GSM8K solutions is made. Needs the [train] extra.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def figure(name: str, value: float | None, unit: str, goal: str = "-") -> None:
    shown = "-" if value is None else f"{value:.4g}"
    print(f"FIGURE\t{name}\t{shown}\t{unit}\t{goal}", flush=True)


def prmforge(*args: str) -> tuple[float, str]:
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        sys.exit(f"prmforge {' '.join(args)} failed ({completed.returncode}): {completed.stderr.strip()[-2000:]}")
    return seconds, completed.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="data root with complete builds (default: a synthetic build)")
    parser.add_argument("--base-model", help="base model dir or hub id (default: a tiny random model)")
    parser.add_argument("--input", dest="set_file", help="ProcessBench-format set (default: eval make-set)")
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--n", type=int, default=50, help="erroneous and correct solutions of the made set")
    parser.add_argument("--workdir", help="keep the files here (default: a temporary directory)")
    parser.add_argument("--quick", action="store_true", help="5 training steps, 10 + 10 solutions")
    args = parser.parse_args()
    if args.quick:
        args.max_steps, args.n = 5, 10
    work = Path(args.workdir or tempfile.mkdtemp(prefix="prmforge-train-loop-"))
    work.mkdir(parents=True, exist_ok=True)
    root = args.root
    if root is None:
        from data_schemas.synthetic import write_synthetic_build

        root = str(work / "data")
        write_synthetic_build(root, "synthetic", num_batches=4)
    set_file = args.set_file
    if set_file is None:
        set_file = str(work / "set.jsonl")
        gsm8k = REPO / "tests" / "data" / "gsm8k_test.jsonl"  # 1319 problems; the bundled 40 give ~9 + 9
        prmforge("eval", "make-set", "--out", set_file, "--n-error", str(args.n), "--n-correct", str(args.n),
                 *(["--input", str(gsm8k)] if gsm8k.is_file() else []))
    base = args.base_model
    if base is None:
        from data_schemas.catalog import Catalog
        from labelers.training import write_tiny_model

        with Catalog(root) as catalog:
            texts = [r["t"] for r in catalog.query(
                "SELECT question AS t FROM problems UNION ALL SELECT step_text AS t FROM steps").to_pylist()]
        from labelers.evaluation.processbench import read_set

        set_texts = [r.problem + "\n" + "\n".join(r.steps) for r in read_set(Path(set_file))]
        base = write_tiny_model(work / "base", texts + set_texts)
    model_dir = work / "prm"
    train_s, train_out = prmforge("train", "--root", root, "--base-model", base, "--out", str(model_dir),
                                  "--max-steps", str(args.max_steps), "--learning-rate", "1e-3",
                                  "--no-gradient-checkpointing")
    print(train_out.strip())
    info = json.loads((model_dir / "prmforge_train.json").read_text())
    out = work / "scores.json"
    eval_s, eval_out = prmforge("eval", "run", "--input", set_file, "--labels", "prm", "--prm", str(model_dir),
                                "--out", str(out))
    print(eval_out.strip())
    score = json.loads(out.read_text())["results"][0]["score"]
    figure("train_loop.train_seconds", train_s, "s (prmforge train, whole process)")
    figure("train_loop.train_steps", info["global_steps"], "optimizer steps")
    figure("train_loop.final_loss", info["losses"][-1], "PRMTrainer loss")
    figure("train_loop.eval_seconds", eval_s, "s (prmforge eval run --labels prm, whole process)")
    figure("train_loop.prm_f1", score["f1"],
           "ProcessBench F1 (tiny random model: meaningless)" if args.base_model is None else "ProcessBench F1")
    print(f"files in {work}")


if __name__ == "__main__":
    main()
