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
    # Octopus's helpers, as its Python bootstrap defines them.
    "octopus_parameters",
    "octopusvariables",
    "get_octopusvariable",
    "set_octopusvariable",
    "createartifact",
    "updateprogress",
    "failstep",
    "printverbose",
    "printhighlight",
    "printwait",
    "printwarning",
]

_MISSING = object()


def _emit(kind, *attrs, prefix="##stevedore["):
    parts = [prefix, kind]
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


def _secrets():
    fd = os.environ.get("STEVEDORE_SECRETS_FD", "")
    if not fd.isdigit():
        return []
    with open("/proc/self/fd/" + fd, "rb") as f:
        return json.loads(f.read().decode("utf-8")) or []


def _plain():
    step_dir = os.environ.get("STEVEDORE_STEP_DIR")
    if not step_dir:
        return []
    with open(os.path.join(step_dir, "step.json"), "rb") as f:
        return json.loads(f.read().decode("utf-8")).get("variables") or []


def _find(variables, name):
    for variable in reversed(variables or []):
        if variable.get("name") == name:
            return variable.get("value", "")
    return _MISSING


def get_variable(name, default=_MISSING):
    """Return a step variable's value, by its original name ("Octopus.Action.Name").

    Raises KeyError for an unknown name unless a default is given.
    """
    for load in (_secrets, _plain):
        value = _find(load(), name)
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


# Octopus's helpers. octopus_parameters (octopusvariables in Octopus's own
# bootstrap; both names are the same dict) holds every step variable by its
# Octopus name, a sensitive value winning over a plain one of the same name.
def _parameters():
    parameters = {}
    try:
        secrets = _secrets()
    except OSError as e:
        # A process the step started, without the step's descriptor: the
        # import must not fail for it.
        sys.stderr.write("stevedore_helpers: sensitive variables are not in octopus_parameters: %s\n" % (e,))
        secrets = []
    for variables in (_plain(), secrets):
        for variable in variables:
            parameters[variable.get("name", "")] = variable.get("value", "")
    parameters.pop("", None)
    return parameters


octopus_parameters = _parameters()
octopusvariables = octopus_parameters


def _octopus(kind, *attrs):
    _emit(kind, *attrs, prefix="##octopus[")


def _level(level, message):
    # One write: the three lines stay together.
    sys.stdout.write("##octopus[stdout-%s]\n%s\n##octopus[stdout-default]\n" % (level, message))
    sys.stdout.flush()


def get_octopusvariable(key):
    """Return a step variable's value, by its Octopus name; KeyError for an unknown one."""
    return octopusvariables[key]


def set_octopusvariable(name, value, sensitive=False):
    """Set an output variable of the step (and in octopus_parameters)."""
    octopusvariables[name] = value
    _octopus("setVariable", ("name", name), ("value", value), ("sensitive", "True" if sensitive else None))


def createartifact(path, fileName=None):
    """Collect a file as an artifact of the step, named fileName (its base name by default)."""
    if fileName is None:
        fileName = os.path.basename(path)
    length = str(os.stat(path).st_size) if os.path.isfile(path) else "0"
    path = os.path.abspath(path)
    _level("verbose", "Artifact %s will be collected from %s after this step completes" % (fileName, path))
    _octopus("createArtifact", ("path", path), ("name", fileName), ("length", length))


def updateprogress(progress, message=""):
    """Report the step's progress (0 to 100)."""
    _octopus("progress", ("percentage", progress), ("message", message))


def failstep(message=None):
    """Fail the step, with message as its reason: exits with -1 (255), as Octopus's does."""
    if message is not None:
        _octopus("resultMessage", ("message", message))
    sys.exit(-1)


def printverbose(message):
    """Print message at the verbose level."""
    _level("verbose", message)


def printhighlight(message):
    """Print message at the highlight level."""
    _level("highlight", message)


def printwait(message):
    """Print message at the wait level."""
    _level("wait", message)


def printwarning(message):
    """Print message at the warning level."""
    _level("warning", message)
