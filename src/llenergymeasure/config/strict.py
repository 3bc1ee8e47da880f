"""The one pydantic configuration every config model uses.

Unknown keys are errors (``extra="forbid"``) and so are non-finite numbers
(``allow_inf_nan=False``): ``.inf`` or ``.nan`` in any float field would pass into a run,
be written to JSON as ``null`` and make the result unreadable. Fields that give infinity a
meaning (``online.request_rate: inf``) say so with their own validator.
"""

from __future__ import annotations

from pydantic import ConfigDict

#: ``model_config`` for every configuration model.
STRICT_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)
