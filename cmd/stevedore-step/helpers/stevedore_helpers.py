"""stevedore step helpers for Python scripts.

The runner makes these functions globals of every Python step script; they
can also be imported ("from stevedore_helpers import set_variable"). Written
by stevedore-step; this file holds no secret. The functions print service
messages on standard output, which the runner turns into events.
"""

import base64
import json
import os
import sys

__all__ = [
    "set_variable",
    "get_variable",
    "new_artifact",
    "mask",
    "fail_step",
    "set_progress",
]

_MISSING = object()


def _emit(kind, *attrs):
    parts = ["##stevedore[", kind]
    for key, value in attrs:
        if value is None:
            continue
        encoded = base64.b64encode(str(value).encode("utf-8")).decode("ascii")
        parts.append(" %s='%s'" % (key, encoded))
    parts.append("]\n")
    sys.stdout.write("".join(parts))
    sys.stdout.flush()


def set_variable(name, value, sensitive=False):
    """Set an output variable of the step; sensitive ones are masked and sealed."""
    _emit("setVariable", ("name", name), ("value", value), ("sensitive", "True" if sensitive else None))


def _find(variables, name):
    for variable in reversed(variables or []):
        if variable.get("name") == name:
            return variable.get("value", "")
    return _MISSING


def get_variable(name, default=_MISSING):
    """Return a step variable's value, by its original name ("Octopus.Action.Name").

    Raises KeyError for an unknown name unless a default is given.
    """
    fd = os.environ.get("STEVEDORE_SECRETS_FD", "")
    if fd.isdigit():
        with open("/proc/self/fd/" + fd, "rb") as f:
            value = _find(json.loads(f.read().decode("utf-8")), name)
        if value is not _MISSING:
            return value
    step_dir = os.environ.get("STEVEDORE_STEP_DIR")
    if step_dir:
        with open(os.path.join(step_dir, "step.json"), "rb") as f:
            value = _find(json.loads(f.read().decode("utf-8")).get("variables"), name)
        if value is not _MISSING:
            return value
    if default is not _MISSING:
        return default
    raise KeyError("no step variable named %r" % (name,))


def new_artifact(path, name=None):
    """Collect a file as an artifact of the step."""
    _emit("createArtifact", ("path", os.path.abspath(path)), ("name", name or None))


def mask(value):
    """Replace value with ******** in the rest of the log."""
    _emit("mask", ("value", value))


def fail_step(message=""):
    """Fail the step with message as its reason, and exit."""
    _emit("failStep", ("message", message))
    sys.exit(1)


def set_progress(percentage, message=None):
    """Report the step's progress (0 to 100)."""
    _emit("progress", ("percentage", int(percentage)), ("message", message))
