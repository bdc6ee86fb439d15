"""Grain input pipelines for every task, built from the `data` config section.

`make_task(config, process_index, process_count)` returns a `Task` whose
`train()` / `eval()` build grain datasets yielding this process's share of
each global batch: dicts of `[batch_size / process_count, seq_len]` numpy
arrays (see `training/step.py` for the keys). Process `p` of `P` reads
examples `p, p + P, p + 2P, ...` of the (shuffled) stream, so the global
batch does not depend on the number of processes. The train iterator's state
(`get_state`) is saved with every checkpoint.

`data.task` selects the task:
- "selective_copy", "induction_heads", "mqar": synthetic (`synthetic.py`);
  the other `data` fields are the task's keyword arguments.
- "lm": language modelling on `data.source` = "tfds" (a TFDS dataset by
  `data.name` in `data.data_dir`), "text" (local `data.files`, see
  `local_text.py`) or "python" (the Python standard library's source, on
  every machine, see `code_corpus.py`), tokenized by `data.tokenizer`
  ("bytes" or a SentencePiece model path) and packed (`packing.py`).
  "text" and "python" are prepared once as TFDS datasets in
  `data.data_dir` ("": `$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
  `data.format` = "chat" (an optional field; absent: "text") reads
  conversations instead (`chat.py`): `.jsonl` files (source=text) or a TFDS
  feature holding each conversation's JSON (source=tfds), under
  `data.text_field`, rendered in the Gemma chat template with the loss on
  the model turns only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import grain
import jax
import ml_collections
from jax.experimental import multihost_utils

from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.data import chat
from recurrentgemma_jax.data import code_corpus
from recurrentgemma_jax.data import local_text
from recurrentgemma_jax.data import packing
from recurrentgemma_jax.data import synthetic
from recurrentgemma_jax.data import tokenizers

# The `data` fields of the "lm" task and their defaults.
LM_DEFAULTS: dict[str, Any] = {
    "task": "lm",
    "source": "tfds",  # tfds | text | python
    "name": "",  # TFDS dataset name (source=tfds)
    "data_dir": "",  # TFDS data folder; "" = TFDS default
    "files": "",  # comma-separated globs (source=text)
    "train_split": "train",  # source=tfds
    "eval_split": "validation",  # source=tfds
    "text_field": "text",  # TFDS feature / JSON key holding the text
    "tokenizer": "bytes",  # "bytes" or a SentencePiece model path
    "max_chars": 8192,  # source=text: characters per plain-text document
    "validation_fraction": 0.1,  # source=text: held-out documents (python:
    # the expected fraction of held-out files)
    "python_site_packages": False,  # source=python: also installed packages
    "python_max_bytes": 0,  # source=python: > 0 caps the corpus's bytes
}
SOURCES = ("tfds", "text", "python")
# Optional `data` fields of the "lm" task: absent from older configs (and so
# from LM_DEFAULTS, which would make resuming those workdirs a data change).
LM_OPTIONAL: dict[str, Any] = {
    "format": "text",  # text | chat (see chat.py)
}


def set_format(data: ml_collections.ConfigDict, format: str) -> None:  # pylint: disable=redefined-builtin
  """Applies an experiment's `format=` argument to its `data` section.

  "text" leaves `data` as it is; "chat" reads conversations (`chat.py`)
  from the `messages` field of each record (`data.text_field`).

  Raises:
    ConfigError: an unknown format, or chat data without files or dataset.
  """
  if format not in local_text.FORMATS:
    raise ConfigError(f"format={format!r} is not one of "
                      f"{', '.join(local_text.FORMATS)}")
  if format == "text":
    return
  if data.source not in ("text", "tfds"):
    raise ConfigError("format=chat needs conversations: give files=GLOBS "
                      "of .jsonl files with a 'messages' list per line")
  data.update(format="chat", text_field="messages")


@dataclasses.dataclass(frozen=True)
class Task:
  """A task's data and what the model and metrics need to know about it.

  Attributes:
    name: the `data.task` value.
    vocab_size: ids the data can contain (the model's vocabulary must be at
      least this large).
    train: builds the (endless) training dataset of local batches.
    eval: builds the evaluation dataset of local batches (finite or not;
      the loop takes `eval_batches` of them).
    chance_accuracy: accuracy of uniform guessing, when meaningful.
  """

  name: str
  vocab_size: int
  train: Callable[[], grain.IterDataset]
  eval: Callable[[], grain.IterDataset]
  chance_accuracy: float | None = None


def local_batch_size(batch_size: int, process_count: int) -> int:
  if batch_size % process_count:
    raise ConfigError(
        f"batch_size={batch_size} is not divisible by the {process_count} "
        "processes"
    )
  return batch_size // process_count


def make_task(
    config: ml_collections.ConfigDict, process_index: int, process_count: int
) -> Task:
  """The `Task` described by `config.data` (see module docstring)."""
  data = config.data
  if "task" not in data:
    raise ConfigError("data.task is missing")
  local = local_batch_size(config.batch_size, process_count)
  shard = slice(process_index, None, process_count)
  if data.task in synthetic.TASKS:
    return _synthetic_task(config, local, shard)
  if data.task == "lm":
    return _lm_task(config, local, shard, process_index)
  raise ConfigError(
      f"data.task={data.task!r} is not one of "
      f"{sorted(synthetic.TASKS) + ['lm']}"
  )


def _synthetic_task(config, local: int, shard: slice) -> Task:
  data = config.data
  cls = synthetic.TASKS[data.task]
  kwargs = {k: v for k, v in data.items() if k != "task"}

  def source(split: str) -> synthetic.SyntheticTask:
    try:
      return cls(config.seq_len, config.seed, split, **kwargs)
    except TypeError as e:
      raise ConfigError(f"data: bad field for task {data.task!r}: {e}") from e

  def build(split: str) -> grain.IterDataset:
    ds = grain.MapDataset.source(source(split))[shard]
    return ds.batch(local, drop_remainder=True).to_iter_dataset()

  probe = source("train")
  return Task(
      name=data.task,
      vocab_size=probe.vocab_size,
      train=lambda: build("train"),
      eval=lambda: build("eval"),
      chance_accuracy=probe.chance_accuracy,
  )


def _lm_task(config, local: int, shard: slice, process_index: int) -> Task:
  unknown = set(config.data.keys()) - set(LM_DEFAULTS) - set(LM_OPTIONAL)
  if unknown:
    raise ConfigError(f"data: unknown field(s) {sorted(unknown)} for task lm")
  data = ml_collections.ConfigDict(
      {**LM_DEFAULTS, **LM_OPTIONAL, **config.data.to_dict()})
  if data.format not in local_text.FORMATS:
    raise ConfigError(f"data.format={data.format!r} is not one of "
                      f"{', '.join(local_text.FORMATS)}")
  if data.format == "chat" and data.source == "python":
    raise ConfigError("data.format=chat reads conversations: give .jsonl "
                      "files (files=, data.source=text) or a TFDS dataset, "
                      "not data.source=python")
  tokenizer = tokenizers.get_tokenizer(data.tokenizer)
  # Prepared local datasets store each document under "text".
  field = "text" if data.source in ("text", "python") else data.text_field
  if data.format == "chat":  # (a tokenizer without the markers fails here)
    tokenize = packing.ChatTokenize(chat.ChatFormat(tokenizer), field)
  else:
    tokenize = packing.Tokenize(tokenizer, field)
  train_source, eval_source = _lm_sources(data, process_index)

  def build(source: Any, *, train: bool) -> grain.IterDataset:
    ds = grain.MapDataset.source(source)
    if train:  # reshuffled every epoch, endless
      ds = ds.shuffle(seed=config.seed).repeat()
    docs = ds[shard].map(tokenize).to_iter_dataset()
    rows = packing.pack(docs, config.seq_len,
                        loss_mask=data.format == "chat")
    return rows.batch(local, drop_remainder=True)

  return Task(
      name="lm",
      vocab_size=tokenizer.vocab_size,
      train=lambda: build(train_source, train=True),
      eval=lambda: build(eval_source, train=False),
  )


def _lm_sources(data, process_index: int) -> tuple[Any, Any]:
  """Random-access train and eval sources of `{text_field: bytes}`."""
  data_dir = data.data_dir or None
  if data.source in ("text", "python"):
    if process_index == 0:
      builder = _prepare_text(data, data_dir)
    _barrier("local_text_prepared")
    if process_index != 0:
      builder = _prepare_text(data, data_dir)
    return (builder.as_data_source(split="train"),
            builder.as_data_source(split="validation"))
  if data.source == "tfds":
    builder = _tfds_builder(data.name, data_dir)
    return (_array_record_source(builder, data.train_split),
            _array_record_source(builder, data.eval_split))
  raise ConfigError(
      f"data.source={data.source!r} is not one of {', '.join(SOURCES)}")


def _prepare_text(data, data_dir):
  if data.source == "python":
    return code_corpus.prepare_python_corpus(
        data_dir, site_packages=data.python_site_packages,
        max_bytes=data.python_max_bytes, max_chars=data.max_chars,
        validation_fraction=data.validation_fraction)
  return local_text.prepare_local_text(
      data.files, data_dir, text_field=data.text_field,
      max_chars=data.max_chars,
      validation_fraction=data.validation_fraction, format=data.format,
  )


def _barrier(name: str) -> None:
  """Waits for every process (process 0 prepares shared files first)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _tfds_builder(name: str, data_dir: str | None):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  if not name:
    raise ConfigError("data.name: give a TFDS dataset name")
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # TFDS raises several types for unknown names
    raise ConfigError(
        f"data.name: TFDS dataset {name!r} not found "
        f"({str(e).splitlines()[0]})"
    ) from e
  if not builder.is_prepared():
    raise ConfigError(
        f"data.name: TFDS dataset {name!r} is not prepared in "
        f"{builder.data_dir_root}; prepare it with `tfds build {name} "
        "--file_format=array_record` (data.data_dir sets the folder)"
    )
  return builder


