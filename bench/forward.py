"""Forwarding: wsync's mParticle and Amplitude destinations beside drt-core's REST API destination and the floor.

Run `.venv/bin/python bench/forward.py [--profiles N] [--events M]`; bench/README.md says what each line
measures. All of them send to the same loopback server, a process of its own that reads every request and
acknowledges it at once. It prints the table and the ratios and writes them to bench/RESULTS.md's
"Forwarding" section.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

DRT_INSTALL = "drt-core"
MP_KEY, MP_SECRET, AMP_KEY = "bench-mp-key", "bench-mp-secret", "bench-amp-key"
NOW = datetime(2026, 12, 6, tzinfo=UTC)
# What each path's body holds once per item, to count what arrived (after gunzip).
ITEM_MARKERS = {
    "/v2/bulkevents": (b'"environment"', b'"event_type"'),
    "/2/httpapi": (b'"insert_id"', b'"insert_id"'),
    "/identify": (b"user_properties", b"user_properties"),
}
CONCURRENCY = 8  # wsync's default, also the floor's


# --- the loopback server: read each request whole, answer at once -------------------------------------------


class _Acknowledger(asyncio.Protocol):
    """HTTP/1.1 keep-alive: Content-Length bodies in, 200/202 out; counts requests, bytes and items per path."""

    stats: Counter[str] = Counter()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            length = int(re.search(r"(?im)^content-length:\s*(\d+)", head).group(1)) if "ength" in head else 0
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            self.answer(head, body)

    def answer(self, head: str, body: bytes) -> None:
        request_line = head.split("\r\n", 1)[0]
        method, target = request_line.split(" ")[:2]
        path = target.split("?")[0]
        if method == "GET":
            payload = json.dumps(dict(self.stats)).encode()
            self.stats.clear()
            status = "200 OK"
        else:
            if re.search(r"(?im)^content-encoding:\s*gzip", head):
                body = gzip.decompress(body)
            batches, events = ITEM_MARKERS.get(path, (b"\x00", b"\x00"))
            self.stats[f"{path} requests"] += 1
            self.stats[f"{path} bytes"] += len(body)
            self.stats[f"{path} items"] += body.count(batches)
            self.stats[f"{path} events"] += body.count(events)
            mparticle = path.startswith("/v2/")
            status = "202 Accepted" if mparticle else "200 OK"
            payload = b"" if mparticle else b'{"code":200}'
        self.transport.write(
            f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )


def serve() -> None:
    """Runs the acknowledging server on a free loopback port; prints the port, serves until killed."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Acknowledger, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    asyncio.run(main())


# --- the rows --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rows:
    """The same rows in each contender's input shape: wsync's changes, drt-core's flat dicts."""

    kind: str  # profiles | events
    count: int  # profile changes or events
    changes: list  # wsync ProfileChange, without their events
    events: object  # wsync's events as the outbox reads them: a pyarrow Table (event_columns.EVENT_SCHEMA)
    flat: list[dict]  # drt-core rows: one per profile, or one per event


def build_rows(kind: str, profiles: int, events_per_profile: int) -> Rows:
    """100k-style profile changes (5 attributes set, 1 removed), or events (10 a profile), in both shapes."""
    from wsync_dagster.destinations.event_columns import events_table
    from wsync_dagster.destinations.profile_changes import Event, ProfileChange

    recent_ms = int((NOW - timedelta(days=1)).timestamp() * 1000)
    changes = []
    flat: list[dict] = []
    for n in range(profiles):
        identities = {"customer_id": f"cust-{n:07d}", "email": f"user{n}@example.com"}
        if kind == "profiles":
            attributes = {
                "plan": "pro" if n % 3 else "free",
                "seats": n % 50,
                "score": n / 7,
                "vip": n % 2 == 0,
            }
            attributes["city"] = f"city-{n % 1000}"
            changes.append(ProfileChange(f"p{n}", identities, attributes, ("trial_ends",)))
            flat.append({**identities, **attributes, "removed": ["trial_ends"]})
            continue
        events = []
        for e in range(events_per_profile):
            event_id = f"e{n}-{e}"
            ts = recent_ms + e * 1000
            properties = {"amount": 10 + e, "sku": f"SKU-{e}"}
            events.append(Event(event_id, "custom_event", "purchase", ts, properties, "transaction"))
            flat.append({**identities, "event_id": event_id, "name": "purchase", "time": ts, **properties})
        changes.append(ProfileChange(f"p{n}", identities, events=tuple(events)))
    count = profiles if kind == "profiles" else profiles * events_per_profile
    table = events_table(changes)
    changes = [replace(change, events=()) for change in changes]
    return Rows(kind, count, changes, table, flat)


