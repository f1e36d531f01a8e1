# Runs a stevedore step's Python script: python3 stevedore_bootstrap.py SCRIPT.
# Written by stevedore-step; this file holds no secret. The script runs as
# the real __main__ module, with its own file name (in tracebacks too), an
# empty argument list, and the helpers as globals.
import sys

if sys.version_info[0] < 3:
    sys.stderr.write("stevedore-step: Python 3 is required, this is %s\n" % sys.version.split()[0])
    sys.exit(127)


def _stevedore_run():
    # Local names: this module's globals are __main__'s, which are cleared
    # for the script below.
    import os
    import sys

    path = sys.argv[1]
    runner_dir = os.path.dirname(os.path.abspath(__file__))
    sys.argv = [path]
    # Imports come from the working directory (the workspace), then the
    # helpers' directory, then the usual places.
    sys.path[0] = os.getcwd()
    sys.path.insert(1, runner_dir)
    dont_write = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    import stevedore_helpers

    sys.dont_write_bytecode = dont_write

    g = sys.modules["__main__"].__dict__
    builtins = g["__builtins__"]
    g.clear()
    g.update(
        __name__="__main__",
        __file__=path,
        __builtins__=builtins,
        __doc__=None,
        __package__=None,
        __spec__=None,
        __loader__=None,
        __cached__=None,
    )
    for name in stevedore_helpers.__all__:
        g[name] = getattr(stevedore_helpers, name)
    try:
        with open(path, "rb") as f:
            source = f.read()
        exec(compile(source, path, "exec"), g)
    except Exception as e:  # SystemExit and KeyboardInterrupt behave as usual
        # Show the script's frames, not this file's.
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != path:
            tb = tb.tb_next
        sys.excepthook(type(e), e.with_traceback(tb), tb)
        sys.exit(1)


_stevedore_run()
