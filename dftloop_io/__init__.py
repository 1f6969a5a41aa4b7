"""Files and stores shared by every dftloop package.

The sample-directory format (:mod:`dftloop_io.samples`), the project's jobflow store
(:mod:`dftloop_io.job_store`) and the atomic gzipped-JSON files of the caches
(:mod:`dftloop_io.gzip_json`).

Nothing here imports torch, Prefect or another dftloop package, so the generators, the relaxers,
the metrics and the flows can all read and write the same files without depending on each other.
"""
