"""The service's settings: read once from the environment (or .env), failing fast on bad values."""

from functools import lru_cache
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from cluster.agent_types import CATALOGUE


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    #: any SQLAlchemy URL; PostgreSQL in production, an SQLite file as the embedded default
    database_url: str = "sqlite:///./dotnet-scripts.db"
    #: where the REST API listens (the original service used 8080)
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    #: Serve replicas of the API; they share state only through the database
    serve_replicas: int = Field(1, ge=1, le=64)
    #: Ray cluster to join; empty starts a local head that offers `local_slots` of each agent type
    ray_address: str = ""
    #: sandbox slots of each enabled agent type on the local head
    local_slots: int = Field(2, ge=0, le=64)
    #: agent types this deployment accepts (comma separated); must be in the catalogue
    agent_types: Annotated[list[str], NoDecode] = ["linux-amd64-mono-6"]
    #: container runtime for sandboxes; "runc" shares the host kernel: development only
    sandbox_runtime: str = "runsc"
    #: limits of every sandbox
    wall_time_s: float = Field(60.0, gt=0, le=3600)
    memory_mb: int = Field(512, ge=64, le=65536)
    cpus: float = Field(1.0, gt=0, le=64)
    pids: int = Field(128, ge=16, le=65536)
    nofile: int = Field(256, ge=32, le=1 << 20)
    disk_mb: int = Field(64, ge=1, le=1 << 20)
    tmp_mb: int = Field(16, ge=1, le=1 << 20)
    output_bytes: int = Field(1 << 20, ge=1024, le=64 << 20)
    #: largest accepted script, in bytes of UTF-8
    max_script_bytes: int = Field(256 << 10, ge=1, le=16 << 20)

    @field_validator("agent_types", mode="before")
    @classmethod
    def _split(cls, v):
        return [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v

    @field_validator("agent_types")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [t for t in v if t not in CATALOGUE]
        if unknown or not v:
            raise ValueError(f"unknown agent types {unknown}; the catalogue has {sorted(CATALOGUE)}")
        return v

    @field_validator("sandbox_runtime")
    @classmethod
    def _runtime(cls, v: str) -> str:
        if v not in ("runsc", "runc"):
            raise ValueError("sandbox_runtime must be runsc (gVisor) or runc (development only)")
        return v


@lru_cache
def get_settings() -> Settings:
    return Settings()