# --- the contenders ----------------------------------------------------------------------------------------------


@dataclass
class Result:
    """One line: what was sent, how long it took, and where the time went."""

    contender: str
    platform: str
    kind: str
    rows: int
    seconds: float
    arrived: dict[str, int]
    encode_seconds: float | None = None
    wait_seconds: float | None = None


def wsync_destination(platform_name: str, url: str):
    """wsync's destination for the platform, pointed at the server, its rate limit lifted (loopback)."""
    from wsync_dagster.destinations import amplitude, mparticle

    if platform_name == "mparticle":
        policy = replace(mparticle.DEFAULT_POLICY, items_per_second=1e9)
        return mparticle.MParticle("bench", MP_KEY, MP_SECRET, base_url=url, policy=policy)
    policy = replace(amplitude.DEFAULT_POLICY, items_per_second=1e9)
    return amplitude.Amplitude("bench", AMP_KEY, base_url=url, policy=policy)


def run_wsync(platform_name: str, rows: Rows, url: str) -> tuple[float, float, float]:
    """wsync's forward(): encode and send; wall, encoding and waiting seconds."""
    from wsync_dagster.destinations import amplitude, mparticle

    destination = wsync_destination(platform_name, url)
    started = time.perf_counter()
    if platform_name == "mparticle":
        metrics = mparticle.forward(destination, rows.changes, now=NOW, events=rows.events)
    else:
        metrics = amplitude.forward(destination, rows.changes, events=rows.events)
    wall = time.perf_counter() - started
    if metrics.rejects:
        raise RuntimeError(f"wsync rejected {len(metrics.rejects)} items: {metrics.rejects[:3]}")
    return wall, metrics.encode_seconds, metrics.wait_seconds


def prebuilt_requests(platform_name: str, rows: Rows, url: str) -> list[tuple[str, bytes, dict[str, str]]]:
    """The requests wsync sends for these rows, as bytes on the wire (gzip where wsync gzips): the floor's input."""
    from wsync_dagster.destinations import amplitude, mparticle
    from wsync_dagster.destinations.sender import GZIP_FROM_BYTES, gzipped

    destination = wsync_destination(platform_name, url)
    rejects: list = []
    if platform_name == "mparticle":
        requests = list(mparticle.encode_requests(rows.changes, "production", NOW, rejects, rows.events))
    else:
        requests = list(amplitude.encode_requests(rows.changes, "customer_id", rejects, rows.events))
    built = []
    for request in requests:
        content, content_type = destination.body(request)
        headers = {"Content-Type": content_type}
        if len(content) >= GZIP_FROM_BYTES and destination.accepts_gzip(request):
            content = gzipped(content)
            headers["Content-Encoding"] = "gzip"
        built.append((request.path, content, headers))
    return built


def run_floor(requests: list[tuple[str, bytes, dict[str, str]]], url: str, basic: bool) -> float:
    """Raw httpx posts of prebuilt bytes, CONCURRENCY at a time, each answer awaited; wall seconds."""
    import httpx

    async def main() -> None:
        auth = httpx.BasicAuth(MP_KEY, MP_SECRET) if basic else None
        limits = httpx.Limits(max_connections=CONCURRENCY)
        async with httpx.AsyncClient(base_url=url, auth=auth, limits=limits, timeout=60) as client:
            queue = iter(requests)

            async def worker() -> None:
                for path, content, headers in queue:
                    (await client.post(path, content=content, headers=headers)).raise_for_status()

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

    started = time.perf_counter()
    asyncio.run(main())
    return time.perf_counter() - started


