"""The inside of a pod: the entrypoint, the TTL watchdog and ending the pod we run in."""
