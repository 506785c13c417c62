"""The ``runpod`` worker host: the Prefect worker, its pool settings, pod naming, outcomes and sweep."""