def run_floor_aiohttp(requests: list[tuple[str, bytes, dict[str, str]]], url: str, basic: bool) -> float:
    """The floor's posts through aiohttp, the client wsync's sender uses: what the same bytes cost with it."""
    import aiohttp

    async def main() -> None:
        credentials = base64.b64encode(f"{MP_KEY}:{MP_SECRET}".encode()).decode()
        headers = {"Authorization": f"Basic {credentials}"} if basic else {}
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
            queue = iter(requests)

            async def worker() -> None:
                for path, content, request_headers in queue:
                    async with session.post(url + path, data=content, headers=request_headers) as response:
                        await response.read()
                        response.raise_for_status()

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

    started = time.perf_counter()
    asyncio.run(main())
    return time.perf_counter() - started


# drt-core's REST API destination in batch mode: Jinja templates a drt user writes for each API.
_MP_PROFILE = (
    '{"environment":"production","user_identities":{"customerid":{{ r.customer_id|tojson_safe }},'
    '"email":{{ r.email|tojson_safe }}},"user_attributes":{"plan":{{ r.plan|tojson_safe }},'
    '"seats":{{ r.seats|tojson_safe }},"score":{{ r.score|tojson_safe }},"vip":{{ r.vip|tojson_safe }},'
    '"city":{{ r.city|tojson_safe }}},"deleted_user_attributes":{{ r.removed|tojson_safe }}}'
)
_MP_EVENT = (
    '{"environment":"production","user_identities":{"customerid":{{ r.customer_id|tojson_safe }},'
    '"email":{{ r.email|tojson_safe }}},"events":[{"event_type":"custom_event","data":{'
    '"event_name":{{ r.name|tojson_safe }},"custom_event_type":"transaction",'
    '"timestamp_unixtime_ms":{{ r.time }},"source_message_id":{{ r.event_id|tojson_safe }},'
    '"custom_attributes":{"amount":"{{ r.amount }}","sku":{{ r.sku|tojson_safe }}}}}]}'
)
_AMP_IDENTIFY = (
    '{"user_id":{{ r.customer_id|tojson_safe }},"user_properties":{"$set":{"plan":{{ r.plan|tojson_safe }},'
    '"seats":{{ r.seats|tojson_safe }},"score":{{ r.score|tojson_safe }},"vip":{{ r.vip|tojson_safe }},'
    '"city":{{ r.city|tojson_safe }}},"$unset":{"trial_ends":"-"}}}'
)
_AMP_EVENT = (
    '{"user_id":{{ r.customer_id|tojson_safe }},"event_type":{{ r.name|tojson_safe }},"time":{{ r.time }},'
    '"insert_id":{{ r.event_id|tojson_safe }},"event_properties":{"amount":{{ r.amount }},'
    '"sku":{{ r.sku|tojson_safe }}}}'
)


def _each(item: str, separator: str = ",") -> str:
    return "{% for r in rows %}{% if not loop.first %}" + separator + "{% endif %}" + item + "{% endfor %}"


def drt_config(platform_name: str, kind: str, url: str) -> dict:
    """drt-core's rest_api destination for the platform and rows, in batch mode."""
    if platform_name == "mparticle":
        template = "[" + _each(_MP_PROFILE if kind == "profiles" else _MP_EVENT) + "]"
        return {
            "type": "rest_api",
            "url": f"{url}/v2/bulkevents",
            "headers": {"Content-Type": "application/json"},
            "auth": {"type": "basic", "username_env": "BENCH_MP_KEY", "password_env": "BENCH_MP_SECRET"},
            "body_mode": "batch",
            "batch_template": template,
            "max_records_per_request": 100,
        }
    if kind == "profiles":
        template = (
            f"api_key={AMP_KEY}&identification={{% filter urlencode %}}["
            + _each(_AMP_IDENTIFY)
            + "]{% endfilter %}"
        )
        path, content_type = "/identify", "application/x-www-form-urlencoded"
    else:
        template = '{"api_key":"' + AMP_KEY + '","events":[' + _each(_AMP_EVENT) + "]}"
        path, content_type = "/2/httpapi", "application/json"
    return {
        "type": "rest_api",
        "url": f"{url}{path}",
        "headers": {"Content-Type": content_type},
        "body_mode": "batch",
        "batch_template": template,
        "max_records_per_request": 2000,
    }


