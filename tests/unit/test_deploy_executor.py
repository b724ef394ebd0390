"""The executor against a recording connection that refuses what Snowflake refuses: the two-phase role model,
the pre-flight, idempotency, minimal changes, refusals (privileged role, missing image, refused function name,
block volumes), error reporting; and the day-2 commands (status, suspend/resume, teardown, image push)."""

from __future__ import annotations

import pytest

from spcs_llm.config import ConfigError
from spcs_llm.deploy import check, ops, render
from spcs_llm.deploy import cli as deploy_cli
from spcs_llm.deploy.config import DeployConfig
from spcs_llm.deploy.snowflake import DeployError, Executor, Session, grant_key, parse_arguments

from .deploy_fixtures import GOLDEN, GOLDEN_FUNCTIONS, load, split_statements
from .fake_snowflake import FakeSnowflake, FakeSnowflakeError


def account(cfg: DeployConfig, image: bool = True) -> FakeSnowflake:
    """A fresh account whose user holds ACCOUNTADMIN, with the image pushed (or not)."""
    db = FakeSnowflake()
    if image:
        db.push_image(cfg.fq(cfg.image.repository), cfg.image.name, cfg.image.tag, owner=cfg.deployer)
    return db


def deploy(
    db: FakeSnowflake, cfg: DeployConfig, admin: str | None = "ACCOUNTADMIN", functions: dict | None = None
) -> tuple[int, list[str], list[str]]:
    out: list[str] = []
    err: list[str] = []
    rc = deploy_cli.run_deploy(
        cfg, Session(db), GOLDEN_FUNCTIONS if functions is None else functions, admin, out.append, err.append
    )
    return rc, out, err


def changed(cfg: DeployConfig, **sections: dict) -> DeployConfig:
    data = cfg.model_dump(by_alias=True)
    for section, values in sections.items():
        data[section].update(values)
    return DeployConfig.parse(data)


def test_first_deploy_runs_each_phase_as_its_role_in_order() -> None:
    cfg = load("single_gpu")
    db = account(cfg)
    rc, out, err = deploy(db, cfg)
    assert rc == 0, out + err
    admin, deploy_steps = render.admin_steps(cfg), render.deploy_steps(cfg, GOLDEN_FUNCTIONS)
    user_grant = f"GRANT ROLE {cfg.deployer} TO USER DEPLOYER"  # the connecting user gets the deploy role
    # the image repository exists already: `spcs-llm image push` created it (as the deploy role) to push the image;
    # the service's COMMENT carries the pushed image's digest (U2)
    deploy_steps = [
        render.with_image_digest(s, "sha256:" + "0" * 64) if s.kind == "service" else s for s in deploy_steps
    ]
    assert [s.kind for s in deploy_steps[:5]] == ["image_repository", "stage", "table", "view", "service"]
    assert "image=0000000000000000'" in deploy_steps[4].sql
    expected = (
        [s.sql for s in admin[:2]]
        + [user_grant]
        + [s.facts.get("create_sql", s.sql) for s in admin[2:] + deploy_steps[1:]]
    )
    # U5: the executor sends the documented CREATE (it creates only what SHOW does not find); the script keeps
    # IF NOT EXISTS so that an admin can run it twice
    assert any(m.startswith("CREATE NETWORK RULE SPCS_LLM.LLM.SPCS_LLM_SERVICE_EGRESS\n") for m in db.mutations)
    assert any(
        m.startswith("CREATE EXTERNAL ACCESS INTEGRATION SPCS_LLM_LLM_SPCS_LLM_SERVICE_EAI\n") for m in db.mutations
    )
    assert db.mutations == expected
    uses = [s for s in db.statements if s.startswith("USE ROLE")]
    assert uses[0] == "USE ROLE ACCOUNTADMIN" and uses[-1] == f"USE ROLE {cfg.deployer}"
    assert db.statements.index(uses[-1]) < db.statements.index(deploy_steps[1].sql)
    # the deploy role owns the service and functions; no service role is granted to callers (W12)
    assert db.objects["SERVICES"]["SPCS_LLM.LLM.SPCS_LLM_SERVICE"]["owner"] == cfg.deployer
    assert {f["owner"] for f in db.functions.values()} == {cfg.deployer}
    assert not any(g[2] == "SERVICE_ROLE" for g in db.grants)
    assert ("SPCS_LLM_LLM_USER", "ROLE", "ANALYST") in db.role_grants
    assert any(
        n.startswith('SPCS_LLM.LLM."EMBED_TEXT_768(')
        for r, _, on, n in db.grants
        if on == "FUNCTION" and r == cfg.caller_role
    )
    assert out[-1] == f"deploy: {len(deploy_steps) - 1} of {len(deploy_steps)} objects changed"


