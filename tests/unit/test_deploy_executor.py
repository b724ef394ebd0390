"""The executor against a recording connection: order, idempotency, minimal changes, error reporting; and the
day-2 commands (status, suspend/resume, teardown, image push) on the same fake."""

from __future__ import annotations

import pytest

from spcs_llm.deploy import cli as deploy_cli
from spcs_llm.deploy import ops, render
from spcs_llm.deploy.config import DeployConfig
from spcs_llm.deploy.snowflake import DeployError, Executor, Session, grant_key, parse_arguments

from .deploy_fixtures import GOLDEN, GOLDEN_FUNCTIONS, load
from .fake_snowflake import FakeSnowflake


def deploy(db: FakeSnowflake, cfg: DeployConfig) -> list[str]:
    lines: list[str] = []
    Executor(Session(db), cfg.access.role, lines.append).apply(render.plan(cfg, GOLDEN_FUNCTIONS))
    return lines


def changed(cfg: DeployConfig, **sections: dict) -> DeployConfig:
    data = cfg.model_dump(by_alias=True)
    for section, values in sections.items():
        data[section].update(values)
    return DeployConfig.parse(data)


def test_first_deploy_creates_everything_in_order() -> None:
    db, cfg = FakeSnowflake(), load("single_gpu")
    lines = deploy(db, cfg)
    steps = render.plan(cfg, GOLDEN_FUNCTIONS)
    assert len(lines) == len(steps) and all(not line.endswith("unchanged") for line in lines)
    creates = [s.split()[0] + " " + s.split()[1] for s in db.mutations]
    order = ["CREATE DATABASE", "CREATE SCHEMA", "CREATE COMPUTE", "CREATE NETWORK", "CREATE EXTERNAL",
             "CREATE IMAGE", "CREATE STAGE", "CREATE SERVICE", "CREATE FUNCTION", "CREATE OR", "CREATE ROLE", "GRANT"]
    firsts = [next(i for i, c in enumerate(creates) if c.startswith(o)) for o in order]
    assert firsts == sorted(firsts), creates
    assert db.mutations == [s.sql for s in steps]  # exactly the dry-run statements, in the same order
    assert lines[0] == f"[1/{len(steps)}] database SPCS_LLM: created"
    # what a user needs afterwards exists and is granted
    assert ("ANALYST" in {g for _, g in db.role_grants})
    assert any(n.startswith('SPCS_LLM.LLM."EMBED_TEXT_768(') for _, _, on, n in db.grants if on == "FUNCTION")


@pytest.mark.parametrize("name", ["single_gpu", "tp4", "scaleout", "cpu"])
def test_second_deploy_changes_nothing(name: str) -> None:
    db, cfg = FakeSnowflake(), load(name)
    deploy(db, cfg)
    before = len(db.statements)
    lines = deploy(db, cfg)
    assert all(line.endswith(": unchanged") for line in lines), lines
    assert db.statements[before:] and all(s.startswith("SHOW") for s in db.statements[before:])


def _second(db: FakeSnowflake, cfg: DeployConfig, new: DeployConfig) -> tuple[list[str], list[str]]:
    deploy(db, cfg)
    mark = len(db.mutations)
    lines = deploy(db, new)
    assert all(line.endswith(": unchanged") for line in deploy(db, new))  # and it converges
    return db.mutations[mark:], [x for x in lines if not x.endswith("unchanged")]


def test_scale_out_alters_only_pool_and_service_counts() -> None:
    db, cfg = FakeSnowflake(), load("single_gpu")
    new = changed(cfg, compute_pool={"max_nodes": 3}, service={"max_instances": 3})
    stmts, lines = _second(db, cfg, new)
    assert stmts == ["ALTER COMPUTE POOL LLM_GPU_S SET MAX_NODES = 3",
                     "ALTER SERVICE SPCS_LLM.LLM.SPCS_LLM_SERVICE SET MAX_INSTANCES = 3"]
    assert [x.split("] ")[1] for x in lines] == ["compute pool LLM_GPU_S: altered",
                                                  "service SPCS_LLM.LLM.SPCS_LLM_SERVICE: altered"]


