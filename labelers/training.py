"""PRM training and scoring on prmforge exports: thin wrappers over trl 1.13.0.

Nothing here trains on its own: ``train`` hands an export to the pinned trainer —
``trl.experimental.prm.PRMTrainer`` for the ``trl`` layout (a token-classification head,
label 1 = good step on the last token of ``step + step_separator``), ``trl.SFTTrainer`` for the
``generative`` layout (chat ``messages``) — with the settings of :class:`TrainConfig`.
What prmforge adds is checking, not training:

- ``check_prm_alignment``: after PRMTrainer's own ``tokenize_row``, every labeled token must be
  the last token of a step separator, there must be one per step, in step order, carrying that
  step's label. Training refuses an export that fails (a silent misalignment trains a PRM on
  the wrong tokens).
- ``step_tag_labels``: the Math-Shepherd layout tokenized as OpenRLHF's ``train_prm`` does
  (placeholder ``ки`` encoded alone must be one token; each tag in the text must tokenize to that
  same id, once per step). OpenRLHF gives a NaN loss when they differ (its issue #509); here it
  is a one-line error naming the tokenizer.

``PRMScorer`` loads a trained PRM and gives each step P(good) at the same positions the trainer
labeled (it tokenizes with the same ``tokenize_row``), for ``prmforge eval run --labels prm``.

torch, transformers and trl are imported inside the functions: the rest of prmforge never needs
them (extra ``[train]``).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_schemas.errors import InputError, PrmforgeError
from labelers.config import TrainConfig

#: Columns each trainer reads from an export (the rest — ids, mc_values — are dropped).
TRAIN_COLUMNS = {"trl": ("prompt", "completions", "labels"), "generative": ("messages",)}
#: Label of a good step in PRMTrainer's two-class head (it writes ``int(label)``).
GOOD_CLASS = 1
IGNORE_INDEX = -100


def require_training_packages() -> None:
    """One-line error when the ``[train]`` extra is not installed."""
    missing = []
    for module in ("torch", "transformers", "trl", "datasets"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise PrmforgeError(
            f"training needs {', '.join(missing)}: pip install -e '.[train]' "
            "(trl==1.13.0, the last release with PRMTrainer)"
        )


# ------------------------------------------------------------------------------------------
# Export files
# ------------------------------------------------------------------------------------------


def read_export(path: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(records, export metadata or None) of a prmforge export (Parquet or JSON Lines)."""
    from data_schemas.export import read_export_metadata

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.suffix == ".jsonl":
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        import pyarrow.parquet as pq

        try:
            records = pq.read_table(path).to_pylist()
        except Exception as error:  # pyarrow raises several types for a file that is not Parquet
            raise InputError(f"{path}: not a Parquet export ({error})") from None
    return records, read_export_metadata(str(path))


def export_format(records: Sequence[dict[str, Any]], metadata: dict[str, Any] | None, path: str | Path) -> str:
    """The export's layout: from its metadata, else from its columns."""
    if metadata and metadata.get("format"):
        return str(metadata["format"])
    if records and {"prompt", "completions", "labels"} <= set(records[0]):
        return "trl"
    if records and "messages" in records[0]:
        return "generative"
    if records and {"input", "label"} <= set(records[0]):
        return "math-shepherd"
    raise InputError(f"{path}: not a prmforge trl, generative or math-shepherd export (no records or unknown columns)")


# ------------------------------------------------------------------------------------------
# Tokenization checks
# ------------------------------------------------------------------------------------------


def tokenize_prm_row(
    record: dict[str, Any], tokenizer: Any, settings: TrainConfig, is_eval: bool = False
) -> dict[str, list[int]]:
    """PRMTrainer's own tokenization of one ``trl`` record (its static ``tokenize_row``)."""
    from trl.experimental.prm import PRMTrainer

    return PRMTrainer.tokenize_row(
        {"prompt": record["prompt"], "completions": record["completions"], "labels": record["labels"]},
        tokenizer,
        settings.step_separator,
        settings.max_length,
        None,
        settings.train_on_last_step_only,
        is_eval,
    )


