"""The Ray task that runs one job on a node of its agent type.

It is a streaming generator: its first item says the sandbox is starting on this node (the
service marks the job RUNNING), its second is the outcome. Both travel through the object store.
"""

import logging
from dataclasses import replace
from datetime import datetime, timezone

import ray

from executors.nuget.restore import restore
from executors.nuget.spec import NuGetSpec, RestoreError, references
from executors.pool import run_pooled
from executors.spec import PoolSpec
from executors.reaper import dead_ray_nodes, reap
from executors.spec import Compiled, Outcome, SandboxError, SandboxSpec
from executors.sandbox import run_sandbox, remove_job_sandbox

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0, max_retries=0, num_returns="streaming")
def run_job(spec: SandboxSpec, script: str, pool: PoolSpec | None = None, nuget: NuGetSpec | None = None,
            head: bytes = b""):
    # `head`: what the runner reads ahead of the script (the job's args and stdin; serve_app/plan.py)
    # num_cpus=0: the agent-type resource (one unit per sandbox slot) bounds concurrency, not CPUs
    node_id = ray.get_runtime_context().get_node_id()
    yield {"event": "RUNNING", "node_id": node_id}
    spec = replace(spec, node_id=node_id)
    if spec.attempt > 1:  # the lost run's container, if its node was this machine in an earlier life
        remove_job_sandbox(spec.job_id)
    started = datetime.now(timezone.utc)
    try:
        refs = references(script) if nuget is not None else []
        if refs:  # its packages, restored here: mounted read-only in a sandbox of its own, or lent to a pooled one
            with restore(refs, nuget) as restored:
                spec = replace(spec, mounts=restored.mounts(), references=restored.references())
                outcome = _run(spec, script, pool if pool is not None and pool.packages_dir else None, head)
                if restored.warnings:
                    outcome = replace(outcome, stderr="\n".join(restored.warnings) + "\n" + outcome.stderr)
        else:
            outcome = _run(spec, script, pool, head)
    except RestoreError as e:  # the script's packages: its own failure, told on its stderr
        outcome = Outcome(exit_code=1, stdout="", stderr=f"{e}\n", stdout_truncated=False, stderr_truncated=False,
                          timed_out=False, out_of_memory=False, started_at=started,
                          finished_at=datetime.now(timezone.utc), compiled=Compiled("failed", 0, f"{e}\n"))
    except SandboxError as e:
        yield {"event": "ERROR", "reason": str(e)}
        return
    except Exception:  # ours, after the script may have run: an error, never a lost run tried again
        log.exception("job %s: the run failed", spec.job_id)
        yield {"event": "ERROR", "reason": "the run failed on its node (see the node's log)"}
        return
    yield {"event": "FINISHED", "outcome": outcome}


def _run(spec: SandboxSpec, script: str, pool: PoolSpec | None, head: bytes = b"") -> Outcome:
    if pool is not None and pool.size != 0:  # a pre-started sandbox from this node's pool
        outcome = run_pooled(spec, script, pool, head)
        if outcome is not None:
            return outcome
    return run_sandbox(spec, script, head)  # a sandbox of its own


@ray.remote(num_cpus=0, max_retries=2)
def remove_job_sandbox_on_node(job_id: str) -> None:
    """Kills and removes a job's container; scheduled onto the node that runs it."""
    remove_job_sandbox(job_id)


@ray.remote(num_cpus=0, max_retries=0)
def reap_node() -> list[str]:
    """Removes this node's orphaned sandboxes, those of nodes that died included."""
    return reap(dead_nodes=dead_ray_nodes())
