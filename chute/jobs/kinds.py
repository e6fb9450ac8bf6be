"""Job kinds are plugins, found through the entry point group `chute.jobs`.

Each entry point maps a kind's name to a function::

    def run(input: Path, params: dict[str, Any], progress: Callable[[float], None]) -> dict

- `input` is the job's uploaded file, complete, on local disk. Read it; do not change it.
- `params` are the job's params as the user created it with. When the function has a
  `params_model` attribute (a pydantic model), params are checked against it when the
  job is created, so bad params are refused with a 422 before any upload.
- `progress(percent)` reports how far the job is (0 to 100). It raises `JobCancelled` when
  the job must stop (cancelled, deleted, or handed to another worker): let it propagate.
- Raise `JobFailed("plain words")` to fail the job with a message its user will read.
  Any other exception fails it too, with a generic message; the worker's log keeps the
  traceback.
- The returned dict (JSON-able) becomes the job's `result`. Every text in it (values
  and keys, at any depth) is cut to `MAX_TEXT` characters, the last one then "…", so a
  job's JSON stays small whatever its file holds; a `JobFailed` message is cut to
  `MAX_ERROR` characters.

A function may also declare any of these keyword parameters, and then gets them:
- `outputs: Path`, an empty folder: files left in it become the job's downloads, at
  `GET /api/job/{id}/result/{file name}`;
- `scratch: Path`, an empty folder for temporary files, removed after the run;
- `settings: Settings`, the service's settings.

`profile` is registered this way, in Chute's own pyproject.toml.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel

log = logging.getLogger(__name__)

GROUP = "chute.jobs"
EXTRAS = ("outputs", "scratch", "settings")

Progress = Callable[[float], None]

# Longest text a result holds (DESIGN §2), and longest error message.
MAX_TEXT = 200
MAX_ERROR = 1000


class JobCancelled(Exception):
    """The job must stop: it was cancelled or deleted, or another worker has it now."""


class JobFailed(Exception):
    """The job cannot succeed; the message is shown to its user as the job's error."""


@dataclass(frozen=True)
class Kind:
    name: str
    run: Callable[..., dict[str, Any]]
    params_model: type[BaseModel] | None
    # The keyword parameters of EXTRAS that `run` declares.
    extras: frozenset[str]

    @classmethod
    def of(cls, name: str, run: Callable[..., dict[str, Any]]) -> Kind:
        model = getattr(run, "params_model", None)
        if model is not None and not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"{name}: params_model must be a pydantic model class")
        declared = set(inspect.signature(run).parameters)
        return cls(name, run, model, frozenset(declared & set(EXTRAS)))

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The params to store for a new job; raises pydantic's ValidationError."""
        if self.params_model is None:
            return params
        return self.params_model.model_validate(params).model_dump(exclude_defaults=True)


def load_kinds() -> dict[str, Kind]:
    """Every installed kind. A plugin that fails to load is logged and left out."""
    kinds: dict[str, Kind] = {}
    for entry in entry_points(group=GROUP):
        if entry.name in kinds:
            log.error("job kind %r is registered twice; keeping %s", entry.name, kinds[entry.name])
            continue
        try:
            kinds[entry.name] = Kind.of(entry.name, entry.load())
        except Exception:
            log.exception("job kind %r (%s) could not be loaded", entry.name, entry.value)
    return kinds


def cut_text(text: str, limit: int = MAX_TEXT) -> str:
    """`text`, or its start and "…" when it is longer than `limit` characters."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def cut_texts(value: Any, limit: int = MAX_TEXT) -> Any:
    """A JSON-able value with every text in it, keys included, cut to `limit` characters.

    The one place a result's texts are bounded, whichever kind made it: column names,
    values, reject reasons and lines of a CSV all come from the user's file.
    """
    if isinstance(value, str):
        return cut_text(value, limit)
    if isinstance(value, dict):
        return {cut_texts(k, limit): cut_texts(v, limit) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [cut_texts(v, limit) for v in value]
    return value
