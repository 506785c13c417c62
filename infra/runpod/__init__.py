"""Talking to RunPod: the REST API v2 client, its typed models, GPU choice and pod launching."""