def run_drt(platform_name: str, rows: Rows, url: str) -> float:
    """drt-core's RestApiDestination.load over the flat rows, its rate limit lifted; wall seconds."""
    from drt.config.destinations_saas import RestApiDestinationConfig
    from drt.config.models import SyncOptions
    from drt.destinations.rest_api import RestApiDestination

    os.environ["BENCH_MP_KEY"], os.environ["BENCH_MP_SECRET"] = MP_KEY, MP_SECRET
    config = RestApiDestinationConfig.model_validate(drt_config(platform_name, rows.kind, url))
    options = SyncOptions.model_validate(
        {"batch_size": len(rows.flat), "rate_limit": {"requests_per_second": 1e9}}
    )
    started = time.perf_counter()
    result = RestApiDestination().load(rows.flat, config, options)
    wall = time.perf_counter() - started
    if result.failed or result.success != len(rows.flat):
        raise RuntimeError(f"drt-core: {result.failed} failed, {result.success} of {len(rows.flat)} sent")
    return wall


# --- the run ------------------------------------------------------------------------------------------------------


def drt_version() -> str | None:
    """drt-core's installed version, or None."""
    try:
        return metadata.version("drt-core")
    except metadata.PackageNotFoundError:
        return None


def ensure_drt() -> bool:
    """drt-core importable, installing it into this Python when missing (a benchmark-only peer)."""
    if drt_version() is None:
        print(f"drt-core is missing: pip install {DRT_INSTALL}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", DRT_INSTALL], check=False)
    return drt_version() is not None


def fetch_stats(url: str) -> dict[str, int]:
    """What the server received since the last look (and reset)."""
    import httpx

    return httpx.get(f"{url}/stats", timeout=30).json()


def run_line(contender: str, platform_name: str, rows: Rows, url: str) -> Result:
    """Runs one line and reads what the server got."""
    built = prebuilt_requests(platform_name, rows, url) if contender.startswith("floor") else []
    fetch_stats(url)
    if contender == "wsync":
        outcome: object = run_wsync(platform_name, rows, url)
    elif contender == "drt-core":
        outcome = run_drt(platform_name, rows, url)
    elif contender == "floor-aiohttp":
        outcome = run_floor_aiohttp(built, url, basic=platform_name == "mparticle")
    else:
        outcome = run_floor(built, url, basic=platform_name == "mparticle")
    arrived = fetch_stats(url)
    if isinstance(outcome, tuple):
        wall, encode, wait = outcome
        return Result(contender, platform_name, rows.kind, rows.count, wall, arrived, encode, wait)
    return Result(contender, platform_name, rows.kind, rows.count, float(outcome), arrived)  # type: ignore[arg-type]


def arrived_items(result: Result) -> int:
    """Profiles or events the server counted for the line."""
    key = "items" if result.kind == "profiles" else "events"
    return sum(v for k, v in result.arrived.items() if k.endswith(f" {key}"))


