"""The beat as a fleet member: it announces itself on the roster and answers `status --all`'s
requests on its own connection, from its loop (between waits; a reply is one publish). A beat
takes no commands: drain, grow and the like are for workers and never reach it."""

from __future__ import annotations

import logging
import time

from utilitarian.fleet.protocol import ANNOUNCE_INTERVAL, ROSTER, Member, reply_body

log = logging.getLogger(__name__)


class BeatPresence:
    def __init__(self, member: Member, clock=time.time):
        self.member = member
        self.clock = clock
        self.next_announce = 0.0

    def reset(self) -> None:
        """A new connection: announce at once."""
        self.next_announce = 0.0

    def serve(self, conn, status) -> None:
        """Announce when due, answer pending requests with `status()` (a dict)."""
        now = self.clock()
        if now >= self.next_announce:
            conn.send("", ROSTER, self.member.announcement("up", now))
            self.next_announce = now + ANNOUNCE_INTERVAL
        requests, conn.requests = conn.requests, []
        for request, reply_to in requests:
            if request.expired(now) or not self.member.targeted(request):
                continue
            if request.cmd == "ping":
                body = reply_body(self.member, request.id, doc={"pong": True})
            elif request.cmd == "status":
                body = reply_body(self.member, request.id, doc=status())
            else:
                body = reply_body(self.member, request.id, error=f"a beat takes no {request.cmd!r} command")
            conn.send("", reply_to, body, request.id)

    def goodbye(self, conn) -> None:
        try:
            conn.send("", ROSTER, self.member.announcement("down", self.clock()))
        except Exception as exc:  # best effort: the roster forgets a member by age anyway
            log.debug("beat goodbye not published: %s", exc)
