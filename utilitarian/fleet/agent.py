"""A worker's control agent: a small process forked by the master that holds the worker's only
broker connection for fleet control. It binds an exclusive, auto-delete queue to the control
exchange, announces the worker on the roster, and answers each request by asking the master over
its local control socket (the same path `utilitarian status` uses), so the master's loop stays a
pure supervision loop that never waits on the broker. It stops with its master (parent-death
signal, or a new parent), and says goodbye on the roster when it can."""

from __future__ import annotations

import logging
import os
import signal
import time

from utilitarian.fleet.protocol import ANNOUNCE_INTERVAL, CONTROL_EXCHANGE, ROSTER, Member, Request, declare_control, \
    reply_body

log = logging.getLogger(__name__)
TICK = 0.5  # longest wait on the broker between looks at the stop flag and the master
MASTER_TIMEOUT = 2.0  # the master answers its socket within ms; a stopped master does not at all
OBSERVE_INTERVAL = 10.0  # seconds between queue depth readings handed to the master for its metrics


class ControlAgent:
    def __init__(self, settings, member: Member, control_path: str, *, master_pid: int, clock=time.time):
        self.settings = settings
        self.member = member
        self.control_path = control_path
        self.master_pid = master_pid
        self.clock = clock
        self.stop = False
        self.orphaned = False  # the master died: no goodbye, the worker is not stopping on purpose
        self.connection = None
        self.channel = None
        self.next_announce = 0.0
        self.next_observe = 0.0
        self.answered = 0

    def handle_term(self, signum, frame) -> None:
        self.stop = True

    def handle_master_gone(self, signum, frame) -> None:
        self.stop = self.orphaned = True

    def run(self) -> int:
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
                    log.warning("control agent: %s; `status --all` lists this worker as silent; retrying "
                                "(every %.0fs at most)", exc, self.settings.retry_backoff_max)
                last_problem = str(exc)
                self.close()
                self.tell_master({"cmd": "observed", "connected": False, "why": str(exc)})
                self.sleep(delay)
        self.say_goodbye()
        self.close()
        return 0

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
            queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
            channel.queue_bind(queue, CONTROL_EXCHANGE)
            channel.basic_consume(queue, self.on_request, auto_ack=True)
        except Exception as exc:
            raise translate(exc, self.settings) from None
        self.channel = channel
        self.next_announce = 0.0

    def serve(self) -> None:
        from utilitarian.broker.connection import translate

        while not self.stopping():
            try:
                if self.clock() >= self.next_announce:
                    self.announce("up")
                if self.clock() >= self.next_observe:
                    self.observe_queues()
                self.connection.process_data_events(time_limit=TICK)
            except Exception as exc:  # pika's many types: one translation at this boundary
                raise translate(exc, self.settings) from None

    def observe_queues(self) -> None:
        """Depth and consumers of the worker's queues and the dead-letter queue, by passive
        declare on a channel of their own (a missing queue closes it), handed to the master:
        its metrics page shows them without the master ever asking the broker."""
        import pika.exceptions

        from utilitarian import queues as q

        self.next_observe = self.clock() + OBSERVE_INTERVAL
        status = self.tell_master({"cmd": "status"}) or {}
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
        self.tell_master({"cmd": "observed", "connected": True, "queues": depths})

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
        self.next_announce = self.clock() + ANNOUNCE_INTERVAL

    def say_goodbye(self) -> None:
        """Only when the master stops us: a master that died (and is restarted by systemd, or not)
        stays on the roster and is listed as silent until it answers again."""
        if self.orphaned or os.getppid() != self.master_pid or self.channel is None or not self.channel.is_open:
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


def agent_main(settings, member: Member, control_path: str, loglevel: str, log_format: str,
               close_fds: list[int]) -> None:
    """Entry point in the forked process; never returns."""
    from utilitarian.errors import EX_SOFTWARE

    code = EX_SOFTWARE
    try:
        from utilitarian.supervisor.child import set_process_name

        set_process_name("util-control")  # first: tools that count a master's worker children skip it
        # The master's signal wake-up fd came with the fork and is closed below: a signal written
        # to it would print "Exception ignored ... Bad file descriptor" with a traceback.
        signal.set_wakeup_fd(-1)
        for fd in close_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        from utilitarian.log import setup_logging
        from utilitarian.supervisor.child import MASTER_GONE_SIGNAL, PR_SET_PDEATHSIG, _prctl

        agent = ControlAgent(settings, member, control_path, master_pid=os.getppid())
        signal.signal(signal.SIGTERM, agent.handle_term)
        signal.signal(MASTER_GONE_SIGNAL, agent.handle_master_gone)
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGQUIT, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        _prctl(PR_SET_PDEATHSIG, int(MASTER_GONE_SIGNAL))
        setup_logging(loglevel, fmt=log_format, process_name="control")
        code = agent.run()
    except BaseException:  # last resort: the sidecar restarts us with backoff
        logging.getLogger(__name__).exception("control agent failed")
    finally:
        from utilitarian.log import flush_all

        flush_all()
        os._exit(code)
