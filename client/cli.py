"""The ``ow`` command line.

    ow files upload PATH --purpose conversations   # prints the file ID as its last line
    ow ls [--type finetune] [--status failed]       # jobs with status, type, model, age, cost
    ow costs [--by job_type] [--since 7d] [--csv]   # GPU spend from the cost ledger
    ow budgets [set NAME --period month --usd 500 | rm NAME]
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
    from jobs.datasets import DatasetError, canonical_purpose
    from store.files import upload_file

    try:
        store = load_artifact_store()
        record = upload_file(store, args.path, canonical_purpose(args.purpose))
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


def _cost_cell(cost) -> str:
    """A job's cost for `ow ls`: dollars, "$0 (local)" on the process pool, "-" while unknown."""
    if cost is None:
        return "-"
    return f"${cost.usd:.4f}" if cost.billed else "$0 (local)"


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip())


def _ls(args: argparse.Namespace) -> int:
    jobs = _jobs().list(limit=args.limit, type=args.type, status=args.status)
    rows = [
        (
            job.id,
            job.type or "-",
            job.status,
            str(job.model or "-"),
            _age(job.created_at),
            _cost_cell(job.cost),
        )
        for job in jobs
    ]
    _print_table(("JOB ID", "TYPE", "STATUS", "MODEL", "AGE", "COST"), rows)
    return EXIT_OK


def _costs(args: argparse.Namespace) -> int:
    import csv

    from client.costs import LOCAL_MESSAGE, Costs

    costs = Costs()
    try:
        charges = costs.charges(since=args.since, until=args.until)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if not charges:
        window = (f" since {args.since}" if args.since else "") + (
            f" until {args.until}" if args.until else ""
        )
        print(LOCAL_MESSAGE if costs.gpu_is_local() else f"no GPU spend recorded{window}")
        return EXIT_OK
    from jobs.costs import cost_report

    rows = cost_report(charges, args.by)
    if args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow([args.by, "usd", "pods", "jobs", "gpu_hours"])
        writer.writerows([row.group, row.usd, row.pods, row.jobs, row.gpu_hours] for row in rows)
        return EXIT_OK
    total = (
        "TOTAL",
        f"{sum(charge.usd for charge in charges):.4f}",
        str(len(charges)),
        str(len({charge.job_id for charge in charges if charge.job_id})),
        f"{sum(charge.seconds * charge.gpu_count for charge in charges) / 3600:.3f}",
    )
    table = [
        (row.group, f"{row.usd:.4f}", str(row.pods), str(row.jobs), f"{row.gpu_hours:.3f}") for row in rows
    ]
    _print_table((args.by.upper().replace("_", " "), "USD", "PODS", "JOBS", "GPU HOURS"), [*table, total])
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


