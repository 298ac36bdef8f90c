"""Session-scoped fixtures: a real OAR 2.5, a real Slurm 22.05, and an ordinary user to submit jobs.

Import them into a test module (``from gridops_test.fixtures_schedulers import oar_cluster, ...``) or list
this module in ``pytest_plugins``.  They need root: use them from tests marked ``root``.
"""
import pytest

from . import schedulers

OAR_NODES = ["node-%d" % i for i in range(1, 5)]
SLURM_NODES = ["node-%d" % i for i in range(1, 4)]


@pytest.fixture(scope="session")
def scheduler_user():
    """An ordinary user (OAR refuses jobs from root and oar), removed after the session."""
    user = schedulers.TestUser()
    try:
        yield user
    finally:
        user.close()


@pytest.fixture(scope="session")
def oar_cluster():
    """OAR 2.5 (Almighty, PostgreSQL, REST API) with resources node-1..node-4 (deploy=YES)."""
    cluster = schedulers.OarCluster(OAR_NODES).start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def slurm_cluster():
    """Slurm 22.05 (munged, slurmctld, a slurmd per node in its own namespace) with node-1..node-3."""
    cluster = schedulers.SlurmCluster(SLURM_NODES).start()
    try:
        yield cluster
    finally:
        cluster.close()
