"""Exports proven by training: trl 1.13.0 PRMTrainer on --format trl, SFTTrainer on --format
generative, OpenRLHF's tokenization of --format math-shepherd, and the CLI loop
build -> train -> eval run --labels prm. A tiny randomly initialized Llama and a BPE tokenizer
trained on the exported texts (labelers.training.write_tiny_model): no hub download.

These need the [train] extra (part of [test]); under CI they fail instead of skipping when it is
missing.
"""

from __future__ import annotations

import importlib.util
import math
import os

import pytest
from typer.testing import CliRunner

from data_schemas.catalog import Catalog
from data_schemas.errors import PrmforgeError
from data_schemas.export import STEP_TAG, export_paths, parse_math_shepherd
from data_schemas.synthetic import write_synthetic_build
from flows.cli import app

_MISSING = [m for m in ("torch", "transformers", "trl", "datasets") if importlib.util.find_spec(m) is None]
if _MISSING and not os.environ.get("CI"):
    pytest.skip(f"training tests need the [train] extra (missing: {', '.join(_MISSING)})", allow_module_level=True)

from labelers.config import TrainConfig  # noqa: E402
from labelers.training import (  # noqa: E402
    PRMScorer,
    check_prm_alignment,
    check_step_tags,
    marks_assistant_turns,
    read_export,
    step_tag_labels,
    tokenize_prm_row,
    train,
    write_tiny_model,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """A synthetic build, its trl / generative / math-shepherd exports, a tiny base model."""
    root = tmp_path_factory.mktemp("train")
    write_synthetic_build(root, "b1", num_batches=2)
    files = {}
    with Catalog(root) as catalog:
        for format in ("trl", "generative", "math-shepherd"):
            files[format] = root / f"{format}.parquet"
            export_paths(catalog, format, str(files[format]))
        files["soft"] = root / "soft.parquet"
        export_paths(catalog, "math-shepherd", str(files["soft"]), soft_labels=True)
    records = {name: read_export(path)[0] for name, path in files.items()}
    texts = [r["prompt"] + "\n" + "\n".join(r["completions"]) for r in records["trl"]]
    texts += [m["content"] for r in records["generative"] for m in r["messages"]]
    texts += [r["input"] for r in records["math-shepherd"]]
    base = write_tiny_model(root / "base", texts)
    tagged = write_tiny_model(root / "tagged", texts, extra_tokens=[STEP_TAG])
    return {"root": root, "files": files, "records": records, "base": base, "tagged": tagged}


def user_error(result) -> str:
    """The message of a PrmforgeError (the CLI's main() prints it as one line, exit 2)."""
    assert isinstance(result.exception, PrmforgeError), result.output
    return str(result.exception)


def _tokenizer(directory: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)


def test_trl_labels_sit_on_the_step_separators_token_by_token(built):
    tokenizer = _tokenizer(built["base"])
    settings = TrainConfig()
    separator = tokenizer.encode("\n", add_special_tokens=False)
    for record in built["records"]["trl"]:
        row = tokenize_prm_row(record, tokenizer, settings)
        positions = check_prm_alignment(row["input_ids"], row["labels"], separator, record["labels"])
        assert [row["labels"][p] for p in positions] == [int(x) for x in record["labels"]]
        # independently: the text up to each labeled token is the prompt and steps 1..k, each
        # followed by the separator
        for k, position in enumerate(positions):
            text = tokenizer.decode(row["input_ids"][: position + 1])
            assert text == record["prompt"] + "".join(step + "\n" for step in record["completions"][: k + 1])


def test_a_shifted_label_breaks_the_alignment_check(built):
    tokenizer = _tokenizer(built["base"])
    separator = tokenizer.encode("\n", add_special_tokens=False)
    record = next(r for r in built["records"]["trl"] if len(r["completions"]) >= 2)
    row = tokenize_prm_row(record, tokenizer, TrainConfig())
    positions = check_prm_alignment(row["input_ids"], row["labels"], separator, record["labels"])
    shifted = list(row["labels"])
    shifted[positions[1] - 1], shifted[positions[1]] = shifted[positions[1]], -100
    with pytest.raises(PrmforgeError, match="step 1 .* does not end a step separator"):
        check_prm_alignment(row["input_ids"], shifted, separator, record["labels"])
    flipped = list(row["labels"])
    flipped[positions[0]] = 1 - flipped[positions[0]]
    with pytest.raises(PrmforgeError, match="step 0 has label"):
        check_prm_alignment(row["input_ids"], flipped, separator, record["labels"])
    with pytest.raises(PrmforgeError, match="labeled tokens for"):
        check_prm_alignment(row["input_ids"], row["labels"], separator, list(record["labels"]) + [True])


def test_prm_trainer_trains_with_finite_loss_and_scores_every_step(built, tmp_path):
    records = built["records"]["trl"]
    settings = TrainConfig(max_steps=3, batch_size=4, learning_rate=1e-3, logging_steps=1, gradient_checkpointing=False)
    result = train(records, built["base"], tmp_path / "prm", settings)
    assert result.global_steps == 3 and len(result.losses) == 3
    assert all(math.isfinite(x) and x > 0 for x in result.losses)
    assert result.labeled_tokens == sum(len(r["labels"]) for r in records)
    scorer = PRMScorer(tmp_path / "prm")
    record = records[0]
    scores = scorer.step_scores(record["prompt"], record["completions"])
    assert len(scores) == len(record["completions"]) and all(0 < s < 1 for s in scores)


def test_generative_export_trains_with_sft(built, tmp_path):
    settings = TrainConfig(format="generative", max_steps=2, batch_size=2, max_length=512, logging_steps=1,
                           gradient_checkpointing=False)
    result = train(built["records"]["generative"], built["base"], tmp_path / "gen", settings)
    assert result.global_steps == 2 and all(math.isfinite(x) and x > 0 for x in result.losses)
    assert (tmp_path / "gen" / "prmforge_train.json").is_file()
    # the tiny template marks assistant turns, so the loss is on rationales and verdicts only
    assert marks_assistant_turns(_tokenizer(built["base"]).chat_template)
    assert not marks_assistant_turns("{% for m in messages %}{{ m['content'] }}{% endfor %}")


def test_math_shepherd_step_tag_is_one_token_once_per_step_with_its_label(built):
    tokenizer = _tokenizer(built["tagged"])
    tag_id = tokenizer.encode(STEP_TAG, add_special_tokens=False)
    assert len(tag_id) == 1
    for record in built["records"]["math-shepherd"]:
        pairs = step_tag_labels(tokenizer, record["input"], record["value"])
        ids = tokenizer(record["input"], add_special_tokens=False)["input_ids"]
        assert all(ids[p] == tag_id[0] for p, _ in pairs)
        assert [v == "+" for _, v in pairs] == parse_math_shepherd(record["input"], record["label"])
    soft = built["records"]["soft"]
    assert check_step_tags(soft, tokenizer) == sum(len(r["value"]) for r in soft)
    assert all(isinstance(v, float) for r in soft for v in r["value"])


def test_math_shepherd_tag_that_merges_in_context_is_refused(built):
    # the plain BPE learned " ки" as part of larger tokens: OpenRLHF would find no placeholder
    tokenizer = _tokenizer(built["base"])
    record = built["records"]["math-shepherd"][0]
    with pytest.raises(PrmforgeError, match="step tag"):
        step_tag_labels(tokenizer, record["input"], record["value"])


def test_build_train_eval_loop_on_the_cli(built, tmp_path):
    runner = CliRunner()
    model_dir = tmp_path / "prm"
    trained = runner.invoke(app, ["train", "--root", str(built["root"]), "--build", "b1", "--base-model", built["base"],
                                  "--out", str(model_dir), "--max-steps", "2", "--learning-rate", "1e-3",
                                  "--no-gradient-checkpointing"])
    assert trained.exit_code == 0, trained.output
    assert "trained 2 step(s)" in trained.output and (model_dir / "prmforge_train.json").is_file()
    eval_set = tmp_path / "set.jsonl"
    made = runner.invoke(app, ["eval", "make-set", "--out", str(eval_set), "--n-error", "4", "--n-correct", "4"])
    assert made.exit_code == 0, made.output
    out = tmp_path / "scores.json"
    scored = runner.invoke(app, ["eval", "run", "--input", str(eval_set), "--labels", "prm", "--prm", str(model_dir),
                                 "--out", str(out)])
    assert scored.exit_code == 0, scored.output
    import json

    result = json.loads(out.read_text())["results"][0]
    assert result["signal"] == "prm" and result["score"]["n_error"] == 4 and result["score"]["n_correct"] == 4
    assert result["score"]["f1"] is not None and not result["failures"]
    missing = runner.invoke(app, ["eval", "run", "--input", str(eval_set), "--labels", "prm"])
    assert "--prm DIR" in user_error(missing)


def test_check_only_and_wrong_format_are_one_line(built, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["train", "--data", str(built["files"]["math-shepherd"]), "--format", "math-shepherd",
                             "--base-model", built["tagged"], "--out", str(tmp_path / "x"), "--check-only"])
    assert ok.exit_code == 0 and "step tags" in ok.output, ok.output
    bad = runner.invoke(app, ["train", "--data", str(built["files"]["math-shepherd"]), "--format", "math-shepherd",
                              "--base-model", built["base"], "--out", str(tmp_path / "x"), "--check-only"])
    assert "step tag" in user_error(bad)
    wrong = runner.invoke(app, ["train", "--data", str(built["files"]["generative"]), "--base-model", built["base"],
                                "--out", str(tmp_path / "x")])
    assert "is a generative export" in user_error(wrong)
