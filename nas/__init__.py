"""Architecture search for one task: the space (`space`), cost model (`cost`), trials (`trial`),
the Ray Tune driver (`tune`), the final training (`final`), the report (`report`) and the
`bertnas` command line (`cli`).

The top of the library: may import `distill.run` (its public API), `distill.arch`, `distill.model`,
`distill.export`, `distill.files`, `distill.cli` and `tasks`; never `distill.train` or `distill.kd`.
The only package that imports ray.
"""
