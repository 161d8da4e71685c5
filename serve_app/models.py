"""Jobs: the table, the request the client sends and the shapes the API answers with.

JSON field names are camelCase, as in the original Java service.
"""

import json
import re
import uuid
from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Literal, Optional

from pydantic import (
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError, field_validator,
    model_serializer,
)
from pydantic.alias_generators import to_camel
from sqlmodel import Column, DateTime, Field as SQLField, Index, SQLModel, Text

from executors.limits import TABLE as LIMITS


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class JobStatus(str, Enum):
    """PENDING: accepted, waiting for a sandbox. RUNNING: its sandbox has started on a node.
    FINISHED: it ran; `result` says how it ended. REJECTED: it could not be run (no capacity in
    time, node lost, stale); `rejectedReason` says why."""

    PENDING = "PENDING"  #: accepted, waiting for a sandbox
    RUNNING = "RUNNING"  #: a node has started its sandbox
    FINISHED = "FINISHED"  #: ran; `result` says how it ended
    REJECTED = "REJECTED"  #: could not be run; `rejectedReason` says why

    @property
    def ended(self) -> bool:
        return self in (JobStatus.FINISHED, JobStatus.REJECTED)


class FinishedWith(str, Enum):
    """SUCCEEDED: exit code 0. FAILED: compile error, uncaught exception, non-zero exit code or
    out of memory. TIME_LIMIT_EXCEEDED: killed at the wall-clock limit."""

    SUCCEEDED = "SUCCEEDED"  #: exit code 0
    FAILED = "FAILED"  #: compile error, exception, non-zero exit, killed for memory
    TIME_LIMIT_EXCEEDED = "TIME_LIMIT_EXCEEDED"  #: killed at the wall-clock limit


def _without_none(data: dict, keys: tuple[str, ...]) -> dict:
    """Fields that came later are left out while unset: what was valid before reads as before."""
    for key in keys:
        if data.get(key) is None:
            data.pop(key, None)
    return data


class ApiModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


def _storable(text: str) -> str:
    """Text every database can store and every client can read: UTF-8 encodable, without NUL."""
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    return _unicode(text)


def _unicode(text: str) -> str:
    """Any text that UTF-8 can encode, NUL included: stored JSON-escaped, handed over framed."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return text


#: control characters (Unicode's Cc: C0, DEL, C1 with U+0085) and the line and paragraph separators:
#: what could end a log line, or start a forged one
CONTROL = r"\x00-\x1f\x7f-\x9f\u2028\u2029"
_CONTROL = re.compile(f"[{CONTROL}]")


def _no_control(value):
    """Refuses control characters with a message naming the first (the pattern alone would say
    only that it does not match)."""
    found = _CONTROL.search(value) if isinstance(value, str) else None
    if found:
        raise ValueError(f"must not contain control characters or line breaks (found U+{ord(found.group()):04X})")
    return value


NO_NUL = r"^[^\x00]*$"
NON_BLANK = r"^[^\x00]*[^\s\x00][^\x00]*$"  #: some non-space character, and no NUL (the schema says so too)
#: some non-space character, and no control character: text that goes into log lines
PRINTABLE_NON_BLANK = rf"^[^{CONTROL}]*[^\s{CONTROL}][^{CONTROL}]*$"
Storable = AfterValidator(_storable)
#: a client's identifier (senderId, requestId): it is logged, so one line of text
Identifier36 = Annotated[str, StringConstraints(min_length=1, max_length=36, pattern=PRINTABLE_NON_BLANK), Storable,
                         BeforeValidator(_no_control)]


def not_bool(value):
    """A number's validator: JSON `true` is not a number of megabytes (pydantic would take it as 1)."""
    if isinstance(value, bool):
        raise ValueError("must be a number")
    return value


def limit_bounds(name: str, *, capped: bool = True) -> dict[str, float]:
    """The bounds of the limit `name` (executors/limits.py) as Field's arguments: its minimum, and its
    maximum unless not capped (a job's own limit: its agent type's is its most, serve_app/plan.py)."""
    limit = LIMITS[name]
    least = {"gt" if limit.exclusive_minimum else "ge": limit.minimum}
    return {**least, "le": limit.maximum} if capped else least


