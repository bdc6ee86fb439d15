"""The Python-source corpus (`data/code_corpus.py`): what it gathers, a
stable by-file split, the manifest's byte counts, and the LM pipeline on it
(`data.source = "python"`, the default corpus of experiments/lm.py)."""

import itertools
import json
import os
import random
import sysconfig

import ml_collections
import pytest
from etils import epath

from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.data import code_corpus
from recurrentgemma_jax.data import pipeline

import train_testlib


def _tree(root):
  """A fake standard library and site-packages of 300 small modules, plus
  what the corpus leaves out. Each module's text names its file."""
  roots = {"stdlib": str(root / "lib"), "site-packages": str(root / "site")}
  rng = random.Random(0)
  for i in range(300):
    label = "stdlib" if i % 3 else "site-packages"
    path = os.path.join(roots[label], f"pkg{i % 7}", f"mod{i}.py")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
      f.write(f"# {label}/pkg{i % 7}/mod{i}.py\n")
      f.write("x = 1  # é\n" * rng.randint(1, 40))
  left_out = ["lib/test/test_a.py", "lib/pkg0/tests/test_b.py",
              "lib/encodings/cp1.py", "lib/pydoc_data/topics.py",
              "lib/idlelib/idle_test/t.py", "lib/site-packages/x.py",
              "lib/pkg1/__pycache__/m.py", "lib/pkg1/notes.txt"]
  for name in left_out:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text("left out\n")
  (root / "lib" / "pkg2" / "empty.py").write_text("")
  (root / "lib" / "pkg2" / "latin1.py").write_bytes(b"s = '\xe9'\n")
  return roots


def test_gather_takes_the_py_files_and_leaves_out_tests_and_tables(tmp_path):
  roots = _tree(tmp_path)
  files, skipped = code_corpus.gather(roots)
  assert len(files) == 300
  assert files == sorted(files)
  assert skipped == [{"name": "stdlib/pkg2/latin1.py", "reason": "not UTF-8"}]
  for f in files:
    label, rest = f.name.split("/", 1)
    assert f.path == os.path.join(roots[label], *rest.split("/"))
    assert f.size == os.path.getsize(f.path)
    with open(f.path, encoding="utf-8") as text:
      assert text.readline() == f"# {f.name}\n"
  with pytest.raises(ConfigError, match="folder .*nowhere.* does not exist"):
    code_corpus.gather({"stdlib": str(tmp_path / "nowhere")})


def _files(n):
  return [code_corpus.SourceFile(f"stdlib/pkg{i % 13}/m{i}.py", f"/x/{i}", i)
          for i in range(n)]


@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_split_is_by_name_stable_and_near_the_fraction(fraction):
  files = _files(5000)
  train, validation = code_corpus.split(files, fraction)
  assert abs(len(validation) / len(files) - fraction) < 0.02
  assert not {f.name for f in train} & {f.name for f in validation}
  assert sorted(train + validation) == sorted(files)
  # Any order, another call: the same split.
  shuffled = list(files)
  random.Random(1).shuffle(shuffled)
  assert code_corpus.split(shuffled, fraction) == (train, validation)
  # A file's split depends on its name only: not on its path, size or the
  # other files.
  moved = [code_corpus.SourceFile(f.name, "/elsewhere", 7) for f in files]
  assert [f.name for f in code_corpus.split(moved[:100], fraction)[1]] == [
      f.name for f in validation if f in files[:100]]