def test_new_model_alters_the_service_specification_only() -> None:
    db, cfg = FakeSnowflake(), load("single_gpu")
    stmts, _ = _second(db, cfg, changed(cfg, model={"name": "qwen3-8b"}))
    assert [s.split("$$")[0].strip() for s in stmts] == [
        "ALTER SERVICE SPCS_LLM.LLM.SPCS_LLM_SERVICE FROM SPECIFICATION",
        "ALTER SERVICE SPCS_LLM.LLM.SPCS_LLM_SERVICE SET COMMENT = '{}'".format(render.plan(
            changed(cfg, model={"name": "qwen3-8b"}), GOLDEN_FUNCTIONS)[7].facts["comment"])]
    assert "MODEL: qwen3-8b" in db.objects["SERVICES"]["SPCS_LLM.LLM.SPCS_LLM_SERVICE"]["spec"]


def test_batch_settings_alter_functions_in_place_keeping_grants() -> None:
    db, cfg = FakeSnowflake(), load("single_gpu")
    deploy(db, cfg)
    grants = set(db.grants)
    mark = len(db.mutations)
    deploy(db, changed(cfg, functions={"max_batch_rows": 16}))
    stmts = db.mutations[mark:]
    n = sum(len(f.overloads) for f in GOLDEN_FUNCTIONS.values())
    assert len(stmts) == n and all(s.startswith("CREATE OR ALTER FUNCTION") for s in stmts)
    assert all("MAX_BATCH_ROWS = 16" in s for s in stmts)
    assert db.grants == grants


def test_changed_return_type_replaces_the_function_and_grants_it_again() -> None:
    db, cfg = FakeSnowflake(), load("single_gpu")
    deploy(db, cfg)
    mark = len(db.mutations)
    fns = dict(GOLDEN_FUNCTIONS)
    from .deploy_fixtures import _fn
    fns["sentiment"] = _fn("sentiment", ((("text", "VARCHAR"),), "OBJECT"))
    Executor(Session(db), cfg.access.role, lambda _: None).apply(render.plan(cfg, fns))
    stmts = db.mutations[mark:]
    assert [s.split("\n")[0] for s in stmts] == [
        "CREATE OR REPLACE FUNCTION SPCS_LLM.LLM.SENTIMENT(text VARCHAR)",
        "GRANT USAGE ON FUNCTION SPCS_LLM.LLM.SENTIMENT(VARCHAR) TO ROLE SPCS_LLM_USER"]


def test_mirrors_change_alters_the_network_rule_only() -> None:
    db, cfg = FakeSnowflake(), load("single_gpu")
    new = DeployConfig.parse({**cfg.model_dump(by_alias=True), "mirrors": ["hf-mirror.com"]})
    stmts, _ = _second(db, cfg, new)
    rule = "ALTER NETWORK RULE SPCS_LLM.LLM.SPCS_LLM_SERVICE_EGRESS SET"
    assert stmts == [f"{rule} VALUE_LIST = ('hf-mirror.com:443')",
                     f"{rule} COMMENT = '{render.fingerprint('hf-mirror.com:443')}'"]


def test_a_failing_statement_stops_with_a_message_naming_the_step() -> None:
    db, cfg = FakeSnowflake(), load("single_gpu")
    db.fail_on = r"^CREATE SERVICE"
    with pytest.raises(DeployError) as err:
        deploy(db, cfg)
    msg = str(err.value)
    assert "step 8/" in msg and "'service SPCS_LLM.LLM.SPCS_LLM_SERVICE'" in msg
    assert "CREATE SERVICE IF NOT EXISTS SPCS_LLM.LLM.SPCS_LLM_SERVICE" in msg and "Insufficient privileges" in msg
    assert db.statements[-1].startswith("CREATE SERVICE")  # nothing ran after it
    db.fail_on = None
    lines = deploy(db, cfg)  # a rerun picks up where it stopped
    assert lines[6].endswith("unchanged") and lines[7].endswith("created")


def test_pool_with_another_instance_family_is_refused() -> None:
    db, cfg = FakeSnowflake(), load("single_gpu")
    deploy(db, cfg)
    with pytest.raises(DeployError, match="cannot change it"):
        deploy(db, changed(cfg, compute_pool={"instance_family": "GPU_NV_M"}))


def test_parsers_of_show_output() -> None:
    assert parse_arguments("COMPLETE(VARCHAR, ARRAY, OBJECT) RETURN VARCHAR") == (["VARCHAR", "ARRAY", "OBJECT"],
                                                                                 "VARCHAR")
    assert parse_arguments("F(VARCHAR(16777216)) RETURN VECTOR(FLOAT, 768)") == (["VARCHAR"], "VECTOR(FLOAT, 768)")
    assert grant_key("usage", "FUNCTION", 'DB.S."F(MODEL VARCHAR, P ARRAY):VARCHAR(16777216)"') == \
        grant_key("USAGE", "FUNCTION", "DB.S.F(VARCHAR, ARRAY)")


