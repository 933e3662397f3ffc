"""Ray Serve: the app as a Serve deployment, each replica one process with its own model and batching worker.

    python -m server.serve --replicas 2 --model IDKiro/sdxs-512-dreamshaper           # one replica per GPU
    python -m server.serve --min-replicas 1 --max-replicas 8 --model ...              # autoscaling on sessions
    serve deploy server/serve_config.yaml                                             # the same, as a Serve config

Every app.py option works here too (flags or `SDXS_*`); the Serve options are below (`--help`).  The Serve proxy
(port `--serve-port`, 8000) hands each WebSocket session, for its whole life, to one replica: a session lives on one
connection, so no sticky routing is needed.  A replica admits `max_sessions + max_queue` sessions (its own waiting
line included), which is its `max_ongoing_requests`: Serve never hands it more; autoscaling aims at `max_sessions`
ongoing requests per replica.  A replica is ready (routed to) only once its model is loaded and warm.  Each replica
also serves its own Prometheus metrics on the first free port from `--metrics-port` (one per replica on a node), since
`/metrics` through the proxy reaches whichever replica answers.  Needs `pip install -r requirements-ray.txt`;
docs/hosting.md shows a multi-node start.  Importing this module does not import Ray.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from server.config import ServerConfig, parse_config

log = logging.getLogger("sdxs.serve")
ROOT = Path(__file__).resolve().parents[1]  # app.py, server/, sdxs/: on the replicas' import path
LOAD_TIMEOUT_S = 1800.0  # a replica that is not ready by then fails its start, and Serve starts another
METRICS_PORTS = 64  # ports tried from --metrics-port (replicas on one node)


def serve_options(argv: Sequence[str] | None = None) -> tuple[dict, list[str]]:
    """Split the command line: the Serve options (a dict) and the app's own options (for server.config)."""
    parser = argparse.ArgumentParser(description="SDXS on Ray Serve", allow_abbrev=False)
    parser.add_argument("--replicas", type=int, default=None, help="fixed replica count (default: autoscaling)")
    parser.add_argument("--min-replicas", type=int, default=1)
    parser.add_argument("--max-replicas", type=int, default=4)
    parser.add_argument(
        "--num-gpus", type=float, default=None, help="GPUs per replica (default: 1 when the cluster has GPUs, else 0)"
    )
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs reserved per replica")
    parser.add_argument("--serve-host", default="0.0.0.0")
    parser.add_argument("--serve-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=9500, help="first port of the replicas' /metrics; 0: off")
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join ('auto': the local one; default: start one in this process)",
    )
    options, rest = parser.parse_known_args(argv)
    return vars(options), rest


def deployment_options(config: ServerConfig, options: dict) -> dict:
    """The Serve deployment's options: one model per replica, capacity in sessions, autoscaling on sessions."""
    gpus = options.get("num_gpus")
    scaling: dict[str, Any] = (
        {"num_replicas": options["replicas"]}
        if options.get("replicas")
        else {
            "autoscaling_config": {
                "min_replicas": options.get("min_replicas", 1),
                "max_replicas": options.get("max_replicas", 4),
                "target_ongoing_requests": config.max_sessions,
            }
        }
    )
    return {
        "max_ongoing_requests": config.max_sessions + config.max_queue,
        "ray_actor_options": {"num_gpus": 1 if gpus is None else gpus, "num_cpus": options.get("num_cpus", 1.0)},
        "health_check_period_s": 10.0,
        "graceful_shutdown_timeout_s": 5.0,
        **scaling,
    }


class Replica:
    """One replica: the app built in the replica's process (`__serve_build_asgi_app__`), ready when its model is."""

    def __init__(self, config: ServerConfig, metrics_port: int = 0):
        self.config, self.metrics_port = config, metrics_port
        self.state: Any = None  # server.state.AppState, once built
        self.metrics_at: int | None = None  # the port of this replica's own /metrics

    async def __serve_build_asgi_app__(self) -> Any:
        from server.routes import create_app

        app = create_app(self.config)
        self.state = app.state.sdxs
        self.state.start_loading()  # the lifespan's own call then does nothing
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while not self.state.ready:
            if self.state.loading["stage"] == "failed" or time.monotonic() > deadline:
                raise RuntimeError(f"model not ready: {self.state.loading}")
            await asyncio.sleep(0.2)
        self.metrics_at = serve_metrics(self.state.metrics.registry, self.metrics_port)
        return app

    def check_health(self) -> None:
        """Serve's health check: a replica whose model failed is replaced."""
        if self.state is not None and self.state.loading["stage"] == "failed":
            raise RuntimeError(self.state.loading["error"])


def serve_metrics(registry: Any, first_port: int) -> int | None:
    """Serve `registry` on the first free port from `first_port` (0: not at all); returns the port."""
    if not first_port:
        return None
    from prometheus_client import start_http_server

    for port in range(first_port, first_port + METRICS_PORTS):
        try:
            start_http_server(port, registry=registry)
        except OSError:
            continue
        log.info("this replica's metrics: http://<node>:%d/metrics", port)
        return port
    log.warning("no free port for metrics in %d-%d", first_port, first_port + METRICS_PORTS - 1)
    return None


def build_app(args: dict) -> Any:
    """Serve application builder (`import_path: server.serve:build_app` in a Serve config): `args` holds app
    options (as `ServerConfig` fields) and Serve options (as in `serve_options`)."""
    from ray import serve

    options = {key: args[key] for key in serve_options([])[0] if key in args}
    config = ServerConfig(**{key: value for key, value in args.items() if key not in options})
    settings = deployment_options(config, options)
    settings["ray_actor_options"]["runtime_env"] = {"env_vars": replica_env()}
    deployment = serve.deployment(serve.ingress()(Replica), name="sdxs", **settings)
    return deployment.bind(config, options.get("metrics_port", 9500))


def replica_env() -> dict[str, str]:
    """Environment of the replicas: this checkout on the import path (the same path on every node), and the
    `SDXS_*` and Hugging Face variables of whoever deploys."""
    env = {key: value for key, value in os.environ.items() if key.startswith(("SDXS_", "HF_"))}
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def main(argv: Sequence[str] | None = None) -> None:
    import ray
    from ray import serve

    options, rest = serve_options(argv)
    config = parse_config(rest)
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ray.init(address=options["address"])
    if options["num_gpus"] is None:
        options["num_gpus"] = 1 if ray.cluster_resources().get("GPU", 0) else 0
    serve.start(http_options={"host": options["serve_host"], "port": options["serve_port"]})
    args = {**config.model_dump(exclude_defaults=True), **options}
    serve.run(build_app(args), name="sdxs", route_prefix="/", blocking=True)


if __name__ == "__main__":
    main()
