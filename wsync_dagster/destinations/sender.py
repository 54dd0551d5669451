"""Delivers a platform's requests over HTTP: concurrent up to a rate, retried, split on invalid items."""

from __future__ import annotations

import asyncio
import email.utils
import functools
import gzip
import random
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, overload

import aiohttp
import httpx
import numpy as np
import pyarrow as pa

from wsync_dagster.destinations.event_columns import data_view, offsets
from wsync_dagster.destinations.profile_changes import Reject
from wsync_dagster.gc_pause import cycle_collection_paused

GZIP_FROM_BYTES = 1024  # smaller bodies gain nothing from compression
GZIP_LEVEL = 1  # JSON of many alike items: level 1 compresses about as well as 5, twice as fast
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
SPLIT_STATUSES = frozenset({400, 413})  # invalid items or too large: split, keep the good items


# Not frozen: a frozen dataclass's __init__ costs a microsecond, and one is built per event.
@dataclass(slots=True)
class Item:
    """One unit of a request the platform may reject on its own (a batch, an event, an identify)."""

    key: str  # the profile id or event id a reject names
    body: bytes  # the item's JSON
    events: int = 0  # events the item carries, for the metrics


def gzipped(content: bytes) -> bytes:
    """The body gzipped in one zlib call, its CRC computed while deflating rather than in a pass of its own
    (and no timestamp in the header: the same body gives the same bytes)."""
    return gzip.compress(content, compresslevel=GZIP_LEVEL, mtime=0)


class ItemColumns(Sequence[Item]):
    """Items held as columns (keys, in Arrow or a list; bodies each followed by a comma), read as Items only
    when one is asked for: a request's body is one slice of the bodies' buffer, however many items it has."""

    def __init__(
        self,
        keys: pa.Array | list[str],
        bodies: pa.Array,
        events: int | np.ndarray,
        start: int = 0,
        stop: int | None = None,
    ):
        self._keys = keys
        self._bodies = bodies  # binary, each body with a trailing comma
        self._events = events  # events an item carries: the same for all, or each item's
        self._offsets: np.ndarray | None = None
        self._text: bytes | memoryview | None = None
        self._start = start
        self._stop = len(bodies) if stop is None else stop

    @classmethod
    def of_bodies(cls, keys: list[str], bodies: list[bytes], events: int | np.ndarray) -> ItemColumns:
        """Items from Python lists (each body with its trailing comma), their bytes joined once and not
        copied again: the bodies' array is a view of them."""
        array, ends, text = _binary(bodies)
        items = cls(keys, array, events)
        items._offsets, items._text = ends, text
        return items

    def __len__(self) -> int:
        return self._stop - self._start

    @overload
    def __getitem__(self, index: int) -> Item: ...

    @overload
    def __getitem__(self, index: slice) -> ItemColumns: ...

    def __getitem__(self, index: int | slice) -> Item | ItemColumns:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise ValueError("item columns slice in steps of 1")
            part = ItemColumns(
                self._keys, self._bodies, self._events, self._start + start, self._start + stop
            )
            part._offsets, part._text = self.offsets(), self.text()
            return part
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        i = self._start + (index % len(self))
        events = self._events if isinstance(self._events, int) else int(self._events[i])
        key = self._keys[i]
        return Item(key if isinstance(key, str) else key.as_py(), self._bodies[i].as_py()[:-1], events)

    def offsets(self) -> np.ndarray:
        """Where each body starts in the bodies back to back (and where the last ends)."""
        if self._offsets is None:
            self._offsets = offsets(self._bodies)
        return self._offsets

    def sizes(self) -> np.ndarray:
        """Each item's bytes with its separating comma."""
        return np.diff(self.offsets()[self._start : self._stop + 1])

    @property
    def events(self) -> int:
        """Events the items carry."""
        if isinstance(self._events, int):
            return self._events * len(self)
        return int(self._events[self._start : self._stop].sum())

    def text(self) -> bytes | memoryview:
        """All the bodies back to back, each with its comma: the bodies' data itself, not a copy."""
        if self._text is None:
            self._text = data_view(self._bodies)
        return self._text

    def joined(self) -> bytes:
        """The bodies separated by commas: one slice of them back to back, without the last comma."""
        at = self.offsets()
        return bytes(self.text()[int(at[self._start]) : int(at[self._stop]) - 1])


