"""The `wsync` command: validate, preview, run, backfill, forward, profile, rejects, erase, demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from wsync_dagster.settings import profile_store_url, syncs_dir

if TYPE_CHECKING:
    from wsync_dagster.runner import RunReport
    from wsync_dagster.spec import SyncSpec

# Exit codes (the README lists them): argparse exits 2 on a usage error.
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CHECK_FAILED = 3
EXIT_BLOCKED = 4
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """A failure to report in one clear line, with a non-zero exit."""


class UsageError(CommandError):
    """A command line that asks for something impossible: one line, exit 2 as argparse's own errors."""


def _load_folder():
    """The sync folder: its valid syncs and the files that do not load."""
    from wsync_dagster.spec import load_sync_folder

    directory = syncs_dir()
    if not directory.exists():
        raise CommandError(f"no sync folder at {directory} (set WSYNC_SYNCS_DIR, or run `wsync demo`)")
    if not directory.is_dir():
        raise CommandError(
            f"{directory} is a file, not a folder of sync files (set WSYNC_SYNCS_DIR to a folder)"
        )
    return load_sync_folder(directory)


def _warn_not_loaded(invalid: list) -> None:
    for file in invalid:
        print(f"wsync: warning: not loaded (see `wsync validate`): {file.errors[0]}", file=sys.stderr)


def _load_spec(name: str):
    folder = _load_folder()
    specs = {spec.name: spec for spec in folder.specs}
    if name not in specs:
        if broken := [file for file in folder.invalid if file.name == name]:
            raise CommandError("\n".join(broken[0].errors))
        not_loaded = ", ".join(file.path.name for file in folder.invalid)
        raise CommandError(
            f"no sync named '{name}' in {syncs_dir()}; syncs: {', '.join(sorted(specs)) or 'none'}"
            + (f"; not loaded: {not_loaded} (see `wsync validate`)" if not_loaded else "")
        )
    _warn_not_loaded(folder.invalid)
    return specs[name]


def _open_store():
    from wsync_dagster.store import open_profile_store

    return open_profile_store(profile_store_url())


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate every sync file, then each mapping against the model's real columns."""
    from wsync_dagster.read_plan import check_mapping

    folder = _load_folder()
    for file in folder.invalid:
        for line in file.errors:
            print(f"✗ {line}", file=sys.stderr)
    failures = len(folder.invalid)
    for spec in folder.specs:
        try:
            plan = check_mapping(spec)
        except Exception as error:  # every kind of failure is reported per sync, then the exit code says it
            failures += 1
            print(f"✗ {spec.name}: {error}", file=sys.stderr)
            continue
        print(
            f"✓ {spec.name}: {len(plan.identities)} identities, {len(plan.attributes)} attributes"
            + (f", {len(plan.custom_attributes)} event attributes" if spec.data_type == "event" else "")
            + (f", {len(plan.ignored)} ignored" if plan.ignored else "")
        )
    if not folder.specs and not folder.invalid:
        print(f"no sync files in {syncs_dir()}")
    return 1 if failures else 0


