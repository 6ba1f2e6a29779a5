"""Fleet scale (workstation or cluster, not the device): re-analyse archives of many analyzers on Dask
distributed with a new model, beside the old one, and report what a rollout would change.

``work`` is what a worker does (no Dask); ``run`` drives a cluster and writes the Parquet dataset;
``report`` compares the two models. Needs the ``fleet`` extra (dask[distributed], pyarrow).
"""

from edgehema.fleet.work import FleetJob, InputFile

__all__ = ["FleetJob", "InputFile"]
