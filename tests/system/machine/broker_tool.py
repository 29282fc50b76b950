"""Run by the driver inside the machine with the installed virtualenv's Python
(/opt/utilitarian/bin/python): publishes tasks and reads queue depths through the installed
utilitarian and the server's /etc/utilitarian/utilitarian.toml.

    broker_tool.py publish TASK QUEUE COUNT ARGS_JSON   -> JSON list of task ids
    broker_tool.py depth QUEUE...                       -> JSON {queue: messages}
"""

from __future__ import annotations

import json
import sys

from utilitarian import queues
from utilitarian.app import App, TaskCall
from utilitarian.broker.connection import settings_from_config
from utilitarian.broker.topology import ensure_topology, inspect_queues
from utilitarian.config import load_config


def main(argv: list[str]) -> int:
    config = load_config(None)
    settings = settings_from_config(config)
    if argv[0] == "publish":
        task, queue, count, args = argv[1], argv[2], int(argv[3]), json.loads(argv[4])
        ensure_topology(settings)
        app = App(config, settings=settings, name="system test")
        try:
            ids = app.send_tasks([TaskCall(task, args, queue=queue) for _ in range(count)], timeout=30.0)
        finally:
            app.close()
        print(json.dumps(ids))
        return 0
    if argv[0] == "depth":
        names = [queues.DEAD_LETTER if q == "dead" else queues.resolve(q) or q for q in argv[1:]]
        states = inspect_queues(settings, names, attempts=1)
        print(json.dumps({"dead" if s.name == queues.DEAD_LETTER else queues.short_name(s.name): s.messages
                          for s in states}))
        return 0
    print(f"unknown command {argv[0]!r}", file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
