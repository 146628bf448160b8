"""Runs generate + render on a 2-node Ray cluster started on this machine (ray.cluster_utils.Cluster),
as its own driver process, and prints one JSON line: the node ids of the cluster and the node ids
where the generate tasks and render actors ran.

    python tests/cluster_driver.py ROOT [--n 6] [--views 2] [--resolution 32]

Used by tests/test_cluster.py (in a subprocess: the pytest process may already hold a local Ray).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _worker_nodes(before: set[str] = frozenset()) -> tuple[set[str], set[str]]:
    """(actor ids, node ids) of the farm's workers (FarmWorker actors) not in `before`, from the
    GCS actor table (no dashboard needed): generate's workers, then render's."""
    from ray._private.state import actors

    workers = {k: a for k, a in actors().items() if a.get("ActorClassName") == "FarmWorker" and k not in before}
    return set(workers), {a["Address"]["NodeID"] for a in workers.values()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--shard-size", type=int, default=2)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--shapes-per-shard", type=int, default=2)
    args = parser.parse_args()

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    import ray
    from ray.cluster_utils import Cluster

    from pipelines.generate import GenerateConfig, run_generate
    from pipelines.render import RenderConfig, run_render
    from pipelines.texture_bank import prepare_bank
    from zeroverse.scene.cameras import RigConfig
    from zeroverse.scene.render_settings import RenderSettings

    # Two nodes of one CPU each: two one-CPU workers can only run one per node.
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": True, "dashboard_port": None},
    )
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    out: dict = {"address": cluster.address}
    try:
        root = args.root
        bank = prepare_bank(root, None, 1024)
        gen = run_generate(
            GenerateConfig(root=root, n=args.n, seed=0, shard_size=args.shard_size, textures=bank.describe()),
            address=cluster.address,
            workers=2,
            progress=False,
        )
        out["nodes"] = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
        generate_workers = set()
        try:
            generate_workers, nodes = _worker_nodes()
            out["generate_nodes"] = sorted(nodes)
        except Exception as err:  # noqa: BLE001 - report, the test decides
            out["generate_nodes_error"] = f"{type(err).__name__}: {err}"
        rend = run_render(
            RenderConfig(
                root=root,
                rig=RigConfig(num_views=args.views),
                settings=RenderSettings(resolution=args.resolution, samples=4),
                shapes_per_shard=args.shapes_per_shard,
            ),
            address=cluster.address,
            workers=2,
            progress=False,
        )
        out["render_nodes"] = sorted(_worker_nodes(generate_workers)[1])
        out["generate"] = {"shapes": gen.shapes, "failures": len(gen.failures), "written": len(gen.written)}
        out["render"] = {"shapes": rend.shapes, "views": rend.views, "failures": len(rend.failures), "workers_started": rend.workers_started}
    finally:
        ray.shutdown()
        cluster.shutdown()
    print("CLUSTER_RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
