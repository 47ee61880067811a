"""Helper for tests/test_faults.py (not a test module): run a search on a 3-node Ray cluster on this
machine (ray.cluster_utils.Cluster: a head without CPUs and two 1-CPU worker nodes) and remove one
worker node while its trial is running. Prints a JSON summary as the last line."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

import search  # noqa: F401  (sets the driver's Tune environment)
from search.spec import load_spec
from search.run import run_search

sys.path.insert(0, str(Path(__file__).parent))
from test_faults import mid_trial  # noqa: E402


def main(spec_path: str) -> None:
    spec = load_spec(spec_path)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    storage = Path(spec.storage)
    removed: list[str] = []
    finished = threading.Event()

    def remove_a_node():
        # no fixed deadline: on a loaded machine the first trials may take minutes to get going
        while not finished.is_set():
            # a trial is running with checkpoints written: pull a worker node out
            if mid_trial(storage):
                cluster.remove_node(workers[1])
                removed.append("worker-1")
                return
            time.sleep(0.05)

    thread = threading.Thread(target=remove_a_node, daemon=True)
    thread.start()
    try:
        outcome = run_search(spec, Path(spec_path).read_text(), address=cluster.address, quiet=True)
    finally:
        finished.set()
        thread.join(timeout=5)
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps({"removed_node": bool(removed), "complete": outcome.complete,
                      "frontier": len(outcome.frontier.rows)}))


if __name__ == "__main__":
    main(sys.argv[1])