def check_prm_alignment(input_ids: Sequence[int], labels: Sequence[int], separator_ids: Sequence[int],
                        step_labels: Sequence[bool], last_step_only: bool = False,
                        max_length: int | None = None) -> list[int]:
    """Positions of the labeled tokens, after checking that each is the last token of a step
    separator and that they carry ``step_labels`` in order (one per step, or only the last
    step's with ``last_step_only``; a row cut at ``max_length`` may hold only the first steps).
    Raises PrmforgeError naming the first mismatch."""
    if len(input_ids) != len(labels):
        raise PrmforgeError(f"label alignment: {len(input_ids)} tokens but {len(labels)} labels")
    if not separator_ids:
        raise PrmforgeError("label alignment: the step separator tokenizes to no token")
    positions = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    expected = [int(x) for x in step_labels]
    if last_step_only:
        expected = expected[-1:]
    if max_length is not None and len(input_ids) >= max_length and len(positions) < len(expected):
        expected = expected[: len(positions)]  # the trainer cut the tail off: the steps it kept must still align
    if len(positions) != len(expected):
        raise PrmforgeError(
            f"label alignment: {len(positions)} labeled tokens for {len(expected)} step label(s) "
            "(truncated by max_length?)"
        )
    width = len(separator_ids)
    for step, (position, label) in enumerate(zip(positions, expected)):
        if position + 1 < width or list(input_ids[position + 1 - width : position + 1]) != list(separator_ids):
            raise PrmforgeError(
                f"label alignment: the label of step {step} sits on token {position}, "
                "which does not end a step separator"
            )
        if labels[position] != label:
            raise PrmforgeError(
                f"label alignment: step {step} has label {labels[position]} at its separator, expected {label}"
            )
    return positions


def check_prm_dataset(records: Sequence[dict[str, Any]], tokenizer: Any, settings: TrainConfig) -> int:
    """Tokenize every ``trl`` record as PRMTrainer does and check its alignment; returns the
    number of labeled tokens."""
    separator_ids = tokenizer.encode(settings.step_separator, add_special_tokens=False)
    labeled = 0
    for index, record in enumerate(records):
        row = tokenize_prm_row(record, tokenizer, settings)
        try:
            labeled += len(check_prm_alignment(row["input_ids"], row["labels"], separator_ids, record["labels"],
                                               settings.train_on_last_step_only, settings.max_length))
        except PrmforgeError as error:
            raise PrmforgeError(f"record {index} ({record.get('path_id', '?')}): {error}") from None
    return labeled


def step_tag_labels(
    tokenizer: Any, input_text: str, values: Sequence[Any], tag: str | None = None
) -> list[tuple[int, Any]]:
    """(token position, label) of each step tag of a Math-Shepherd ``input``, tokenized as
    OpenRLHF's ProcessRewardDataset does (no special tokens; the tag's id is the single token
    the tag encodes to alone; each position holding that id takes the next label). Raises
    PrmforgeError when the tag is not one token or does not appear once per label."""
    from data_schemas.export import STEP_TAG

    tag = tag or STEP_TAG
    tag_ids = tokenizer.encode(tag, add_special_tokens=False)
    if len(tag_ids) != 1:
        raise PrmforgeError(
            f"step tag {tag!r} is {len(tag_ids)} tokens in this tokenizer (OpenRLHF needs one): add it as a token "
            "(tokenizer.add_tokens) and resize the model's embeddings"
        )
    input_ids = tokenizer(input_text, add_special_tokens=False)["input_ids"]
    positions = [i for i, token in enumerate(input_ids) if token == tag_ids[0]]
    if len(positions) != len(values):
        raise PrmforgeError(
            f"step tag {tag!r} (id {tag_ids[0]}) appears {len(positions)} time(s) in the tokenized input for "
            f"{len(values)} step label(s): the tag merges with its neighbours in context (OpenRLHF would train on "
            "no position and give a NaN loss)"
        )
    return list(zip(positions, values))