@pytest.mark.parametrize("name", ["single_gpu", "tp4", "scaleout", "cpu"])
def test_second_deploy_as_the_deploy_role_alone_changes_nothing(name: str) -> None:
    cfg = load(name)
    db = account(cfg)
    assert deploy(db, cfg)[0] == 0
    before = len(db.mutations)
    rc, out, _ = deploy(db, cfg, admin=None)  # no admin role: the pre-flight finds the admin phase complete
    assert rc == 0 and len(db.mutations) == before
    assert all(line.endswith(": unchanged") for line in out if line.startswith("[")), out


def test_deploy_without_the_admin_phase_creates_nothing_and_says_what_to_run() -> None:
    cfg = load("single_gpu")
    db = account(cfg)
    rc, out, err = deploy(db, cfg, admin=None)
    assert rc == 1 and not db.mutations
    text = "\n".join(out)
    assert f"MISSING  deploy role {cfg.deployer}: USE ROLE {cfg.deployer} failed (002003 (02000)" in text
    assert "spcs-llm deploy --admin-sql" in text and "stopped before creating anything" in err[-1]


def test_admin_sql_then_deploy_as_a_plain_user() -> None:
    """The admin runs the printed script; the user, who holds only the deploy role, runs deploy."""
    cfg = changed(load("single_gpu"), roles={"users": ["ALICE"]})
    db = account(cfg)
    for stmt in split_statements(render.admin_script(cfg)):
        db.cursor().execute(stmt)
    db.user, db.role = "ALICE", "PUBLIC"
    db.role_grants.add(("PUBLIC", "USER", "ALICE"))
    rc, out, err = deploy(db, cfg, admin=None)
    assert rc == 0, out + err
    assert db.objects["SERVICES"]["SPCS_LLM.LLM.SPCS_LLM_SERVICE"]["owner"] == cfg.deployer


def test_a_privileged_role_never_creates_the_service() -> None:
    cfg = load("single_gpu")
    db = account(cfg)
    deploy_cli._admin_phase(cfg, Session(db), "ACCOUNTADMIN", lambda _: None)
    db.role = "ACCOUNTADMIN"
    with pytest.raises(DeployError, match=r"refusing to create the service as ACCOUNTADMIN: .*--admin-sql"):
        Executor(Session(db), lambda _: None).apply(render.deploy_steps(cfg, GOLDEN_FUNCTIONS))
    assert not any(s.startswith("CREATE SERVICE") for s in db.statements)
    with pytest.raises(FakeSnowflakeError, match="privileged role ACCOUNTADMIN"):  # the fake refuses it too
        db.cursor().execute(render.service_step(cfg).sql)
    with pytest.raises(ConfigError, match="roles.deployer = 'ACCOUNTADMIN': Snowflake refuses a service owned by"):
        changed(cfg, roles={"deployer": "accountadmin"})


def test_missing_image_stops_before_anything_is_created() -> None:
    cfg = load("single_gpu")
    db = account(cfg, image=False)
    rc, out, _ = deploy(db, cfg)
    assert rc == 1
    text = "\n".join(out)
    assert "MISSING  image spcs-llm:0.1.0 in SPCS_LLM.LLM.SPCS_LLM_REPO" in text
    assert "run `spcs-llm image push` first" in text
    assert not any(
        s.startswith(("CREATE SERVICE", "CREATE IMAGE", "CREATE STAGE", "CREATE FUNCTION")) for s in db.statements
    )
    db.cursor().execute(f"USE ROLE {cfg.deployer}")
    db.cursor().execute(render.deploy_steps(cfg, {})[0].sql)  # what `image push` does first: the repository
    db.push_image("SPCS_LLM.LLM.SPCS_LLM_REPO", "spcs-llm", "0.1.0")
    assert deploy(db, cfg, admin=None)[0] == 0


