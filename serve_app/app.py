"""The FastAPI application and the Ray Serve deployment that hosts it."""

import asyncio
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic.alias_generators import to_camel
import ray
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from cluster.node import on_the_head
from executors.nuget import config as nuget_config
from serve_app import agent_types, deps, health, jobs, policies
from serve_app.config import LIMIT_FIELDS, Settings
from serve_app.dispatch import DispatcherClient, dispatcher
from serve_app.plan import agent_profile
from serve_app.events import Events
from serve_app.store import JobStore

log = logging.getLogger("dotnet_scripts.api")

app = FastAPI(
    title="dotnet-scripts",
    description="Runs C# scripts in isolated, resource-limited gVisor sandboxes on a Ray cluster "
                "and keeps their STDOUT, STDERR and outcome for the client to fetch.",
    version="0.1.0",
    openapi_url="/api-docs",
    docs_url=None,  # served below from local assets: the page works without reaching a CDN
    redoc_url=None,
)
app.mount("/swagger-ui-assets", StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui-assets")
app.include_router(jobs.router)
app.include_router(health.router)
app.include_router(agent_types.router)


def _non_null(prop: dict) -> dict:
    """The schema of an Optional property's value (its non-null `anyOf` branch)."""
    return next((a for a in prop.get("anyOf", []) if a.get("type") != "null"), prop)


def openapi() -> dict:
    """FastAPI's schema, told the truth: bad input is a 400 with a message (never 422), and the
    agent types are the ones this deployment accepts."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    message = {"description": "invalid request",
               "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Message"}}}}
    for operations in schema["paths"].values():
        for op in operations.values():
            if op.get("responses", {}).pop("422", None) is not None:
                op["responses"].setdefault("400", message)
    for unused in ("HTTPValidationError", "ValidationError"):
        schema["components"]["schemas"].pop(unused, None)
    try:
        settings = deps.get_services().settings
    except RuntimeError:
        settings = None  # outside a replica (e.g. tooling): no deployment-specific bounds
    if settings is not None:
        profiles = [agent_profile(settings, t) for t in settings.agent_types]
        for component in schema["components"]["schemas"].values():
            props = component.get("properties", {})
            if "agentType" in props:
                props["agentType"]["enum"] = settings.agent_types
            if "wallTimeS" in props:  # a job's limits: at most the largest agent type's
                for name in LIMIT_FIELDS:
                    _non_null(props[to_camel(name)])["maximum"] = max(getattr(limits, name) for limits, _ in profiles)
            if "network" in props and "nugetConfigXml" in props:
                modes = ["none", "egress"] if any(n == "egress" for _, n in profiles) else ["none"]
                _non_null(props["network"])["enum"] = modes
    app.openapi_schema = schema
    return schema


app.openapi = openapi


@app.get("/swagger-ui", include_in_schema=False)
def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/api-docs", title="dotnet-scripts — Swagger UI",
        swagger_js_url="/swagger-ui-assets/swagger-ui-bundle.js",
        swagger_css_url="/swagger-ui-assets/swagger-ui.css",
        swagger_favicon_url="data:,",
    )


@app.get("/api-docs.yaml", include_in_schema=False)
def openapi_yaml() -> Response:
    import yaml  # comes with ray

    return Response(yaml.safe_dump(app.openapi(), sort_keys=False), media_type="application/yaml")


def _field(loc) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def max_body_bytes(settings: Settings) -> int:
    """The largest request a replica reads: a script, a NuGet.Config, stdin and args at their
    limits, each JSON-escaped at worst (six bytes a character, `\\u0001`), and the rest of the
    request (an argument's quotes and comma: 3 bytes)."""
    texts = settings.max_script_bytes + nuget_config.MAX_BYTES + settings.max_stdin_bytes + settings.max_args_bytes
    return 6 * texts + 3 * settings.max_args + (16 << 10)


class BodyLimit:
    """Refuses a request body over `max_body_bytes` (413) before reading it all: by its declared
    length at once, a chunked one as it arrives. Without it a client could make a replica hold any
    amount (the script's own limit is checked only once the whole body is parsed)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = max_body_bytes(deps.get_services().settings)
        too_large = f"the request body is over {limit} bytes, more than any valid job needs"
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            return await JSONResponse(status_code=413, content={"message": too_large})(scope, receive, send)
        seen = 0

        async def bounded():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:  # FastAPI passes an HTTPException from reading the body on to the handlers
                raise StarletteHTTPException(413, too_large)
            return message

        await self.app(scope, bounded, send)


app.add_middleware(BodyLimit)


@app.exception_handler(RequestValidationError)
async def _invalid(_request: Request, exc: RequestValidationError):
    problems = []
    for e in exc.errors():
        msg = e.get("msg", "invalid")
        if e.get("type") == "string_pattern_mismatch":
            msg = "must not be blank, nor contain NUL characters"
        problems.append(f"{_field(e.get('loc', ()))}: {msg}")
    return JSONResponse(status_code=400, content={"message": "invalid request: " + "; ".join(problems)})


@app.exception_handler(StarletteHTTPException)
async def _http_error(_request: Request, exc: StarletteHTTPException):
    return JSONResponse(status_code=exc.status_code, content={"message": str(exc.detail)})


@app.exception_handler(Exception)
async def _internal(_request: Request, exc: Exception):
    log.exception("internal error")
    return JSONResponse(status_code=500, content={"message": "internal error; the details are in the service's logs"})


#: requests a replica takes at once: most of a replica's are long-polls, each an awaited event, so
#: Serve's default (5) let ten waiting clients hold every other request until a wait ended
MAX_ONGOING_REQUESTS = 1000


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=MAX_ONGOING_REQUESTS)
@serve.ingress(app)
class JobService:
    def __init__(self, settings: dict):
        logging.basicConfig(level=logging.INFO)
        cfg = Settings(**settings)
        store = JobStore(cfg.database_url)
        events = Events(cfg.redis_url)
        client = DispatcherClient(dispatcher(cfg, ray.get_runtime_context().get_node_id()))
        self.services = deps.Services(settings=cfg, store=store, dispatcher=client, events=events)
        deps.install(self.services)
        self.policies = asyncio.get_running_loop().create_task(policies.run_forever(self.services))


def build(settings: Settings):
    options = {"num_cpus": 0, **on_the_head()}  # on a head made for the API (cluster/node.py), if there is one
    return JobService.options(num_replicas=settings.serve_replicas, ray_actor_options=options).bind(settings.model_dump())