def cmd_preview(args: argparse.Namespace) -> int:
    """Print sample enriched profiles or events; nothing is written."""
    from wsync_dagster.preview import preview_rows

    if args.limit < 1:
        raise UsageError(f"--limit takes a number of rows, 1 or more (got {args.limit})")
    for row in preview_rows(_load_spec(args.sync), args.limit):
        print(json.dumps(row, default=str))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run a sync through Dagster and print its counts."""
    from wsync_dagster.instance import open_instance
    from wsync_dagster.progress import PROGRESS, TOTALS
    from wsync_dagster.runner import DeliveryBlocked, run_sync

    if args.now and args.partition:
        raise UsageError("--now runs everything due and the window under way; leave out --partition")
    spec = _load_spec(args.sync)
    progress = logging.StreamHandler(sys.stderr)
    progress.setFormatter(logging.Formatter("  %(message)s"))
    # The delivery's totals line would repeat the counts printed below, once the run ends.
    progress.addFilter(lambda record: not getattr(record, TOTALS, False))
    if args.brief:  # how far the run has got stays in the Dagster run's log; waits are still said
        progress.addFilter(lambda record: not getattr(record, PROGRESS, False))
    logging.getLogger("wsync").setLevel(logging.INFO)
    # Progress lines for this command only: a handler left behind would write to a stream gone since.
    logging.getLogger("wsync").addHandler(progress)
    try:
        instance = open_instance()
        store = _open_store()
        try:
            report = run_sync(
                spec,
                store,
                instance,
                partition=args.partition,
                allow_mass_removal=args.allow_mass_removal,
                up_to_now=args.now,
            )
        finally:
            store.close()
    except DeliveryBlocked as blocked:
        print(f"wsync run: {blocked}", file=sys.stderr)
        return EXIT_BLOCKED
    finally:
        logging.getLogger("wsync").removeHandler(progress)
    if not report.partitions:
        print(f"{spec.name}: up to date, no complete partition is due")
        return 0
    if args.brief:
        print(_brief_line(spec, report))
    else:
        print(f"{spec.name}: partitions {report.partitions} (run {report.run_id})")
        _print_totals(report.metadata)
    for warning in report.warnings:
        print(f"  warning: {warning}", file=sys.stderr)
    for failed in report.failed_checks:
        print(f"  check failed: {failed}", file=sys.stderr)
    return EXIT_CHECK_FAILED if report.failed_checks else 0


def _brief_line(spec: SyncSpec, report: RunReport) -> str:
    """`crm_users: 24 partitions delivered: 5,000 rows read, 4,990 applied, 10 rejected`: what a user checks."""
    from wsync_dagster.defs.assets import delivery_key, mapped_key

    mapped = report.metadata.get(mapped_key(spec).to_user_string(), {})
    delivered = report.metadata.get(delivery_key(spec).to_user_string(), {})
    if spec.data_type == "event":
        changed = [
            (delivered.get("events_written", 0), "event written", "events written"),
            (delivered.get("events_duplicate", 0), "duplicate", "duplicates"),
        ]
    else:
        changed = [
            (delivered.get("rows_applied", 0), "applied", "applied"),
            (delivered.get("rows_unchanged", 0), "unchanged", "unchanged"),
        ]
    counts = [
        (mapped.get("rows_read", 0), "row read", "rows read"),
        *changed,
        (mapped.get("rows_rejected", 0), "rejected", "rejected"),
        (delivered.get("identity_conflicts", 0), "identity conflict", "identity conflicts"),
    ]
    # The first two always (what was read, what it changed); the others when there are any.
    said = ", ".join(
        f"{n:,} {one if n == 1 else many}" for index, (n, one, many) in enumerate(counts) if n or index < 2
    )
    where = report.partitions if report.partition_count == 1 else f"{report.partition_count:,} partitions"
    return f"{spec.name}: {where} delivered: {said}"


def _print_totals(metadata: dict[str, dict]) -> None:
    """Per asset, the counts of what the runs did: the last lines of `wsync run` and `wsync backfill`."""
    for asset_key, found in metadata.items():
        counts = ", ".join(
            f"{k}={v}" for k, v in found.items() if isinstance(v, int | float | str) and k != "preview"
        )
        print(f"  {asset_key}: {counts}")


def cmd_forward(args: argparse.Namespace) -> int:
    """Send what a sync's destinations have pending (after --seed: every profile holding its data)."""
    from wsync_dagster.destinations.forwarding import destination_of, forward
    from wsync_dagster.destinations.sender import DestinationError

    spec = _load_spec(args.sync)
    if args.seed and not args.destination:
        raise UsageError("--seed marks every profile for one destination: name it with --destination")
    if not spec.destinations:
        raise CommandError(f"{spec.name}: has no destinations (the sync file's `destinations` section)")
    destinations = [destination_of(spec, args.destination)] if args.destination else spec.destinations
    store = _open_store()
    try:
        for destination in destinations:
            try:
                report = forward(spec, destination, store, seed=args.seed)
            except DestinationError as error:
                raise CommandError(str(error)) from None
            seeded = f" (seeded {report.seeded:,} pending)" if args.seed else ""
            print(f"{spec.name}: forwarded to {report.line()}{seeded}")
            for warning in report.warnings:
                print(f"wsync forward: warning: {warning}", file=sys.stderr)
    finally:
        store.close()
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    """Launch a Dagster backfill of a sync's partitions through the webserver and follow it to its end."""
    from wsync_dagster.backfill import BackfillError, run_backfill

    spec = _load_spec(args.sync)
    try:
        result = run_backfill(spec, args.first, args.last, url=args.url, wait=not args.no_wait)
    except BackfillError as error:
        raise CommandError(str(error)) from None
    progress = result.progress
    if not progress.ended:
        print(f"{spec.name}: backfill {result.backfill_id} launched; follow it at {result.url}")
        return 0
    for run_id, failure in progress.failures.items():
        print(f"  run {run_id} failed: {failure}", file=sys.stderr)
    print(f"{spec.name}: backfill {result.backfill_id} {progress.describe()} ({result.url})")
    _print_totals(progress.totals)
    return 0 if progress.succeeded else EXIT_ERROR


