"""The job graph on a Dask LocalCluster builds the same bytes as in-process, and survives a killed worker.

Tiny custom configs (a small CNN, 256 synthetic images, one epoch, and one 4-bit fine-tune of it), not
the smoke profile, so that the test takes well under a minute on two CPU cores.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

from qadtr_core.build import jobs  # noqa: E402
from qadtr_core.testing import synthetic_cifar  # noqa: E402
from qadtr_core.train import TrainConfig  # noqa: E402


def tiny_configs(seed: int) -> dict[str, list[TrainConfig]]:
    parent = TrainConfig(arch="smallcnn", epochs=1, lr=0.05, batch_size=64, n_train=256, seed=seed, profile="test")
    child = dataclasses.replace(parent, bits=4, lr=0.01, schedule="cosine", init=parent)
    return {"tiny": [parent, child]}


def checkpoints(root: Path) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in sorted((root / "models").glob("*/model.pt"))}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> str:
    d = synthetic_cifar(n_train=256, n_test=32, seed=0)
    path = tmp_path_factory.mktemp("data") / "tiny-cifar.npz"
    nhwc = lambda x: x.permute(0, 2, 3, 1).numpy()  # noqa: E731
    np.savez(path, x_train=nhwc(d.x_train), y_train=d.y_train.numpy(), x_test=nhwc(d.x_test), y_test=d.y_test.numpy())
    return str(path)


@pytest.fixture(scope="module")
def fault(tmp_path_factory) -> tuple[str, Path]:
    """The seed-1 child's job kills its worker the first time it runs (set before the cluster starts)."""
    child = tiny_configs(1)["tiny"][1]
    return jobs.model_key(child), tmp_path_factory.mktemp("fault") / "killed-once"


@pytest.fixture(scope="module")
def client(fault):
    from distributed import Client, LocalCluster

    key, marker = fault
    mp = pytest.MonkeyPatch()
    mp.setenv(jobs.FAULT_VAR, f"{key}:{marker}")  # worker processes inherit it
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=logging.ERROR)
    mp.undo()  # not in this process: the in-process builds must not be killed
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


def test_cluster_build_equals_in_process_build(tmp_path, data_file, client):
    graph = jobs.build_graph("smoke", configs=tiny_configs(0))
    assert [j.kind for j in graph.values()] == ["train", "train"]
    assert graph[list(graph)[1]].deps == (list(graph)[0],)  # the child waits for its parent

    local, remote = tmp_path / "local", tmp_path / "remote"
    ran_local = jobs.run_graph(graph, threads=1, root=local, data=data_file)
    ran_remote = jobs.run_graph(graph, threads=1, root=remote, data=data_file, scheduler=client)
    assert len(ran_local) == len(ran_remote) == 2
    a, b = checkpoints(local), checkpoints(remote)
    assert set(a) == set(graph) and a == b  # every checkpoint byte-identical

    # a cached job is never resubmitted
    assert jobs.run_graph(graph, threads=1, root=remote, data=data_file, scheduler=client) == []


def test_killed_worker_job_is_retried_with_the_same_result(tmp_path, data_file, client, fault):
    key, marker = fault
    graph = jobs.build_graph("smoke", configs=tiny_configs(1))
    assert key in graph
    jobs.run_graph(graph, threads=1, root=tmp_path / "local", data=data_file)
    assert not marker.exists()  # in-process: no fault
    ran = jobs.run_graph(graph, threads=1, root=tmp_path / "remote", data=data_file, scheduler=client, retries=1)
    assert marker.exists()  # the worker running the child was killed once ...
    assert {r["key"] for r in ran} == set(graph)  # ... and the job was run again elsewhere
    assert checkpoints(tmp_path / "local") == checkpoints(tmp_path / "remote")


LOCK_SCRIPT = """
import sys, time, torch
from qadtr_core.artifacts import cached_tensors
def compute():
    with open(sys.argv[1], "a") as f:
        f.write("computed\\n")
    time.sleep(1.5)
    return {"x": torch.arange(5)}
out = cached_tensors("lock_test", {"k": 1}, compute)
assert out["x"].tolist() == [0, 1, 2, 3, 4]
"""


def test_concurrent_processes_compute_a_cached_entry_once(tmp_path):
    import os
    import subprocess
    import sys

    counter = tmp_path / "count.txt"
    env = {**os.environ, "QADTR_ARTIFACTS": str(tmp_path / "artifacts"), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", LOCK_SCRIPT, str(counter)], env=env) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert counter.read_text() == "computed\n"  # the second process waited on the lock, then loaded
