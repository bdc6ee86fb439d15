"""Chat / instruction data: the Gemma chat template's tokens and loss mask,
packing of conversations, the grain / TFDS pipeline, training on it, and
the errors malformed records give."""

import itertools
import json
import random

import grain
import ml_collections
import numpy as np
import pytest

from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.data import chat
from recurrentgemma_jax.data import local_text
from recurrentgemma_jax.data import packing
from recurrentgemma_jax.data import pipeline
from recurrentgemma_jax.data import tokenizers
from recurrentgemma_jax.training import loop

import train_testlib

SOT, EOT = chat.START_OF_TURN, chat.END_OF_TURN
_WORDS = ("hi there how are you i am fine thanks what is the answer yes no "
          "maybe tell me a story once upon time cat dog sat mat").split()


def _train_tokenizer(prefix, **options) -> str:
  """A SentencePiece model trained here, normalized like Gemma's (identity
  rules, no dummy prefix, byte fallback): bos 2, eos 1, pad 0, unk 3."""
  spm = pytest.importorskip("sentencepiece")
  rng = random.Random(0)
  lines = [" ".join(rng.choices(_WORDS, k=rng.randint(3, 9)))
           for _ in range(2000)]
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_prefix=str(prefix),
      vocab_size=320, model_type="bpe", character_coverage=1.0, pad_id=0,
      eos_id=1, bos_id=2, unk_id=3, byte_fallback=True,
      add_dummy_prefix=False, remove_extra_whitespaces=False,
      normalization_rule_name="identity", minloglevel=2, **options)
  return f"{prefix}.model"


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory):
  """Gemma-like, with the two markers as single pieces (ids 4 and 5)."""
  return _train_tokenizer(tmp_path_factory.mktemp("spm") / "chat",
                          user_defined_symbols=[SOT, EOT])


@pytest.fixture(scope="module")
def tok(spm_path):
  return tokenizers.get_tokenizer(spm_path)


TWO_TURNS = [{"role": "user", "content": "hi there"},
             {"role": "model", "content": "i am fine"}]
TWO_TURNS_TEXT = (f"{SOT}user\nhi there{EOT}\n"
                  f"{SOT}model\ni am fine{EOT}\n")


def test_two_turns_render_the_template_with_single_marker_ids(tok):
  ids, mask = chat.ChatFormat(tok).encode(chat.parse_messages(TWO_TURNS))
  sot, eot = tok.piece_id(SOT), tok.piece_id(EOT)
  assert (sot, eot) == (4, 5) and tok.bos_id == 2
  # Exactly BOS + the whole template string, as one tokenization of it.
  assert ids.tolist() == [tok.bos_id] + tok.encode(TWO_TURNS_TEXT)
  assert tok.decode(ids.tolist()) == TWO_TURNS_TEXT
  newline = tok.encode("\n")
  assert len(newline) == 1
  user, model = tok.encode("hi there"), tok.encode("i am fine")
  want = ([2, sot] + tok.encode("user") + newline + user + [eot] + newline +
          [sot] + tok.encode("model") + newline + model + [eot] + newline)
  assert ids.tolist() == want
  # Trained: the model turn's content and its <end_of_turn>, nothing else
  # (not BOS, the user turn, the model header or the final newline).
  start = len(want) - len(model) - 2
  expected = np.zeros(len(want), np.float32)
  expected[start:start + len(model) + 1] = 1
  np.testing.assert_array_equal(mask, expected)
  assert tok.decode(ids[mask == 1].tolist()) == f"i am fine{EOT}"
  assert ids.dtype == np.int32 and mask.dtype == np.float32


def test_system_assistant_and_whitespace_follow_the_gemma_template(tok):
  turns = chat.parse_messages([
      {"role": "system", "content": "Be brief. "},
      {"role": "user", "content": "  what is the answer\n", "name": "x"},
      {"role": "assistant", "content": "yes\n\n"},
      {"role": "user", "content": "tell me"},
      {"role": "assistant", "content": "no"}])
  assert turns == [chat.Turn("user", "Be brief.\n\nwhat is the answer"),
                   chat.Turn("model", "yes"), chat.Turn("user", "tell me"),
                   chat.Turn("model", "no")]
  fmt = chat.ChatFormat(tok)
  ids, mask = fmt.encode(turns)
  assert tok.decode(ids.tolist()) == (
      f"{SOT}user\nBe brief.\n\nwhat is the answer{EOT}\n{SOT}model\nyes"
      f"{EOT}\n{SOT}user\ntell me{EOT}\n{SOT}model\nno{EOT}\n")
  runs = [tok.decode([i for i, _ in group]) for trained, group in
          itertools.groupby(zip(ids.tolist(), mask.tolist()),
                            key=lambda pair: pair[1]) if trained]
  assert runs == [f"yes{EOT}", f"no{EOT}"]
  # A prompt: the turns so far, ending with the model header.
  prompt = fmt.prompt(chat.as_turns("hi there"))
  assert prompt == [2] + tok.encode(f"{SOT}user\nhi there{EOT}\n{SOT}model\n")


