"""The consumer's fast path through pika's frame reader: a delivery is three frames (basic.deliver,
content header, body), and pika turns each into objects, callbacks and a BlockingChannel event
before our callback sees it (~25-30 us of a no-op task's CPU, more than the task runner). On the
consume channel this module parses the three frames straight from the read buffer and hands the
delivery over at once; every other frame (heartbeats, channel.close, basic.cancel, the *-ok
replies, a delivery split across channels) goes through pika's own reader, in order.

Installed per connection (`install`) by replacing the instance's `_on_data_available`, the one
method pika's transport calls with received bytes; pika's bookkeeping the heartbeat checker reads
(`bytes_received`, `frames_received`) is kept. `accept(consumer_tag)` says whether a delivery is
ours to take (a live consumer of this channel); when it says no, pika's path takes the delivery
(it rejects deliveries of consumers it cancelled, or queues them for the BlockingChannel)."""

from __future__ import annotations

import struct
from typing import Callable

from pika import exceptions, frame as pika_frame
from pika.spec import BasicProperties

from utilitarian.broker.table_decode import decode_table

_FRAME = struct.Struct(">BHI").unpack_from
_U64 = struct.Struct(">Q").unpack_from
_U16 = struct.Struct(">H").unpack_from
_DELIVER = b"\x00\x3c\x00\x3c"  # class 60 (basic), method 60 (deliver)
_METHOD, _HEADER, _BODY = 1, 2, 3
_FRAME_END = 0xCE
RECV_BYTES = 65536  # per recv on the consume connection (pika's default is 4096)
_P = BasicProperties


def _short(buf: bytes, offset: int) -> tuple:
    end = offset + 1 + buf[offset]
    raw = buf[offset + 1:end]
    try:
        return raw.decode("utf8"), end
    except UnicodeDecodeError:  # pika hands undecodable short strings over as bytes
        return raw, end


def _timestamp(buf: bytes, offset: int) -> tuple:
    return _U64(buf, offset)[0], offset + 8


# The properties after priority, in wire order, with the reader of each one's type: short
# strings but for the timestamp. (The five before it are unrolled in decode_properties: they are
# in nearly every delivery, and a call each through a table costs ~0.2 us more per delivery.)
_PROPERTIES_LAST = (
    ("correlation_id", _P.FLAG_CORRELATION_ID, _short), ("reply_to", _P.FLAG_REPLY_TO, _short),
    ("expiration", _P.FLAG_EXPIRATION, _short), ("message_id", _P.FLAG_MESSAGE_ID, _short),
    ("timestamp", _P.FLAG_TIMESTAMP, _timestamp), ("type", _P.FLAG_TYPE, _short),
    ("user_id", _P.FLAG_USER_ID, _short), ("app_id", _P.FLAG_APP_ID, _short),
    ("cluster_id", _P.FLAG_CLUSTER_ID, _short))
_LAST_MASK = sum(flag for _, flag, _ in _PROPERTIES_LAST)  # one bit each
# Which of the last properties a delivery carries repeats from message to message (Celery sets
# correlation_id and reply_to): per combination, the readers of those present and every
# property absent as None, so a delivery reads its two instead of testing all nine.
_PLANS: dict[int, tuple[dict, tuple]] = {}


def _plan(present: int) -> tuple[dict, tuple]:
    plan = _PLANS.get(present)
    if plan is None:
        plan = ({name: None for name, flag, _ in _PROPERTIES_LAST if not present & flag},
                tuple((name, read) for name, flag, read in _PROPERTIES_LAST if present & flag))
        if len(_PLANS) < 64:  # a handful in practice; bounded whatever producers send
            _PLANS[present] = plan
    return plan


def decode_properties(buf: bytes, offset: int) -> BasicProperties:
    """pika.spec.BasicProperties().decode(buf, offset), in one pass without pika's per-field calls."""
    flags = _U16(buf, offset)[0]
    offset += 2
    index = 0
    partial = flags
    while partial & 1:  # continuation bit (never set by RabbitMQ for basic properties; pika reads it)
        index += 1
        partial = _U16(buf, offset)[0]
        offset += 2
        flags |= partial << (index * 16)
    nones, readers = _plan(flags & _LAST_MASK)
    d = nones.copy()
    if flags & _P.FLAG_CONTENT_TYPE:
        d["content_type"], offset = _short(buf, offset)
    else:
        d["content_type"] = None
    if flags & _P.FLAG_CONTENT_ENCODING:
        d["content_encoding"], offset = _short(buf, offset)
    else:
        d["content_encoding"] = None
    if flags & _P.FLAG_HEADERS:
        d["headers"], offset = decode_table(buf, offset)
    else:
        d["headers"] = None
    if flags & _P.FLAG_DELIVERY_MODE:
        d["delivery_mode"] = buf[offset]
        offset += 1
    else:
        d["delivery_mode"] = None
    if flags & _P.FLAG_PRIORITY:
        d["priority"] = buf[offset]
        offset += 1
    else:
        d["priority"] = None
    for name, read in readers:
        d[name], offset = read(buf, offset)
    props = _P.__new__(_P)
    props.__dict__ = d
    return props


