"""`python -m serve_app`: the whole service on one machine, until Ctrl-C or SIGTERM.

Joins the Ray cluster at RAY_ADDRESS, or starts a local head that offers LOCAL_SLOTS sandbox
slots of each enabled agent type; then runs the Serve deployment on HOST:PORT.
"""

import logging
import signal
import threading

from cluster.node import node_resources, set_ray_defaults

set_ray_defaults()  # for the local head started below (a cluster's nodes set them on their `ray start`)

import ray  # noqa: E402
from ray import serve  # noqa: E402

from executors.network import remove_egress  # noqa: E402
from executors.reaper import reap  # noqa: E402
from executors.engines.docker import docker_api  # noqa: E402
from serve_app.app import build  # noqa: E402
from serve_app.config import get_settings  # noqa: E402
from serve_app.dispatch import dispatcher  # noqa: E402

log = logging.getLogger("dotnet_scripts")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = get_settings()
    if settings.ray_address:
        ray.init(address=settings.ray_address)
    else:
        offers = {t: settings.local_slots for t in (settings.local_agent_types or settings.agent_types)}
        ray.init(resources=node_resources(offers, head=True), include_dashboard=True, dashboard_host="127.0.0.1")
    # the dispatcher (and the launcher that owns the runs) live near this process, on the head
    node = ray.get_runtime_context().get_node_id()
    ray.get(dispatcher(settings, node, replace_other=True).ping.remote())
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(build(settings), name="dotnet-scripts", route_prefix="/", blocking=False)
    log.info("dotnet-scripts is up on http://%s:%d (Swagger UI: /swagger-ui)", settings.host, settings.port)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    local = not settings.ray_address
    while not stop.wait(30):
        if local:  # this process owns the node: clean up after tasks that died
            reap()
    log.info("shutting down")
    serve.shutdown()
    ray.shutdown()
    if local:  # the sandboxes of tasks that ended with this node are nobody's now; others' stay
        reap(dead_nodes={node})
        if settings.network == "egress" or any(o.get("network") == "egress" for o in settings.agent_overrides.values()):
            remove_egress(docker_api())


if __name__ == "__main__":
    main()
