"""uvicorn's HTTP/1.1 protocol on httptools, with bounds on what a client can make it keep.

httptools parses HTTP in C; h11, uvicorn's pure-Python parser, costs a request about twice
the CPU (a refusal on a new connection: 388 against 196 µs, README). But uvicorn's
httptools protocol keeps whatever a client sends before any layer of the app can refuse
it, where h11 stops a head at 16 KiB and reads one request at a time. An attacking helper,
without any key, took one instance to 4.4 GB with a single connection of pipelined tiny
requests (every parsed head is queued), and grew it with chunked-body trailers (appended to
the headers of a request already running), heads of thousands of tiny headers (21 times
their size in memory) and heads of any length. This protocol bounds each of those:

- **head bytes**: what a message holds besides its body (request line, headers, chunk
  framing, trailers) is counted as it is fed, in slices of at most `SLICE` bytes (asyncio
  reads up to 256 KiB at once); past `MAX_HEAD_BYTES` (plus half the body so far: a body
  in small chunks carries its framing) the request is refused with 431;
- **headers**: past `MAX_HEADERS` (Apache's LimitRequestFields), 431; trailers count too,
  and are dropped (ASGI has no request trailers; h11 drops them as well);
- **pipelining**: at most `MAX_PIPELINE` requests are parsed ahead of the one being
  answered (or answered from the parser in one read, `early_refusal`, which also stops
  answering a client that does not read its answers); the next is not read: those
  already parsed are answered, then the connection closes (RFC 9112 9.3.2: a client
  retries requests a closed connection left unanswered); a refusal never cuts into an
  earlier request's answer;
- **idle connections**: the keep-alive timeout runs until a request begins (blank lines,
  which the parser skips, no longer hold it off);
- **upgrades** (no service speaks another protocol): llhttp ends a request asking for one
  at its head and would parse what follows as new requests, its body included (uvicorn
  answered a body sent a moment later as a request of its own). Such a request with a body
  is refused 400; one without (curl's `Upgrade: h2c`) is answered, then the connection
  closes, nothing more read on it;
- **answers never read**: an answer stuck in the send buffer `write_timeout` seconds
  (the client asks and never reads) drops the connection, and its buffer with it;
- **slow heads**: a head still unfinished `head_timeout` seconds after a read left it open
  is answered 408 and the connection closed, and a new connection that has not sent a head
  by then is closed (h11 waits for ever on both);
- **slow bodies**: a body must come at `min_body_rate` bytes a second on average (and never
  pause longer than the grace), after a
  grace of `head_timeout` seconds (Kestrel's MinRequestBodyDataRate): a request whose body
  stops coming holds its place among the requests in flight, and 512 of them refused
  everyone else (an attacking helper; h11 waits for ever too). Past it the app reads a
  disconnect, the client a 408, and the connection closes. (Requests needing a key are
  refused before their body is read, `shared.http.KeyFirstRoute`: only a key's holder can
  be that slow.) A body answered before its end (401 before the body, 413) is read and
  dropped up to `MAX_BODY_DROPPED`, then the connection closes;

Each refusal is counted in `giapranh_http_rejections_total` under its reason.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from shared import metrics

SLICE = 8 * 1024
"""The most fed to the parser at once: how far a count may run past its bound."""
MAX_HEAD_BYTES = 64 * 1024
"""Bytes of one message besides its body (h11: a head of 16 KiB)."""
MAX_HEADERS = 100
"""Header fields of one request, trailers included (Apache's default)."""
MAX_PIPELINE = 16
"""Requests parsed and waiting behind the one being answered on a connection."""
HEAD_TIMEOUT = 30.0
"""Seconds a begun head may take to end."""
MIN_BODY_RATE = 1024.0
"""Bytes a second a request body must average once `head_timeout` has passed (8 kbit/s:
a 2 MB batch may take half an hour; Kestrel asks for 240 bytes a second)."""
WRITE_TIMEOUT = 30.0
"""Seconds a connection's answer may stay stuck in its send buffer (a client that asks and
never reads), after which the connection is dropped."""
MAX_BODY_DROPPED = 8 * 1024 * 1024
"""Bytes of a body read and dropped after its request was answered (401 before the body,
413 past the size): past them the connection closes, gently, instead of parsing whatever
a client sends until the keep-alive timeout (5 s: gigabytes on a fast link)."""
LINGER_SECONDS = 2.0
"""After a refusal, how long what the client still sends is read and dropped."""


def _spread(seconds: float) -> float:
    """`seconds` and up to a tenth more at random: the timers of connections opened
    together (4,000 of an attack) would all fire in one turn of the event loop, and their
    refusals stalled it ~0.4 s for everyone."""
    return seconds * (1.0 + 0.1 * random.random())


class _Enough(Exception):
    """Past `MAX_BODY_DROPPED`: stop reading, close once what is owed is answered."""


class _Refusal(Exception):
    def __init__(self, status: int, reason: str, text: str) -> None:
        super().__init__(text)
        self.status, self.reason, self.text = status, reason, text


_PHRASES = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large",
            503: b"Service Unavailable"}


