r"""Induction heads (De et al. 2024, Appendix H; Olsson et al. 2022).

A random sequence over a vocabulary of 16 holds a trigger token followed by
some token; at the end the trigger appears again and the model must output
the token that followed it. Train length 256; five blocks of width 64;
Griffin's third block is local attention with window 128.

Command (model = griffin | hawk | mqa):
  python -m recurrentgemma_jax.train \
      --config=experiments/induction_heads.py:model=griffin \
      --workdir=/tmp/induction_heads_griffin

Expected: accuracy of the final answer rises from chance (1/15 = 0.067) to
near 1 at train length for Griffin and MQA (the paper's Figure 5 setting);
Hawk learns it more slowly. One scored token per sequence makes this the
slowest of the synthetic tasks to start learning: the runlocal variant
(sequence 64, window 32, 1000 steps of 64 sequences) was still at chance
after 100 steps on a shared 2-core CPU; it has not been run to the end here.
Runtime: runlocal, roughly 10-20 minutes on 2 CPU cores (about 1 s per
step when the cores are shared); full (20k steps of 128 x 256 tokens),
about 10 minutes on one H200 (estimate).
"""

from recurrentgemma_jax.training import config as config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, model="griffin", runlocal=False)
  c = config_lib.synthetic_task_config("induction_heads", arg.model,
                                       window=128)
  c.batch_size = 128
  c.seq_len = 256
  c.eval_batches = 8
  c.data.vocab_size = 16
  if arg.runlocal:
    config_lib.shrink_for_cpu(c, arg.model, total_steps=1000, batch_size=64,
                              eval_every=250, checkpoint_every=500)
  return c
