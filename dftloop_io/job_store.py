"""Where the project keeps its files and its jobflow store.

The project directory is ``DFTLOOP_HOME`` (default ``./dftloop-runs``). The default store is an
embedded MontyStore (montydb, SQLite storage) at ``<home>/store`` with a ``data`` additional store
for large blobs; ``JOBFLOW_CONFIG_FILE`` names a jobflow settings file whose ``JOB_STORE`` is used
instead (for example a MongoStore). The result store of :mod:`flows.store` and the VASP relaxer of
:mod:`relax.vasp` both write here.
"""

from __future__ import annotations

import os
from pathlib import Path

from jobflow import JobStore

DEFAULT_HOME = "./dftloop-runs"
"""Project directory used when ``DFTLOOP_HOME`` is not set."""

DOCS_COLLECTION = "dftloop_docs"
BLOBS_COLLECTION = "dftloop_blobs"
DATABASE_NAME = "dftloop"


def dftloop_home(home: str | os.PathLike[str] | None = None) -> Path:
    """Return the project directory (``home``, else ``$DFTLOOP_HOME``, else ``./dftloop-runs``).

    Parameters
    ----------
    home
        Explicit directory; overrides the environment.

    Returns
    -------
    Path
        The absolute directory (created if missing).
    """
    path = Path(home or os.environ.get("DFTLOOP_HOME") or DEFAULT_HOME).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_job_store(home: str | os.PathLike[str] | None = None) -> JobStore:
    """Build the default embedded store: MontyStore (SQLite) docs + ``data`` blob store.

    Parameters
    ----------
    home
        Project directory (see :func:`dftloop_home`); the database goes to ``<home>/store``.

    Returns
    -------
    JobStore
        Not yet connected.
    """
    from maggma.stores import MontyStore

    db_path = str(dftloop_home(home) / "store")
    docs = MontyStore(
        DOCS_COLLECTION, database_path=db_path, database_name=DATABASE_NAME, storage="sqlite"
    )
    blobs = MontyStore(
        BLOBS_COLLECTION,
        database_path=db_path,
        database_name=DATABASE_NAME,
        storage="sqlite",
        key="blob_uuid",
    )
    return JobStore(docs, additional_stores={"data": blobs})


def load_job_store(
    home: str | os.PathLike[str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
) -> JobStore:
    """Return the configured ``JobStore``.

    ``config_file`` (else ``$JOBFLOW_CONFIG_FILE``) names a jobflow settings YAML whose
    ``JOB_STORE`` is used; without either, :func:`default_job_store` is used.

    Parameters
    ----------
    home
        Project directory for the default store.
    config_file
        A jobflow settings file.

    Returns
    -------
    JobStore
        Not yet connected.

    Raises
    ------
    ValueError
        If the configured store has no ``data`` additional store.
    FileNotFoundError
        If the configuration file does not exist.
    """
    config = config_file or os.environ.get("JOBFLOW_CONFIG_FILE")
    if not config:
        return default_job_store(home)
    if not Path(config).is_file():
        raise FileNotFoundError(f"jobflow configuration file {config} does not exist")
    from jobflow.settings import JobflowSettings

    store = JobflowSettings(CONFIG_FILE=str(config)).JOB_STORE
    if "data" not in (store.additional_stores or {}):
        raise ValueError(
            f"the JOB_STORE in {config} has no 'data' additional store; add one "
            "(large blobs such as forces and atomate2 outputs are written there)"
        )
    return store
