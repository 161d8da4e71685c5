"""What the endpoints need, set up once per replica by the Serve deployment.

Serve hands each replica its own copy of the FastAPI app, so the replica's objects live here,
in the replica's process, rather than on `app.state` of the module's app.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from serve_app.config import Settings
from serve_app.events import Events
from serve_app.store import JobStore

if TYPE_CHECKING:  # the endpoints need its handle, not the actor's module (Ray, the executors)
    from serve_app.dispatch import DispatcherClient


@dataclass
class Services:
    settings: Settings
    store: JobStore
    dispatcher: DispatcherClient
    events: Events


_services: Services | None = None


def install(services: Services) -> None:
    global _services
    _services = services


def get_services() -> Services:
    if _services is None:
        raise RuntimeError("the replica has not been set up")
    return _services
