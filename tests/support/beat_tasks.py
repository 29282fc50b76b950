"""A task module for beat tests, loaded via `[worker] imports = ["support.beat_tasks"]`."""

from __future__ import annotations

from utilitarian import queues
from utilitarian.tasks import task


@task("beat_test.tick", queue=queues.AMR, max_retries=0)
def tick(slot: str | None = None, **kwargs) -> str | None:
    """Routed to the amr queue by its decorator, so a test sees the registry's route used."""
    return slot
