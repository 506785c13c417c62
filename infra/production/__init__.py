"""The production profile: a Prefect server on PostgreSQL and Redis (see ``settings`` and ``server``)."""