def cmd_status(args: argparse.Namespace) -> int:
    """Print each sync's page: active or paused, last delivery and run, next run, lag, missing partitions."""
    from wsync_dagster.instance import open_instance
    from wsync_dagster.status import print_status, sync_status

    if args.sync:
        specs = [_load_spec(args.sync)]
    else:
        folder = _load_folder()
        _warn_not_loaded(folder.invalid)
        specs = sorted(folder.specs, key=lambda spec: spec.name)
        if not specs:
            print(f"no syncs in {syncs_dir()}")
            return 0
    instance = open_instance()
    store = _open_store()
    try:
        statuses = [sync_status(spec, store, instance) for spec in specs]
    finally:
        store.close()
    if args.json:
        found = [status.as_dict() for status in statuses]
        print(json.dumps(found[0] if args.sync else found, default=str))
        return 0
    print_status(statuses)
    return 0


def _toggle(args: argparse.Namespace, paused: bool) -> int:
    from wsync_dagster.instance import open_instance
    from wsync_dagster.status import StatusError, set_paused

    spec = _load_spec(args.sync)
    try:
        print(set_paused(spec, open_instance(), paused))
    except StatusError as error:
        raise CommandError(str(error)) from None
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    """Stop a sync's schedule or sensor, as the UI's toggle does."""
    return _toggle(args, paused=True)


def cmd_resume(args: argparse.Namespace) -> int:
    """Start a sync's schedule or sensor again, as the UI's toggle does."""
    return _toggle(args, paused=False)


def cmd_profile(args: argparse.Namespace) -> int:
    """Print one profile found by an identity."""
    identity_type, sep, value = args.identity.partition("=")
    if not sep or not value:
        raise CommandError("--identity takes TYPE=VALUE, e.g. --identity email=ada@example.com")
    store = _open_store()
    try:
        profile = store.profile(identity_type, value, args.environment, explain=args.explain)
    finally:
        store.close()
    if profile is None:
        raise CommandError(f"no profile with {identity_type}={value} in {args.environment}")
    if args.json:
        print(json.dumps(profile, default=str))
        return 0
    if args.explain:
        from wsync_dagster.store.explain import describe

        print("\n".join(describe(profile)))
        return 0
    print(f"profile {profile['profile_id']} ({profile['environment']})")
    for kind, ident in profile["identities"].items():
        print(f"  identity  {kind} = {ident}")
    for name, attribute in profile["attributes"].items():
        print(f"  attribute {name} = {attribute!r}")
    for event in profile["events"]:
        print(
            f"  event     {event['event_type']} {event.get('event_name')} @ {event.get('timestamp_unixtime_ms')}"
        )
    return 0


def cmd_rejects(args: argparse.Namespace) -> int:
    """Print a sync's rejected rows and identity conflicts with their reasons."""
    spec = _load_spec(args.sync)
    store = _open_store()
    try:
        rejects = store.rejects(spec.name, spec.sync.environment, limit=args.limit)
    finally:
        store.close()
    if args.json:
        print(json.dumps(rejects, default=str))
        return 0
    for reject in rejects:
        # A destination's reject names the destination (its partition) and the item it refused.
        where = (
            reject["partition"]
            if reject["kind"] == "forward"
            else f"{reject['partition']} row {reject['row_number']}"
        )
        print(f"{where}: {reject['reason']}: {json.dumps(reject['row'], default=str)}")
    conflicts = sum(reject["kind"] == "conflict" for reject in rejects)
    refused = sum(reject["kind"] == "forward" for reject in rejects)
    print(
        f"{len(rejects) - conflicts - refused} rejected rows, {conflicts} identity conflicts"
        + (f", {_count(refused, 'item')} refused by destinations" if refused else ""),
        file=sys.stderr,
    )
    return 0


