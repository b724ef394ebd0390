"""The Streamlit app's parts: one data-access interface (``Backend``) with two implementations, and the pages.

The pages only talk to a ``Backend``: ``HttpBackend`` (a local ``spcs-llm serve``) or ``SnowparkBackend`` (the
deployed SQL functions, from Streamlit in Snowflake). ``pick_backend`` chooses by where the app runs.
"""

from .backend import Backend, BackendError, FunctionSpec, run_in_batches
from .choose import pick_backend

__all__ = ["Backend", "BackendError", "FunctionSpec", "pick_backend", "run_in_batches"]