class DeliverFrames:
    """`deliver(consumer_tag, delivery_tag, redelivered, exchange, routing_key, properties, body)`
    runs inside pika's read callback: it must not call pika (queue the work, return)."""

    def __init__(self, connection, channel_number: int, accept: Callable[[str], bool],
                 deliver: Callable[..., None]):
        self.connection = connection  # pika's connection implementation (BlockingConnection._impl)
        self.channel_number = channel_number
        self.accept = accept
        self.deliver = deliver

    def install(self) -> "DeliverFrames":
        self.connection._on_data_available = self.on_data
        transport = getattr(self.connection, "_transport", None)
        if transport is not None and hasattr(transport, "_MAX_RECV_BYTES"):
            # pika reads 4 KiB per recv (about six deliveries): a prefetch window arrived in a
            # dozen recvs, each dropping the GIL to a task thread and waiting to get it back,
            # and the frames split across reads were joined again. One recv takes it all now.
            transport._MAX_RECV_BYTES = RECV_BYTES
        return self

    def on_data(self, data_in: bytes) -> None:
        conn = self.connection
        buf = conn._frame_buffer + data_in if conn._frame_buffer else data_in
        offset = 0
        size = len(buf)
        channel_number = self.channel_number
        while size - offset >= 8:
            kind, channel, length = _FRAME(buf, offset)
            end = offset + 8 + length
            if end > size:
                break
            if kind == _METHOD and channel == channel_number and buf[offset + 7:offset + 11] == _DELIVER:
                taken = self._delivery(buf, offset, end, size)
                if taken == 0:  # its header or body has not arrived yet
                    break
                if taken > 0:
                    conn.bytes_received += taken - offset
                    offset = taken
                    continue
            # Any other frame: pika's reader, with the buffer in pika's hands while it works
            # (a frame it processes may close the connection and reset the buffer).
            if buf[end - 1] != _FRAME_END:
                raise exceptions.InvalidFrameError("Invalid FRAME_END marker")
            consumed, value = pika_frame.decode_frame(buf[offset:end])
            conn._frame_buffer = buf[end:]
            conn.bytes_received += consumed
            conn._process_frame(value)
            buf = conn._frame_buffer
            offset = 0
            size = len(buf)
        conn._frame_buffer = buf[offset:] if offset else buf

    def _delivery(self, buf: bytes, offset: int, method_end: int, size: int) -> int:
        """Offset after the delivery's last frame; 0 if it is incomplete; -1 to leave it to pika."""
        if buf[method_end - 1] != _FRAME_END:
            raise exceptions.InvalidFrameError("Invalid FRAME_END marker")
        pos = offset + 11
        tag_end = pos + 1 + buf[pos]
        consumer_tag = buf[pos + 1:tag_end].decode("utf8", "surrogateescape")
        if not self.accept(consumer_tag):
            return -1
        if method_end + 8 > size:
            return 0
        kind, channel, length = _FRAME(buf, method_end)
        header_end = method_end + 8 + length
        if kind != _HEADER or channel != self.channel_number:
            return -1  # not what a delivery is made of: pika's assembler decides
        if header_end > size:
            return 0
        if buf[header_end - 1] != _FRAME_END:
            raise exceptions.InvalidFrameError("Invalid FRAME_END marker")
        body_size = _U64(buf, method_end + 11)[0]
        pos = header_end
        parts = []
        got = 0
        frames = 2
        while got < body_size:
            if pos + 8 > size:
                return 0
            kind, channel, length = _FRAME(buf, pos)
            if kind != _BODY or channel != self.channel_number:
                return -1
            frame_end = pos + 8 + length
            if frame_end > size:
                return 0
            if buf[frame_end - 1] != _FRAME_END:
                raise exceptions.InvalidFrameError("Invalid FRAME_END marker")
            parts.append(buf[pos + 7:frame_end - 1])
            got += length
            pos = frame_end
            frames += 1
        # Complete: decode the method's fields and the properties.
        delivery_tag = _U64(buf, tag_end)[0]
        redelivered = bool(buf[tag_end + 8] & 1)
        exchange, at = _short(buf, tag_end + 9)
        routing_key, _ = _short(buf, at)
        properties = decode_properties(buf, method_end + 19)
        body = parts[0] if len(parts) == 1 else b"".join(parts)  # b"" for an empty body
        self.connection.frames_received += frames
        self.deliver(consumer_tag, delivery_tag, redelivered, exchange, routing_key, properties, body)
        return pos