#: the least of each limit a sandbox can have (the wall time: more than its minimum, 0)
LIMIT_MINIMUMS = {name: limit.minimum for name, limit in LIMITS.items() if not limit.exclusive_minimum}


def _job_limit(name: str, description: str):
    """A job's own limit `name`: none, or at least its minimum (and at most its agent type's, serve_app/plan.py)."""
    return Field(None, description=description, **limit_bounds(name, capped=False))


class JobLimits(ApiModel):
    """Lower limits for this job; each at most what its agent type allows (400 otherwise)."""

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_only(cls, v):
        return not_bool(v)

    wall_time_s: Optional[float] = _job_limit("wall_time_s", "wall-clock seconds")
    memory_mb: Optional[int] = _job_limit("memory_mb", "RAM in MiB (no swap)")
    cpus: Optional[float] = _job_limit("cpus", "CPU quota in cores")
    pids: Optional[int] = _job_limit("pids", "processes and threads")
    nofile: Optional[int] = _job_limit("nofile", "open files per process")
    disk_mb: Optional[int] = _job_limit("disk_mb", "the work directory's size in MiB")
    tmp_mb: Optional[int] = _job_limit("tmp_mb", "/tmp's size in MiB")
    output_bytes: Optional[int] = _job_limit("output_bytes", "cap of stdout and of stderr, each")


class JobConfig(ApiModel):
    """How the sandbox is set up for this job."""

    limits: Optional[JobLimits] = None
    network: Optional[Literal["none", "egress"]] = Field(
        None, description="none, or egress (public addresses only); at most what the agent type allows")
    nuget_config_xml: Optional[Annotated[str, StringConstraints(pattern=NO_NUL), Storable]] = Field(None, description="NuGet.Config XML naming the feeds for `#r \"nuget: ...\"`")


class Payload(ApiModel):
    script: Annotated[str, StringConstraints(min_length=1, pattern=NON_BLANK), Storable] = Field(
        description="C# script (.csx): usings, top-level statements, methods and types")
    agent_type: Annotated[str, StringConstraints(pattern=NO_NUL), Storable] = Field(description="platform to run on, e.g. linux-amd64-mono-6")
    job_config: Optional[JobConfig] = None
    stdin: Optional[Annotated[str, AfterValidator(_unicode)]] = Field(
        None, description="the script's standard input (Console.ReadLine(), Console.In.ReadToEnd()), any text; "
                          "at most MAX_STDIN_BYTES of UTF-8 (413). Absent: empty", examples=["3\n4\n"])
    args: Optional[list[Annotated[str, StringConstraints(pattern=NO_NUL), Storable]]] = Field(
        None, description="the script's `Args`, as `dotnet script main.csx -- a b` gives them; no NUL; "
                          "at most MAX_ARGS of them (400) and MAX_ARGS_BYTES in all (413)", examples=[["a", "b c"]])

    @model_serializer(mode="wrap")
    def _absent_stay_absent(self, handler):
        return _without_none(handler(self), ("stdin", "args"))


class JobRequest(ApiModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True,
        json_schema_extra={"examples": [
            {"requestId": "request-1", "senderId": "sender-1",
             "payload": {"script": 'Console.WriteLine("Hello");', "agentType": "linux-amd64-mono-6"}},
            {"requestId": "request-3", "senderId": "sender-1",
             "payload": {"script": 'var name = Console.ReadLine();\nConsole.WriteLine($"Hello {name}, {Args.Count} args");',
                         "agentType": "linux-amd64-mono-6", "stdin": "World\n", "args": ["a", "b c"]}},
            {"requestId": "request-2", "senderId": "sender-1",
             "payload": {"script": 'Console.WriteLine("Hello");', "agentType": "linux-amd64-mono-6",
                         "jobConfig": {"nugetConfigXml": (
                             '<?xml version="1.0" encoding="utf-8"?><configuration><packageSources>'
                             '<add key="feed" value="https://FEED/v3/index.json" /></packageSources></configuration>')}}},
        ]},
    )
    request_id: Identifier36 = Field(description=(
        "idempotency key, at most 36 characters, no control characters: a requestId the same sender "
        "repeats returns the existing job and does not run it again; another sender's is another job"))
    sender_id: Identifier36 = Field(description="who sends the job, at most 36 characters, no control characters")
    payload: Payload


