"""Synthetic tasks, tokenizers, packing, the local-text TFDS builder and the
grain pipelines (determinism, process sharding, resumable iterators)."""

import itertools
import json

import ml_collections
import numpy as np
import pytest

from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.data import local_text
from recurrentgemma_jax.data import packing
from recurrentgemma_jax.data import pipeline
from recurrentgemma_jax.data import synthetic
from recurrentgemma_jax.data import tokenizers

import train_testlib


def test_selective_copy_answer_is_the_data_tokens_in_order():
  task = synthetic.SelectiveCopy(64, seed=0, split="train", num_tokens=8)
  ex = task[3]
  scored = ex["mask"] == 1
  assert scored.sum() == 8 and scored[-8:].all()
  context = ex["inputs"][:64 - 8]
  data = context[context >= 2]
  np.testing.assert_array_equal(ex["targets"][scored], data)
  assert ex["inputs"][-8] == task.SEP
  np.testing.assert_array_equal(ex["inputs"][1:], ex["targets"][:-1])


def test_induction_heads_answer_follows_the_first_trigger():
  task = synthetic.InductionHeads(32, seed=0, split="train")
  for i in range(20):
    ex = task[i]
    triggers = np.flatnonzero(ex["inputs"] == task.TRIGGER)
    assert len(triggers) == 2 and triggers[1] == 31
    assert ex["mask"].sum() == 1 and ex["mask"][31] == 1
    assert ex["targets"][31] == ex["inputs"][triggers[0] + 1]


def test_mqar_targets_are_the_values_of_the_queried_keys():
  task = synthetic.MultiQueryAssociativeRecall(64, seed=0, split="train",
                                               vocab_size=64, num_pairs=4)
  ex = task[5]
  pairs = dict(zip(ex["inputs"][0:8:2], ex["inputs"][1:8:2]))
  queries = np.flatnonzero(ex["mask"])
  assert len(queries) == 4 and queries.min() >= 8
  for q in queries:
    assert ex["targets"][q] == pairs[ex["inputs"][q]]
  assert set(ex["inputs"][queries]) == set(pairs)


def test_synthetic_examples_depend_only_on_seed_split_and_index():
  a = synthetic.MultiQueryAssociativeRecall(64, 0, "train", vocab_size=64)
  b = synthetic.MultiQueryAssociativeRecall(64, 0, "train", vocab_size=64)
  for key in ("inputs", "targets", "mask"):
    np.testing.assert_array_equal(a[123][key], b[123][key])
  assert not np.array_equal(a[1]["inputs"], a[2]["inputs"])
  evals = synthetic.MultiQueryAssociativeRecall(64, 0, "eval", vocab_size=64)
  assert not np.array_equal(a[1]["inputs"], evals[1]["inputs"])


def test_synthetic_tasks_reject_impossible_settings():
  with pytest.raises(ConfigError, match="too short"):
    synthetic.SelectiveCopy(20, 0, "train", num_tokens=16)
  with pytest.raises(ConfigError, match="distinct keys"):
    synthetic.MultiQueryAssociativeRecall(64, 0, "train", vocab_size=8,
                                          num_pairs=8)


def test_byte_tokenizer_round_trips_any_text():
  tok = tokenizers.ByteTokenizer()
  text = "Griffin — ünïcode ✓\nnew line"
  ids = tok.encode(text)
  assert min(ids) >= 3 and max(ids) < tok.vocab_size == 259
  assert tok.decode(ids) == text


def test_sentencepiece_tokenizer(tmp_path):
  sentencepiece = pytest.importorskip("sentencepiece")
  train_testlib.sample_text(tmp_path / "corpus.txt", lines=3000)
  sentencepiece.SentencePieceTrainer.train(
      input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / "sp"),
      vocab_size=300, model_type="bpe", bos_id=1, eos_id=2, pad_id=0,
      unk_id=3)
  tok = tokenizers.get_tokenizer(str(tmp_path / "sp.model"))
  assert tok.vocab_size == 300 and (tok.bos_id, tok.eos_id) == (1, 2)
  assert tok.decode(tok.encode("To be, or not to be")) == "To be, or not to be"
  with pytest.raises(ConfigError, match="not found"):
    tokenizers.get_tokenizer(str(tmp_path / "missing.model"))


def test_a_bad_tokenizer_file_is_a_one_line_error_naming_it(tmp_path):
  pytest.importorskip("sentencepiece")
  path = tmp_path / "tokenizer.model"
  path.write_text("not a model\n")
  with pytest.raises(ConfigError, match=f"tokenizer: {path} is not a "
                     "SentencePiece model") as e:
    tokenizers.get_tokenizer(str(path))
  assert "\n" not in str(e.value) and e.value.__cause__ is None
  with pytest.raises(ConfigError, match=f"tokenizer: {tmp_path} is a folder"):
    tokenizers.get_tokenizer(str(tmp_path))