def report(results: list[Result], args: argparse.Namespace, load: tuple[float, float], seconds: float) -> str:
    """The table and the ratios, as Markdown."""
    lines = [
        "## Forwarding",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `.venv/bin/python bench/forward.py "
        f"--profiles {args.profiles} --events-per-profile {args.events_per_profile}`; load average "
        f"{load[0]:.1f} at start, {load[1]:.1f} at end; {seconds:.0f} s in all.",
        "",
        f"Machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, httpx {metadata.version('httpx')}, "
        f"drt-core {drt_version() or '-'}. Server: one asyncio process on 127.0.0.1 that reads each request whole, "
        "gunzips it, counts its items and acknowledges at once (the same for every contender). The floor posts "
        "with httpx (the goal's yardstick), floor-aiohttp the same bytes with aiohttp, the client wsync sends with.",
        "",
        "| platform | rows | contender | rows sent | arrived | wall s | rows/s | encode s | wait s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    by = {(r.contender, r.platform, r.kind): r for r in results}
    for r in results:
        encode = f"{r.encode_seconds:.2f}" if r.encode_seconds is not None else "-"
        wait = f"{r.wait_seconds:.2f}" if r.wait_seconds is not None else "-"
        lines.append(
            f"| {r.platform} | {r.kind} | {r.contender} | {r.rows:,} | {arrived_items(r):,} | {r.seconds:.2f} | "
            f"{r.rows / r.seconds:,.0f} | {encode} | {wait} |"
        )
    lines += ["", "Ratios (this run's figures; goals: >= 3x drt-core, >= 50% of the floor):", ""]
    for (contender, platform_name, kind), r in by.items():
        if contender != "wsync":
            continue
        parts = []
        for other, label in (
            ("drt-core", "x drt-core"),
            ("floor", "of the floor"),
            ("floor-aiohttp", "of the aiohttp floor"),
        ):
            o = by.get((other, platform_name, kind))
            if o is None:
                continue
            ratio = o.seconds / r.seconds
            parts.append(f"{ratio:.1f}{label}" if other == "drt-core" else f"{ratio:.0%} {label}")
        lines.append(f"- {platform_name} {kind}: wsync {r.rows / r.seconds:,.0f} rows/s, " + ", ".join(parts))
    return "\n".join(lines) + "\n"


def write_results(text: str, path: Path) -> None:
    """Replaces the Forwarding section of the results file (the rest is bench/run.py's)."""
    old = path.read_text() if path.exists() else ""
    before, after = old.rstrip("\n"), ""
    if old.startswith("## Forwarding\n") or "\n## Forwarding\n" in old:
        at = 0 if old.startswith("## Forwarding\n") else old.index("\n## Forwarding\n") + 1
        before = old[:at].rstrip("\n")
        rest = old[at + len("## Forwarding\n") :]
        after = rest[rest.index("\n## ") + 1 :] if "\n## " in rest else ""  # the sections after it
    parts = [part for part in (before, text.rstrip("\n"), after.rstrip("\n")) if part]
    path.write_text("\n\n".join(parts) + "\n")


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=100_000, help="profile changes (default 100,000)")
    parser.add_argument(
        "--events-per-profile", type=int, default=10, help="events a profile (default 10: 1M)"
    )
    parser.add_argument("--platforms", default="mparticle,amplitude")
    parser.add_argument("--kinds", default="profiles,events")
    parser.add_argument("--contenders", default="wsync,drt-core,floor,floor-aiohttp")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--no-results", action="store_true", help="print only")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    """Starts the server, runs every line, prints and records the figures."""
    args = parse_args()
    if args.serve:
        serve()
        return
    contenders = args.contenders.split(",")
    if "drt-core" in contenders and not ensure_drt():
        print("drt-core could not be installed: its lines are left out", flush=True)
        contenders.remove("drt-core")
    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{server.stdout.readline().strip()}"  # type: ignore[union-attr]
        load_start = os.getloadavg()[0]
        started = time.perf_counter()
        results: list[Result] = []
        for kind in args.kinds.split(","):
            rows = build_rows(kind, args.profiles, args.events_per_profile)
            for platform_name in args.platforms.split(","):
                for contender in contenders:
                    result = run_line(contender, platform_name, rows, url)
                    results.append(result)
                    print(
                        f"{platform_name:9} {kind:8} {contender:8} {result.rows:>9,} rows "
                        f"{result.seconds:7.2f} s {result.rows / result.seconds:>10,.0f} rows/s "
                        f"arrived {arrived_items(result):,}",
                        flush=True,
                    )
        text = report(results, args, (load_start, os.getloadavg()[0]), time.perf_counter() - started)
        print("\n" + text)
        if not args.no_results:
            write_results(text, args.results)
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
