"""Every job type is wired up everywhere a user meets it; a test fails naming what a new one lacks.

A job type is declared once (a ``JobSpec`` in ``jobs/specs.py``) plus its stage; these are the places
that cannot be derived from the declaration and must be added by hand: its control deployment and its
``gpu-stage/<type>`` deployment in ``prefect.yaml``, a client attribute (``ow.<name>``), an example in
``examples/`` using that attribute, and a row in the README's table of deployments.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml

from jobs.registry import get_job_spec, gpu_deployment_name, job_types

ROOT = Path(__file__).resolve().parent.parent


def _deployments_in_prefect_yaml() -> set[str]:
    """``flow-name/deployment-name`` of every deployment in prefect.yaml, the flow named as Prefect names it."""
    document = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    names = set()
    for deployment in document["deployments"]:
        module, _, attribute = deployment["entrypoint"].partition(":")
        flow = getattr(importlib.import_module(module), attribute)
        names.add(f"{flow.name}/{deployment['name']}")
    return names


DEPLOYMENTS = _deployments_in_prefect_yaml()
README_DEPLOYMENT_ROWS = {
    match
    for line in (ROOT / "README.md").read_text().splitlines()
    if line.startswith("| `")
    for match in re.findall(r"`([a-z-]+/[a-z-]+)`", line.split("|")[1])
}
EXAMPLES_TEXT = "\n".join(path.read_text() for path in sorted((ROOT / "examples").rglob("*.py")))


def _client_attributes() -> dict[str, list[str]]:
    """Job type → the ``ow.<name>`` attributes that submit it."""
    from client import OpenWeights

    ow = OpenWeights()
    attributes: dict[str, list[str]] = {}
    for name, value in vars(ow).items():
        job_type = None if name.startswith("_") else getattr(value, "job_type", None)
        if isinstance(job_type, str):
            attributes.setdefault(job_type, []).append(name)
    return attributes


CLIENT_ATTRIBUTES = _client_attributes()


def _default_control_deployment(job_type: str) -> str:
    spec = get_job_spec(job_type)
    return spec.control_deployment(spec.params_model.model_construct())  # its defaults; required fields unset


@pytest.mark.parametrize("job_type", job_types())
def test_each_job_type_has_its_deployments_in_prefect_yaml(job_type):
    control = _default_control_deployment(job_type)
    assert control in DEPLOYMENTS, (
        f"job type {job_type}: its control deployment {control} is not in prefect.yaml"
    )
    gpu = gpu_deployment_name(job_type)
    assert gpu in DEPLOYMENTS, f"job type {job_type}: its GPU-stage deployment {gpu} is not in prefect.yaml"


@pytest.mark.parametrize("job_type", job_types())
def test_each_job_type_has_a_client_attribute_and_an_example_that_uses_it(job_type):
    attributes = CLIENT_ATTRIBUTES.get(job_type)
    assert attributes, f"job type {job_type}: no ow.<name> submits it (client/openweights.py)"
    used = [name for name in attributes if re.search(rf"\bow\.{name}\.", EXAMPLES_TEXT)]
    if job_type == "custom":  # as in OpenWeights: a CustomJob subclass, @register("name") makes ow.name
        used += re.findall(r"@register\(", EXAMPLES_TEXT)
    assert used, f"job type {job_type}: no example in examples/ uses ow.{' or ow.'.join(attributes)}"


@pytest.mark.parametrize("job_type", job_types())
def test_each_job_type_has_a_row_in_the_readme(job_type):
    control = _default_control_deployment(job_type)
    assert control in README_DEPLOYMENT_ROWS, (
        f"job type {job_type}: the README's deployment table has no `{control}` row"
    )
