"""The persistent compilation cache is used: a second process finds a trial's compiled train steps there.

Counted, not timed: `bench.compile_cache`'s child builds a search trial's train step per length bucket
(with `distill.files.enable_compilation_cache`, as `nas.trial` does) and reports, through `jax.monitoring`,
the compilations it wrote to the cache and the ones it loaded from it.
"""

from __future__ import annotations

from bench.common import shape_arch
from bench.compile_cache import _in_child

BUCKETS = (8, 16)


def test_warm_cache_loads_every_train_step_and_compiles_none(tmp_path):
    arch = shape_arch("student", quick=True).name
    cold = _in_child(arch, BUCKETS, 4, str(tmp_path))
    assert cold["cache_hits"] == 0 and cold["cache_writes"] >= len(BUCKETS), cold  # one train step per bucket
    assert cold["cache_entries"] >= cold["cache_writes"]
    warm = _in_child(arch, BUCKETS, 4, str(tmp_path))
    assert warm["cache_writes"] == 0, warm  # nothing compiled again ...
    assert warm["cache_hits"] == cold["cache_writes"], warm  # ... everything written the first time loaded
    assert warm["cache_entries"] == cold["cache_entries"]