def test_a_tokenizer_without_the_markers_is_refused_the_byte_one_spells_them(
    tmp_path):
  plain = tokenizers.get_tokenizer(_train_tokenizer(tmp_path / "plain"))
  with pytest.raises(ConfigError, match="no single piece for <start_of_turn> "
                     "and <end_of_turn>; use the Gemma tokenizer.model, or "
                     "train your SentencePiece model with user_defined_"
                     "symbols=<start_of_turn>,<end_of_turn>"):
    chat.ChatFormat(plain)
  # The byte tokenizer (no special pieces at all) spells them as text.
  byte = tokenizers.ByteTokenizer()
  fmt = chat.ChatFormat(byte)
  ids, mask = fmt.encode(chat.parse_messages(TWO_TURNS))
  assert ids.tolist() == [byte.bos_id] + byte.encode(TWO_TURNS_TEXT)
  assert byte.decode(ids[mask == 1].tolist()) == f"i am fine{EOT}"
  assert fmt.stop == EOT and not fmt.special_tokens


def _conversation(i: int) -> list[dict[str, str]]:
  rng = random.Random(i)
  out = []
  for _ in range(rng.randint(1, 3)):
    out.append({"role": "user",
                "content": " ".join(rng.choices(_WORDS, k=rng.randint(1, 6)))})
    out.append({"role": "model",
                "content": " ".join(rng.choices(_WORDS, k=rng.randint(1, 6)))})
  return out