def test_refused_function_name_is_reported_and_the_rest_is_deployed() -> None:
    cfg = load("single_gpu")
    db = account(cfg)
    db.refuse_names = {"AI_AGG"}
    rc, out, err = deploy(db, cfg)
    assert rc == 1
    assert any(line.endswith("function SPCS_LLM.LLM.AI_AGG(ARRAY, VARCHAR): refused") for line in out)
    assert any("AI_AGG(ARRAY, VARCHAR) TO SPCS_LLM_LLM_USER: skipped (AI_AGG was refused)" in line for line in out)
    assert "refused the function name(s) AI_AGG (002141 (42601)" in err[-1]
    assert '[functions] rename = { AI_AGG = "SPCS_AI_AGG" }' in err[-1]
    assert {k[0] for k in db.functions} >= {"SPCS_LLM.LLM.COMPLETE", "SPCS_LLM.LLM.EMBED_TEXT_768"}
    renamed = changed(cfg, functions={"rename": {"ai_agg": "spcs_ai_agg"}})
    rc, out, err = deploy(db, renamed, admin=None)
    assert rc == 0, err
    assert ("SPCS_LLM.LLM.SPCS_AI_AGG", ("ARRAY", "VARCHAR")) in db.functions
    assert any(n.startswith('SPCS_LLM.LLM."SPCS_AI_AGG(') for _, _, on, n in db.grants if on == "FUNCTION")
    assert "SPCS_LLM.LLM.SPCS_AI_AGG(ARRAY_AGG(col), 'instruction')" in render.script(renamed, GOLDEN_FUNCTIONS)


def test_a_failure_that_is_not_about_the_name_still_stops() -> None:
    cfg = load("single_gpu")
    db = account(cfg)
    db.fail_on = r"^CREATE FUNCTION SPCS_LLM.LLM.AI_AGG"
    with pytest.raises(DeployError, match="Insufficient privileges"):
        deploy(db, cfg)


def _second(db: FakeSnowflake, cfg: DeployConfig, new: DeployConfig) -> tuple[list[str], list[str]]:
    assert deploy(db, cfg)[0] == 0
    mark = len(db.mutations)
    rc, out, err = deploy(db, new)
    assert rc == 0, out + err
    rc, again, _ = deploy(db, new)  # and it converges
    assert rc == 0 and all(x.endswith("unchanged") for x in again if x.startswith("["))
    return db.mutations[mark:], [x for x in out if x.startswith("[") and not x.endswith("unchanged")]


def test_scale_out_alters_only_pool_and_service_counts() -> None:
    cfg = load("single_gpu")
    new = changed(cfg, compute_pool={"max_nodes": 3}, service={"max_instances": 3, "cpu": 2})
    stmts, lines = _second(account(cfg), cfg, new)
    assert stmts[0] == "ALTER COMPUTE POOL LLM_GPU_S SET MAX_NODES = 3"
    assert stmts[-1] == "ALTER SERVICE SPCS_LLM.LLM.SPCS_LLM_SERVICE SET MAX_INSTANCES = 3"
    assert "scale-out follows CPU load only" in new.warnings()[0]  # U11: said, with what to set


def test_new_model_alters_the_service_specification_only() -> None:
    cfg = load("single_gpu")
    new = changed(cfg, model={"name": "qwen3-8b"})
    stmts, _ = _second(account(cfg), cfg, new)
    comment = render.with_image_digest(render.service_step(new), "sha256:" + "0" * 64).facts["comment"]
    assert [s.split("$$")[0].strip() for s in stmts] == [
        "ALTER SERVICE SPCS_LLM.LLM.SPCS_LLM_SERVICE FROM SPECIFICATION",
        f"ALTER SERVICE SPCS_LLM.LLM.SPCS_LLM_SERVICE SET COMMENT = '{comment}'",
    ]


def test_a_new_image_under_the_same_tag_rolls_out() -> None:
    """U2: Snowflake keeps the image version it resolved at CREATE SERVICE; only ALTER SERVICE ... FROM
    SPECIFICATION takes the newest. A re-pushed tag (new digest) makes deploy issue it."""
    cfg = load("single_gpu")
    db = account(cfg)
    assert deploy(db, cfg)[0] == 0
    mark = len(db.mutations)
    db.push_image(cfg.fq(cfg.image.repository), digest="sha256:" + "ab" * 32)
    assert deploy(db, cfg, admin=None)[0] == 0
    stmts = db.mutations[mark:]
    assert len(stmts) == 2 and stmts[0].startswith("ALTER SERVICE SPCS_LLM.LLM.SPCS_LLM_SERVICE FROM SPECIFICATION")
    assert stmts[1].startswith("ALTER SERVICE SPCS_LLM.LLM.SPCS_LLM_SERVICE SET COMMENT = 'spcs-llm ")
    assert db.mutations[-1].endswith("image=abababababababab'")


