"""Broker administration for fault tests, batched: every `rabbitmqctl` call boots an Erlang VM
(1.5 s on an idle machine, up to 10 s on a busy one), so each operation here is one `eval` call,
and vhosts are created and deleted many at a time."""

from __future__ import annotations

import os
import subprocess
import threading
import uuid

import pika


def _bin(text: str) -> str:
    return '<<"' + text + '">>'


def erl_eval(rabbit, expr: str, timeout: float = 120.0) -> str:
    """One `rabbitmqctl eval`: each CLI call boots an Erlang VM (1.5 s idle, up to 10 s on a busy
    machine), so broker administration here is batched into as few calls as possible."""
    return rabbit.ctl("eval", expr, timeout=timeout).stdout.strip()


def create_vhosts(rabbit, names) -> None:
    erl_eval(rabbit, "[begin ok = rabbit_vhost:add(V, <<\"fault-suite\">>), ok = rabbit_auth_backend_internal:"
                     "set_permissions(<<\"guest\">>, V, <<\".*\">>, <<\".*\">>, <<\".*\">>, <<\"fault-suite\">>) end "
                     f"|| V <- [{', '.join(_bin(n) for n in names)}]], ok.")


def delete_vhosts(rabbit, names) -> None:
    erl_eval(rabbit, f"[rabbit_vhost:delete(V, <<\"fault-suite\">>) || V <- [{', '.join(_bin(n) for n in names)}]], ok.")


def close_connections(rabbit, vhost: str) -> None:
    erl_eval(rabbit, f"[rabbit_networking:close_connection(element(6, C), \"fault suite\") "
                     f"|| C <- rabbit_connection_tracking:list({_bin(vhost)})], ok.")


def revoke_and_disconnect(rabbit, vhost: str) -> None:
    """The guest user loses its permissions on the vhost and its connections drop (a deploy
    rotating permissions): every reconnect is refused until `grant`."""
    erl_eval(rabbit, f"ok = rabbit_auth_backend_internal:clear_permissions(<<\"guest\">>, {_bin(vhost)}, "
                     f"<<\"fault-suite\">>), [rabbit_networking:close_connection(element(6, C), \"fault suite\") "
                     f"|| C <- rabbit_connection_tracking:list({_bin(vhost)})], ok.")


def grant(rabbit, vhost: str) -> None:
    erl_eval(rabbit, f"ok = rabbit_auth_backend_internal:set_permissions(<<\"guest\">>, {_bin(vhost)}, "
                     "<<\".*\">>, <<\".*\">>, <<\".*\">>, <<\"fault-suite\">>).")


class VhostPool:
    """Vhosts created in one CLI call, handed out one per test, deleted in one call at the end."""

    def __init__(self, rabbit, size: int):
        self.rabbit = rabbit
        self.names = [f"fault-{uuid.uuid4().hex[:10]}" for _ in range(size)]
        self.free = list(self.names)
        self.lock = threading.Lock()
        create_vhosts(rabbit, self.names)

    def take(self) -> str:
        with self.lock:
            if self.free:
                return self.free.pop(0)
        name = f"fault-{uuid.uuid4().hex[:10]}"
        self.names.append(name)
        create_vhosts(self.rabbit, [name])
        return name

    def close(self) -> None:
        delete_vhosts(self.rabbit, self.names)




def vhost_down_for(rabbit, vhost: str, seconds: float) -> subprocess.Popen:
    """Take a vhost down as RabbitMQ does when its message store fails beyond its restart limit
    (its processes stop, the node and other vhosts stay up, new connections get 541 "vhost is
    down"), then bring it back as `rabbitmqctl restart_vhost` does; the data stays. One CLI call,
    in the background: the test watches the worker meanwhile."""
    v = _bin(vhost)
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
