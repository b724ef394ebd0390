"""Everything Snowflake-side, rendered from one ``spcs-llm.toml`` and applied idempotently (see README, "Deploy to
Snowflake"). ``config`` (the file), ``render`` (spec, service config, SQL plan from the function registry),
``snowflake`` (the executor), ``docker`` (image), ``ops`` (status, logs, suspend, resume, teardown), ``cli``."""

from .config import DeployConfig
from .render import Step, plan, script, spec, spec_yaml
from .snowflake import DeployError, Executor, Session

__all__ = ["DeployConfig", "DeployError", "Executor", "Session", "Step", "plan", "script", "spec", "spec_yaml"]
