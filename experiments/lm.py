r"""Language modelling on Python source, a TFDS dataset or your own text.

Arguments (after `:`, comma-separated):
  corpus=python   the default corpus: the `.py` files of the running
                  interpreter's standard library (9.4 MB for CPython 3.12,
                  46 of 560 files held out), built on any machine without a
                  download (recurrentgemma_jax/data/code_corpus.py; a
                  manifest.json of each split's files and bytes lies beside
                  the prepared data); `site_packages` adds the installed
                  packages, `max_bytes=N` keeps a stable subset of N bytes;
  dataset=NAME    a prepared TFDS dataset (array_record; e.g. lm1b) instead;
  files=GLOBS     local text or .jsonl files instead (`+`-separated globs),
                  prepared once as a TFDS dataset by the package's builder;
  data_dir=DIR    where prepared datasets go (corpus, files) or are read
                  (dataset); default: TFDS's folder, $TFDS_DATA_DIR or else
                  ~/tensorflow_datasets (the corpus and files= are prepared
                  there once, in local_text/<digest of files and options>/);
  tokenizer=PATH  a SentencePiece model (default: bytes, no file needed);
  format=chat     files= (or dataset=) hold conversations, one JSON line
                  `{"messages": [{"role", "content"}, ...]}` each, trained
                  in the Gemma chat template with the loss on the model
                  turns (recurrentgemma_jax/data/chat.py; default: text);
  model=griffin|hawk|mqa, runlocal;
  size=100m (default: the paper's 100M size, sequences of 2048), small
                  (the comparison of docs/results.md: six blocks of width
                  256 at equal parameter counts, 4.64M MQA, 4.65M Griffin,
                  4.66M Hawk with RNN width 192; 600 steps of 32 x 512
                  bytes; Griffin's window 256), or 1m, 4m, 16m (the code
                  scaling study, `SCALING` below: about 1M, 4M and 16M
                  non-embedding parameters, each trained on 20 tokens per
                  non-embedding parameter in batches of 64 x 512 tokens).
Give at most one of corpus, dataset, files. The argument values are checked
before any data is prepared.

Command:
  recurrentgemma train \
      --config=experiments/lm.py:files=/path/to/*.txt --workdir=/tmp/lm
  recurrentgemma train \
      --config=experiments/lm.py:runlocal --workdir=/tmp/lm_python

Model: the paper's 100M size of the chosen family (vocabulary from the
tokenizer, padded to a multiple of 128), sequences of 2048. Its 10k steps
of 64 x 2048 bytes are about 140 passes over the standard library: for the
full size, add `site_packages` or give a larger dataset or files.

Expected: on the default corpus with bytes, runlocal (a 3-block width-128
Griffin, 300 steps of 16 x 256 bytes) goes from ln 259 = 5.56 nats per byte
(uniform) to an eval loss of about 1.68 (next-byte accuracy 0.56; measured
once, CPython 3.12.1, over the 4 eval batches of 16 x 256 bytes); on
tinyshakespeare (`files=`) the same run reached about 1.75 (accuracy 0.48,
measured). The full model goes well below that.
Runtime: runlocal, about 4 minutes on 2 shared CPU cores (measured; the
corpus is prepared in under a second), 6 in an earlier run; full
(10k steps of 64 x 2048 tokens, 100M parameters), about an hour on one H200
(estimate); size=16m, 6 to 17 minutes on one H200 at 10% to 4% MFU
(estimate from the FLOP count, docs/results.md Section 5), 1m and 4m about
16 and 4 times less.
"""

from recurrentgemma_jax import presets
from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.data import pipeline
from recurrentgemma_jax.training import config as config_lib
from recurrentgemma_jax.training import experiment_files

common = experiment_files.sibling(__file__, "common")  # experiments/common.py

# The code scaling study (`reproduce run --study=code_scaling`): nine
# blocks (Griffin: recurrent, recurrent, local attention, three times), the
# paper's ratios (Table 2): MLP expansion 3, RNN width 4/3 of the width,
# width doubling per 4x parameters at fixed depth (as from its 100M to its
# 400M model); heads of dimension 32; where the heads do not divide the RNN
# width, RG-LRU gate blocks of 128 features (as `presets.paper_config`);
# Griffin's window half the training length (the paper: 1024 of 2048).
# size -> (width, RNN width, heads, RG-LRU gate blocks, peak learning rate).
SCALING = {
    "1m": (96, 128, 3, 1, 2e-3),
    "4m": (192, 256, 6, 2, 1.5e-3),
    "16m": (384, 512, 12, 4, 1e-3),
}
SCALING_DEPTH = 9
SCALING_SEQ_LEN = 512
SCALING_BATCH = 64
TOKENS_PER_PARAM = 20
# Non-embedding parameters (the embedding is tied; tests check these against
# the built models): size -> model -> count.
SCALING_PARAMS = {
    "1m": {"griffin": 1_254_432, "hawk": 1_393_440, "mqa": 976_416},
    "4m": {"griffin": 4_554_816, "hawk": 4_943_424, "mqa": 3_777_600},
    "16m": {"griffin": 17_293_440, "hawk": 18_513_024, "mqa": 14_854_272},
}
SIZES = ("100m", "small", *SCALING)


