"""Building the usage service from the settings."""

from __future__ import annotations

import importlib.util

from prometheus_client import CollectorRegistry

from .. import logs
from ..config import ConfigError
from .export import Exporter, in_spcs, spcs_connector, spcs_setup, spcs_table
from .service import UsageService
from .settings import BudgetSettings, UsageSettings


def build_usage(
    settings: UsageSettings, budgets: list[BudgetSettings], registry: CollectorRegistry
) -> UsageService | None:
    """The usage service the settings ask for (None when metering is off). Export is on inside SPCS
    (``export = "auto"``), or always with ``export = "on"``."""
    if not settings.enabled:
        if budgets:
            raise ConfigError("[[budgets]] need usage metering: remove them or set [usage] enabled = true")
        return None
    exporter = None
    if settings.export == "on" and not in_spcs():
        raise ConfigError(
            '[usage] export = "on" needs the SPCS session: /snowflake/session/token and '
            "SNOWFLAKE_HOST / SNOWFLAKE_DATABASE / SNOWFLAKE_SCHEMA"
        )
    if settings.export == "on" or (settings.export == "auto" and in_spcs()):
        if not _connector_installed():
            if settings.export == "on":
                raise ConfigError(
                    '[usage] export = "on" needs snowflake-connector-python in the image '
                    "(pip install 'spcs-llm[deploy]')"
                )
            logs.event(
                "usage_export_unavailable",
                reason="snowflake-connector-python is not installed; the usage "
                "history stays in the local SQLite file and budgets are not shared between instances",
            )
        else:
            exporter = Exporter(spcs_connector(settings), spcs_table(settings), setup=spcs_setup(settings))
    return UsageService(settings, budgets, registry, exporter=exporter)


def _connector_installed() -> bool:
    try:
        return importlib.util.find_spec("snowflake.connector") is not None
    except ModuleNotFoundError:  # no "snowflake" package at all
        return False