def test_batch_settings_alter_functions_in_place_keeping_grants() -> None:
    cfg = load("single_gpu")
    db = account(cfg)
    deploy(db, cfg)
    grants = set(db.grants)
    mark = len(db.mutations)
    assert deploy(db, changed(cfg, functions={"max_batch_rows": 16}), admin=None)[0] == 0
    stmts = db.mutations[mark:]
    n = sum(len(f.overloads) for f in GOLDEN_FUNCTIONS.values())
    # U4: CREATE OR ALTER without COMMENT (not in its list of alterations), then ALTER FUNCTION ... SET COMMENT
    assert [" ".join(s.split()[:2]) for s in stmts] == ["CREATE OR", "ALTER FUNCTION"] * n
    pairs = zip(stmts[::2], stmts[1::2], strict=True)
    assert all(a.split()[4].split("(")[0] == b.split()[2].split("(")[0] for a, b in pairs)
    assert all("MAX_BATCH_ROWS = 16" in s and "COMMENT" not in s for s in stmts[::2])
    assert db.grants == grants
    assert deploy(db, changed(cfg, functions={"max_batch_rows": 16}), admin=None)[1][-1].startswith("deploy: 0 of")


def test_changed_return_type_replaces_the_function_and_grants_it_again() -> None:
    from .deploy_fixtures import _fn

    cfg = load("single_gpu")
    db = account(cfg)
    deploy(db, cfg)
    mark = len(db.mutations)
    fns = dict(GOLDEN_FUNCTIONS)
    fns["sentiment"] = _fn("sentiment", ((("text", "VARCHAR"),), "OBJECT"))
    assert deploy(db, cfg, admin=None, functions=fns)[0] == 0
    assert [s.split("\n")[0] for s in db.mutations[mark:]] == [
        "CREATE OR REPLACE FUNCTION SPCS_LLM.LLM.SENTIMENT(text VARCHAR)",
        "GRANT USAGE ON FUNCTION SPCS_LLM.LLM.SENTIMENT(VARCHAR) TO ROLE SPCS_LLM_LLM_USER",
    ]


def test_mirrors_change_is_one_alter_network_rule() -> None:
    cfg = load("single_gpu")
    new = DeployConfig.parse({**cfg.model_dump(by_alias=True), "mirrors": ["hf-mirror.com"]})
    stmts, _ = _second(account(cfg), cfg, new)
    hosts = "'hf-mirror.com:443', 'cdn-lfs.hf-mirror.com:443', 'cdn-lfs-us-1.hf-mirror.com:443'"
    assert stmts == [
        f"ALTER NETWORK RULE SPCS_LLM.LLM.SPCS_LLM_SERVICE_EGRESS SET VALUE_LIST = ({hosts}) "
        f"COMMENT = '{render.fingerprint(hosts.replace(chr(39), '').replace(' ', ''))}'"
    ]
    db = FakeSnowflake()
    # W7: the bare form is not in the documented grammar
    with pytest.raises(FakeSnowflakeError, match="(?s)001003 .*syntax error"):
        db.cursor().execute("ALTER NETWORK RULE X.Y.Z SET COMMENT = 'c'")


def test_redeploy_with_mirrors_removed_unsets_the_integrations() -> None:
    cfg = load("single_gpu")
    new = DeployConfig.parse({**cfg.model_dump(by_alias=True), "mirrors": []})
    stmts, _ = _second(account(cfg), cfg, new)
    assert "ALTER SERVICE SPCS_LLM.LLM.SPCS_LLM_SERVICE UNSET EXTERNAL_ACCESS_INTEGRATIONS" in stmts
    assert not any("EXTERNAL_ACCESS_INTEGRATIONS = ()" in s for s in stmts)
    db = account(cfg)
    deploy(db, cfg)
    db.role = cfg.deployer
    with pytest.raises(FakeSnowflakeError, match="unexpected '\\)'"):  # W6: what the old executor sent
        db.cursor().execute("ALTER SERVICE SPCS_LLM.LLM.SPCS_LLM_SERVICE SET EXTERNAL_ACCESS_INTEGRATIONS = ()")


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"volumes": {"block_size": "400Gi"}}, "model cache volume changes from block:300Gi to block:400Gi"),
        ({"volumes": {"model_cache": "stage"}}, "model cache volume changes from block:300Gi to stage"),
    ],
)
def test_block_volume_changes_are_refused_with_what_to_do(change: dict, why: str) -> None:
    cfg = load("tp4")
    db = account(cfg)
    assert deploy(db, cfg)[0] == 0
    mark = len(db.mutations)
    with pytest.raises(DeployError, match=f"(?s)uses a block volume and its {why}.*spcs-llm teardown"):
        deploy(db, changed(cfg, **change))
    assert not any(s.startswith("ALTER SERVICE") for s in db.mutations[mark:])
    with pytest.raises(ConfigError, match="block' needs service.min_instances = max_instances"):
        changed(cfg, compute_pool={"max_nodes": 2}, service={"max_instances": 2, "cpu": 4})


