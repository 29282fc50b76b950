"""A worker's control agent: a thread in each of the worker's children, with a broker connection
of its own, that answers fleet control for the whole worker. The children's agents consume one
queue of the worker's, bound to the control exchange, so each request reaches exactly one of them;
it answers by asking the master over its local control socket (the same path `utilitarian status`
uses), so the master's loop stays a pure supervision loop that never waits on the broker.

Why threads in the children, not a process of its own: every process of a worker tree maps the
interpreter and everything the master imported before forking, so a forked agent cost 29 MiB of
RSS (13 MiB PSS) to hold one connection; a thread costs a connection and a stack. Why all children
and one shared queue: when a child exits (recycled, crashed, shrunk) its siblings go on answering,
with no hand-over and no word from the master. The periodic duties (the roster announcement, queue
depths for the master's metrics) fall to one child, the first running one in the master's status
(ready once, not draining: a worker whose queues are all drained still reports), so the broker
sees them once per worker. A child starts its agent once it consumes and
stops it last, after its drain; an agent says goodbye on the roster only when the master itself is
stopping."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

from utilitarian.fleet.protocol import ANNOUNCE_INTERVAL, CONTROL_EXCHANGE, ROSTER, Member, Request, declare_control, \
    reply_body

log = logging.getLogger(__name__)
TICK = 0.5  # longest wait on the broker between looks at the stop flag and the master
MASTER_TIMEOUT = 2.0  # the master answers its socket within ms; a stopped master does not at all
OBSERVE_INTERVAL = 10.0  # seconds between looks at the master's status (who is on duty) and queue depths
FAILURE_BACKOFF_CAP = 30.0  # an agent thread that failed on a bug starts again after at most this
# Deleted with its last consumer (auto-delete); x-expires removes one that never got a consumer (a
# child killed between declare and consume). Classic and transient whatever the vhost's default
# queue type: a quorum queue can be neither, and a transient queue goes with a failed cluster node.
CONTROL_QUEUE_ARGUMENTS = {"x-queue-type": "classic", "x-expires": 600_000}


@dataclass(frozen=True)
class ControlPost:
    """What a child needs to run the worker's control agent, built by the master before the fork."""

    member: Member
    control_path: str


def control_queue(member: Member) -> str:
    """The worker's control queue, shared by its children; the master's pid in the name keeps a
    restarted worker (or a namesake elsewhere) from answering for this one."""
    return f"{CONTROL_EXCHANGE}.agent.{member.name}.{member.host}.{member.pid}"


def child_on_duty(status: dict) -> int | None:
    """The child on duty for the periodic work: the first running one (the master lists children by
    pool and age; every running child was ready once, so it runs an agent)."""
    return next((c.get("pid") for c in status.get("children") or () if c.get("state") == "running"), None)