def _packed_rows(docs, seq_len):
  import grain  # pylint: disable=g-import-not-at-top

  ds = grain.MapDataset.source(
      [{"tokens": np.asarray(d, np.int32)} for d in docs]).to_iter_dataset()
  return list(packing.pack(ds, seq_len))


def test_packing_resets_positions_and_masks_document_boundaries():
  docs = [[10, 11, 12], [20, 21, 22, 23, 24, 25, 26], [30, 31]]
  rows = _packed_rows(docs, seq_len=5)  # rows of 6 tokens
  first = rows[0]
  np.testing.assert_array_equal(first["inputs"], [10, 11, 12, 20, 21])
  np.testing.assert_array_equal(first["targets"], [11, 12, 20, 21, 22])
  np.testing.assert_array_equal(first["segment_pos"], [0, 1, 2, 0, 1])
  # 12 -> 20 crosses a document boundary: not trained on.
  np.testing.assert_array_equal(first["mask"], [1, 1, 0, 1, 1])
  # Every token of every document appears once as input or final target.
  seen = np.concatenate([np.append(r["inputs"], r["targets"][-1])
                         for r in rows])
  assert sorted(seen[seen > 0]) == sorted(itertools.chain(*docs))
  # A cut document continues as a new piece starting at position 0.
  assert rows[1]["segment_pos"][0] == 0
  last = rows[-1]
  assert last["mask"][last["inputs"] == 0].sum() == 0  # padding unscored


def _write_corpus(tmp_path):
  (tmp_path / "a.txt").write_text("".join(f"line {i}\n" for i in range(200)))
  (tmp_path / "b.jsonl").write_text("\n".join(
      json.dumps({"text": f"doc {i}", "meta": i}) for i in range(30)))
  return f"{tmp_path}/a.txt,{tmp_path}/*.jsonl"


def test_local_text_builder_splits_documents_and_holds_out_validation(
    tmp_path):
  files = _write_corpus(tmp_path)
  builder = local_text.prepare_local_text(
      files, str(tmp_path / "tfds"), max_chars=100, validation_fraction=0.2)
  train = builder.as_data_source(split="train")
  val = builder.as_data_source(split="validation")
  texts = [train[i]["text"].decode() for i in range(len(train))]
  texts += [val[i]["text"].decode() for i in range(len(val))]
  assert all(len(t) <= 100 for t in texts if t.startswith("line"))
  assert sum(t.count("\n") for t in texts if t.startswith("line")) == 200
  assert sum(t.startswith("doc") for t in texts) == 30
  assert len(val) == round(0.2 * len(texts))
  # Prepared once: a second call reuses the same data.
  again = local_text.prepare_local_text(
      files, str(tmp_path / "tfds"), max_chars=100, validation_fraction=0.2)
  assert again.data_dir == builder.data_dir
  with pytest.raises(ConfigError, match="no file matches"):
    local_text.prepare_local_text(str(tmp_path / "*.none"), str(tmp_path))


def test_local_text_builder_holds_out_whole_files(tmp_path):
  for name in ("a", "b", "c"):
    (tmp_path / f"{name}.txt").write_text(f"{name} line\n" * 50)
  config = local_text.LocalTextConfig(
      files=[str(tmp_path / "a.txt"), str(tmp_path / "b.txt")],
      validation_files=[str(tmp_path / "c.txt")], max_chars=100)
  builder = local_text.prepare(config, str(tmp_path / "tfds"))

  def texts(split):
    source = builder.as_data_source(split=split)
    return "".join(source[i]["text"].decode() for i in range(len(source)))

  assert sorted(set(texts("train").split("\n")) - {""}) == ["a line",
                                                             "b line"]
  assert texts("validation") == "c line\n" * 50
  # The same files without the by-file split are another dataset.
  by_documents = local_text.LocalTextConfig(
      files=[str(tmp_path / f"{n}.txt") for n in "abc"], max_chars=100)
  assert by_documents.name != config.name


def test_missing_files_tell_how_to_pass_them(tmp_path):
  with pytest.raises(ConfigError, match=r"no file matches '/no/such/\*.txt'; "
                     "give existing text or .jsonl files as files=PATH"):
    local_text.expand_files("/no/such/*.txt")
  with pytest.raises(ConfigError, match="no files given; give existing"):
    local_text.expand_files(" , ")