class Diagnostic(ApiModel):
    """One of the compiler's errors and warnings (or a failed package restore's error)."""

    severity: Literal["error", "warning"]
    code: str = Field(examples=["CS0029"])
    file: Optional[str] = Field(None, description="the script's file, e.g. script.csx; null: no place", examples=["script.csx"])
    line: Optional[int] = None
    column: Optional[int] = None
    message: str = Field(examples=["Cannot implicitly convert type `string' to `int'"])


class Usage(ApiModel):
    compile_ms: Optional[int] = Field(None, description="the compile's wall time; 0: a compiled script was reused")
    run_ms: int = Field(description="from when the sandbox got the job (or its packages' restore began) to its end")
    cpu_ms: Optional[int] = Field(None, description="CPU time of the sandbox (gVisor included), from its cgroup; "
                                                    "null where it could not be read")
    memory_peak_kb: Optional[int] = Field(None, description="the sandbox's peak memory, from its cgroup")


class JobResult(ApiModel):
    """How a run ended. The first three fields are the original service's."""

    finished_with: FinishedWith
    stdout: str = Field(description="the script's standard output (UTF-8), capped")
    stderr: str = Field(description="compiler messages, exceptions and the script's standard error, capped")
    exit_code: Optional[int] = Field(None, description="the process's exit code; null when killed at the time limit")
    stdout_truncated: bool = Field(False, description="stdout went over the cap; the rest was dropped")
    stderr_truncated: bool = Field(False, description="stderr went over the cap; the rest was dropped")
    out_of_memory: bool = Field(False, description="the sandbox was killed for going over its memory limit")
    limit_exceeded: Optional[str] = Field(
        None, description="the limit the run hit: WALL_TIME (killed), MEMORY (killed) or OUTPUT (output dropped)")
    signal: Optional[int] = Field(None, description="the signal that ended the process, when one did (e.g. 9)")
    started_at: Optional[datetime] = Field(None, description="when the sandbox started")
    finished_at: Optional[datetime] = Field(None, description="when the sandbox ended")
    duration_ms: Optional[int] = Field(None, description="finishedAt - startedAt in milliseconds")
    phase: Optional[Literal["COMPILE", "RUN"]] = Field(
        None, description="COMPILE: the script did not compile (or its packages did not restore) and never ran; "
                          "RUN: it compiled and ran. Absent where the agent type's runner does not tell")
    diagnostics: Optional[list[Diagnostic]] = Field(
        None, description="the compiler's errors and warnings as data (they are on stderr too); absent as phase")
    usage: Optional[Usage] = None

    @model_serializer(mode="wrap")
    def _absent_stay_absent(self, handler):
        return _without_none(handler(self), ("phase", "diagnostics", "usage"))


#: what a requestId is unique within: idempotency is per sender, never global (a guessed requestId
#: answered with another sender's job). API keys, once they exist, add their column here (NOT NULL:
#: a unique index takes NULLs as all different); the store moves an existing database's index along.
IDEMPOTENCY_SCOPE = ("sender_id",)
IDEMPOTENCY_COLUMNS = (*IDEMPOTENCY_SCOPE, "request_id")
IDEMPOTENCY_INDEX = "ux_job_" + "_".join(IDEMPOTENCY_COLUMNS)