def check_step_tags(records: Sequence[dict[str, Any]], tokenizer: Any) -> int:
    """Check every Math-Shepherd record with :func:`step_tag_labels`; returns the tag count."""
    total = 0
    for index, record in enumerate(records):
        try:
            total += len(step_tag_labels(tokenizer, record["input"], record["value"]))
        except PrmforgeError as error:
            raise PrmforgeError(f"record {index} ({record.get('path_id', '?')}): {error}") from None
    return total


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a training run did."""

    format: str
    out_dir: str
    records: int
    global_steps: int
    losses: list[float] = field(default_factory=list)  # training loss at each logging step
    seconds: float = 0.0
    labeled_tokens: int | None = None  # trl: step labels checked token by token

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


def load_tokenizer(base_model: str) -> Any:
    """The base model's tokenizer (a local directory or a hub id); a pad token is set to EOS
    where the tokenizer has none (the collators pad)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model)
    except (OSError, ValueError) as error:
        raise InputError(f"--base-model {base_model}: cannot load a tokenizer ({str(error).splitlines()[0]})") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise InputError(f"--base-model {base_model}: the tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _use_bf16(settings: TrainConfig) -> bool:
    import torch

    if settings.bf16 is not None:
        return settings.bf16
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def _trainer_arguments(settings: TrainConfig, out_dir: str) -> dict[str, Any]:
    return {
        "output_dir": out_dir,
        "num_train_epochs": settings.epochs,
        "max_steps": settings.max_steps if settings.max_steps is not None else -1,
        "learning_rate": settings.learning_rate,
        "per_device_train_batch_size": settings.batch_size,
        "gradient_accumulation_steps": settings.gradient_accumulation_steps,
        "gradient_checkpointing": settings.gradient_checkpointing,
        "bf16": _use_bf16(settings),
        "seed": settings.seed,
        "logging_steps": settings.logging_steps,
        "save_strategy": "no",
        "report_to": "none",
    }


def _losses(trainer: Any) -> list[float]:
    """Training loss at each logging step; the run's mean (``train_loss``) when it took fewer
    steps than ``logging_steps``."""
    history = trainer.state.log_history
    losses = [float(entry["loss"]) for entry in history if "loss" in entry]
    return losses or [float(entry["train_loss"]) for entry in history if "train_loss" in entry]


def _finish(trainer: Any, tokenizer: Any, out_dir: str, settings: TrainConfig, base_model: str, records: int,
            started: float, labeled: int | None) -> TrainResult:
    losses = _losses(trainer)
    if not losses or not all(math.isfinite(x) for x in losses):
        raise PrmforgeError(f"training loss is not finite: {losses} (nothing saved)")
    trainer.save_model(out_dir)
    tokenizer.save_pretrained(out_dir)
    result = TrainResult(settings.format, out_dir, records, int(trainer.state.global_step), losses,
                         time.perf_counter() - started, labeled)
    info = {"base_model": base_model, "settings": settings.model_dump(), "records": records,
            "global_steps": result.global_steps, "losses": losses, "seconds": result.seconds}
    (Path(out_dir) / "prmforge_train.json").write_text(
        json.dumps(info, indent=1, sort_keys=True) + "\n", encoding="utf-8"
    )
    return result


def marks_assistant_turns(chat_template: str | None) -> bool:
    """Whether a chat template marks assistant turns with ``{% generation %}`` (what trl's
    ``assistant_only_loss`` needs)."""
    return bool(chat_template and re.search(r"\{%-?\s*generation\s*-?%\}", chat_template))


def train(
    records: Sequence[dict[str, Any]], base_model: str, out_dir: str | Path, settings: TrainConfig
) -> TrainResult:
    """Train ``base_model`` on export ``records`` of ``settings.format`` with the pinned trainer
    and save the model and tokenizer to ``out_dir`` (with ``prmforge_train.json``)."""
    require_training_packages()
    if not records:
        raise InputError("the export has no records to train on")
    missing = [c for c in TRAIN_COLUMNS[settings.format] if c not in records[0]]
    if missing:
        raise InputError(f"the export has no {', '.join(missing)} column(s): not a {settings.format} export")
    import datasets
    from transformers import set_seed

    set_seed(settings.seed)
    out_dir = str(out_dir)
    started = time.perf_counter()
    tokenizer = load_tokenizer(base_model)
    columns = TRAIN_COLUMNS[settings.format]
    dataset = datasets.Dataset.from_list([{c: r[c] for c in columns} for r in records])
    if settings.format == "trl":
        from transformers import AutoModelForTokenClassification
        from trl.experimental.prm import PRMConfig, PRMTrainer

        labeled = check_prm_dataset(records, tokenizer, settings)
        model = AutoModelForTokenClassification.from_pretrained(base_model, num_labels=2)
        model.config.pad_token_id = tokenizer.pad_token_id
        args = PRMConfig(**_trainer_arguments(settings, out_dir), max_length=settings.max_length,
                         step_separator=settings.step_separator,
                         train_on_last_step_only=settings.train_on_last_step_only)
        trainer = PRMTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    else:
        from transformers import AutoModelForCausalLM
        from trl import SFTConfig, SFTTrainer

        if not getattr(tokenizer, "chat_template", None):
            raise InputError(
                f"--base-model {base_model}: the tokenizer has no chat template "
                "(generative training renders chat messages)"
            )
        labeled = None
        model = AutoModelForCausalLM.from_pretrained(base_model)
        # Loss on the assistant turns (the rationales and verdicts) only, where the chat template
        # marks them ({% generation %}); otherwise on the whole conversation (trl's default).
        args = SFTConfig(**_trainer_arguments(settings, out_dir), max_length=settings.max_length,
                         assistant_only_loss=marks_assistant_turns(tokenizer.chat_template))
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    return _finish(trainer, tokenizer, out_dir, settings, base_model, len(records), started, labeled)


# ------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------


class PRMScorer:
    """A PRMTrainer-trained model: P(good) of each step of a solution, read at the tokens the
    trainer labeled (the last token of each ``step + separator``)."""

    def __init__(self, model_dir: str | Path, settings: TrainConfig | None = None) -> None:
        require_training_packages()
        import torch
        from transformers import AutoModelForTokenClassification

        self.model_dir = str(model_dir)
        info_file = Path(model_dir) / "prmforge_train.json"
        if settings is None and info_file.is_file():
            saved = json.loads(info_file.read_text(encoding="utf-8")).get("settings", {})
            settings = TrainConfig(**{k: v for k, v in saved.items() if k in TrainConfig.model_fields})
        self.settings = (settings or TrainConfig()).model_copy(update={"train_on_last_step_only": False})
        if not Path(model_dir).is_dir():
            raise InputError(f"--prm {model_dir}: no such directory")
        self.tokenizer = load_tokenizer(self.model_dir)
        try:
            self.model = AutoModelForTokenClassification.from_pretrained(self.model_dir)
        except (OSError, ValueError) as error:
            raise InputError(
                f"--prm {model_dir}: not a token-classification PRM ({str(error).splitlines()[0]})"
            ) from None
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device).eval()
        self.separator_ids = self.tokenizer.encode(self.settings.step_separator, add_special_tokens=False)

    def step_scores(self, problem: str, steps: Sequence[str]) -> list[float]:
        """P(good) per step; a step cut off by ``max_length`` gets no score (raises)."""
        import torch

        record = {"prompt": problem, "completions": list(steps), "labels": [True] * len(steps)}
        row = tokenize_prm_row(record, self.tokenizer, self.settings, is_eval=True)
        positions = check_prm_alignment(row["input_ids"], row["labels"], self.separator_ids, record["labels"])
        # (no max_length allowance: a step cut off would have no score; the error names the record)
        with torch.no_grad():
            logits = self.model(input_ids=torch.tensor([row["input_ids"]], device=self.device)).logits[0]
        probabilities = torch.softmax(logits.float(), dim=-1)[:, GOOD_CLASS]
        return [float(probabilities[p]) for p in positions]


# ------------------------------------------------------------------------------------------
# A tiny model, for checking the loop without a download
# ------------------------------------------------------------------------------------------

#: A minimal chat template (role tags) for the tiny model; real chat models bring their own.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}"
    "{% else %}{{ message['content'] }}<|end|>{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def write_tiny_model(out_dir: str | Path, texts: Sequence[str], seed: int = 0, vocab_size: int = 800,
                     extra_tokens: Sequence[str] = ()) -> str:
    """A randomly initialized 2-layer Llama causal LM (hidden size 32) with a byte-level BPE
    tokenizer trained on ``texts``, saved to ``out_dir`` — a stand-in base model that exercises
    tokenization, training and scoring end to end on a CPU in seconds (its scores mean
    nothing). ``extra_tokens`` are added whole (e.g. the Math-Shepherd step tag)."""
    require_training_packages()
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    bpe = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|pad|>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(list(texts), bpe)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|pad|>")
    if extra_tokens:
        tokenizer.add_tokens(list(extra_tokens))
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    out_dir = str(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
