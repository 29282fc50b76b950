"""ACME's own tasks: every worker imports this module (utilitarian.tasks entry point)."""

from __future__ import annotations

import os

from utilitarian import queues
from utilitarian.tasks import Reject, task


@task("acme.write_note", queue=queues.DEFAULT, max_retries=3, retry_backoff=1.0, retry_for=(OSError,))
def write_note(path: str, text: str) -> dict:
    """Append one line to a file. A full disk is retried with backoff; a bad argument never is."""
    if not os.path.isabs(path) or "\n" in text:
        raise Reject("path must be absolute and text one line")   # dead-lettered with the reason
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text + "\n")
    return {"written": len(text)}
