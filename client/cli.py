"""The ``ow`` command line.

    ow files upload PATH --purpose conversations   # prints the file ID as its last line
    ow ls [--type finetune] [--status failed]       # jobs with status, type, model, age
    ow cancel JOB_ID …
    ow logs JOB_ID
    ow fetch FILE_ID | JOB_ID [-o PATH]
    ow ttl --check | --extend HOURS | --set HOURS   # inside a pod
    ow dev-pod …                                    # a pod with the TTL watchdog and SSH, no flow run

Every subcommand exits 0 on success and non-zero (with the reason on stderr) on failure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class CommandError(Exception):
    """A failure to report to the user in one line (no traceback)."""


def _files_upload(args: argparse.Namespace) -> int:
    from blocks.storage import load_artifact_store
    from jobs.datasets import DatasetError
    from store.files import upload_file

    try:
        store = load_artifact_store()
        record = upload_file(store, args.path, args.purpose)
    except FileNotFoundError:
        raise CommandError(f"no such file: {args.path}") from None
    except DatasetError as exc:
        raise CommandError(f"refused: {exc}") from None
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    rows = f", {record.rows} rows" if record.rows is not None else ""
    print(f"uploaded {record.filename} ({record.bytes} bytes{rows}) to {store.base_url}")
    print(record.id)
    return EXIT_OK


def _files_list(args: argparse.Namespace) -> int:
    from blocks.storage import load_artifact_store
    from store.files import list_files

    for record in list_files(load_artifact_store()):
        print(f"{record.id}\t{record.bytes}\t{record.filename}")
    return EXIT_OK


def _age(created) -> str:
    import datetime as dt

    if created is None:
        return "-"
    seconds = (dt.datetime.now(dt.UTC) - created).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _jobs():
    from client.openweights import OpenWeights

    return OpenWeights().jobs


def _ls(args: argparse.Namespace) -> int:
    jobs = _jobs().list(limit=args.limit, type=args.type, status=args.status)
    rows = [(job.id, job.type or "-", job.status, str(job.model or "-"), _age(job.created_at)) for job in jobs]
    header = ("JOB ID", "TYPE", "STATUS", "MODEL", "AGE")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def _cancel(args: argparse.Namespace) -> int:
    jobs, failed = _jobs(), 0
    for job_id in args.job_ids:
        try:
            print(f"{job_id}: {jobs.cancel(job_id).status}")
        except LookupError as exc:
            print(f"ow: {exc}", file=sys.stderr)
            failed += 1
    return EXIT_FAILED if failed else EXIT_OK


def _logs(args: argparse.Namespace) -> int:
    try:
        print(_jobs().retrieve(args.job_id).logs())
    except LookupError as exc:
        raise CommandError(str(exc)) from None
    return EXIT_OK


def _fetch(args: argparse.Namespace) -> int:
    from jobs.file_ids import is_file_id

    if is_file_id(args.id):
        from client.openweights import OpenWeights
        from store.files import UnknownFileError

        try:
            content = OpenWeights().files.content(args.id)
        except UnknownFileError as exc:
            raise CommandError(str(exc)) from None
        if args.output:
            with open(args.output, "wb") as handle:
                handle.write(content)
            print(args.output)
        else:
            sys.stdout.buffer.write(content)
        return EXIT_OK
    try:
        job = _jobs().retrieve(args.id)
    except LookupError as exc:
        raise CommandError(str(exc)) from None
    if not job.outputs:
        raise CommandError(f"job {args.id} is {job.status} and has no outputs yet")
    print(job.download(args.output or args.id))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ow",
        description="OpenWeights-style jobs on Prefect: upload files, follow and manage jobs.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    files = commands.add_parser("files", help="upload and list content-addressed files")
    file_commands = files.add_subparsers(dest="files_command", metavar="ACTION", required=True)
    upload = file_commands.add_parser(
        "upload",
        help="validate and upload a file; prints its ID (<purpose>:file-<sha256>) last",
        description="Validate a file for its purpose and store it once under its content ID. "
        "The ID is printed as the last line; the exit status is non-zero if the file is refused.",
    )
    upload.add_argument("path", help="file to upload")
    upload.add_argument(
        "--purpose",
        required=True,
        help="what the file is for: conversations, preference, or another purpose (stored unvalidated)",
    )
    upload.set_defaults(handler=_files_upload)
    listing = file_commands.add_parser("ls", help="list uploaded files")
    listing.set_defaults(handler=_files_list)

    ls = commands.add_parser("ls", help="list jobs with status, type, model and age (newest first)")
    ls.add_argument("--type", help="only jobs of this type (finetune, inference, eval-inspect, eval-mmlu-pro, custom)")
    ls.add_argument("--status", choices=["pending", "in_progress", "completed", "failed", "canceled"], help="only jobs in this status")
    ls.add_argument("--limit", type=int, default=20, help="at most this many jobs (default 20)")
    ls.set_defaults(handler=_ls)

    cancel = commands.add_parser("cancel", help="cancel jobs (their GPU stages and pods stop)")
    cancel.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    cancel.set_defaults(handler=_cancel)

    logs = commands.add_parser("logs", help="print a job's logs (control flow and GPU stage)")
    logs.add_argument("job_id", metavar="JOB_ID")
    logs.set_defaults(handler=_logs)

    fetch = commands.add_parser("fetch", help="print a file's content, or download a job's outputs")
    fetch.add_argument("id", metavar="FILE_ID|JOB_ID")
    fetch.add_argument("-o", "--output", help="file (for a file ID) or directory (for a job ID) to write to")
    fetch.set_defaults(handler=_fetch)

    ttl = commands.add_parser(
        "ttl", help="inside a pod: check, extend or set its time to live", add_help=False
    )
    ttl.add_argument("rest", nargs=argparse.REMAINDER, help="--check | --extend HOURS | --set HOURS (see ow ttl --help)")
    ttl.set_defaults(handler=None)  # handled before parsing (DELEGATED)

    dev_pod = commands.add_parser(
        "dev-pod", help="start a RunPod pod with the TTL watchdog and SSH but no flow run", add_help=False
    )
    dev_pod.add_argument("rest", nargs=argparse.REMAINDER, help="options of the dev pod (see ow dev-pod --help)")
    dev_pod.set_defaults(handler=None)
    return parser


def _quiet_prefect_shutdown() -> None:
    # Prefect's background event sender warns "Still processing items" while flushing the
    # block-loaded event at exit; it is not the user's concern in a one-shot command.
    import logging

    logging.getLogger("EventsWorker").setLevel(logging.ERROR)


# Implemented by the pod runtime (they run inside pods without the client); their own parsers own
# every argument, --help included.
DELEGATED = {"ttl": "infra.pod.ttl", "dev-pod": "infra.runpod.dev_pod"}


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_prefect_shutdown()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        import importlib

        return int(importlib.import_module(DELEGATED[argv[0]]).main(argv[1:]) or 0)
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except CommandError as exc:
        print(f"ow: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
