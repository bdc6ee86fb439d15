"""A TFDS builder for your own text: plain-text and JSON-lines files.

`prepare_local_text(files, data_dir)` writes the files once as an
array_record TFDS dataset (no TensorFlow needed) with a `train` and a
`validation` split, and returns the builder; `builder.as_data_source(split)`
then gives random access to `{"text": bytes}` examples.

- `.jsonl` / `.json` files: one document per line, the text under
  `text_field`.
- any other file: plain text, cut into documents of at most `max_chars`
  characters at line boundaries (a long book becomes many documents, so
  shuffling mixes the corpus).
- `format="chat"`: `.jsonl` / `.json` files only, one conversation per line
  under `text_field` (`chat.py`), validated while preparing; each is stored
  as its normalized `messages` JSON under "text".

The last `validation_fraction` of the documents (at least one) form the
validation split, unless `validation_files` are given: then the split is by
file (the documents of `files` train, those of `validation_files` are held
out; `code_corpus.py` splits that way). The builder config's name is a digest
of the files (paths, sizes, modification times) and options: changing any of
them prepares a new version instead of reusing stale data.

Prepared datasets go in `data_dir/local_text/<digest>/` (`data_dir` None:
TFDS's default folder, `$TFDS_DATA_DIR` or `~/tensorflow_datasets`).

Errors (a glob matching nothing, a folder, text that is not UTF-8, a bad
JSON line) are one-line `ConfigError`s naming the file.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterator, Sequence

import tensorflow_datasets as tfds

from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.data import chat
from recurrentgemma_jax.data import jsonl

JSONL_SUFFIXES = (".jsonl", ".json")
FORMATS = ("text", "chat")


# How to name the files, for the errors below.
FILES_HINT = ("give existing text or .jsonl files as files=PATH (globs joined "
              "by '+', e.g. experiments/lm.py:files=/data/*.txt) or "
              "--config.data.files=GLOB,GLOB")


def expand_files(patterns: str | Sequence[str]) -> tuple[str, ...]:
  """Comma-separated (or listed) globs -> sorted absolute paths."""
  if isinstance(patterns, str):
    patterns = [p for p in patterns.split(",") if p.strip()]
  files: list[str] = []
  for pattern in patterns:
    matches = sorted(glob.glob(os.path.expanduser(pattern.strip())))
    if not matches:
      raise ConfigError(
          f"data.files: no file matches {pattern!r}; {FILES_HINT}")
    for match in matches:
      if os.path.isdir(match):
        raise ConfigError(
            f"data.files: {match} is a folder, not a file; name its files "
            f"with a glob such as {os.path.join(match, '*.txt')}")
    files.extend(os.path.abspath(m) for m in matches)
  if not files:
    raise ConfigError(f"data.files: no files given; {FILES_HINT}")
  return tuple(files)


def read_documents(path: str, text_field: str, max_chars: int,
                   format: str = "text") -> Iterator[str]:  # pylint: disable=redefined-builtin
  """The documents of one file (see the module docstring).

  Raises:
    ConfigError: naming `path` if it is not UTF-8 text (or JSON lines).
  """
  try:
    if format == "chat":
      if not path.endswith(JSONL_SUFFIXES):
        raise ConfigError(f"data.format=chat reads JSON lines; {path} is not "
                          f"a {' or '.join(JSONL_SUFFIXES)} file")
      yield from map(chat.dumps, chat.read_conversations(path, text_field))
    elif path.endswith(JSONL_SUFFIXES):
      yield from _jsonl_documents(path, text_field)
    else:
      yield from _text_documents(path, max_chars)
  except UnicodeDecodeError as e:
    raise ConfigError(
        f"data.files: {path} is not UTF-8 text (byte {e.start}: "
        f"{e.object[e.start:e.start + 4]!r}); convert it, e.g. with "
        "`iconv -t utf-8`, or leave it out") from None
  except OSError as e:
    raise ConfigError(f"data.files: cannot read {path}: {e.strerror}") from e


def _jsonl_documents(path: str, text_field: str) -> Iterator[str]:
  for line_no, record in jsonl.json_lines(path):
    if not isinstance(record, dict) or text_field not in record:
      hint = ""
      if isinstance(record, dict) and "messages" in record:
        hint = "; for conversations use format=chat (data.format)"
      raise ConfigError(
          f"{path}:{line_no}: no {text_field!r} field (data.text_field)"
          f"{hint}")
    yield record[text_field]


def _text_documents(path: str, max_chars: int) -> Iterator[str]:
  chunk: list[str] = []
  size = 0
  with open(path, encoding="utf-8") as f:
    for line in f:
      if chunk and size + len(line) > max_chars:
        yield "".join(chunk)
        chunk, size = [], 0
      chunk.append(line)
      size += len(line)
  if chunk:
    yield "".join(chunk)


class LocalTextConfig(tfds.core.BuilderConfig):
  """Which files to read and how to cut them into documents.

  With `validation_files`, those files are the validation split and
  `validation_fraction` is unused.
  """

  def __init__(self, *, files: Sequence[str], text_field: str = "text",
               max_chars: int = 8192, validation_fraction: float = 0.1,
               validation_files: Sequence[str] = (), format: str = "text"):  # pylint: disable=redefined-builtin
    if not 0 < validation_fraction < 1:
      raise ConfigError(
          f"data.validation_fraction={validation_fraction} must be in (0, 1)"
      )
    if format not in FORMATS:
      raise ConfigError(f"data.format={format!r} is not one of "
                        f"{', '.join(FORMATS)}")
    self.format = format
    self.files = tuple(files)
    self.validation_files = tuple(validation_files)
    self.text_field = text_field
    self.max_chars = max_chars
    self.validation_fraction = validation_fraction
    digest = hashlib.sha256()
    for path in self.files:
      digest.update(_stat_key(path))
    if self.validation_files:  # (absent: the digests of older versions)
      digest.update(b"validation files\0")
      for path in self.validation_files:
        digest.update(_stat_key(path))
    digest.update(f"{text_field}\0{max_chars}\0{validation_fraction}".encode())
    if format != "text":  # (absent: the digests of older versions)
      digest.update(f"\0format {format}".encode())
    super().__init__(name=digest.hexdigest()[:16],
                     description=f"{len(self.files)} local text file(s)")


def _stat_key(path: str) -> bytes:
  try:
    stat = os.stat(path)
  except OSError as e:
    raise ConfigError(f"data.files: cannot read {path}: {e.strerror}") from e
  return f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode()


class LocalText(tfds.core.GeneratorBasedBuilder):
  """Documents from local text / JSON-lines files (see module docstring)."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    # Built directly (not from metadata files): the builder ships no
    # checksums or README, its data comes from the user's disk.
    return tfds.core.DatasetInfo(
        builder=self,
        description="Local text documents.",
        features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    docs = self._documents(cfg.files)
    if cfg.validation_files:
      held_out = self._documents(cfg.validation_files)
      if not docs or not held_out:
        raise ConfigError(
            f"data: {len(docs)} training and {len(held_out)} validation "
            "documents; each split needs at least one")
      return {
          "train": self._generate_examples(docs),
          "validation": self._generate_examples(held_out),
      }
    if len(docs) < 2:
      raise ConfigError(
          "data.files: need at least 2 documents to hold one out for "
          f"validation, found {len(docs)}"
      )
    num_eval = max(1, round(len(docs) * cfg.validation_fraction))
    return {
        "train": self._generate_examples(docs[:-num_eval]),
        "validation": self._generate_examples(docs[-num_eval:]),
    }

  def _documents(self, files: Sequence[str]) -> list[str]:
    cfg = self.builder_config
    return [d for path in files
            for d in read_documents(path, cfg.text_field, cfg.max_chars,
                                    cfg.format)]

  def _generate_examples(self, docs: Sequence[str]):
    for i, doc in enumerate(docs):
      yield i, {"text": doc}


def prepare_local_text(
    files: str | Sequence[str],
    data_dir: str,
    *,
    text_field: str = "text",
    max_chars: int = 8192,
    validation_fraction: float = 0.1,
    format: str = "text",  # pylint: disable=redefined-builtin
) -> LocalText:
  """Prepares (once) and returns the `LocalText` builder for `files`."""
  config = LocalTextConfig(
      files=expand_files(files), text_field=text_field, max_chars=max_chars,
      validation_fraction=validation_fraction, format=format,
  )
  return prepare(config, data_dir)


def prepare(config: LocalTextConfig, data_dir: str | None) -> LocalText:
  """Prepares (once) and returns the `LocalText` builder of `config`."""
  builder = LocalText(config=config, data_dir=data_dir,
                      file_format="array_record")
  if not builder.is_prepared():
    tfds.disable_progress_bar()
    builder.download_and_prepare()
  return builder
