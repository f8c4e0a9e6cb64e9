"""Architecture search for one task: the search config (`config`), the space (`space`), cost model and
latency child (`cost`, `latency_child`), trials (`trial`), the supernet strategy (`oneshot`) and its local
search around the targets (`local`), the Ray Tune driver (`tune`), the final training (`final`), the
exports' extras (`exports`), the report (`report`), runs across processes as Ray Train workers
(`multihost`) and the `bertnas` command line (`cli`).

The top of the library: may import `distill.run` (its public API), `distill.arch`, `distill.model`,
`distill.export`, `distill.files`, `distill.cli` and `tasks`; never `distill.train` or `distill.kd`.
The only package that imports ray.
"""