@pytest.mark.parametrize("name, content, match", [
    ("latin1.txt", "caf\xe9\n".encode("latin-1"),
     r"latin1.txt is not UTF-8 text \(byte 3: b'\\xe9\\n'\)"),
    ("bad.jsonl", b'{"text": "ok"}\n{"text": \n',
     r"bad.jsonl:2: not a JSON line"),
    ("list.jsonl", b'["text"]\n', r"list.jsonl:1: no 'text' field"),
])
def test_unreadable_text_is_a_one_line_error_naming_the_file(
    tmp_path, name, content, match):
  (tmp_path / name).write_bytes(content)
  (tmp_path / "good.txt").write_text("fine\n" * 10)
  with pytest.raises(ConfigError, match=match) as e:
    local_text.prepare_local_text(f"{tmp_path}/good.txt,{tmp_path}/{name}",
                                  str(tmp_path / "tfds"))
  assert str(tmp_path / name) in str(e.value) and "\n" not in str(e.value)


def test_a_folder_as_files_is_a_one_line_error(tmp_path):
  (tmp_path / "texts").mkdir()
  with pytest.raises(ConfigError, match=f"data.files: {tmp_path}/texts is a "
                     "folder, not a file; name its files with a glob such as "
                     f"{tmp_path}/texts/\\*.txt"):
    local_text.prepare_local_text(str(tmp_path / "texts"), str(tmp_path))


def _lm_config(tmp_path, **data):
  config = train_testlib.tiny_config(seq_len=16, batch_size=4)
  config.data = ml_collections.ConfigDict({
      **pipeline.LM_DEFAULTS, "source": "text",
      "files": train_testlib.sample_text(tmp_path / "sample.txt"),
      "data_dir": str(tmp_path / "tfds"), "max_chars": 2000, **data})
  return config


def _batches(dataset, n):
  return list(itertools.islice(dataset, n))


def test_lm_pipeline_batches_and_process_sharding(tmp_path):
  config = _lm_config(tmp_path)
  whole = pipeline.make_task(config, 0, 1)
  assert whole.vocab_size == 259
  batches = _batches(whole.train(), 3)
  for batch in batches:
    assert batch["inputs"].shape == (4, 16) and batch["mask"].dtype == np.float32
    np.testing.assert_array_equal(batch["inputs"][:, 1:],
                                  batch["targets"][:, :-1])
  # Two processes each read half the rows; together they see the same
  # documents as one process (the shuffled stream is split p, p+2, ...).
  halves = [pipeline.make_task(config, p, 2) for p in range(2)]
  first = [next(iter(h.train())) for h in halves]
  assert first[0]["inputs"].shape == (2, 16)
  assert not np.array_equal(first[0]["inputs"], first[1]["inputs"])


def test_lm_iterator_state_resumes_exactly(tmp_path):
  task = pipeline.make_task(_lm_config(tmp_path), 0, 1)
  it = iter(task.train())
  _batches(it, 5)
  state = it.get_state()
  expected = _batches(it, 3)
  fresh = iter(task.train())
  fresh.set_state(json.loads(json.dumps(state)))  # as saved on disk
  for want, got in zip(expected, _batches(fresh, 3)):
    for key in want:
      np.testing.assert_array_equal(want[key], got[key])


def test_synthetic_pipeline_is_a_function_of_the_step(tmp_path):
  config = train_testlib.tiny_config()
  task = pipeline.make_task(config, 0, 1)
  a = _batches(task.train(), 2)
  b = _batches(task.train(), 2)
  np.testing.assert_array_equal(a[1]["inputs"], b[1]["inputs"])
  evals = _batches(task.eval(), 1)[0]
  assert not np.array_equal(evals["inputs"], a[0]["inputs"])
  assert task.chance_accuracy == pytest.approx(1 / 16)


def test_pipeline_errors_name_the_problem(tmp_path):
  with pytest.raises(ConfigError, match="SentencePiece model not found"):
    pipeline.make_task(_lm_config(tmp_path, tokenizer="/no/such.model"), 0, 1)
  with pytest.raises(ConfigError, match="not found"):
    pipeline.make_task(
        _lm_config(tmp_path, source="tfds", name="no_such_dataset_xyz"), 0, 1)
  with pytest.raises(ConfigError, match="not divisible by the 3 processes"):
    pipeline.make_task(train_testlib.tiny_config(), 0, 3)
  config = train_testlib.tiny_config()
  config.data.task = "sorting"
  with pytest.raises(ConfigError, match="data.task='sorting'"):
    pipeline.make_task(config, 0, 1)
