"""Converged DFT settings shipped with the package.

One ``<dataset>.json`` per dataset, written by ``dftloop dft converge --write-default`` and read
by :func:`relax.protocol.converged_settings`.
"""