def test_max_bytes_keeps_a_stable_subset_in_the_same_splits():
  files = _files(2000)
  total = sum(f.size for f in files)
  kept = code_corpus.select(files, total // 4)
  assert sum(f.size for f in kept) <= total // 4
  assert sum(f.size for f in kept) > total // 4 * 0.99
  assert code_corpus.select(list(reversed(files)), total // 4) == kept
  assert code_corpus.select(files, 0) == sorted(files)
  # Not the smallest or first files: spread over the corpus.
  assert max(f.size for f in kept) > 1900 and min(f.size for f in kept) < 100
  held_out = {f.name for f in code_corpus.split(files, 0.1)[1]}
  assert {f.name for f in code_corpus.split(kept, 0.1)[1]} == {
      f.name for f in kept} & held_out


def _texts(builder, split):
  source = builder.as_data_source(split=split)
  return [source[i]["text"].decode() for i in range(len(source))]


def test_prepared_corpus_matches_its_manifest(tmp_path):
  roots = _tree(tmp_path / "tree")
  builder = code_corpus.prepare_python_corpus(
      str(tmp_path / "tfds"), roots=roots, validation_fraction=0.2,
      max_chars=300)
  manifest_path = epath.Path(builder.data_dir) / code_corpus.MANIFEST
  manifest = json.loads(manifest_path.read_text())
  assert manifest["roots"] == roots and manifest["validation_fraction"] == 0.2
  assert manifest["skipped"] == [{"name": "stdlib/pkg2/latin1.py",
                                  "reason": "not UTF-8"}]
  files = {f.name: f for f in code_corpus.gather(roots)[0]}
  splits = manifest["splits"]
  names = {s: [p["name"] for p in splits[s]["paths"]] for s in splits}
  assert not set(names["train"]) & set(names["validation"])
  assert sorted(names["train"] + names["validation"]) == sorted(files)
  assert abs(len(names["validation"]) / len(files) - 0.2) < 0.07
  for split in ("train", "validation"):
    record = splits[split]
    for path in record["paths"]:
      assert path["bytes"] == files[path["name"]].size
    assert record["files"] == len(record["paths"])
    assert record["bytes"] == sum(p["bytes"] for p in record["paths"])
    # The prepared split holds exactly its files' text, cut into documents.
    texts = _texts(builder, split)
    assert all(len(t) <= 300 for t in texts)
    assert sum(len(t.encode()) for t in texts) == record["bytes"]
    heads = {line[2:] for t in texts for line in t.splitlines()
             if line.startswith("# ")}
    assert heads == set(names[split])

  # Prepared once: the same data (and manifest) on the next call.
  manifest_path.write_text(json.dumps({"kept": True}))
  again = code_corpus.prepare_python_corpus(
      str(tmp_path / "tfds"), roots=roots, validation_fraction=0.2,
      max_chars=300)
  assert again.data_dir == builder.data_dir
  assert json.loads(manifest_path.read_text()) == {"kept": True}


def test_corpus_errors_name_the_field(tmp_path):
  roots = _tree(tmp_path / "tree")
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(ConfigError, match="python_max_bytes=-1 must be >= 0"):
    code_corpus.prepare_python_corpus(data_dir, roots=roots, max_bytes=-1)
  with pytest.raises(ConfigError, match=r"has \d+ training and \d+ validation "
                     "files; each split needs one .*python_max_bytes=50"):
    code_corpus.prepare_python_corpus(data_dir, roots=roots, max_bytes=50)
  with pytest.raises(ConfigError, match="validation_fraction=1.0 must be"):
    code_corpus.prepare_python_corpus(data_dir, roots=roots,
                                      validation_fraction=1.0)
  assert not os.path.exists(data_dir)


def test_default_roots_are_the_running_interpreters():
  paths = sysconfig.get_paths()
  assert code_corpus.default_roots() == {"stdlib": paths["stdlib"]}
  with_packages = code_corpus.default_roots(site_packages=True)
  assert with_packages["site-packages"] == paths["purelib"]


def test_lm_pipeline_on_the_standard_library(tmp_path):
  """The default corpus of experiments/lm.py, built from this interpreter."""
  config = train_testlib.tiny_config(seq_len=64, batch_size=4)
  config.data = ml_collections.ConfigDict({
      **pipeline.LM_DEFAULTS, "source": "python",
      "data_dir": str(tmp_path / "tfds")})
  task = pipeline.make_task(config, 0, 1)
  assert task.vocab_size == 259
  train = list(itertools.islice(task.train(), 2))
  evals = list(itertools.islice(task.eval(), 2))
  for batch in train + evals:
    assert batch["inputs"].shape == (4, 64)
  (manifest_path,) = (tmp_path / "tfds").rglob(code_corpus.MANIFEST)
  manifest = json.loads(manifest_path.read_text())
  assert manifest["roots"] == {"stdlib": sysconfig.get_paths()["stdlib"]}
  train_names = [p["name"] for p in manifest["splits"]["train"]["paths"]]
  held_out = [p["name"] for p in manifest["splits"]["validation"]["paths"]]
  assert "stdlib/argparse.py" in train_names + held_out
  assert not set(train_names) & set(held_out)
  assert len(held_out) >= 10 and len(train_names) > 5 * len(held_out)
  for name in train_names + held_out:
    parts = name.split("/")
    assert parts[0] == "stdlib" and name.endswith(".py")
    assert not set(parts) & code_corpus.EXCLUDED_DIRS, name
  # Each split's rows come from its own files.
  roots = manifest["roots"]
  for batch, names in ((train[0], train_names), (evals[0], held_out)):
    text = "".join(_read(roots, name) for name in names)
    piece = _first_document(batch)
    assert len(piece) > 8 and piece in text, piece


def _read(roots, name):
  label, rest = name.split("/", 1)
  with open(os.path.join(roots[label], rest), encoding="utf-8") as f:
    return f.read()


def _first_document(batch) -> str:
  """The text of the first row up to its first document boundary."""
  row, pos = batch["inputs"][0], batch["segment_pos"][0]
  end = next((i for i in range(1, len(pos)) if pos[i] == 0), len(pos))
  data = bytes(int(t) - 3 for t in row[:end] if t >= 3)
  return data.decode("utf-8", errors="ignore")