def _binary(values: list[bytes]) -> tuple[pa.Array, np.ndarray, bytes]:
    """The values as a binary array, its offsets and its data: their bytes joined once, not copied again."""
    text = b"".join(values)
    ends = np.zeros(len(values) + 1, np.int32)
    np.cumsum(np.fromiter(map(len, values), np.int64, len(values)), out=ends[1:])
    array = pa.Array.from_buffers(pa.binary(), len(values), [None, pa.py_buffer(ends), pa.py_buffer(text)])
    return array, ends, text


def joined_bodies(items: Sequence[Item]) -> bytes:
    """The items' bodies separated by commas (a JSON array's inside)."""
    if isinstance(items, ItemColumns):
        return items.joined()
    return b",".join(item.body for item in items)


def events_of(items: Sequence[Item]) -> int:
    """Events the items carry."""
    if isinstance(items, ItemColumns):
        return items.events
    return sum(item.events for item in items)


@dataclass(frozen=True)
class Request:
    """Items bound for one endpoint path, within the platform's per-request limits."""

    path: str
    items: Sequence[Item]  # a tuple, or ItemColumns for many alike items


def column_requests(
    path: str, items: ItemColumns, max_items: int, max_bytes: int, overhead: int
) -> Iterator[Request]:
    """The items in order, cut into requests of at most max_items and max_bytes (with overhead bytes)."""
    ends = np.cumsum(items.sizes())  # bytes up to and including each item
    n, start, taken = len(items), 0, 0
    while start < n:
        fit = int(np.searchsorted(ends, taken + max_bytes - overhead, side="right"))
        stop = min(n, start + max_items, max(fit, start + 1))
        yield Request(path, items[start:stop])
        taken = int(ends[stop - 1])
        start = stop


class ColumnPacking:
    """Items gathered as columns (keys, bodies each with a trailing comma, event counts), or one by one in
    Python lists, and cut into requests a few thousand at a time: a request's body is one slice of their
    joined bytes."""

    def __init__(self, path: str, max_items: int, max_bytes: int, overhead: int) -> None:
        self.path = path
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.overhead = overhead  # the request's bytes besides its items
        # Items one by one (appended to in place: they follow the columns gathered before them).
        self.keys: list[str] = []
        self.bodies: list[bytes] = []
        self.events: list[int] = []
        self._columns: list[tuple[list[str], pa.Array, np.ndarray]] = []

    def __len__(self) -> int:
        return sum(len(keys) for keys, _, _ in self._columns) + len(self.keys)

    def add_columns(self, keys: list[str], bodies: pa.Array, events: np.ndarray) -> None:
        """Adds items as columns (bodies binary, each with a trailing comma), after those gathered so far."""
        self._lists_as_columns()
        self._columns.append((keys, bodies, events))

    def requests(self, last: bool = False) -> list[Request]:
        """The requests of the items gathered so far; unless last, the final one, maybe part full, is kept
        back: its items lead the next requests."""
        self._lists_as_columns()
        if not self._columns:
            return []
        if len(self._columns) == 1:
            keys, bodies, events = self._columns[0]
        else:
            keys = [key for keys, _, _ in self._columns for key in keys]
            bodies = pa.concat_arrays([bodies for _, bodies, _ in self._columns])
            events = np.concatenate([events for _, _, events in self._columns])
        items = ItemColumns(keys, bodies, events)
        requests = list(column_requests(self.path, items, self.max_items, self.max_bytes, self.overhead))
        kept = 0 if last or len(requests[-1].items) == self.max_items else len(requests.pop().items)
        self._columns = [(keys[-kept:], bodies[-kept:], events[-kept:])] if kept else []
        return requests

    def _lists_as_columns(self) -> None:
        """The items gathered one by one, as columns after the others; the lists emptied in place."""
        if not self.keys:
            return
        self._columns.append((list(self.keys), _binary(self.bodies)[0], np.array(self.events, np.int64)))
        self.keys.clear()
        self.bodies.clear()
        self.events.clear()