def _array_record_source(builder, split: str):
  """`builder`'s split as a random-access source, converting tfrecord once.

  Datasets stored as tfrecord are converted to array_record in place; that
  one-time conversion reads tfrecords and so needs TensorFlow (the `tf`
  extra). Afterwards everything reads array_record without TensorFlow.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  if split not in builder.info.splits:
    raise ConfigError(
        f"data: split {split!r} not in {builder.name} (has "
        f"{sorted(builder.info.splits)})"
    )
  formats = {builder.info.file_format,
             *getattr(builder.info, "alternative_file_formats", ())}
  if tfds.core.file_adapters.FileFormat.ARRAY_RECORD not in formats:
    _convert_to_array_record(builder)
    builder = tfds.builder(builder.name, data_dir=builder.data_dir_root)
  return builder.as_data_source(split=split)


def _convert_to_array_record(builder) -> None:
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import  # noqa: F401
  except ImportError as e:
    raise ConfigError(
        f"data: {builder.name} is stored as {builder.info.file_format}; "
        "install the `tf` extra (pip install recurrentgemma_jax[tf]) to "
        "convert it once to array_record"
    ) from e
  from tensorflow_datasets.scripts.cli import convert_format_utils  # pylint: disable=g-import-not-at-top

  convert_format_utils.convert_dataset(
      out_dir=None, out_file_format="array_record",
      dataset_version_dir=builder.data_dir,
  )
