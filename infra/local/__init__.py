"""The local stack: the embedded Prefect server and process workers, and their CPU policy."""