def _erasure_identities(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The TYPE=VALUE identities of --identity and of each line of --file, trimmed as the mapping trims."""
    from wsync_dagster.identities import IDENTITY_PRIORITY
    from wsync_dagster.mapping import BLANK_CHARACTERS

    given = [("--identity", text) for text in args.identity]
    if args.file is not None:
        try:
            lines = Path(args.file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise CommandError(
                f"--file {args.file}: cannot read: {getattr(error, 'strerror', None) or error}"
            ) from None
        given += [(f"{args.file} line {n}", line) for n, line in enumerate(lines, 1) if line.strip()]
    identities = []
    for where, text in given:
        identity_type, sep, value = text.partition("=")
        identity_type, value = identity_type.strip(), value.strip(BLANK_CHARACTERS)
        if not sep or not value:
            raise CommandError(f"{where}: takes TYPE=VALUE, e.g. email=ada@example.com")
        if identity_type not in IDENTITY_PRIORITY:
            raise CommandError(
                f"{where}: unknown identity type '{identity_type}'; one of {', '.join(IDENTITY_PRIORITY)}"
            )
        identities.append((identity_type, value))
    return list(dict.fromkeys(identities))


def _count(n: int, noun: str) -> str:
    """'1 event', '2 events', '2 identities', '3 rows of …'."""
    if n == 1:
        return f"1 {noun}"
    head, _, tail = noun.partition(" of ")
    plural = head[:-1] + "ies" if head.endswith("y") else head + "s"
    return f"{n} {plural}" + (f" of {tail}" if tail else "")


def cmd_erase(args: argparse.Namespace) -> int:
    """Remove people from the profile store and keep them out; or, with --undo, let them back in."""
    from wsync_dagster.settings import state_dir
    from wsync_dagster.store.erasure import remove_from_batch_files

    identities = _erasure_identities(args)
    if not identities:
        raise CommandError("name who to erase: --identity TYPE=VALUE, or --file with one TYPE=VALUE a line")
    env = args.environment
    store = _open_store()
    try:
        if args.undo:
            for (identity_type, value), lifted in store.lift_erasure(identities, env).items():
                print(
                    f"{identity_type}={value} ({env}): lifted the suppression of {_count(lifted, 'identity')};"
                    " a run that reads their rows delivers them again (`wsync run SYNC --partition KEY`"
                    " re-reads a partition already delivered)"
                    if lifted
                    else f"{identity_type}={value} ({env}): was not suppressed; nothing to lift"
                )
            return 0
        done = store.erase(identities, env)
    finally:
        store.close()
    batch_rows = remove_from_batch_files(state_dir() / "batches" / env, done.values)
    for (identity_type, value), n in done.found.items():
        print(
            f"{identity_type}={value} ({env}): erased its profile; {_count(n, 'identity')} suppressed"
            if n
            else f"{identity_type}={value} ({env}): no profile holds it; suppressed all the same"
        )
    removed = [
        (done.profiles, "profile"),
        (done.identities, "identity"),
        (done.attributes, "attribute value"),
        (done.events, "event"),
        (done.rejects, "stored reject"),
        (batch_rows, "row of undelivered batch files"),
    ]
    print(
        f"removed {', '.join(_count(n, noun) for n, noun in removed)};"
        f" {_count(done.suppressed, 'identity')} suppressed: a later run rejects their rows"
        f" as 'erased on {done.erased_on}'"
    )
    if done.fingerprints:
        print(
            f"dropped the {_count(done.fingerprints, 'row fingerprint')} of"
            f" {', '.join(done.syncs_refingerprinted)}: their next full-mode run applies every row again"
        )
    if done.deletions_queued:
        print(
            f"queued {_count(done.deletions_queued, 'deletion request')} for the destinations that received"
            " them (`wsync forward SYNC` reports them; the identities they delete by are kept until sent)"
        )
    if not done.wal_emptied:
        print(
            "wsync erase: warning: another process is reading the store, so its -wal file still holds old pages;"
            " run `wsync erase` again when no run is going",
            file=sys.stderr,
        )
    return 0


def _shown(path: Path) -> str:
    """A path relative to the working folder when it lies in it (a short line), else as it is."""
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def cmd_demo(args: argparse.Namespace) -> int:
    """Create the demo warehouse and its sync files."""
    from wsync_dagster.demo import SHARED_EMAILS_NOTE, build_demo

    paths = build_demo(Path(args.dir).resolve(), users=args.users, events=args.events)
    print(f"demo warehouse: {_shown(paths.warehouse)}")
    print(f"sync files in {_shown(paths.syncs_dir)}/: {', '.join(path.name for path in paths.sync_files)}")
    print(SHARED_EMAILS_NOTE)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsync", description="Warehouse-to-profile sync on Dagster")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("validate", help="validate every sync file").set_defaults(func=cmd_validate)
    preview = commands.add_parser("preview", help="sample enriched profiles or events")
    preview.add_argument("sync")
    preview.add_argument("--limit", type=int, default=5)
    preview.set_defaults(func=cmd_preview)
    run = commands.add_parser("run", help="run a sync (everything due, or one --partition)")
    run.add_argument("sync")
    run.add_argument("--partition", help="a partition key, or FIRST..LAST")
    run.add_argument(
        "--now",
        action="store_true",
        help="also deliver what the warehouse holds up to now: for incremental time windows, the window under "
        "way too (read again by its scheduled run when it completes); full, cdc and integer syncs read up to "
        "now anyway, so for them it is a plain run",
    )
    run.add_argument(
        "--brief",
        action="store_true",
        help="print one line (partitions delivered, rows read, applied, rejected, identity conflicts) instead "
        "of every count per asset, and no progress lines (they stay in the Dagster run's log)",
    )
    run.add_argument(
        "--allow-mass-removal",
        action="store_true",
        help="let a mirror run remove this sync's attributes from more than sync.mirror_max_removal of its profiles",
    )
    run.set_defaults(func=cmd_run)
    backfill = commands.add_parser(
        "backfill", help="backfill partitions FROM..TO through a running Dagster webserver and its daemon"
    )
    backfill.add_argument("sync")
    backfill.add_argument("--from", dest="first", required=True, metavar="KEY", help="first partition key")
    backfill.add_argument("--to", dest="last", required=True, metavar="KEY", help="last partition key")
    backfill.add_argument(
        "--url",
        default=os.environ.get("WSYNC_DAGSTER_URL", "http://127.0.0.1:3000"),
        help="the Dagster webserver (default $WSYNC_DAGSTER_URL or http://127.0.0.1:3000)",
    )
    backfill.add_argument("--no-wait", action="store_true", help="launch it and return")
    backfill.set_defaults(func=cmd_backfill)
    forward = commands.add_parser(
        "forward", help="send what a sync's destinations have pending (mParticle, Amplitude)"
    )
    forward.add_argument("sync")
    forward.add_argument("--destination", help="one destination of the sync (default: each)")
    forward.add_argument(
        "--seed",
        action="store_true",
        help="first mark every profile holding the sync's data as pending for --destination "
        "(a new destination); reads the profile store, not the warehouse",
    )
    forward.set_defaults(func=cmd_forward)
    status = commands.add_parser(
        "status", help="each sync's state: active or paused, last delivery and run, next run, lag, gaps"
    )
    status.add_argument("sync", nargs="?", help="one sync (default: every sync)")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    pause = commands.add_parser("pause", help="stop a sync's schedule or sensor (the UI's toggle)")
    pause.add_argument("sync")
    pause.set_defaults(func=cmd_pause)
    resume = commands.add_parser("resume", help="start a sync's schedule or sensor again (the UI's toggle)")
    resume.add_argument("sync")
    resume.set_defaults(func=cmd_resume)
    profile = commands.add_parser("profile", help="show one profile")
    profile.add_argument("--identity", required=True, help="TYPE=VALUE, e.g. email=ada@example.com")
    profile.add_argument("--environment", default="production", choices=["production", "development"])
    profile.add_argument("--json", action="store_true")
    profile.add_argument(
        "--explain",
        action="store_true",
        help="per value: the sync, partition, version, run and delivery that set it, what it outranked, "
        "what removed the rest; and the profile's last changes",
    )
    profile.set_defaults(func=cmd_profile)
    rejects = commands.add_parser(
        "rejects", help="rejected rows and identity conflicts of a sync, with reasons"
    )
    rejects.add_argument("sync")
    rejects.add_argument("--limit", type=int, default=None)
    rejects.add_argument("--json", action="store_true")
    rejects.set_defaults(func=cmd_rejects)
    erase = commands.add_parser(
        "erase", help="remove people from the profile store and keep them out (data-subject requests)"
    )
    erase.add_argument("--identity", action="append", default=[], help="TYPE=VALUE; may be given again")
    erase.add_argument("--file", help="a file of people to erase, one TYPE=VALUE a line")
    erase.add_argument("--environment", default="production", choices=["production", "development"])
    erase.add_argument("--undo", action="store_true", help="lift the suppression instead: rows come back")
    erase.set_defaults(func=cmd_erase)
    demo = commands.add_parser("demo", help="create the demo warehouse and sync files")
    demo.add_argument("--dir", default=".", help="where to put data/ and syncs/")
    demo.add_argument("--users", type=int, default=100_000)
    demo.add_argument("--events", type=int, default=1_000_000)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `wsync` console script."""
    from wsync_dagster.cancellation import stop_signals_cancel_queries

    args = _parser().parse_args(argv)
    # SIGTERM stops a command as Ctrl-C does: a warehouse query under way is cancelled on the warehouse,
    # open transactions roll back and one line says so.
    try:
        with stop_signals_cancel_queries():
            return args.func(args)
    except KeyboardInterrupt as interrupt:
        print(f"wsync {args.command}: {str(interrupt) or 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UsageError as error:
        print(f"wsync {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (CommandError, ValueError, RuntimeError, OSError) as error:
        print(f"wsync {args.command}: {error}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