def test_packed_conversations_restart_positions_and_mask_user_turns(tok):
  fmt = chat.ChatFormat(tok)
  docs = [fmt.encode(chat.parse_messages(_conversation(i)))
          for i in range(12)]
  seq_len = 24
  source = grain.MapDataset.source(
      [{"text": chat.dumps(chat.parse_messages(_conversation(i)))}
       for i in range(12)])
  rows = list(packing.pack(
      source.map(packing.ChatTokenize(fmt)).to_iter_dataset(), seq_len,
      loss_mask=True))
  # Reference: rows are consecutive slices of seq_len + 1 tokens of the
  # concatenated conversations (the last one padded).
  stream = np.concatenate([ids for ids, _ in docs])
  weights = np.concatenate([w for _, w in docs])
  doc_of = np.concatenate([np.full(len(ids), d) for d, (ids, _) in
                           enumerate(docs)])
  assert len(rows) == -(-len(stream) // (seq_len + 1))
  for r, row in enumerate(rows):
    lo = r * (seq_len + 1)
    n = min(seq_len + 1, len(stream) - lo)
    ids, w, d = stream[lo:lo + n], weights[lo:lo + n], doc_of[lo:lo + n]
    np.testing.assert_array_equal(row["inputs"][:n - 1], ids[:-1])
    np.testing.assert_array_equal(row["targets"][:n - 1], ids[1:])
    want_mask = np.zeros(seq_len, np.float32)
    want_mask[:n - 1] = w[1:] * (d[1:] == d[:-1])
    np.testing.assert_array_equal(row["mask"], want_mask)
    # Positions restart at each conversation (its BOS) and at each row.
    pos = [0]
    for j in range(1, n - 1):
      pos.append(0 if d[j] != d[j - 1] else pos[-1] + 1)
    np.testing.assert_array_equal(row["segment_pos"][:n - 1], pos)
    starts = row["inputs"][:n - 1] == tok.bos_id
    assert (row["segment_pos"][:n - 1][starts] == 0).all()
    assert not row["mask"][row["targets"] == tok.bos_id].any()
  assert sum(r["mask"].sum() for r in rows) > 0
  # A TFDS feature may hold the record itself, as bytes.
  record = json.dumps({"messages": _conversation(0)}).encode()
  out = packing.ChatTokenize(fmt, "conv").map({"conv": record})
  np.testing.assert_array_equal(out["tokens"], docs[0][0])
  np.testing.assert_array_equal(out["loss_mask"], docs[0][1])
  with pytest.raises(ConfigError, match="data.format=chat: not a JSON "
                     "conversation"):
    packing.ChatTokenize(fmt, "conv").map({"conv": b"{"})


def _write_chat(path, n: int, bad_line: str | None = None) -> str:
  lines = [json.dumps({"messages": _conversation(i), "id": i})
           for i in range(n)]
  if bad_line is not None:
    lines.insert(2, bad_line)
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def _chat_config(tmp_path, spm_path, **overrides):
  config = train_testlib.tiny_config(seq_len=32, batch_size=4, **overrides)
  config.data = ml_collections.ConfigDict({
      **pipeline.LM_DEFAULTS, "source": "text", "format": "chat",
      "text_field": "messages", "tokenizer": spm_path,
      "files": _write_chat(tmp_path / "chat.jsonl", 60),
      "data_dir": str(tmp_path / "tfds")})
  return config


def test_chat_pipeline_end_to_end_through_tfds_and_grain(tmp_path, spm_path,
                                                         tok):
  config = _chat_config(tmp_path, spm_path)
  task = pipeline.make_task(config, 0, 1)
  assert task.vocab_size == 320
  model_ids = {t for i in range(60) for m in _conversation(i)
               if m["role"] == "model" for t in tok.encode(m["content"])}
  eot = tok.piece_id(EOT)
  it = iter(task.train())
  batches = [next(it) for _ in range(4)]
  for batch in batches:
    assert batch["inputs"].shape == (4, 32)
    trained = set(batch["targets"][batch["mask"] == 1].tolist())
    assert trained <= model_ids | {eot}
    assert eot in trained
    # Never trained: BOS, <start_of_turn> and the role headers.
    for t in [tok.bos_id, tok.piece_id(SOT), *tok.encode("user\n")]:
      if t not in model_ids:
        assert not batch["mask"][batch["targets"] == t].any()
    assert 0 < batch["mask"].mean() < 0.8
  # The iterator state resumes exactly.
  state = it.get_state()
  want = [next(it) for _ in range(2)]
  fresh = iter(task.train())
  fresh.set_state(json.loads(json.dumps(state)))
  for a, b in zip(want, [next(fresh) for _ in range(2)]):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert next(iter(task.eval()))["mask"].any()


def test_experiments_take_format_chat(tmp_path, spm_path):
  lm = train_testlib.load_experiment("lm")
  files = _write_chat(tmp_path / "c.jsonl", 10)
  c = lm.get_config(f"runlocal,files={files},format=chat,"
                    f"tokenizer={spm_path}")
  assert (c.data.format, c.data.text_field, c.data.source) == (
      "chat", "messages", "text")
  assert "format" not in lm.get_config("runlocal").data  # text: unchanged
  with pytest.raises(ConfigError, match="format='html' is not one of text, "
                     "chat"):
    lm.get_config("runlocal,format=html")
  with pytest.raises(ConfigError, match="format=chat needs conversations: "
                     "give files=GLOBS"):
    lm.get_config("runlocal,format=chat")


def test_training_on_chat_data_scores_only_model_turns(tmp_path, spm_path):
  config = _chat_config(tmp_path, spm_path, total_steps=4, eval_every=4,
                        checkpoint_every=4, eval_batches=2)
  workdir = tmp_path / "run"
  result = loop.train(config, str(workdir))
  assert result.step == 4
  losses = train_testlib.losses(workdir)
  assert sorted(losses) == [1, 2, 3, 4]
  assert all(np.isfinite(v[0]) for v in losses.values())
  records = [json.loads(line) for line in
             (workdir / "metrics.jsonl").read_text().splitlines()]
  evals = [r for r in records if "eval/loss" in r]
  # The eval loss averages over the model-turn tokens of the eval batches.
  task = pipeline.make_task(config, 0, 1)
  masked = sum(b["mask"].sum() for b in itertools.islice(task.eval(), 2))
  assert evals[-1]["eval/tokens"] == masked < 0.8 * 2 * 4 * 32


@pytest.mark.parametrize("line, match", [
    ('{"messages": ', r"chat.jsonl:3: not a JSON line"),
    ('{"text": "hi"}', r"chat.jsonl:3: no 'messages' field \(data.text_"
     r"field\)"),
    ('{"messages": []}', r"chat.jsonl:3: empty conversation"),
    ('{"messages": "hi"}', r"chat.jsonl:3: 'messages' must be a list of "
     r"\{role, content\} objects, got str"),
    ('{"messages": [{"role": "user"}]}', r"chat.jsonl:3: message 1 has no "
     r"'content'"),
    ('{"messages": [{"role": "bot", "content": "x"}]}',
     r"chat.jsonl:3: message 1: role 'bot' is not one of user, model, "
     r"assistant, system"),
    ('{"messages": [{"role": "user", "content": ["x"]}]}',
     r"chat.jsonl:3: message 1: content must be a string, got list"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "user", '
     '"content": "b"}]}', r"chat.jsonl:3: messages 1 and 2 are both 'user' "
     "turns; turns must alternate user / model"),
    ('{"messages": [{"role": "model", "content": "a"}]}',
     r"chat.jsonl:3: message 1: the conversation must start with a user "
     "turn"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "system", '
     '"content": "b"}]}', r"chat.jsonl:3: message 2: a system message may "
     "only come first"),
    ('{"messages": [{"role": "user", "content": "a"}]}',
     r"chat.jsonl:3: no model turn to train on"),
    ('{"messages": [1]}', r"chat.jsonl:3: message 1 is not an object"),
])
def test_malformed_conversations_are_one_line_errors_naming_file_and_line(
    tmp_path, spm_path, line, match):
  config = _chat_config(tmp_path, spm_path)
  config.data.files = _write_chat(tmp_path / "chat.jsonl", 5, bad_line=line)
  with pytest.raises(ConfigError, match=match) as e:
    pipeline.make_task(config, 0, 1)
  assert "\n" not in str(e.value) and str(tmp_path) in str(e.value)


def test_chat_configuration_errors(tmp_path, spm_path):
  config = _chat_config(tmp_path, spm_path)
  (tmp_path / "notes.txt").write_text("hello\n")
  config.data.files = str(tmp_path / "notes.txt")
  with pytest.raises(ConfigError, match="data.format=chat reads JSON lines; "
                     ".*notes.txt is not a .jsonl or .json file"):
    pipeline.make_task(config, 0, 1)
  config.data.update(source="python")
  with pytest.raises(ConfigError, match="not data.source=python"):
    pipeline.make_task(config, 0, 1)
  config.data.update(source="text", format="markdown")
  with pytest.raises(ConfigError, match="data.format='markdown' is not one "
                     "of text, chat"):
    pipeline.make_task(config, 0, 1)
  # Conversations read as text say how to read them.
  config.data.update(format="text", text_field="text",
                     files=_write_chat(tmp_path / "c.jsonl", 3))
  with pytest.raises(ConfigError, match="c.jsonl:1: no 'text' field "
                     r"\(data.text_field\); for conversations use "
                     r"format=chat \(data.format\)"):
    pipeline.make_task(config, 0, 1)


def test_local_text_reads_a_custom_text_field(tmp_path):
  # The prepared dataset stores documents under "text" whatever the JSON
  # key was (reading the key from it failed with a KeyError).
  (tmp_path / "d.jsonl").write_text("\n".join(
      json.dumps({"body": f"doc {i}"}) for i in range(10)))
  config = train_testlib.tiny_config(seq_len=8, batch_size=2)
  config.data = ml_collections.ConfigDict({
      **pipeline.LM_DEFAULTS, "source": "text", "text_field": "body",
      "files": str(tmp_path / "d.jsonl"), "data_dir": str(tmp_path / "t")})
  batch = next(iter(pipeline.make_task(config, 0, 1).train()))
  text = tokenizers.ByteTokenizer().decode(batch["inputs"].ravel().tolist())
  assert "doc " in text


def test_chat_and_text_datasets_of_the_same_files_are_distinct(tmp_path):
  files = [_write_chat(tmp_path / "c.jsonl", 4)]
  as_chat = local_text.LocalTextConfig(files=files, text_field="messages",
                                       format="chat")
  as_text = local_text.LocalTextConfig(files=files, text_field="messages")
  assert as_chat.name != as_text.name