def test_block_volume_teardown_uses_force_and_says_what_it_deletes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from spcs_llm.cli import main

    cfg = load("tp4")
    db = account(cfg)
    assert deploy(db, cfg)[0] == 0
    plan = ops.teardown_plan(cfg, GOLDEN_FUNCTIONS)
    assert "DROP SERVICE IF EXISTS AI.CORTEX_SELF.SPCS_LLM_SERVICE FORCE" in plan.deploy
    db.role = cfg.deployer
    with pytest.raises(FakeSnowflakeError, match="FORCE"):  # W5: what the old teardown sent
        db.cursor().execute("DROP SERVICE IF EXISTS AI.CORTEX_SELF.SPCS_LLM_SERVICE")
    monkeypatch.setattr(deploy_cli, "CONNECT", lambda name: db)
    monkeypatch.setattr(render, "registry", lambda: GOLDEN_FUNCTIONS)
    prompts: list[str] = []
    monkeypatch.setattr("builtins.input", lambda prompt: prompts.append(prompt) or "yes")
    assert main(["teardown", "--admin-role", "ACCOUNTADMIN", "--config", str(GOLDEN / "tp4" / "spcs-llm.toml")]) == 0
    out = capsys.readouterr().out
    assert "-- warning: the service's block volume (300Gi, the downloaded weights) is deleted with it" in out
    assert "snapshot" in out and prompts
    assert not db.objects["SERVICES"] and not db.functions and not db.objects["COMPUTE POOLS"]
    assert "LLM_CALLER" not in db.objects["ROLES"] and cfg.deployer in db.objects["ROLES"]  # kept without --purge


def test_a_failing_statement_stops_with_a_message_naming_the_step() -> None:
    cfg = load("single_gpu")
    db = account(cfg)
    db.fail_on = r"^CREATE SERVICE"
    with pytest.raises(DeployError) as err:
        deploy(db, cfg)
    msg = str(err.value)
    assert "step 5/" in msg and "'service SPCS_LLM.LLM.SPCS_LLM_SERVICE'" in msg
    assert "CREATE SERVICE IF NOT EXISTS SPCS_LLM.LLM.SPCS_LLM_SERVICE" in msg and "Insufficient privileges" in msg
    assert db.statements[-1].startswith("CREATE SERVICE")  # nothing ran after it
    db.fail_on = None
    rc, out, _ = deploy(db, cfg, admin=None)  # a rerun picks up where it stopped
    steps = [x for x in out if x.startswith("[")]
    assert rc == 0 and all(x.endswith("unchanged") for x in steps[:4]) and steps[4].endswith("created")
    assert " service " in steps[4]


def test_pool_with_another_instance_family_says_how_to_change_it() -> None:
    cfg = load("single_gpu")
    db = account(cfg)
    deploy(db, cfg)
    with pytest.raises(
        DeployError,
        match=r"suspend the pool .* SET INSTANCE_FAMILY = GPU_NV_M` as its owner, "
        r"or `spcs-llm teardown`",
    ):
        deploy(db, changed(cfg, compute_pool={"instance_family": "GPU_NV_M"}))


def test_check_prints_a_checklist_and_blocks_on_what_blocks() -> None:
    cfg = load("single_gpu")
    db = account(cfg)
    assert deploy(db, cfg)[0] == 0
    out: list[str] = []
    items = check.preflight(cfg, Session(db))
    check.checklist(cfg, items, out.append)
    text = "\n".join(out)
    assert not any(it.blocks for it in items), text
    assert "ok       instance family GPU_NV_S: 6 vCPU, 27 GiB, 1 x A10G" in text
    assert "ok       image spcs-llm:0.1.0 in SPCS_LLM.LLM.SPCS_LLM_REPO" in text
    assert "ok       warehouse COMPUTE_WH" in text
    assert "warn     event table: none set" in text and "ALTER ACCOUNT SET EVENT_TABLE" in text
    assert "skip     network rule" in text and text.endswith("nothing blocks the deploy")
    db.families = [f for f in db.families if f["name"] != "GPU_NV_S"]  # a region without the family
    db.warehouse = None
    items = check.preflight(cfg, Session(db))
    family = next(it for it in items if it.what.startswith("instance family"))
    assert family.blocks and "CPU_X64_M" in family.fix[0] and "GPU_NV_S" not in family.fix[0]
    assert next(it for it in items if it.what == "warehouse").status == "warn"


def test_check_reports_missing_grants_with_the_sql_that_fixes_them() -> None:
    cfg = load("single_gpu")
    db = account(cfg)
    deploy(db, cfg)
    db.grants.discard((cfg.deployer, "USAGE", "COMPUTE_POOL", "LLM_GPU_S"))
    items = check.preflight(cfg, Session(db))
    bad = [it for it in items if it.blocks]
    assert [it.fix for it in bad] == [
        ["GRANT USAGE, MONITOR, OPERATE, MODIFY ON COMPUTE POOL LLM_GPU_S TO ROLE SPCS_LLM_LLM_DEPLOYER"]
    ]
    assert check.preflight(cfg, Session(db), admin_pending=True)[0].status == "ok"