class Platform(Protocol):
    """What the sender needs from a platform: where, how to authenticate, how to read its answers."""

    destination: str  # the destination's name, the only thing errors say about it
    base_url: str

    def accepts_gzip(self, request: Request) -> bool:
        """True when the endpoint takes `Content-Encoding: gzip`."""
        ...

    def refuses_credentials(self, response: httpx.Response) -> bool:
        """True when an answer other than 401/403 says the key is wrong (the platform's way)."""
        ...

    def throttle_seconds(self, response: httpx.Response) -> float | None:
        """How long the platform's own throttling answer (without Retry-After) asks to wait, if it says."""
        ...

    def auth(self) -> httpx.Auth | None:
        """The request authentication, or None when the key travels in the body."""
        ...

    def body(self, request: Request) -> tuple[bytes, str]:
        """The request's body and its content type."""
        ...

    def item_reasons(self, request: Request, response: httpx.Response) -> dict[int, str]:
        """Index → reason of the items a 400 (or a 429) names as refused; empty when it names none."""
        ...

    def reason(self, response: httpx.Response) -> str:
        """The platform's message for a rejected request, without anything secret."""
        ...


class JsonRequests:
    """A platform API taking one JSON object a request under HTTP Basic auth: the privacy APIs."""

    def __init__(
        self,
        destination: str,
        base_url: str,
        credentials: tuple[str, str],
        reason: Callable[[httpx.Response], str],
    ) -> None:
        self.destination = destination
        self.base_url = base_url
        self._credentials = credentials
        self._reason = reason

    def __repr__(self) -> str:
        return f"JsonRequests({self.destination!r}, base_url={self.base_url!r})"  # never the key

    def accepts_gzip(self, request: Request) -> bool:
        """Not promised by the privacy APIs."""
        return False

    def refuses_credentials(self, response: httpx.Response) -> bool:
        """401/403 only."""
        return False

    def throttle_seconds(self, response: httpx.Response) -> float | None:
        """Retry-After only."""
        return None

    def auth(self) -> httpx.Auth:
        """HTTP Basic with the platform's key pair."""
        return httpx.BasicAuth(*self._credentials)

    def body(self, request: Request) -> tuple[bytes, str]:
        """The request's one item as is."""
        return request.items[0].body, "application/json"

    def item_reasons(self, request: Request, response: httpx.Response) -> dict[int, str]:
        """One item a request: nothing to split."""
        return {}

    def reason(self, response: httpx.Response) -> str:
        """The platform's message, read the platform's way."""
        return self._reason(response)


@dataclass(frozen=True)
class SendPolicy:
    """How hard to push: a rate in items per second, concurrency, timeouts and retries."""

    items_per_second: float
    concurrency: int = 8
    timeout_seconds: float = 30.0
    max_attempts: int = 8
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 30.0
    max_retry_after_seconds: float = 300.0


