"""The Kubernetes configurations documented in docs/OPERATIONS.md are valid for
dagster-k8s 0.29.27 and name real steps (no cluster needed: the schemas are checked)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import AssetSelection, Definitions, define_asset_job, job, op, validate_run_config
from dagster_k8s import K8sRunLauncher, k8s_job_executor

from overnight_pipeline.definitions import definitions_for
from overnight_pipeline.defs.assets import OVERNIGHT_ASSETS
from overnight_pipeline.defs.calculation import GROUP
from overnight_pipeline.settings import load_settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md"


def documented(name: str) -> dict[str, Any]:
    found = re.search(rf"<!-- validated: {name} -->\n```yaml\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert found, f"docs/OPERATIONS.md has no block marked {name}"
    value = yaml.safe_load(found.group(1))
    assert isinstance(value, dict)
    return value


def k8s_overnight_job() -> Any:
    defs = Definitions(
        assets=OVERNIGHT_ASSETS,
        jobs=[
            define_asset_job(
                "overnight_job_k8s",
                selection=AssetSelection.groups(GROUP),
                executor_def=k8s_job_executor,
            )
        ],
        resources=definitions_for(load_settings(), env_vars=False).resources,
    )
    return defs.resolve_job_def("overnight_job_k8s")


def test_the_documented_k8s_executor_config_is_valid_and_names_real_ops() -> None:
    config = documented("k8s_job_executor")
    job_def = k8s_overnight_job()
    assert validate_run_config(job_def, config)["execution"]["k8s"]["max_concurrent"] == 6
    ops = {node.name for node in job_def.graph.iterate_op_defs()}
    assert set(config["execution"]["config"]["per_step_k8s_config"]) <= ops


def test_a_misspelt_k8s_executor_key_is_refused() -> None:
    config = documented("k8s_job_executor")
    config["execution"]["config"]["max_concurent"] = config["execution"]["config"].pop(
        "max_concurrent"
    )
    with pytest.raises(Exception, match="max_concurent"):
        validate_run_config(k8s_overnight_job(), config)


def test_the_documented_k8s_run_launcher_config_is_valid() -> None:
    launcher = documented("k8s_run_launcher")["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")

    # The launcher's own schema, checked through a throwaway op that takes it as config.
    @op(config_schema=K8sRunLauncher.config_type())
    def launcher_config() -> None: ...

    @job
    def check_launcher() -> None:
        launcher_config()

    validate_run_config(
        check_launcher, {"ops": {"launcher_config": {"config": launcher["config"]}}}
    )
    broken = {**launcher["config"], "job_namspace": "x"}
    with pytest.raises(Exception, match="job_namspace"):
        validate_run_config(check_launcher, {"ops": {"launcher_config": {"config": broken}}})
