"""The ``ow`` command line.

    ow files upload PATH --purpose conversations   # prints the file ID as its last line

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
    return parser


def _quiet_prefect_shutdown() -> None:
    # Prefect's background event sender warns "Still processing items" while flushing the
    # block-loaded event at exit; it is not the user's concern in a one-shot command.
    import logging

    logging.getLogger("EventsWorker").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_prefect_shutdown()
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
