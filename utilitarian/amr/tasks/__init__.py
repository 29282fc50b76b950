"""The AMR pipeline's tasks, one module per queue family. Imported by every worker (the Registry
collects the `@task` functions named here), so module imports stay light: no protocol drivers."""

from utilitarian.amr.tasks.cleanup import apply_retention, publish_outbox, release_stale_blocks
from utilitarian.amr.tasks.commits import (promote_staged_meter_readings, record_task_run, save_meter_readings,
                                           save_meter_system_events)
from utilitarian.amr.tasks.dispatch import dispatch_schedule
from utilitarian.amr.tasks.execute import execute_meter_task
from utilitarian.amr.tasks.external import post_meter_readings, publish_meter_readings

__all__ = ["apply_retention", "publish_outbox", "release_stale_blocks", "promote_staged_meter_readings", "record_task_run",
           "save_meter_readings", "save_meter_system_events", "dispatch_schedule", "execute_meter_task",
           "post_meter_readings", "publish_meter_readings"]