def scaling_steps(size: str, model: str) -> int:
  """Steps of `TOKENS_PER_PARAM` tokens per non-embedding parameter."""
  tokens = TOKENS_PER_PARAM * SCALING_PARAMS[size][model]
  return round(tokens / (SCALING_BATCH * SCALING_SEQ_LEN))


def get_config(arg=None):
  arg = common.parse_arg(arg, corpus="", site_packages=False,
                         max_bytes=0, dataset="", files="", data_dir="",
                         tokenizer="bytes", model="griffin",
                         size="100m", runlocal=False, format="text")
  if arg.model not in presets.MODEL_KINDS:
    raise ConfigError(f"model={arg.model!r} is not one of "
                      f"{', '.join(presets.MODEL_KINDS)}")
  if arg.size not in SIZES:
    raise ConfigError(f"size={arg.size!r} is not one of {', '.join(SIZES)}")
  if arg.corpus not in ("", "python"):
    raise ConfigError(f"corpus={arg.corpus!r} is not one of python (or give "
                      "files= or dataset=)")
  if sum(map(bool, (arg.corpus, arg.dataset, arg.files))) > 1:
    raise ConfigError("give at most one of corpus=, dataset=, files=")
  if (arg.site_packages or arg.max_bytes) and (arg.dataset or arg.files):
    raise ConfigError("site_packages and max_bytes apply to corpus=python, "
                      "not to dataset= or files=")
  c = config_lib.base_config()
  c.total_steps = 10_000
  c.batch_size = 64
  c.seq_len = 2048
  c.learning_rate = 1e-3
  c.warmup_steps = 500
  c.eval_every = 1000
  c.eval_batches = 16
  c.checkpoint_every = 1000
  c.log_every = 50
  c.model = config_lib.model_config(f"{arg.model}-100m")
  c.data = pipeline.LM_DEFAULTS.copy()
  c.data.update(tokenizer=arg.tokenizer, data_dir=arg.data_dir)
  if arg.dataset:
    c.data.update(source="tfds", name=arg.dataset)
  elif arg.files:
    c.data.update(source="text", files=arg.files.replace("+", ","))
  else:
    c.data.update(source="python", python_site_packages=arg.site_packages,
                  python_max_bytes=arg.max_bytes)
  pipeline.set_format(c.data, arg.format)
  if arg.size == "small":
    # docs/results.md (tinyshakespeare, files=): a 2000-step schedule overfit
    # that 1 MB corpus (eval loss lowest near step 500, then rising while
    # train loss fell to 0.1). On the default corpus, 600 steps of 32 x 512
    # bytes are about one pass.
    c.total_steps = 600
    c.batch_size = 32
    c.seq_len = 512
    c.warmup_steps = 100
    c.eval_every = 100
    c.eval_batches = 8
    c.checkpoint_every = 500
    c.model = config_lib.model_config(
        "", kind=arg.model, depth=6, width=256, mlp_expanded_width=768,
        num_heads=4, lru_width=192,
        attention_window_size=0 if arg.model == "mqa" else 256)
  if arg.size in SCALING:
    if arg.runlocal:
      raise ConfigError(f"size={arg.size} has no runlocal variant (a "
                        "scaling run is minutes on a GPU); leave out one of "
                        "them")
    width, lru_width, heads, lru_heads, lr = SCALING[arg.size]
    c.total_steps = scaling_steps(arg.size, arg.model)
    c.batch_size = SCALING_BATCH
    c.seq_len = SCALING_SEQ_LEN
    c.learning_rate = lr
    c.warmup_steps = min(500, c.total_steps // 10)
    c.eval_every = max(1, c.total_steps // 20)
    c.eval_batches = 16
    c.checkpoint_every = max(1, c.total_steps // 5)
    c.model = config_lib.model_config(
        "", kind=arg.model, depth=SCALING_DEPTH, width=width,
        mlp_expanded_width=3 * width, num_heads=heads, lru_width=lru_width,
        lru_num_heads=lru_heads,
        attention_window_size=(0 if arg.model == "mqa"
                               else SCALING_SEQ_LEN // 2))
  if arg.runlocal:
    c.total_steps = 300
    c.batch_size = 16
    c.seq_len = 256
    c.warmup_steps = 30
    c.learning_rate = 3e-3
    c.eval_every = 100
    c.eval_batches = 4
    c.checkpoint_every = 150
    c.log_every = 25
    c.model = config_lib.model_config(
        "", kind=arg.model, depth=3, width=128, mlp_expanded_width=384,
        num_heads=4, lru_width=96,  # equal parameters: 0.60M for each kind
        attention_window_size=0 if arg.model == "mqa" else 128,
        dtype="float32")
  return c
