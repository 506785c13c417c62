"""Prepare a production server's database once, before its processes start: migrate, register blocks.

    python -m infra.production.database    # with the server's settings in the environment

Every API process would otherwise do both on startup. On a fresh database several processes starting
together race to insert the same block types, and the loser's startup fails (a unique-key violation on
``block_type.slug`` that stops ``prefect server start --workers N`` altogether). So the profile turns
both off in the server processes (``settings.server_settings``) and does them here, in one process.
"""

from __future__ import annotations

import asyncio


async def prepare_database() -> None:
    """Upgrade the schema to the installed Prefect's head revision, then register the block types."""
    from prefect.server.database import provide_database_interface
    from prefect.server.models.block_registration import run_block_auto_registration

    database = provide_database_interface()
    await database.create_db()  # Alembic upgrade to head; a no-op when already there
    session = await database.session()
    async with session:
        await run_block_auto_registration(session=session)


def main() -> int:
    asyncio.run(prepare_database())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
