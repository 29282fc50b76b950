"""The beat's metrics page: is it the leader, connected, fires and their lateness per entry (commit
done minus slot), the last and next fire, leaderships taken and lost (hand-overs). Served by one
daemon thread with the worker's non-blocking HTTP server, so a scrape is answered whatever the
beat's loop is doing (waiting on the broker, reconnecting after an outage)."""

from __future__ import annotations

import bisect
import logging
import threading

from utilitarian.supervisor.clients import wait_io
from utilitarian.supervisor.metrics import MetricsServer, _label

log = logging.getLogger(__name__)
LATENESS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0)


class BeatMetrics:
    """Counted by the beat's loop, read by the metrics thread (under one lock)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.fires: dict[str, int] = {}
        self.lateness: dict[str, list] = {}
        self.last_fire: dict[str, float] = {}
        self.leaderships = 0
        self.lock_losses = 0

    def record_fire(self, entry: str, slot_ts: float, late: float, committed_ts: float) -> None:
        with self._lock:
            self.fires[entry] = self.fires.get(entry, 0) + 1
            h = self.lateness.get(entry)
            if h is None:
                h = self.lateness[entry] = [[0] * (len(LATENESS_BUCKETS) + 1), 0.0, 0]
            late = max(0.0, late)
            h[0][bisect.bisect_left(LATENESS_BUCKETS, late)] += 1
            h[1] += late
            h[2] += 1
            self.last_fire[entry] = max(self.last_fire.get(entry, 0.0), slot_ts)

    def took_lock(self) -> None:
        with self._lock:
            self.leaderships += 1

    def lost_lock(self) -> None:
        with self._lock:
            self.lock_losses += 1

    def render(self, beat) -> str:
        b = _label(beat.presence.member.name)
        host = _label(beat.presence.member.host)
        role = beat.role
        nxt = beat.next
        with self._lock:
            fires, lateness, last = dict(self.fires), {k: [list(v[0]), v[1], v[2]] for k, v in self.lateness.items()}, \
                dict(self.last_fire)
            leaderships, losses = self.leaderships, self.lock_losses
        from utilitarian import __version__

        out = [
            "# HELP utilitarian_beat_info The beat's identity (value 1).", "# TYPE utilitarian_beat_info gauge",
            f'utilitarian_beat_info{{beat="{b}",host="{host}",version="{__version__}"}} 1',
            "# HELP utilitarian_beat_leader 1 while this beat holds the lock and fires.",
            "# TYPE utilitarian_beat_leader gauge", f'utilitarian_beat_leader{{beat="{b}"}} {int(role == "leader")}',
            "# HELP utilitarian_beat_connected 1 while this beat has a broker connection (leader or standby).",
            "# TYPE utilitarian_beat_connected gauge",
            f'utilitarian_beat_connected{{beat="{b}"}} {int(role != "disconnected")}',
            "# HELP utilitarian_beat_entries Schedule entries this beat fires when it leads.",
            "# TYPE utilitarian_beat_entries gauge", f'utilitarian_beat_entries{{beat="{b}"}} {len(beat.entries)}',
            "# HELP utilitarian_beat_leaderships_total Times this beat took the lock (hand-overs to it).",
            "# TYPE utilitarian_beat_leaderships_total counter",
            f'utilitarian_beat_leaderships_total{{beat="{b}"}} {leaderships}',
            "# HELP utilitarian_beat_lock_losses_total Times this beat lost the lock or its connection while leading.",
            "# TYPE utilitarian_beat_lock_losses_total counter",
            f'utilitarian_beat_lock_losses_total{{beat="{b}"}} {losses}',
            "# HELP utilitarian_beat_fires_total Fires published, by schedule entry.",
            "# TYPE utilitarian_beat_fires_total counter"]
        out += [f'utilitarian_beat_fires_total{{beat="{b}",entry="{_label(e)}"}} {n}' for e, n in sorted(fires.items())]
        out += ["# HELP utilitarian_beat_fire_lateness_seconds Commit of a fire minus its slot, by entry.",
                "# TYPE utilitarian_beat_fire_lateness_seconds histogram"]
        for entry, (buckets, total, count) in sorted(lateness.items()):
            base = f'beat="{b}",entry="{_label(entry)}"'
            cumulative = 0
            for bound, n in zip(LATENESS_BUCKETS, buckets):
                cumulative += n
                out.append(f'utilitarian_beat_fire_lateness_seconds_bucket{{{base},le="{bound}"}} {cumulative}')
            out.append(f'utilitarian_beat_fire_lateness_seconds_bucket{{{base},le="+Inf"}} {cumulative + buckets[-1]}')
            out.append(f"utilitarian_beat_fire_lateness_seconds_sum{{{base}}} {total}")
            out.append(f"utilitarian_beat_fire_lateness_seconds_count{{{base}}} {count}")
        out += ["# HELP utilitarian_beat_last_fire_slot_timestamp_seconds The slot of the latest fire, by entry.",
                "# TYPE utilitarian_beat_last_fire_slot_timestamp_seconds gauge"]
        out += [f'utilitarian_beat_last_fire_slot_timestamp_seconds{{beat="{b}",entry="{_label(e)}"}} {t}'
                for e, t in sorted(last.items())]
        if role == "leader" and nxt:
            out += ["# HELP utilitarian_beat_next_fire_timestamp_seconds When the leader fires next.",
                    "# TYPE utilitarian_beat_next_fire_timestamp_seconds gauge",
                    f'utilitarian_beat_next_fire_timestamp_seconds{{beat="{b}",entry="{_label(nxt[1].name)}"}} '
                    f"{nxt[0].timestamp()}"]
        return "\n".join(out) + "\n"


def serve_in_thread(beat, host: str, port: int) -> MetricsServer | None:
    """Start the metrics page of `beat` on a daemon thread; None (logged) when the port is taken."""
    try:
        server = MetricsServer(host, port)
    except OSError as exc:
        log.error("cannot serve beat metrics on %s:%d (%s); running without a metrics page", host, port,
                  exc.strerror or exc)
        return None

    def loop() -> None:
        import time

        while True:
            try:
                readable, writable = wait_io(server.read_fds(), server.write_fds(), 1.0)
                server.serve(readable, writable, time.monotonic(), lambda: beat.metrics.render(beat))
            except Exception:  # one bad turn must not end the page; the next turn starts clean
                log.exception("beat metrics: serving failed")
                time.sleep(1.0)

    threading.Thread(target=loop, name="beat-metrics", daemon=True).start()
    log.info("beat metrics on %s", server.where)
    return server