def test_check_through_the_cli_exits_non_zero_when_blocked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from spcs_llm.cli import main

    cfg = load("single_gpu")
    db = account(cfg, image=False)
    monkeypatch.setattr(deploy_cli, "CONNECT", lambda name: db)
    config = str(GOLDEN / "single_gpu" / "spcs-llm.toml")
    assert main(["deploy", "--check", "--config", config]) == 1
    assert "MISSING  deploy role SPCS_LLM_LLM_DEPLOYER" in capsys.readouterr().out
    assert main(["deploy", "--check", "--admin-role", "ACCOUNTADMIN", "--config", config]) == 0
    assert "todo     deploy role" in capsys.readouterr().out
    assert not db.mutations  # --check changes nothing


def test_parsers_of_show_output() -> None:
    assert parse_arguments("COMPLETE(VARCHAR, ARRAY, OBJECT) RETURN VARCHAR") == (
        ["VARCHAR", "ARRAY", "OBJECT"],
        "VARCHAR",
    )
    assert parse_arguments("F(VARCHAR(16777216)) RETURN VECTOR(FLOAT, 768)") == (["VARCHAR"], "VECTOR(FLOAT, 768)")
    assert grant_key("usage", "FUNCTION", 'DB.S."F(MODEL VARCHAR, P ARRAY):VARCHAR(16777216)"') == grant_key(
        "USAGE", "FUNCTION", "DB.S.F(VARCHAR, ARRAY)"
    )
    assert grant_key("USAGE", "COMPUTE POOL", "p") == ("USAGE", "COMPUTE_POOL", "P")


def test_status_suspend_resume_teardown_on_the_fake() -> None:
    cfg = load("single_gpu")
    db = account(cfg)
    deploy(db, cfg)
    db.answers["SPCS_LLM.LLM.SENTIMENT"] = RuntimeError('100357: Request failed: 400 "unknown model"')
    s = Session(db)
    s.use_role(cfg.deployer)
    out: list[str] = []
    ok = ops.status(cfg, s, GOLDEN_FUNCTIONS, out.append)
    text = "\n".join(out)
    assert not ok and "FAIL  SENTIMENT(VARCHAR): 100357" in text and "ok    COMPLETE(VARCHAR, VARCHAR)" in text
    assert "status=RUNNING" in text and "INFO ready" in text and "container_name=server" in text
    calls = [x for x in db.statements if x.startswith("SELECT SPCS_LLM")]
    assert "SELECT SPCS_LLM.LLM.EMBED_TEXT_768('llama3.1-8b', 'Snowflake is a data platform.') AS v" in calls
    assert len(calls) == len(render.callable_functions(cfg, GOLDEN_FUNCTIONS))

    ops.suspend(cfg, s, out=out.append)
    ops.suspend(cfg, s, out=out.append)  # already suspended: nothing more
    assert [m for m in db.mutations if m.endswith("SUSPEND")] == [
        "ALTER SERVICE SPCS_LLM.LLM.SPCS_LLM_SERVICE SUSPEND",
        "ALTER COMPUTE POOL LLM_GPU_S SUSPEND",
    ]
    ops.resume(cfg, s, out=out.append)
    assert db.mutations[-2:] == [
        "ALTER COMPUTE POOL LLM_GPU_S RESUME",
        "ALTER SERVICE SPCS_LLM.LLM.SPCS_LLM_SERVICE RESUME",
    ]

    plan = ops.teardown_plan(cfg, GOLDEN_FUNCTIONS)
    assert "DROP SERVICE IF EXISTS SPCS_LLM.LLM.SPCS_LLM_SERVICE" in plan.deploy  # a stage volume: no FORCE
    ops.teardown(s, plan.deploy, out.append)
    with pytest.raises(DeployError, match="Insufficient privileges to operate on external access integration"):
        ops.teardown(s, plan.admin, out.append)  # the deploy role does not own the account-level objects
    s.use_role("ACCOUNTADMIN")
    ops.teardown(s, plan.admin, out.append)
    assert not db.functions and not db.objects["SERVICES"] and not db.objects["COMPUTE POOLS"]
    assert db.objects["STAGES"] and db.objects["IMAGE REPOSITORIES"]  # kept without --purge
    purge = ops.teardown_plan(cfg, GOLDEN_FUNCTIONS, purge=True)
    ops.teardown(s, purge.statements, out.append)
    assert not db.objects["STAGES"] and not db.objects["IMAGE REPOSITORIES"]
    assert cfg.deployer not in db.objects["ROLES"]


