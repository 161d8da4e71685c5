"""Each node's pool of pre-started sandboxes (actor.py), the compiled scripts it keeps
(compiled_cache.py) and the packages it lends (packages.py)."""

from executors.pool.actor import (
    GVISOR_CLOCK_S, MAX_IDLE_S, NAMESPACE, PER_SLOT, REFILL_AFTER_S, SandboxPool, pool_for, pool_name, refill_now,
    run_pooled, template,
)
from executors.pool.compiled_cache import CompiledCache, packages_digest
from executors.pool.packages import lend_packages

__all__ = ["GVISOR_CLOCK_S", "MAX_IDLE_S", "NAMESPACE", "PER_SLOT", "REFILL_AFTER_S", "SandboxPool", "pool_for",
           "pool_name", "refill_now", "run_pooled", "template", "CompiledCache", "packages_digest", "lend_packages"]