@dataclass
class SendMetrics:
    """What one send did: acknowledged items, HTTP traffic, retries, rejects, time encoding vs waiting."""

    items_sent: int = 0
    events_sent: int = 0
    requests: int = 0  # HTTP requests made, retries included
    bytes_sent: int = 0  # bodies as sent (compressed when gzip)
    retries: int = 0
    throttled_waits: int = 0  # 429s waited out
    rejects: list[Reject] = field(default_factory=list)
    encode_seconds: float = 0.0
    wait_seconds: float = 0.0  # the rest of the send's wall time: responses, backoff, the rate limit

    def add(self, other: SendMetrics) -> None:
        """Adds another send's figures to these."""
        for name in ("items_sent", "events_sent", "requests", "bytes_sent", "retries", "throttled_waits"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.rejects.extend(other.rejects)
        self.encode_seconds += other.encode_seconds
        self.wait_seconds += other.wait_seconds


class DestinationError(Exception):
    """A send that cannot go on (credentials refused, retries exhausted): one line, no secret."""

    def __init__(self, message: str, metrics: SendMetrics | None = None) -> None:
        super().__init__(message)
        self.metrics = metrics or SendMetrics()  # what was acknowledged and rejected before it stopped


class Packing:
    """Items bound for one path, gathered in order into requests within the platform's limits."""

    def __init__(self, path: str, max_items: int, max_bytes: int, overhead: int) -> None:
        self.path = path
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.overhead = overhead  # the request's bytes besides its items
        self._items: list[Item] = []
        self._size = overhead

    def add(self, item: Item) -> Request | None:
        """Adds the item; returns the request it closed when it did not fit in it."""
        item_size = len(item.body) + 1  # the separating comma
        closed = None
        if self._items and (len(self._items) == self.max_items or self._size + item_size > self.max_bytes):
            closed = self.rest()
        self._items.append(item)
        self._size += item_size
        return closed

    def rest(self) -> Request | None:
        """The request of the items gathered so far, if any; starts a new one."""
        if not self._items:
            return None
        request = Request(self.path, tuple(self._items))
        self._items, self._size = [], self.overhead
        return request


Acknowledged = Callable[[Request], None]  # called with each request's items once the platform took them


def send(
    platform: Platform,
    requests: Iterable[Request],
    policy: SendPolicy,
    on_acknowledged: Acknowledged | None = None,
) -> SendMetrics:
    """Sends the requests, waiting for every acknowledgement; raises DestinationError when it must stop.

    A lazy iterable is drawn as requests go out, so encoding the next overlaps the platform's work on the
    last; the time spent drawing counts as encoding.
    """
    with cycle_collection_paused():
        return asyncio.run(_Sender(platform, policy, on_acknowledged).send_all(requests))


def exchange(
    platform: Platform, request: Request, policy: SendPolicy, answers: frozenset[int] = SPLIT_STATUSES
) -> tuple[httpx.Response, SendMetrics]:
    """One request, retried as any send, until a success or one of the statuses in answers comes back."""
    return asyncio.run(_Sender(platform, policy, None, answers).exchange(request))


def send_encoded(
    platform: Platform,
    requests: Iterable[Request],
    policy: SendPolicy,
    rejects: list[Reject],
    encode_seconds: float,
    on_acknowledged: Acknowledged | None = None,
) -> SendMetrics:
    """Sends what a platform encoded; the items it refused to encode lead the rejects, also when it stops."""
    try:
        metrics = send(platform, requests, policy, on_acknowledged)
    except DestinationError as error:
        error.metrics.rejects[:0] = rejects
        raise
    metrics.encode_seconds += encode_seconds
    metrics.rejects[:0] = rejects
    return metrics


class _RateLimit:
    """Spaces request starts so items flow at most at the given rate."""

    def __init__(self, items_per_second: float) -> None:
        self._seconds_per_item = 1.0 / items_per_second
        self._next = time.monotonic()

    async def wait(self, items: int) -> None:
        now = time.monotonic()
        start = max(now, self._next)
        self._next = start + items * self._seconds_per_item
        if start > now:
            await asyncio.sleep(start - now)


class _Sender:
    def __init__(
        self,
        platform: Platform,
        policy: SendPolicy,
        on_acknowledged: Acknowledged | None,
        answers: frozenset[int] = SPLIT_STATUSES,
    ) -> None:
        self.platform = platform
        self.answers = answers
        self.on_acknowledged = on_acknowledged
        self.policy = policy
        self.metrics = SendMetrics()
        self._rate = _RateLimit(policy.items_per_second)
        self._slots = asyncio.Semaphore(policy.concurrency)
        self._drawn_seconds = 0.0
        self._requests: dict[str, httpx.Request] = {}
        # Looked up once: aiohttp's trust_env would look the proxy and ~/.netrc up in a thread every request.
        self._proxy = _proxy_for(platform.base_url)

    def _client(self) -> aiohttp.ClientSession:
        # aiohttp rather than httpx.AsyncClient: about a sixth of the CPU a request (0.16 ms against 1.1 ms
        # on loopback, bench/README.md), and the sender's own CPU is what bounds a forward's wall time. The
        # platforms still read answers as httpx.Responses.
        timeout = self.policy.timeout_seconds
        secure = self.platform.base_url.startswith("https:")
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=self.policy.concurrency, ssl=_ssl_context() if secure else True
            ),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
            headers=_auth_headers(self.platform.auth()),
        )

    async def exchange(self, request: Request) -> tuple[httpx.Response, SendMetrics]:
        started = time.perf_counter()
        async with self._client() as self.client:
            try:
                response = await self.post(request)
            except DestinationError as error:
                raise DestinationError(str(error), self.metrics) from None
        self.metrics.wait_seconds = time.perf_counter() - started - self.metrics.encode_seconds
        return response, self.metrics

    async def send_all(self, requests: Iterable[Request]) -> SendMetrics:
        started = time.perf_counter()
        async with self._client() as self.client:
            try:
                # As many workers as requests may be in flight, each drawing the next request when done: a
                # task per request would build every body up front and wait on the slots in a crowd.
                pending = iter(requests)

                # Requests are drawn on the event loop itself: with events encoded by Arrow a chunk at a
                # time, a draw is short, and handing each to a thread cost more in GIL switches than it
                # overlapped (the events lines ran 20-30% slower that way).
                async def work() -> None:
                    while True:
                        drawn = self._draw(pending)
                        if drawn is None:
                            return
                        await self.deliver(*drawn)

                async with asyncio.TaskGroup() as group:
                    for _ in range(self.policy.concurrency):
                        group.create_task(work())
            except* DestinationError as errors:
                error = errors.exceptions[0]
                raise DestinationError(str(error), self.metrics) from None
        # Draws are one at a time, so the encoding they timed is part of the wall time; the rest was waiting.
        self.metrics.encode_seconds += self._drawn_seconds
        self.metrics.wait_seconds = time.perf_counter() - started - self.metrics.encode_seconds
        return self.metrics

    def _draw(self, pending: Iterator[Request]) -> tuple[Request, tuple[bytes, dict[str, str]]] | None:
        """The next request and its body as sent, the encoding timed; None when there are no more."""
        started = time.perf_counter()
        request = next(pending, None)
        content = self._content(request) if request is not None else None
        self._drawn_seconds += time.perf_counter() - started
        return (request, content) if request is not None and content is not None else None

    def _content(self, request: Request) -> tuple[bytes, dict[str, str]]:
        """The request's body as sent, gzipped where the platform takes it, and its headers."""
        content, content_type = self.platform.body(request)
        headers = {"Content-Type": content_type}
        if len(content) >= GZIP_FROM_BYTES and self.platform.accepts_gzip(request):
            content = gzipped(content)
            headers["Content-Encoding"] = "gzip"
        return content, headers

    async def deliver(self, request: Request, content: tuple[bytes, dict[str, str]] | None = None) -> None:
        """Sends one request until acknowledged, splitting it when the platform rejects items."""
        response = await self.post(request, content)
        if response.is_success:
            self.metrics.items_sent += len(request.items)
            self.metrics.events_sent += events_of(request.items)
            if self.on_acknowledged is not None:
                self.on_acknowledged(request)
            return
        reasons = self.platform.item_reasons(request, response) if response.status_code in (400, 429) else {}
        if reasons:
            self.metrics.rejects.extend(
                Reject(request.items[i].key, why) for i, why in sorted(reasons.items())
            )
            rest = tuple(item for i, item in enumerate(request.items) if i not in reasons)
            if rest:
                await self.deliver(Request(request.path, rest))
        elif len(request.items) > 1:
            half = len(request.items) // 2
            await asyncio.gather(
                self.deliver(Request(request.path, request.items[:half])),
                self.deliver(Request(request.path, request.items[half:])),
            )
        else:
            self.metrics.rejects.append(Reject(request.items[0].key, self.platform.reason(response)))

    async def post(
        self, request: Request, prepared: tuple[bytes, dict[str, str]] | None = None
    ) -> httpx.Response:
        """One request's answer other than a retried one: a success or one of the answers (400, 413)."""
        if prepared is None:
            started = time.perf_counter()
            prepared = self._content(request)
            self.metrics.encode_seconds += time.perf_counter() - started
        content, headers = prepared
        for attempt in range(1, self.policy.max_attempts + 1):
            failure: str
            retry_after: float | None = None
            try:
                await self._rate.wait(len(request.items))
                async with self._slots:
                    self.metrics.requests += 1
                    self.metrics.bytes_sent += len(content)
                    response = await self._post(request.path, content, headers)
            except TimeoutError:  # aiohttp's read and connect timeouts are TimeoutErrors too
                failure = "timed out"
            except (aiohttp.ClientError, OSError) as error:
                failure = (
                    f"connection failed ({type(error).__name__})"  # never the message: it may quote the URL
                )
            else:
                status = response.status_code
                if status in (401, 403) or self.platform.refuses_credentials(response):
                    raise DestinationError(
                        f"destination {self.platform.destination}: the platform refused its credentials "
                        f"(HTTP {status}); check the keys in its environment variables"
                    )
                if response.is_success or status in self.answers:
                    return response
                if status == 429 and self.platform.item_reasons(request, response):
                    return response  # items the platform will not take today: split them off, resend the rest
                if status not in RETRIED_STATUSES:
                    raise DestinationError(
                        f"destination {self.platform.destination}: the platform answered HTTP {status} "
                        f"at {request.path}; check its base_url"
                    )
                failure = f"HTTP {status}"
                retry_after = _retry_after(response)
                if retry_after is None:
                    retry_after = self.platform.throttle_seconds(response)
                if status == 429:
                    self.metrics.throttled_waits += 1
            if attempt == self.policy.max_attempts:
                break
            self.metrics.retries += 1
            await asyncio.sleep(self._backoff(attempt, retry_after))
        raise DestinationError(
            f"destination {self.platform.destination}: gave up on {request.path} after "
            f"{self.policy.max_attempts} attempts ({failure}); nothing of that request is marked sent"
        )

    async def _post(self, path: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
        """One POST, its answer read whole, as the httpx.Response the platforms read."""
        url = self.platform.base_url.rstrip("/") + path  # as httpx joins a base_url and a path
        async with self.client.post(url, data=content, headers=headers, proxy=self._proxy) as answer:
            body = await answer.read()
            if (request := self._requests.get(url)) is None:  # what an answer says it answered; parsed once
                request = self._requests[url] = httpx.Request("POST", url)
            return httpx.Response(
                answer.status,
                # aiohttp has decoded the body already: without Content-Encoding httpx does not decode it again
                headers=[(k, v) for k, v in answer.headers.items() if k.lower() != "content-encoding"],
                content=body,
                request=request,
            )

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Retry-After when the platform says; otherwise exponential backoff with jitter."""
        if retry_after is not None:
            return min(retry_after, self.policy.max_retry_after_seconds) + random.uniform(0, 0.1)
        ceiling = min(self.policy.max_backoff_seconds, self.policy.backoff_seconds * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """httpx's TLS verification (certifi's CAs, or SSL_CERT_FILE / SSL_CERT_DIR), built once a process."""
    return httpx.create_ssl_context()


def _proxy_for(base_url: str) -> str | None:
    """The proxy the environment names for the platform's host (HTTPS_PROXY, ALL_PROXY, NO_PROXY …), as
    httpx took it."""
    url = urllib.parse.urlsplit(base_url)
    if url.hostname is None or urllib.request.proxy_bypass(url.hostname):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(url.scheme) or proxies.get("all")


def _auth_headers(auth: httpx.Auth | None) -> dict[str, str]:
    """The headers an httpx.Auth that signs in one step (HTTP Basic) puts on every request."""
    if auth is None:
        return {}
    signed = next(auth.sync_auth_flow(httpx.Request("POST", "http://wsync.invalid/")))
    return {"Authorization": signed.headers["Authorization"]}


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date), None without a usable one."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