def test_cli_deploy_push_and_teardown_through_the_fake(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from spcs_llm.cli import main

    cfg = load("single_gpu")
    db = account(cfg)
    monkeypatch.setattr(deploy_cli, "CONNECT", lambda name: db)
    monkeypatch.setattr(render, "registry", lambda: GOLDEN_FUNCTIONS)
    config = str(GOLDEN / "single_gpu" / "spcs-llm.toml")
    assert main(["deploy", "--admin-role", "ACCOUNTADMIN", "--config", config]) == 0
    assert main(["deploy", "--config", config]) == 0
    out = capsys.readouterr().out
    n = len(render.deploy_steps(cfg, GOLDEN_FUNCTIONS))
    assert f"deploy: 0 of {n} objects changed" in out

    monkeypatch.delenv("SNOWFLAKE_PAT", raising=False)
    assert main(["image", "push", "--config", config]) == 2
    assert "set SNOWFLAKE_PAT" in capsys.readouterr().err
    assert main(["image", "push", "--dry-run", "--config", config]) == 0
    out = capsys.readouterr().out
    url = "myorg-myacct.registry.snowflakecomputing.com/spcs_llm/llm/spcs_llm_repo"
    assert (
        "$ docker login myorg-myacct.registry.snowflakecomputing.com --username DEPLOYER --password-stdin < (token)"
    ) in out
    assert f"$ docker push {url}/spcs-llm:0.1.0" in out

    monkeypatch.setattr("builtins.input", lambda prompt: "no")
    assert main(["teardown", "--config", config]) == 1 and db.objects["SERVICES"]
    assert main(["teardown", "--yes", "--config", config]) == 0 and not db.objects["SERVICES"]
    out = capsys.readouterr().out
    assert "left to an admin" in out and "DROP COMPUTE POOL IF EXISTS LLM_GPU_S;" in out
    assert db.objects["COMPUTE POOLS"]  # no admin role: the account-level objects stay


def test_image_push_creates_the_repository_before_the_first_deploy(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from spcs_llm.cli import main

    cfg = load("single_gpu")
    db = account(cfg, image=False)
    deploy_cli._admin_phase(cfg, Session(db), "ACCOUNTADMIN", lambda _: None)
    monkeypatch.setattr(deploy_cli, "CONNECT", lambda name: db)
    config = str(GOLDEN / "single_gpu" / "spcs-llm.toml")
    assert main(["image", "push", "--dry-run", "--config", config]) == 0  # says what it would create, creates nothing
    out = capsys.readouterr().out
    assert "$ (SQL) CREATE IMAGE REPOSITORY IF NOT EXISTS SPCS_LLM.LLM.SPCS_LLM_REPO" in out
    assert (
        "docker push ORGNAME-ACCOUNTNAME.registry.snowflakecomputing.com/spcs_llm/llm/spcs_llm_repo/spcs-llm:0.1.0"
    ) in out
    assert "SPCS_LLM.LLM.SPCS_LLM_REPO" not in db.objects["IMAGE REPOSITORIES"]
    monkeypatch.setenv("SNOWFLAKE_PAT", "t")
    ran: list[list[str]] = []
    monkeypatch.setattr("spcs_llm.deploy.docker.Docker.run", lambda self, argv, stdin="": ran.append(argv))
    assert main(["image", "push", "--config", str(GOLDEN / "single_gpu" / "spcs-llm.toml")]) == 0
    assert db.objects["IMAGE REPOSITORIES"]["SPCS_LLM.LLM.SPCS_LLM_REPO"]["owner"] == cfg.deployer
    assert ran[-1][:2] == ["docker", "push"]


def test_missing_connector_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from spcs_llm.deploy.snowflake import connect

    monkeypatch.setitem(sys.modules, "snowflake.connector", None)  # as if not installed
    with pytest.raises(DeployError, match=r"pip install 'spcs-llm\[deploy\]'"):
        connect("dev")


def test_models_recommend_asks_the_account_when_connected(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`models recommend --connection`: the families come from SHOW COMPUTE POOL INSTANCE FAMILIES."""
    from spcs_llm.cli import main

    db = FakeSnowflake()
    monkeypatch.setattr(deploy_cli, "CONNECT", lambda name: db)
    assert main(["models", "recommend", "qwen2.5-7b-instruct", "--connection"]) == 0
    out = capsys.readouterr().out
    assert "GPU_NV_M               4 x A10G (24 GiB each)" in out and "GPU_NV_S" not in out  # 32k x 8 needs 4
    assert "GPU_GCP" not in out  # only what this region offers, not the built-in table
    assert main(["models", "recommend", "qwen2.5-7b-instruct", "--context", "4096", "--connection"]) == 0
    assert "GPU_NV_S               1 x A10G" in capsys.readouterr().out
    assert db.statements == ["SHOW COMPUTE POOL INSTANCE FAMILIES"] * 2
    db.families = [f for f in db.families if not f["gpu"]]  # a region without GPUs
    assert main(["models", "recommend", "qwen2.5-7b-instruct", "--connection", "dev"]) == 1
    assert "no GPU instance family of this account fits (GPU families here: none)" in capsys.readouterr().out


def test_a_configured_warehouse_is_granted_and_used() -> None:
    cfg = DeployConfig.parse({**load("single_gpu").model_dump(by_alias=True), "warehouse": "compute_wh"})
    db = account(cfg)
    db.warehouse = None
    assert deploy(db, cfg)[0] == 0
    assert {
        (cfg.deployer, "USAGE", "WAREHOUSE", "COMPUTE_WH"),
        (cfg.caller_role, "USAGE", "WAREHOUSE", "COMPUTE_WH"),
    } <= db.grants
    db.role = "PUBLIC"
    from unittest import mock

    with mock.patch.object(deploy_cli, "CONNECT", lambda name: db):
        deploy_cli._session(cfg)
    assert db.role == cfg.deployer and db.warehouse == "COMPUTE_WH"
    assert next(it for it in check.preflight(cfg, Session(db)) if it.what.startswith("warehouse")).status == "ok"


def test_memory_that_leaves_no_room_on_the_node_is_a_warning() -> None:
    """U9/U10: memory request + /dev/shm against the family's memory from SHOW COMPUTE POOL INSTANCE FAMILIES."""
    cfg = load("tp4")
    db = account(cfg)
    assert deploy(db, cfg)[0] == 0
    assert not [it for it in check.preflight(cfg, Session(db)) if it.what.startswith("memory")]
    big = changed(cfg, service={"memory": "160Gi"})
    item = next(it for it in check.preflight(big, Session(db)) if it.what.startswith("memory"))
    assert item.status == "warn" and item.what == "memory 160Gi + /dev/shm 32Gi"
    assert item.fix[0].startswith("lower service.memory to at most 144Gi")


def test_cli_errors_are_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from spcs_llm.cli import main

    db = FakeSnowflake()
    monkeypatch.setattr(deploy_cli, "CONNECT", lambda name: db)
    config = str(GOLDEN / "single_gpu" / "spcs-llm.toml")
    assert main(["status", "--config", config]) == 2  # no deploy role yet
    err = capsys.readouterr().err.strip()
    assert err.startswith("spcs-llm status: cannot use the deploy role SPCS_LLM_LLM_DEPLOYER: USE ROLE")
    assert "--admin-sql" in err and "\n" not in err
    assert main(["deploy", "--admin-role", "NOPE", "--config", config]) == 2
    assert capsys.readouterr().err.strip().startswith("spcs-llm deploy: USE ROLE NOPE failed (002003 (02000)")


def test_a_google_cloud_region_blocks_a_stage_volume() -> None:
    """W9e: the region names the cloud; stage volumes do not exist on Google Cloud."""
    cfg = load("cpu")  # a CPU family: the config cannot tell the cloud
    db = account(cfg)
    db.region = "GCP_US_CENTRAL1"
    rc, out, _ = deploy(db, cfg)
    assert rc == 1 and not any(s.startswith("CREATE SERVICE") for s in db.statements)
    assert "MISSING  region GCP_US_CENTRAL1: stage volumes are not available on Google Cloud" in "\n".join(out)
    gcp = changed(cfg, volumes={"model_cache": "block"})
    assert deploy(db, gcp, admin=None)[0] == 0


def test_status_calls_renamed_functions_by_their_new_names() -> None:
    cfg = changed(load("single_gpu"), functions={"rename": {"AI_AGG": "SPCS_AI_AGG", "EMBED_TEXT_768": "EMB768"}})
    db = account(cfg)
    assert deploy(db, cfg)[0] == 0
    s = Session(db)
    s.use_role(cfg.deployer)
    out: list[str] = []
    assert ops.status(cfg, s, GOLDEN_FUNCTIONS, out.append)
    text = "\n".join(out)
    assert "ok    SPCS_AI_AGG(ARRAY, VARCHAR)" in text and "ok    EMB768(VARCHAR, VARCHAR)" in text
    assert "ok    EMBED_TEXT_768_ARRAY(VARCHAR, VARCHAR)" in text  # the service function keeps its name
