"""The beat process loop: contend for the lock, lead (plan, commit fires with state, sleep to the
next slot) or wait as a standby, and fail closed on any broker error. Signal handlers only call
`request_stop`; the loop acts. Wall time (injected `clock`) decides slots, monotonic time sleeps."""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import socket
import time
from dataclasses import dataclass
from typing import Callable, Collection, Sequence

from utilitarian.beat.fires import outgoing_fire, slot_iso, task_id_for
from utilitarian.beat.lock import BeatConnection, BeatEvent
from utilitarian.beat.schedule import ON_TIME, Entry, Plan, next_due, plan
from utilitarian.beat.state import BeatState, encode_state
from utilitarian.broker.connection import Backoff, BrokerSettings
from utilitarian.errors import EX_SOFTWARE, AuthenticationRefused, BrokerUnavailable, TopologyError, UtilitarianError

log = logging.getLogger(__name__)

UTC = dt.timezone.utc
TICK = 0.2  # longest sleep between looks at the stop request: TERM hand-over stays well under 1 s
JUMP_THRESHOLD = 1.0  # wall and monotonic elapsed differing by more than this is a clock jump
ANNOUNCE_INTERVAL = 5.0  # how often a leader tells standbys who holds the lock (for their STATUS)
LOG_EACH_FIRE = 10  # a catch-up burst larger than this is logged as one line


@dataclass(frozen=True)
class Prepared:
    """The plan of the next slot, made just before it (see Beat.prepare)."""

    slot: dt.datetime
    base: BeatState  # the state it was planned from; stale once that changes
    plan: Plan
    outgoing: tuple
    state_body: bytes