class Job(SQLModel, table=True):
    #: the unique index makes idempotency hold under races
    __table_args__ = (Index(IDEMPOTENCY_INDEX, *IDEMPOTENCY_COLUMNS, unique=True),)

    id: uuid.UUID = SQLField(default_factory=uuid.uuid4, primary_key=True)
    request_id: str = SQLField(max_length=36)
    sender_id: str = SQLField(max_length=36)
    agent_type: str = SQLField(max_length=64)
    request_json: str = SQLField(sa_column=Column(Text, nullable=False))
    status: JobStatus = SQLField(default=JobStatus.PENDING, index=True)
    rejected_reason: Optional[str] = None
    node_id: Optional[str] = None  #: the Ray node that runs or ran it (to stop its sandbox)
    #: handed to Ray by the dispatcher and not yet ended: the database is the queue, this its cursor
    dispatched: bool = SQLField(default=False, index=True)
    #: runs started: a run lost with its node is tried once more, never more
    attempts: int = SQLField(default=0)
    result_json: Optional[str] = SQLField(default=None, sa_column=Column(Text))
    created_at: datetime = SQLField(default_factory=utcnow, sa_type=DateTime(timezone=True))
    #: last status change: staleness and the retention of unfetched results count from it
    updated_at: datetime = SQLField(default_factory=utcnow, index=True, sa_type=DateTime(timezone=True))
    #: first time a client read the result: the retention of fetched results counts from it
    fetched_at: Optional[datetime] = SQLField(default=None, index=True, sa_type=DateTime(timezone=True))

    def request(self) -> JobRequest:
        try:
            return JobRequest.model_validate_json(self.request_json)
        except ValidationError:
            # stored before identifiers were checked for control characters: shown, and run, with
            # each replaced by U+FFFD (same length, never blank)
            data = json.loads(self.request_json)
            for key in ("requestId", "senderId"):
                if isinstance(data.get(key), str):
                    data[key] = _CONTROL.sub("\ufffd", data[key])
            return JobRequest.model_validate(data)

    def result(self) -> Optional[JobResult]:
        return JobResult.model_validate_json(self.result_json) if self.result_json else None


class JobCreated(ApiModel):
    job_id: uuid.UUID = Field(description="the job's id, for GET /jobs/{id}")


class JobView(ApiModel):
    """A job: what was asked, where it is, and how it ended."""

    job_id: uuid.UUID
    request: JobRequest
    status: JobStatus
    rejected_reason: Optional[str] = Field(None, description="why a REJECTED job was not run")
    result: Optional[JobResult] = Field(None, description="null until the job is FINISHED")


class JobStatusView(ApiModel):
    job_id: uuid.UUID
    status: JobStatus
    rejected_reason: Optional[str] = None


class JobRequestView(ApiModel):
    job_id: uuid.UUID
    request: JobRequest


class JobResultView(ApiModel):
    job_id: uuid.UUID
    result: Optional[JobResult] = None


class AgentLimits(ApiModel):
    wall_time_s: float
    memory_mb: int
    cpus: float
    pids: int
    nofile: int
    disk_mb: int
    tmp_mb: int
    output_bytes: int


class AgentTypeView(ApiModel):
    """A platform jobs can ask for (`payload.agentType`), and what it offers now."""

    name: str = Field(description="what `payload.agentType` names", examples=["linux-amd64-mono-6"])
    description: str
    runtime: str = Field(examples=["Mono"])
    runtime_version: str = Field(examples=["6.8"])
    language_version: str = Field(description="the C# language version scripts are compiled as", examples=["7.2"])
    default_limits: AgentLimits = Field(description="what a job runs with unless its jobConfig.limits lowers them")
    max_limits: AgentLimits = Field(description="the most a job may ask for (jobs may only lower their type's limits)")
    network_modes: list[Literal["none", "egress"]] = Field(description="what jobConfig.network may be")
    nuget: bool = Field(description='whether `#r "nuget: Id, Version"` works')
    stdin: bool = Field(True, description="whether payload.stdin and payload.args reach the script")
    nodes: int = Field(description="live nodes that offer it")
    slots: int = Field(description="sandboxes that can run at once, on all those nodes")
    free_slots: int = Field(description="of which free now")


class Message(BaseModel):
    """An error a person can act on."""

    message: str
