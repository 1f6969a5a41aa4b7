"""Files and stores shared by every dftloop package.

The sample-directory format (:mod:`dftloop_io.samples`) and the project's jobflow store
(:mod:`dftloop_io.job_store`).

Nothing here imports torch, Prefect or another dftloop package, so the generators, the relaxers,
the metrics and the flows can all read and write the same files without depending on each other.
"""