EarlyRefusal = Callable[[Any], "tuple[int, bytes, bytes] | None"]
"""Given a request's scope as soon as its head is parsed: its answer (status, header lines
each ending in CRLF, body) to write at once, or None to run the app for it."""


def http_protocol(service: str, *, head_timeout: float = HEAD_TIMEOUT,
                  write_timeout: float = WRITE_TIMEOUT,
                  min_body_rate: float = MIN_BODY_RATE,
                  early_refusal: EarlyRefusal | None = None) -> type[asyncio.Protocol]:
    """The protocol class to give uvicorn (`http=`) for `service` (which labels its counts).

    With `early_refusal` (the app's overload refusal, `shared.http.early_refusal`), a
    request it refuses is answered from the parser's callback: no task, no turn of the
    event loop waited behind the requests being served, no layer of the app."""

    refused = {reason: metrics.HTTP_REJECTIONS.labels(service=service, reason=reason)
               for reason in ("head_too_large", "too_many_headers", "pipeline_too_deep",
                              "head_timeout", "body_timeout", "body_dropped", "upgrade",
                              "invalid", "write_timeout")}

    class BoundedHttpTools(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._outside_body = 0       # bytes of the current message besides its body
            self._body_bytes = 0         # body bytes in the slice being fed
            self._completed = False      # a message ended in the slice being fed
            self._message_body = 0       # body bytes of the current message so far
            self._answered_in_read = 0   # requests answered from the parser in this read
            self._header_count = 0
            self._head_open = False
            self._head_timer: asyncio.TimerHandle | None = None
            self._stopped = False        # refused: nothing more is parsed
            self._write_timer: asyncio.TimerHandle | None = None
            self._running: Any = None  # the request whose answer runs (the last started)
            self._body_timer: asyncio.TimerHandle | None = None
            self._body_started = 0.0
            self._body_last = 0.0        # when a byte of the body last came
            self._dropped = 0            # body bytes of an answered request, dropped

        # asyncio.Protocol
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            # A connection must bring its first head within the time too (h11 would keep
            # an idle one open for ever).
            self._head_timer = self.loop.call_later(_spread(head_timeout), self._head_too_slow)

        def data_received(self, data: bytes) -> None:
            if self._stopped:
                return
            # (the keep-alive timeout is cancelled when a request begins, not by any byte:
            # blank lines, which the parser skips, kept a connection open for ever)
            self._answered_in_read = 0
            if len(data) <= SLICE:
                self._feed(data)
            else:
                view = memoryview(data)
                for start in range(0, len(data), SLICE):
                    if not self._feed(view[start:start + SLICE]):
                        break
            if self._stopped:
                return
            if self._head_open and self._head_timer is None:
                self._head_timer = self.loop.call_later(_spread(head_timeout), self._head_too_slow)
            elif (self._body_timer is None and self.cycle is not None
                  and self.cycle.more_body):  # (a body goes on in a later read)
                self._body_started = self._body_last = self.loop.time()
                self._body_timer = self.loop.call_later(_spread(head_timeout), self._body_too_slow)

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            self._cancel_body_timer()
            if self._write_timer is not None:
                self._write_timer.cancel()
            running = self._running
            if (running is not None and running is not self.cycle
                    and not running.response_complete):
                # uvicorn tells only the latest request parsed (`self.cycle`): one pipelined
                # behind a running answer took the news, and the running one, a live stream,
                # never learnt its client had gone (its place among the unit's streams
                # held until a restart: an attacking helper).
                running.disconnected = True
                running.message_event.set()
            super().connection_lost(exc)

        def pause_writing(self) -> None:
            # The answer fills the send buffer: the client must read it within the time.
            # (uvicorn has no such bound: an answer written whole stays in memory, and the
            # connection open, for as long as a client never reads.)
            super().pause_writing()
            if self._write_timer is None:
                self._write_timer = self.loop.call_later(write_timeout, self._write_stuck)

        def resume_writing(self) -> None:
            super().resume_writing()
            if self._write_timer is not None:
                self._write_timer.cancel()
                self._write_timer = None

        def _write_stuck(self) -> None:
            self._write_timer = None
            refused["write_timeout"].inc()
            self._stopped = True
            self.transport.abort()  # (close() would wait for the buffer to drain)

        def _feed(self, piece: bytes | memoryview) -> bool:
            """Parse `piece`; False when nothing more of this read is to be parsed."""
            self._body_bytes, self._completed = 0, False
            try:
                self.parser.feed_data(piece)
            except httptools.HttpParserCallbackError as exc:
                if isinstance(exc.__context__, _Refusal):
                    self._refuse(exc.__context__)
                elif isinstance(exc.__context__, _Enough):
                    self._stop_reading("body_dropped")
                else:  # (as uvicorn answers a request it cannot parse)
                    self._invalid()
                return False
            except httptools.HttpParserError:
                self._invalid()
                return False
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                    return False
                # llhttp ended the message at its head (a body is the upgraded protocol's)
                # and would parse what follows as new requests: a body sent later would be
                # taken for a request of its own. Nothing more is read; the connection
                # closes once the request is answered.
                self._stopped = True
                refused["upgrade"].inc()
                if not self._close_after_answers():
                    self.transport.close()
                return False
            if self._completed:
                # What follows the end of a message in this slice begins the next: at most
                # a slice uncounted.
                self._outside_body = self._message_body = 0
            else:
                self._outside_body += len(piece) - self._body_bytes
                self._message_body += self._body_bytes
                if self._body_bytes:
                    self._body_last = self.loop.time()
                # (a body sent in small chunks carries framing in proportion: 16-byte
                # chunks add 6 bytes each; 1-byte chunks, 6 per byte, are refused)
                if self._outside_body > MAX_HEAD_BYTES + self._message_body // 2:
                    self._refuse(_Refusal(431, "head_too_large",
                                          f"request line, headers and trailers over "
                                          f"{MAX_HEAD_BYTES} bytes"))
                    return False
            return not self.transport.is_closing()

        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            if early_refusal is not None:
                answer = early_refusal(cycle.scope)
                if answer is not None:
                    self._answer_at_once(cycle, *answer)
                    return
            self._running = cycle  # (pipelined requests run one at a time, in order)
            super()._start_asgi_task(cycle, app)

        def _answer_at_once(self, cycle: Any, status: int, head: bytes, body: bytes) -> None:
            if self.flow.write_paused:
                # Its earlier answers unread, a client asking on has no claim to more:
                # each would stay in memory (an attacker's pipelined flood took 2.6 GB).
                refused["pipeline_too_deep"].inc()
                self._stopped = True
                self.transport.abort()
                return
            self._answered_in_read += 1
            if cycle.waiting_for_100_continue:
                # (the client may never send the body it announced: what it sends next
                # could be read as that body)
                cycle.keep_alive = False
            cycle.response_started = cycle.response_complete = True
            parts = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                parts += (name, b": ", value, b"\r\n")
            parts.append(head)
            if not cycle.keep_alive:
                parts.append(b"connection: close\r\n")
            parts.append(b"\r\n")
            if cycle.scope["method"] != "HEAD":
                parts.append(body)
            self.transport.write(b"".join(parts))
            if not cycle.keep_alive:
                self._stopped = True
                self._close_gently()
            self.on_response_complete()  # (what follows of its body is dropped as it comes)

        def _invalid(self) -> None:
            # (counted, not logged: uvicorn's warning per request let any client flood the
            # logs, as its two warnings per upgrade request did)
            self._refuse(_Refusal(400, "invalid", "Invalid HTTP request received."))

        def _refuse(self, refusal: _Refusal) -> None:
            self._stopped = True
            self._cancel_head_timer()
            refused[refusal.reason].inc()
            if self._close_after_answers():
                return
            cycle = self.cycle
            if cycle is not None and cycle.response_complete and cycle.more_body:
                # Answered, its body still coming (a 401 before the body): nothing more may
                # be written for it; a pipelining client would take it for its next answer.
                self._close_gently()
                return
            if self.pipeline:
                # An earlier request is being answered: nothing may be written before its
                # answer ends. The queued ones are dropped unanswered (a client retries
                # them), and the connection closes once idle.
                for queued, _ in self.pipeline:
                    queued.disconnected = True
                self.pipeline.clear()
                self.flow.pause_reading()
                return
            if cycle is not None and not cycle.response_complete:
                if cycle.response_started:  # (its answer cannot be cut: close)
                    self.transport.close()
                    return
                # A request whose body is still coming: its app now reads a disconnect, and
                # what it would answer is dropped (it cannot follow the refusal).
                cycle.disconnected = True
                cycle.message_event.set()
            text = refusal.text.encode()
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                % (refusal.status, _PHRASES[refusal.status], len(text), text))
            self._close_gently()

        def _close_after_answers(self) -> bool:
            """Requests read whole are being answered: answer them, then close (True);
            False when none is owed."""
            cycle = self.cycle
            if cycle is None or cycle.response_complete or cycle.more_body:
                return False
            cycle.keep_alive = False
            self.flow.pause_reading()
            return True

        def _close_gently(self) -> None:
            """Closing with the client's bytes unread would reset the connection, and the
            client could lose the answer with it: end our side, read and drop what still
            comes for a moment, then close (nginx's lingering close)."""
            if self.transport.can_write_eof():  # (TLS cannot half-close)
                self.transport.write_eof()
                self.loop.call_later(LINGER_SECONDS, self.transport.close)
            else:
                self.transport.close()

        def _head_too_slow(self) -> None:
            self._head_timer = None
            if self._stopped or self.transport.is_closing():
                return
            if self._head_open:
                self._refuse(_Refusal(408, "head_timeout",
                                      f"request head not ended within {head_timeout:g} s"))
            elif self.cycle is None:  # not a byte of a request yet: nothing to answer
                refused["head_timeout"].inc()
                self._stopped = True
                self.transport.close()

        def _body_too_slow(self) -> None:
            self._body_timer = None
            cycle = self.cycle
            if self._stopped or self.transport.is_closing() or cycle is None \
                    or not cycle.more_body:
                return
            now = self.loop.time()
            if self.flow.read_paused:  # (the app has not read what came: not the client's
                # delay; the grace begins again, for what comes from now on)
                self._body_started = now - self._message_body / min_body_rate
                self._body_last = now
            # The average since the start, and no pause longer than the grace: bytes sent
            # early must not buy a stall (a key's holder sent 1.9 MB at once, then nothing,
            # and held its 64 places for half an hour).
            deadline = min(self._body_started + head_timeout + self._message_body / min_body_rate,
                           self._body_last + head_timeout)
            if now < deadline:  # (fast enough so far: look again then)
                self._body_timer = self.loop.call_at(deadline, self._body_too_slow)
                return
            if cycle.response_complete:  # (answered already, the rest of its body unread)
                self._stop_reading("body_timeout")
                return
            self._refuse(_Refusal(408, "body_timeout",
                                  f"request body slower than {min_body_rate:g} bytes a second"))

        def _stop_reading(self, reason: str | None = None) -> None:
            """The request is answered but its body still coming: read no more of it, and
            close gently (a reset could lose the answer before the client read it); counted
            under `reason`, if any."""
            if reason is not None:
                refused[reason].inc()
            self._stopped = True
            self._cancel_body_timer()
            self._close_gently()

        def _cancel_body_timer(self) -> None:
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        # httptools callbacks
        def on_message_begin(self) -> None:
            self._unset_keepalive_if_required()
            # Requests answered from the parser count too: without, one read could make
            # thousands of refusals in one callback (the loop stalled over a second).
            if len(self.pipeline) + self._answered_in_read >= MAX_PIPELINE:
                raise _Refusal(503, "pipeline_too_deep", "too many pipelined requests")
            self._head_open, self._header_count, self._dropped = True, 0, 0
            super().on_message_begin()

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_count += 1
            if self._header_count > MAX_HEADERS:
                raise _Refusal(431, "too_many_headers", f"over {MAX_HEADERS} header fields")
            if self._head_open:
                super().on_header(name, value)
            # else a trailer: dropped (the request is already running with its headers)

        def on_headers_complete(self) -> None:
            self._head_open = False
            self._cancel_head_timer()
            if self.parser.should_upgrade() and any(
                    (name == b"content-length" and value.strip(b" 0")) or
                    name == b"transfer-encoding" for name, value in self.headers):
                # llhttp would end it at its head and give its body to the other protocol
                # (see _feed): the app would get an empty body.
                raise _Refusal(400, "upgrade", "a request asking to switch protocols "
                                               "cannot carry a body here")
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            cycle = self.cycle
            super().on_response_complete()
            # (uvicorn's flag is this request's: no later head began, its body unended)
            if (self.expect_100_continue and cycle is not None and cycle.more_body
                    and not self._stopped and not self.transport.is_closing()):
                # Answered without asking for its body (a 401 before it): the client may
                # send it or not, and what it sends next could be taken for that body.
                self._stop_reading()

        def on_body(self, body: bytes) -> None:
            self._body_bytes += len(body)
            if self.cycle.response_complete:  # (answered: dropped, up to a bound)
                self._dropped += len(body)
                if self._dropped > MAX_BODY_DROPPED:
                    raise _Enough
                return
            super().on_body(body)

        def on_message_complete(self) -> None:
            self._completed = True
            self._cancel_body_timer()
            if self.cycle.response_complete:  # (uvicorn leaves it set: no body timer for it)
                self.cycle.more_body = False
            super().on_message_complete()

    BoundedHttpTools.__qualname__ = BoundedHttpTools.__name__ = f"BoundedHttpTools[{service}]"
    return BoundedHttpTools