class ControlAgent:
    def __init__(self, settings, member: Member, control_path: str, *, master_pid: int, clock=time.time):
        self.settings = settings
        self.member = member
        self.control_path = control_path
        self.master_pid = master_pid
        self.clock = clock
        self.stop = False
        self.connection = None
        self.channel = None
        self.next_announce = 0.0
        self.next_observe = 0.0
        self.answered = 0
        self.queue = control_queue(member)
        self.on_duty = False  # announce on the roster and observe queues for the whole worker
        self.last_announce = float("-inf")
        self.draining = False  # our child drains: answer to the end, but announce "up" no more
        self.thread: threading.Thread | None = None

    @classmethod
    def for_child(cls, settings, post: ControlPost, *, master_pid: int) -> "ControlAgent":
        return cls(settings, post.member, post.control_path, master_pid=master_pid)

    # --- the child's handle -------------------------------------------------------------------
    def start(self) -> "ControlAgent":
        self.thread = threading.Thread(target=self.run_forever, name="control-agent", daemon=True)
        self.thread.start()
        return self

    def drain(self) -> None:
        self.draining = True

    def finish(self, timeout: float = 3.0) -> None:
        """Last thing the child does before exiting: goodbye if due, close, join (bounded)."""
        self.stop = True
        if self.thread is not None:
            self.thread.join(timeout)

    def run_forever(self) -> None:
        """The thread's body: run() returns on stop; a bug is logged and run again with backoff."""
        failures = 0
        while not self.stopping():
            try:
                self.run()
                return
            except Exception:
                failures += 1
                delay = min(FAILURE_BACKOFF_CAP, 2.0 ** failures)
                log.exception("control agent failed; starting it again in %.0fs", delay)
                self.close()
                self.sleep(delay)

    def run(self) -> None:
        from utilitarian.broker.connection import Backoff
        from utilitarian.errors import UtilitarianError

        backoff = Backoff(first=0.5, cap=self.settings.retry_backoff_max)
        last_problem = None
        while not self.stopping():
            try:
                self.connect()
                if last_problem:
                    log.info("control agent connected again to %s", self.settings.where)
                last_problem = None
                backoff.reset()
                self.serve()
            except UtilitarianError as exc:
                delay = backoff.next_delay()
                if str(exc) != last_problem:  # once per new problem, not every retry
                    log.warning("control agent: %s; retrying (every %.0fs at most); `status --all` lists this "
                                "worker as silent unless a sibling child answers", exc, self.settings.retry_backoff_max)
                last_problem = str(exc)
                self.close()
                self.tell_master({"cmd": "observed", "connected": False, "why": str(exc)})
                self.sleep(delay)
        self.say_goodbye()
        self.close()

    def stopping(self) -> bool:
        return self.stop or os.getppid() != self.master_pid

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping() and time.monotonic() < deadline:
            time.sleep(min(TICK, deadline - time.monotonic()))

    def connect(self) -> None:
        from utilitarian.broker.connection import connect_blocking, translate

        self.connection = connect_blocking(self.settings, name=f"utilitarian control {self.member.name}",
                                           attempts=1)
        try:
            channel = self.connection.channel()
            declare_control(channel)
            channel.queue_declare(self.queue, auto_delete=True, arguments=CONTROL_QUEUE_ARGUMENTS)
            channel.queue_bind(self.queue, CONTROL_EXCHANGE)
            channel.basic_consume(self.queue, self.on_request, auto_ack=True)
        except Exception as exc:
            raise translate(exc, self.settings) from None
        self.channel = channel
        self.next_observe = 0.0
        # Announced at once, by whichever child connects: a new worker is listed without waiting
        # for the one on duty (a few duplicates on the roster are harmless: the newest counts).
        self.next_announce = float("inf") if self.draining else 0.0

    def serve(self) -> None:
        from utilitarian.broker.connection import translate

        while not self.stopping():
            try:
                if self.clock() >= self.next_announce and not self.draining:
                    self.announce("up")
                if self.clock() >= self.next_observe:
                    self.look_around()
                self.connection.process_data_events(time_limit=TICK)
            except Exception as exc:  # pika's many types: one translation at this boundary
                raise translate(exc, self.settings) from None

    def look_around(self) -> None:
        """Who is on duty, from the master's status; the one on duty reads the queue depths."""
        self.next_observe = self.clock() + OBSERVE_INTERVAL
        status = self.tell_master({"cmd": "status"}) or {}
        was, self.on_duty = self.on_duty, child_on_duty(status) == os.getpid()
        if self.on_duty and not was:
            self.next_announce = self.last_announce + ANNOUNCE_INTERVAL
        elif not self.on_duty:
            self.next_announce = float("inf")
        if self.on_duty:
            self.observe_queues(status)

    def observe_queues(self, status: dict) -> None:
        """Depth and consumers of the worker's queues and the dead-letter queue, by passive
        declare on a channel of their own (a missing queue closes it), handed to the master:
        its metrics page shows them without the master ever asking the broker."""
        import pika.exceptions

        from utilitarian import queues as q

        names = sorted({n for p in status.get("pools") or () for n in p.get("configured_queues") or p.get("queues")
                        or ()} | {q.DEAD_LETTER})
        depths = []
        channel = self.connection.channel()
        for name in names:
            try:
                ok = channel.queue_declare(name, passive=True)
                depths.append([name, ok.method.message_count, ok.method.consumer_count])
            except pika.exceptions.ChannelClosedByBroker:
                depths.append([name, None, None])
                channel = self.connection.channel()
        if channel.is_open:
            channel.close()
        self.tell_master({"cmd": "observed", "connected": True, "queues": depths, "pid": os.getpid()})

    def tell_master(self, request: dict) -> dict | None:
        from utilitarian.supervisor.control import query

        try:
            return query(self.control_path, request, timeout=MASTER_TIMEOUT)
        except (OSError, ValueError) as exc:
            log.debug("control agent: master did not take %s: %s", request.get("cmd"), exc)
            return None

    def announce(self, event: str) -> None:
        import pika

        self.channel.basic_publish("", ROSTER, self.member.announcement(event, self.clock()),
                                   pika.BasicProperties(content_type="application/json"))
        self.last_announce = self.clock()
        self.next_announce = self.last_announce + ANNOUNCE_INTERVAL if self.on_duty else float("inf")

    def say_goodbye(self) -> None:
        """Only when the master stops: a master that died (and is restarted by systemd, or not)
        stays on the roster and is listed as silent until it answers again, and the siblings of a
        child that is recycled or shrunk go on answering. Every child's agent says it: the first
        word of a stopping worker counts, the rest are harmless repeats."""
        if os.getppid() != self.master_pid or self.channel is None or not self.channel.is_open:
            return
        status = self.tell_master({"cmd": "status"}) or {}
        if not str(status.get("state", "")).startswith("stopping"):
            return
        try:
            self.announce("down")
        except Exception as exc:  # best effort: the roster forgets a member by age anyway
            log.debug("control agent: goodbye not published: %s", exc)

    def on_request(self, channel, _method, props, body) -> None:
        import pika

        from utilitarian.supervisor.control import query

        request = Request.decode(body)
        now = self.clock()
        if request is None or not props.reply_to:
            log.warning("control agent: ignoring an unreadable control message")
            return
        if request.expired(now):  # e.g. queued while this process was stopped: too late to act on
            log.info("control agent: dropping %s request %s, %.1fs past its deadline", request.cmd, request.id,
                     now - request.deadline)
            return
        if not self.member.targeted(request):
            return
        timeout = max(0.1, min(MASTER_TIMEOUT, request.deadline - now))
        try:
            answer = query(self.control_path, request.local(), timeout=timeout)
        except (OSError, ValueError) as exc:
            body = reply_body(self.member, request.id, doc={"silent": True},
                              error=f"master not answering its control socket: {exc}")
        else:
            error = answer.get("error") if isinstance(answer, dict) else "unreadable answer"
            body = reply_body(self.member, request.id, doc=answer if not error else None, error=error)
        channel.basic_publish("", props.reply_to, body,
                              pika.BasicProperties(correlation_id=props.correlation_id or request.id,
                                                   content_type="application/json"))
        self.answered += 1

    def close(self) -> None:
        connection, self.connection, self.channel = self.connection, None, None
        if connection is None:
            return
        try:
            if connection.is_open:
                connection.close()
        except Exception:  # a broken connection raises on close; nothing left to do with it
            log.debug("control agent: error closing its connection", exc_info=True)