class Beat:
    """One beat process: `run()` until `request_stop()`; the role moves between disconnected,
    standby and leader, and only a leader with an open lock channel ever publishes a fire."""

    def __init__(self, settings: BrokerSettings, entries: Sequence[Entry], *, beat_config,
                 disabled: Collection[str] = (), notifier=None, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, identity: str | None = None):
        self.settings = settings
        self.entries = list(entries)
        self.disabled = frozenset(disabled)
        self.cfg = beat_config
        self.notifier = notifier
        self.clock = clock
        self.monotonic = monotonic
        self.identity = identity or f"{socket.gethostname()}:{os.getpid()}"
        self.stop: str | None = None  # None | "term": set by signal handlers, read by the loop
        self.role = "disconnected"  # "disconnected" | "standby" | "leader"
        self.conn: BeatConnection | None = None
        self.term = 0  # leaderships taken by this process; with identity it names who fired
        self.leader_since: dt.datetime | None = None
        self.standby_since: dt.datetime | None = None
        self.holder: BeatEvent | None = None
        self.state = BeatState()
        self.next: tuple[dt.datetime, Entry] | None = None
        self.prepared: Prepared | None = None
        self.next_try = 0.0
        self.contend_now = False
        self.next_announce = 0.0
        self.next_watchdog = 0.0
        self.ready_sent = False
        self.ever_connected = False
        self.last_clock: tuple[float, float] | None = None
        self.fired = 0
        self.last_error: str | None = None  # why the connection or the lock was last lost
        from utilitarian.beat.metrics import BeatMetrics

        self.metrics = BeatMetrics()
        from utilitarian import __version__
        from utilitarian.beat.presence import BeatPresence
        from utilitarian.fleet.protocol import Member
        from utilitarian.hostname import host_name

        host = host_name()
        self.presence = BeatPresence(Member(f"beat@{host}", "beat", host, None, os.getpid(), __version__), clock=clock)

    # --- signals ---------------------------------------------------------------------------------
    def request_stop(self, how: str = "term") -> None:
        """Safe from a signal handler: records only."""
        self.stop = how

    # --- the loop --------------------------------------------------------------------------------
    def run(self) -> int:
        """Until a stop is requested: connect, contend, lead or stand by; returns the exit code."""
        backoff = Backoff(first=0.5, cap=self.settings.retry_backoff_max)
        try:
            while self.stop is None:
                try:
                    self.connect()
                    backoff.reset()
                    self.serve()
                except (AuthenticationRefused, TopologyError) as exc:
                    # Refused before we ever got in is a configuration fault (exit 78); refused
                    # later is a broker still booting after a restart (access, or a 404 for a
                    # durable queue whose home node is not up yet), so keep trying: the consumers'
                    # rule (broker/recovery.py).
                    if not self.ever_connected:
                        raise
                    self.lose(exc, backoff.next_delay())
                except BrokerUnavailable as exc:
                    self.lose(exc, backoff.next_delay())
        except UtilitarianError:
            raise  # configuration faults carry their own exit code (78)
        except Exception:  # a bug: release the lock so a standby leads, and let systemd restart us
            log.error("beat loop failed; releasing the lock and exiting", exc_info=True)
            return EX_SOFTWARE
        finally:
            self.shutdown()
        return 0

    def connect(self) -> None:
        self.set_status(f"connecting to {self.settings.where}")
        self.conn = BeatConnection(self.settings, identity=self.identity, heartbeat=self.cfg.lock_heartbeat)
        self.conn.open()
        self.ever_connected = True
        self.role = "standby"
        self.standby_since = self.now()
        self.holder = None
        self.contend_now = True  # contend at once after (re)connecting
        self.presence.reset()
        log.info("connected to %s as %s; contending for the beat lock", self.settings.where, self.identity)

    def serve(self) -> None:
        while self.stop is None:
            self.check_clock()
            if self.role == "leader":
                self.lead_step()
            else:
                self.standby_step()

    def lose(self, exc: Exception, delay: float) -> None:
        """Fail closed: whatever we were, we fire nothing more until the lock is ours again."""
        was = self.role
        self.last_error = str(exc)
        self.role = "disconnected"
        self.leader_since = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if was == "leader":
            self.metrics.lost_lock()
            log.error("lost the beat lock (%s): fires stopped; reconnecting in %.1fs to contend again", exc, delay)
        else:
            log.warning("%s; reconnecting in %.1fs", exc, delay)
        self.set_status(f"reconnecting to {self.settings.where} in {delay:.1f}s: {exc}")
        self.idle(delay)

    def shutdown(self) -> None:
        if self.notifier is not None:
            self.notifier.stopping("stopping: releasing the beat lock" if self.role == "leader" else "stopping")
        conn, self.conn = self.conn, None
        if conn is None:
            return
        if conn.is_open:
            self.presence.goodbye(conn)
        if self.role == "leader" and conn.is_open:
            try:
                conn.release(self.leader_since)
                log.info("released the beat lock; a standby takes over now")
            except Exception as exc:  # closing the connection below releases it anyway
                log.warning("releasing the lock failed (%s); closing the connection releases it", exc)
        self.role = "disconnected"
        conn.close()

    # --- standby -------------------------------------------------------------------------------
    def standby_step(self) -> None:
        mono = self.monotonic()
        if self.contend_now or mono >= self.next_try:
            self.contend_now = False
            state = self.conn.acquire()
            if state is not None:
                self.become_leader(state)
                return
            self.next_try = mono + max(0.1, self.cfg.retry_interval + random.uniform(-1, 1) * self.cfg.retry_jitter)
            self.set_status(self.standby_status())
            self.mark_ready()
        self.wait(min(TICK, self.next_try - self.monotonic()))

    def standby_status(self) -> str:
        if self.holder is not None:
            since = self.holder.since or self.standby_since
            return f"standby: lock held by {self.holder.holder} since {_iso(since)}"
        return f"standby: lock held by another beat since {_iso(self.standby_since)}"

    def on_events(self, events: list[BeatEvent]) -> None:
        for event in events:
            if event.kind == "released" and self.role == "standby":
                log.info("beat %s released the lock; contending now", event.holder)
                self.contend_now = True
                self.holder = None
            elif event.kind == "leader" and self.role == "standby":
                self.holder = event
                self.set_status(self.standby_status())
            elif event.kind == "leader" and self.role == "leader":
                # Two leaders cannot exist while the lock queue exists; check it at once.
                log.error("beat %s claims the lock we hold; verifying our lock", event.holder)
                self.conn.verify()

    # --- leader -----------------------------------------------------------------------------------
    def become_leader(self, state: BeatState) -> None:
        self.term += 1
        self.metrics.took_lock()
        self.role = "leader"
        self.leader_since = self.now()
        self.state = state
        self.next = None  # plan at once: catch up what was missed while nobody led
        self.prepared = None
        self.next_announce = 0.0
        if state.writer:
            log.info("leading since %s (term %d); state of %d entries last written by %s at %s",
                     _iso(self.leader_since), self.term, len(state.entries), state.writer,
                     _iso(state.written_at) if state.written_at else "?")
        else:
            log.info("leading since %s (term %d); no beat state yet, every entry starts from now",
                     _iso(self.leader_since), self.term)
        self.mark_ready()
        self.set_status(self.leader_status())

    def lead_step(self) -> None:
        now = self.now()
        if self.next is None or now >= self.next[0]:
            self.fire_due(now)
        mono = self.monotonic()
        if mono >= self.next_announce:
            self.conn.publish_event(BeatEvent("leader", self.identity, self.leader_since))
            self.next_announce = mono + ANNOUNCE_INTERVAL
        self.set_status(self.leader_status())
        if self.next is None:
            self.wait(TICK)
            return
        if self.prepared is None and (self.next[0] - self.now()).total_seconds() < TICK:
            self.prepared = self.prepare(self.next[0])
        self.wait(min(TICK, (self.next[0] - self.now()).total_seconds()))

    def prepare(self, slot: dt.datetime) -> Prepared:
        """Plan and encode the coming slot before it is due, so that at the slot only the lock
        check and the transaction stand between the clock and the broker."""
        p = plan(self.entries, self.state, slot, max_catch_up=self.cfg.max_catch_up, disabled=self.disabled)
        leader = f"{self.identity}/{self.term}"
        outgoing = tuple(outgoing_fire(d.entry, d.slot, slot, leader=leader) for d in p.fires)
        return Prepared(slot, self.state, p, outgoing, encode_state(p.state, writer=leader, now=slot))

    def fire_due(self, now: dt.datetime) -> None:
        ready, self.prepared = self.prepared, None
        # Slots are whole seconds apart, so within ON_TIME of the prepared slot nothing else can
        # have become due; anything else (a late wake, a clock step) is planned afresh.
        if ready is not None and ready.base is self.state and dt.timedelta(0) <= now - ready.slot < \
                dt.timedelta(seconds=ON_TIME):
            p, outgoing, body = ready.plan, ready.outgoing, ready.state_body
        else:
            p = plan(self.entries, self.state, now, max_catch_up=self.cfg.max_catch_up, disabled=self.disabled)
            leader = f"{self.identity}/{self.term}"
            outgoing = tuple(outgoing_fire(d.entry, d.slot, now, leader=leader) for d in p.fires)
            body = encode_state(p.state, writer=leader, now=now)
        for note in p.notes:
            log.warning("%s", note)
        if p.fires or p.changed:
            started = self.monotonic()
            self.conn.verify()
            self.conn.commit(outgoing, body)
            self.fired += len(p.fires)
            self.log_fires(p.fires, self.now())
            log.debug("committed %d fires and the state in %.1f ms", len(p.fires),
                      (self.monotonic() - started) * 1e3)
        self.state = p.state
        self.next = next_due(self.entries, self.state, now)

    def log_fires(self, fires, committed: dt.datetime) -> None:
        """One line per fire with its lateness (commit done minus slot), or one per burst."""
        for due in fires:
            self.metrics.record_fire(due.entry.name, due.slot.timestamp(), (committed - due.slot).total_seconds(),
                                     committed.timestamp())
        if len(fires) > LOG_EACH_FIRE:
            log.info("fired %d catch-up slots from %s to %s", len(fires), slot_iso(fires[0].slot),
                     slot_iso(fires[-1].slot))
            return
        for due in fires:
            late = (committed - due.slot).total_seconds() * 1000.0
            log.info("fired %s slot %s (+%.1f ms) as %s[%s] to %s", due.entry.name, slot_iso(due.slot), late,
                     due.entry.task, task_id_for(due.entry.name, due.slot), due.entry.queue)

    def leader_status(self) -> str:
        text = f"leader since {_iso(self.leader_since)}, {len(self.entries)} entries"
        if self.next:
            text += f", next {self.next[1].name} at {slot_iso(self.next[0])}"
        return text

    def status_doc(self) -> dict:
        """What `status --all` shows of this beat."""
        return {"role": self.role, "identity": self.identity, "leader_since": _iso(self.leader_since)
                if self.leader_since else None, "holder": self.holder.holder if self.holder else None,
                "entries": len(self.entries), "fired": self.fired, "term": self.term,
                "next_fire": {"entry": self.next[1].name, "slot": slot_iso(self.next[0])} if self.next else None,
                "last_error": self.last_error, "broker": self.settings.where}

    # --- time -------------------------------------------------------------------------------------
    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), UTC)

    def check_clock(self) -> None:
        """Log a wall-clock step (NTP, suspend); the plan copes with it: slots at or before the
        stored last slot never fire again, missed ones go through misfire_grace/coalesce."""
        wall, mono = self.clock(), self.monotonic()
        if self.last_clock is not None:
            jump = (wall - self.last_clock[0]) - (mono - self.last_clock[1])
            if abs(jump) > JUMP_THRESHOLD:
                log.warning("wall clock jumped %+.1fs (NTP step or suspend); %s", jump,
                            "slots already fired will not fire again" if jump < 0
                            else "missed slots follow misfire_grace/coalesce")
                self.next = None if self.role == "leader" else self.next
                self.prepared = None
        self.last_clock = (wall, mono)

    def wait(self, seconds: float) -> None:
        """Sleep on the connection (heartbeats and events keep flowing) for at most `seconds`."""
        self.on_events(self.conn.pump(max(0.0, seconds)))
        self.presence.serve(self.conn, self.status_doc)
        self.ping_watchdog()

    def idle(self, seconds: float) -> None:
        """Sleep without a connection, in ticks, so TERM and the watchdog are still served."""
        deadline = self.monotonic() + seconds
        while self.stop is None:
            left = deadline - self.monotonic()
            if left <= 0:
                break
            time.sleep(min(TICK, left))
            self.ping_watchdog()

    # --- systemd ------------------------------------------------------------------------------------
    def mark_ready(self) -> None:
        if not self.ready_sent and self.notifier is not None:
            self.ready_sent = True
            self.notifier.ready(self.leader_status() if self.role == "leader" else self.standby_status())

    def set_status(self, text: str) -> None:
        if self.notifier is not None and self.ready_sent:
            self.notifier.status(text)

    def ping_watchdog(self) -> None:
        """WATCHDOG=1 means this loop still turns (broker up or not); a hung loop stops pinging."""
        if self.notifier is None:
            return
        interval = self.notifier.watchdog_interval()
        mono = self.monotonic()
        if interval and mono >= self.next_watchdog:
            self.notifier.watchdog()
            self.next_watchdog = mono + interval


def _iso(value: dt.datetime | None) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds") if value else "?"
