"""Broker administration for tests, batched: every `rabbitmqctl` call boots an Erlang VM
(1.5 s on an idle machine, up to 10 s on a busy one), so each operation here is one `eval` call,
and vhosts are created and deleted many at a time."""

from __future__ import annotations

import os
import subprocess
import threading
import uuid

import pika

from support.rabbit import erlang_binary


def erl_eval(rabbit, expr: str, timeout: float = 120.0) -> str:
    """One `rabbitmqctl eval`: each CLI call boots an Erlang VM (1.5 s idle, up to 10 s on a busy
    machine), so broker administration here is batched into as few calls as possible."""
    return rabbit.ctl("eval", expr, timeout=timeout).stdout.strip()


def create_vhosts(rabbit, names) -> None:
    erl_eval(rabbit, "[begin ok = rabbit_vhost:add(V, <<\"fault-suite\">>), ok = rabbit_auth_backend_internal:"
                     "set_permissions(<<\"guest\">>, V, <<\".*\">>, <<\".*\">>, <<\".*\">>, <<\"fault-suite\">>) end "
                     f"|| V <- [{', '.join(erlang_binary(n) for n in names)}]], ok.")


def delete_vhosts(rabbit, names) -> None:
    erl_eval(rabbit, f"[rabbit_vhost:delete(V, <<\"fault-suite\">>) || V <- [{', '.join(erlang_binary(n) for n in names)}]], ok.")


def close_connections(rabbit, vhost: str) -> None:
    erl_eval(rabbit, f"[rabbit_networking:close_connection(element(6, C), \"fault suite\") "
                     f"|| C <- rabbit_connection_tracking:list({erlang_binary(vhost)})], ok.")


def revoke_and_disconnect(rabbit, vhost: str) -> None:
    """The guest user loses its permissions on the vhost and its connections drop (a deploy
    rotating permissions): every reconnect is refused until `grant`."""
    erl_eval(rabbit, f"ok = rabbit_auth_backend_internal:clear_permissions(<<\"guest\">>, {erlang_binary(vhost)}, "
                     f"<<\"fault-suite\">>), [rabbit_networking:close_connection(element(6, C), \"fault suite\") "
                     f"|| C <- rabbit_connection_tracking:list({erlang_binary(vhost)})], ok.")


def grant(rabbit, vhost: str) -> None:
    erl_eval(rabbit, f"ok = rabbit_auth_backend_internal:set_permissions(<<\"guest\">>, {erlang_binary(vhost)}, "
                     "<<\".*\">>, <<\".*\">>, <<\".*\">>, <<\"fault-suite\">>).")


class VhostSupply:
    """Vhosts for tests, created `batch` at a time in one CLI call (every `rabbitmqctl` call boots
    an Erlang VM: two per test, add_vhost and set_permissions, cost 114 tests 3-20 s each on a busy
    machine, and their CPU slowed the groups running beside them). A vhost handed back is deleted
    with a few others in a call nobody waits for; `close` deletes every one left, handed back or not."""

    def __init__(self, rabbit, prefix: str = "t", batch: int = 8, delete_every: int = 8, *,
                 create_now: bool = False):
        self.rabbit = rabbit
        self.prefix = prefix
        self.batch = batch
        self.delete_every = delete_every
        self.free: list[str] = []
        self.out: set[str] = set()  # taken, not handed back
        self.done: list[str] = []   # handed back, not deleted yet
        self.deleting: list[threading.Thread] = []
        self.lock = threading.Lock()
        if create_now:  # e.g. while a private node's tests have not started yet
            with self.lock:
                self._create_batch()

    def take(self) -> str:
        with self.lock:
            if not self.free:
                self._create_batch()
            name = self.free.pop()
            self.out.add(name)
            return name

    def give_back(self, name: str) -> None:
        """The test is over: its vhost goes soon (a vhost is never handed out twice, so nothing it
        left behind can reach another test)."""
        with self.lock:
            self.out.discard(name)
            self.done.append(name)
            if len(self.done) >= self.delete_every:
                self.deleting = [t for t in self.deleting if t.is_alive()]
                self.deleting.append(self._delete_in_background(self.done))
                self.done = []

    def close(self) -> None:
        with self.lock:
            left = self.done + self.free + sorted(self.out)
            self.done, self.free, self.out = [], [], set()
        if left:
            delete_vhosts(self.rabbit, left)
        for thread in self.deleting:
            thread.join(120)

    def _create_batch(self) -> None:
        # Under the lock.
        names = [f"{self.prefix}-{uuid.uuid4().hex[:10]}" for _ in range(self.batch)]
        create_vhosts(self.rabbit, names)
        self.free = names

    def _delete_in_background(self, names) -> threading.Thread:
        thread = threading.Thread(target=delete_vhosts, args=(self.rabbit, list(names)), daemon=True,
                                  name="delete-vhosts")
        thread.start()
        return thread


def vhost_down_for(rabbit, vhost: str, seconds: float) -> subprocess.Popen:
    """Take a vhost down as RabbitMQ does when its message store fails beyond its restart limit
    (its processes stop, the node and other vhosts stay up, new connections get 541 "vhost is
    down"), then bring it back as `rabbitmqctl restart_vhost` does; the data stays. One CLI call,
    in the background: the test watches the worker meanwhile."""
    v = erlang_binary(vhost)
    expr = (f"[Rec] = ets:lookup(rabbit_vhost_sup_sup, {v}), "
            f"ok = supervisor2:terminate_child(rabbit_vhost_sup_sup, element(4, Rec)), "
            f"true = ets:delete(rabbit_vhost_sup_sup, {v}), timer:sleep({int(seconds * 1000)}), "
            f"{{ok, _}} = rabbit_vhost_sup_sup:start_vhost({v}), ok.")
    cmd = ["rabbitmqctl"] + (["-n", rabbit.node] if rabbit.node else []) + ["eval", expr]
    return subprocess.Popen(cmd, env={**os.environ, **rabbit.env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def restart_broker(rabbit) -> None:
    """stop_app + start_app in one CLI call: connections drop, the port closes, then it comes back."""
    erl_eval(rabbit, "ok = rabbit:stop(), ok = rabbit:start().")
    rabbit.wait_ready()


def delete_queue(url: str, name: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        conn.channel().queue_delete(name)
    finally:
        conn.close()