def _budgets(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from client.costs import Costs
    from jobs.budgets import BUDGETS_VARIABLE, Budget, BudgetConfigError
    from jobs.validation import format_validation_error

    costs = Costs()
    try:
        if args.budgets_command == "set":
            costs.set_budget(Budget(name=args.name, scope=args.scope, period=args.period, usd=args.usd))
        elif args.budgets_command == "rm":
            costs.remove_budget(args.name)
        statuses = costs.budgets()
    except ValidationError as exc:
        raise CommandError("; ".join(format_validation_error(exc))) from None
    except (BudgetConfigError, LookupError) as exc:
        raise CommandError(str(exc)) from None
    if not statuses:
        print(f"no budgets set (Prefect variable {BUDGETS_VARIABLE})")
    else:
        rows = [
            (
                status.budget.name,
                status.budget.scope,
                status.budget.period,
                f"{status.budget.usd:.2f}",
                f"{status.spent:.4f}",
                f"{status.left:.4f}",
                f"{status.held:.4f}",
            )
            for status in statuses
        ]
        _print_table(("NAME", "SCOPE", "PERIOD", "USD", "SPENT", "LEFT", "HELD"), rows)
    if statuses and costs.gpu_is_local():
        print("budgets are inert: the GPU stage runs on the local process pool, which rents no GPU")
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
        help="what the file is for: conversations, preference (or preferences), or another purpose (stored unvalidated)",
    )
    upload.set_defaults(handler=_files_upload)
    listing = file_commands.add_parser("ls", help="list uploaded files")
    listing.set_defaults(handler=_files_list)

    ls = commands.add_parser(
        "ls",
        help="list jobs with status, type, model, age and cost (newest first)",
        description="List jobs, newest first. COST is what the job's pods cost in USD, '$0 (local)' for a job "
        "run on the local process pool, '-' until it completed.",
    )
    ls.add_argument(
        "--type", help="only jobs of this type (finetune, inference, eval-inspect, eval-mmlu-pro, custom)"
    )
    ls.add_argument(
        "--status",
        choices=["pending", "in_progress", "completed", "failed", "canceled"],
        help="only jobs in this status",
    )
    ls.add_argument("--limit", type=int, default=20, help="at most this many jobs (default 20)")
    ls.set_defaults(handler=_ls)

    from jobs.costs import GROUP_BY_CHOICES

    costs = commands.add_parser(
        "costs",
        help="GPU spend by day, deployment, job type, model, submitter or job (table or CSV)",
        description="Sum the cost ledger: one charge per RunPod pod, written by the runpod worker when the pod "
        "is gone (RunPod's billed figure where it gave one, else price × seconds alive). A charge belongs to "
        "the day its pod was created (UTC). On the local process pool nothing is rented and nothing is charged.",
    )
    costs.add_argument(
        "--by", choices=GROUP_BY_CHOICES, default="job_type", help="group by (default job_type)"
    )
    costs.add_argument(
        "--since", help="from this day (YYYY-MM-DD, UTC) or this many days back (7d); default: all"
    )
    costs.add_argument("--until", help="up to the end of this day (YYYY-MM-DD, UTC); default: now")
    costs.add_argument(
        "--csv", action="store_true", help="print CSV (group,usd,pods,jobs,gpu_hours) instead of a table"
    )
    costs.set_defaults(handler=_costs)

    budgets = commands.add_parser(
        "budgets",
        help="list, set or remove spending budgets (checked before any pod starts)",
        description="Budgets live in the Prefect variable ow_budgets (a JSON list, editable in the UI). Before "
        "a job's GPU stage starts, its estimated cost (its max_cost_usd, else the cheapest fitting GPU's price "
        "× an estimate of its run time) must fit in what every budget covering it has left this period (UTC); "
        "cache hits cost nothing and are never refused. Without an action: each budget, its spend and what is left.",
    )
    budget_commands = budgets.add_subparsers(dest="budgets_command", metavar="ACTION")
    set_budget = budget_commands.add_parser("set", help="add a budget, or replace the one of the same name")
    set_budget.add_argument("name", help="what refusals and reports call the budget")
    set_budget.add_argument("--usd", type=float, required=True, help="dollars the scope may spend per period")
    set_budget.add_argument(
        "--period", choices=["day", "week", "month"], required=True, help="calendar period, UTC"
    )
    set_budget.add_argument(
        "--scope", default="global", help='"global" (default), "pool:<work pool>" or "submitter:<name>"'
    )
    remove_budget = budget_commands.add_parser("rm", help="remove a budget")
    remove_budget.add_argument("name")
    budgets.set_defaults(handler=_budgets)

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
    ttl.add_argument(
        "rest", nargs=argparse.REMAINDER, help="--check | --extend HOURS | --set HOURS (see ow ttl --help)"
    )
    ttl.set_defaults(handler=None)  # handled before parsing (DELEGATED)

    dev_pod = commands.add_parser(
        "dev-pod", help="start a RunPod pod with the TTL watchdog and SSH but no flow run", add_help=False
    )
    dev_pod.add_argument(
        "rest", nargs=argparse.REMAINDER, help="options of the dev pod (see ow dev-pod --help)"
    )
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
    from client.connection import NoServerError, require_server

    try:
        # Never a temporary server: no server reachable is one line. A subcommand that works
        # without the server sets needs_server=False in its defaults.
        if getattr(args, "needs_server", True):
            require_server()
        return handler(args)
    except (CommandError, NoServerError) as exc:
        print(f"ow: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
