"""The records the supervision rules keep: child states and their allowed transitions, a child's
last known figures, a pool's respawn state, and the tunables."""

from __future__ import annotations

import collections
import dataclasses
import enum
from dataclasses import dataclass, field

from utilitarian.supervisor.plan import PoolSpec, WorkerPlan
from utilitarian.supervisor.stats import totals_of


class State(enum.Enum):
    STARTING = "starting"  # forked, not consuming yet (booting)
    RUNNING = "running"  # was ready once; counts toward its pool's capacity
    RETIRING = "retiring"  # out of capacity, keeps working until its replacement is ready
    DRAINING = "draining"  # TERM sent, or it retires itself: finishes its work and exits 0
    STOPPING = "stopping"  # the whole worker stops
    ABORTED = "aborted"  # silent past the heartbeat timeout: SIGABRT sent, SIGKILL follows


TRANSITIONS: dict[State, frozenset[State]] = {
    State.STARTING: frozenset({State.RUNNING, State.RETIRING, State.DRAINING, State.STOPPING, State.ABORTED}),
    State.RUNNING: frozenset({State.RETIRING, State.DRAINING, State.STOPPING, State.ABORTED}),
    State.RETIRING: frozenset({State.DRAINING, State.STOPPING, State.ABORTED}),
    State.DRAINING: frozenset({State.STOPPING, State.ABORTED}),
    State.STOPPING: frozenset({State.ABORTED}),
    State.ABORTED: frozenset(),
}
ACTIVE = frozenset({State.STARTING, State.RUNNING})  # what counts toward a pool's capacity
# Why a child was replaced, for status and metrics. "shrink" (TTOU, a pool removed) and a stop of
# the worker are departures without a replacement and are not counted.
CAUSES = ("crash", "hard_time_limit", "max_tasks", "max_memory", "heartbeat", "reload")
CHILD_COUNTERS = ("reconnects", "cancels", "dead_letter_failures")  # cumulative, from heartbeats


class IllegalTransition(RuntimeError):
    pass


@dataclass(frozen=True)
class Limits:
    """Tunables of the rules, in seconds (floats). Built from the plan and `[worker]`."""

    heartbeat_timeout: float = 30.0
    graceful_timeout: float = 30.0
    exit_when_idle: float | None = None
    crash_loop_limit: int = 10
    crash_loop_window: float = 60.0
    restart_backoff_max: float = 30.0
    restart_backoff_base: float = 0.1  # first respawn delay of a pool; doubles per consecutive crash
    kill_after_abort: float = 5.0  # a child that ignored SIGABRT (or a stop deadline) this long gets SIGKILL
    quick_timeout: float = 5.0  # QUIT: children get this long before SIGKILL
    rss_interval: float = 5.0
    sample_interval: float = 5.0  # throughput samples for the rate in status
    status_interval: float = 1.0  # sd_notify STATUS=

    @classmethod
    def of(cls, plan: WorkerPlan, worker) -> "Limits":
        return cls(heartbeat_timeout=plan.heartbeat_timeout, graceful_timeout=plan.graceful_timeout,
                   exit_when_idle=plan.exit_when_idle, crash_loop_limit=worker.crash_loop_limit,
                   crash_loop_window=worker.crash_loop_window, restart_backoff_max=worker.restart_backoff_max)


@dataclass(eq=False)
class ChildRecord:
    cid: int
    pool: str
    index: int
    generation: int
    started: float
    last_seen: float
    boot_may_fail: bool
    pid: int | None = None
    state: State = State.STARTING
    ready: bool = False  # became ready (consumed) at least once
    consuming: bool = False
    why: str | None = None  # why not consuming, as the child says
    inflight: int = 0
    idle: float = 0.0
    pending_later: bool = False  # the child holds work for later (exit-when-idle must wait)
    stats: dict = field(default_factory=dict)
    telemetry: dict | None = None  # what task code counted (utilitarian.telemetry), cumulative
    counters: dict = field(default_factory=lambda: dict.fromkeys(CHILD_COUNTERS, 0))
    rss: int | None = None
    cause: str | None = None  # why it is leaving (a CAUSES entry, "shrink" or "stop")
    replaces: str | None = None  # why it was spawned: the cause its predecessor left for (None: first)
    boot_failure: int | None = None
    abort_at: float | None = None
    kill_at: float | None = None

    @property
    def label(self) -> int | str:
        return self.pid if self.pid is not None else f"#{self.cid}"

    def move(self, state: State) -> None:
        if state is self.state:
            return
        if state not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"child {self.label}: {self.state.value} -> {state.value}")
        self.state = state

    def can_move(self, state: State) -> bool:
        return state is self.state or state in TRANSITIONS[self.state]

    def take_heartbeat(self, doc: dict) -> bool:
        """Keep a heartbeat's figures; every field is optional (older children send fewer).
        Returns whether it carried task counters."""
        self.inflight = as_int(doc.get("inflight"))
        self.idle = as_float(doc.get("idle"))
        self.consuming = bool(doc.get("consuming"))
        self.why = None if self.consuming else (str(doc["why"]) if doc.get("why") else None)
        self.pending_later = bool(doc.get("pending_later"))
        for key in CHILD_COUNTERS:
            if key in doc:
                self.counters[key] = as_int(doc.get(key))
        if isinstance(doc.get("telemetry"), dict):
            self.telemetry = doc["telemetry"]
        if isinstance(doc.get("stats"), dict):
            self.stats = doc["stats"]
            return True
        return False

    def tasks_finished(self) -> int:
        return sum(totals_of(self.stats).values())


@dataclass
class PoolRecord:
    spec: PoolSpec  # what runs: `configured` without the drained queues (no queue left: 0 processes)
    generation: int = 0
    next_index: int = 0
    crashes: int = 0  # consecutive crashes since a child of this pool was last ready
    spawn_after: float = float("-inf")
    restarts: collections.Counter = field(default_factory=collections.Counter)
    # Why capacity was lost and not yet restored, oldest first: the next spawn is "for" that cause.
    owed: collections.deque = field(default_factory=collections.deque)
    configured: PoolSpec | None = None  # from the plan, grown or shrunk by signals and control commands

    def __post_init__(self):
        self.configured = self.configured or self.spec

    def configure(self, spec: PoolSpec, drained) -> bool:
        """Take `spec` as configured; the running spec leaves out `drained` queues. Returns whether
        the queues changed (its children must be rolled to consume the new set)."""
        self.configured = spec
        queues = tuple(q for q in spec.queues if q not in drained)
        running = dataclasses.replace(spec, queues=queues, processes=spec.processes if queues else 0)
        changed = running.queues != self.spec.queues
        self.spec = running
        return changed


def as_int(value) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def as_float(value) -> float:
    try:
        return float(value or 0.0)
    except (TypeError, ValueError):
        return 0.0