def test_status_suspend_resume_teardown_on_the_fake(capsys: pytest.CaptureFixture[str]) -> None:
    db, cfg = FakeSnowflake(), load("single_gpu")
    deploy(db, cfg)
    db.answers["SPCS_LLM.LLM.SENTIMENT"] = RuntimeError('100357: Request failed: 400 "unknown model"')
    out: list[str] = []
    ok = ops.status(cfg, Session(db), GOLDEN_FUNCTIONS, out.append)
    text = "\n".join(out)
    assert not ok and "FAIL  SENTIMENT(VARCHAR): 100357" in text and "ok    COMPLETE(VARCHAR, VARCHAR)" in text
    assert "status=RUNNING" in text and "INFO ready" in text and "container_name=server" in text
    calls = [s for s in db.statements if s.startswith("SELECT SPCS_LLM")]
    assert "SELECT SPCS_LLM.LLM.EMBED_TEXT_768('llama3.1-8b', 'Snowflake is a data platform.') AS v" in calls
    assert len(calls) == len(render.callable_functions(cfg, GOLDEN_FUNCTIONS))

    s = Session(db)
    ops.suspend(cfg, s, out=out.append)
    ops.suspend(cfg, s, out=out.append)  # already suspended: nothing more
    assert [m for m in db.mutations if m.endswith("SUSPEND")] == [
        "ALTER SERVICE SPCS_LLM.LLM.SPCS_LLM_SERVICE SUSPEND", "ALTER COMPUTE POOL LLM_GPU_S SUSPEND"]
    ops.resume(cfg, s, out=out.append)
    assert db.mutations[-2:] == ["ALTER COMPUTE POOL LLM_GPU_S RESUME",
                                 "ALTER SERVICE SPCS_LLM.LLM.SPCS_LLM_SERVICE RESUME"]

    stmts = ops.teardown_statements(cfg, GOLDEN_FUNCTIONS)
    ops.teardown(s, stmts, out.append)
    assert not db.functions and not db.objects["SERVICES"] and not db.objects["COMPUTE POOLS"]
    assert db.objects["STAGES"] and db.objects["IMAGE REPOSITORIES"]  # kept without --purge
    ops.teardown(s, ops.teardown_statements(cfg, GOLDEN_FUNCTIONS, purge=True), out.append)
    assert not db.objects["STAGES"] and not db.objects["IMAGE REPOSITORIES"]


def test_cli_deploy_push_and_teardown_through_the_fake(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from spcs_llm.cli import main

    db = FakeSnowflake()
    monkeypatch.setattr(deploy_cli, "CONNECT", lambda name: db)
    monkeypatch.setattr(render, "registry", lambda: GOLDEN_FUNCTIONS)
    config = str(GOLDEN / "single_gpu" / "spcs-llm.toml")
    assert main(["deploy", "--config", config]) == 0
    assert main(["deploy", "--config", config]) == 0
    out = capsys.readouterr().out
    assert f"deploy: 0 of {len(render.plan(load('single_gpu'), GOLDEN_FUNCTIONS))} objects changed" in out

    monkeypatch.delenv("SNOWFLAKE_PAT", raising=False)
    assert main(["image", "push", "--config", config]) == 2
    assert "set SNOWFLAKE_PAT" in capsys.readouterr().err
    assert main(["image", "push", "--dry-run", "--config", config]) == 0
    out = capsys.readouterr().out
    url = "myorg-myacct.registry.snowflakecomputing.com/spcs_llm/llm/spcs_llm_repo"
    assert ("$ docker login myorg-myacct.registry.snowflakecomputing.com --username DEPLOYER --password-stdin"
            " < (token)") in out
    assert f"$ docker push {url}/spcs-llm:0.1.0" in out

    monkeypatch.setattr("builtins.input", lambda prompt: "no")
    assert main(["teardown", "--config", config]) == 1 and db.objects["SERVICES"]
    assert main(["teardown", "--yes", "--config", config]) == 0 and not db.objects["SERVICES"]


def test_missing_connector_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from spcs_llm.deploy.snowflake import connect

    monkeypatch.setitem(sys.modules, "snowflake.connector", None)  # as if not installed
    with pytest.raises(DeployError, match=r"pip install 'spcs-llm\[deploy\]'"):
        connect("dev")
