"""zeroverse: procedural Zeroverse shapes -> Blender render farm -> Parquet shards -> GS-LRM / G3R.

`import zeroverse` stays light on purpose: it never imports bpy, ray or torch. Each stage imports
the heavy package it needs (blender_scripts/ bpy, pipelines/ ray, zeroverse.data and
zeroverse.lrm torch), so that the pure modules (recipes, cameras, textures) also run inside any
Blender Python that has only numpy.
"""

__version__ = "0.1.0"


def code_version() -> str:
    """The version that goes into every shard and manifest: `__version__`, plus the git commit of
    the checkout zeroverse runs from when there is one (`0.1.0+g1a2b3c4d5e6f`): the version
    string alone is the same for every commit. An installed copy outside a git checkout (or
    without git) gives `__version__` alone. Computed once per process; imports nothing heavy."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        commit = _git_commit()
        _CODE_VERSION = f"{__version__}+g{commit[:12]}" if commit else __version__
    return _CODE_VERSION


_CODE_VERSION = None


def _git_commit() -> str | None:
    import os
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0", LC_ALL="C")
    try:
        # Only when this very file is tracked: a venv inside some other repository (site-packages
        # under a checkout) must not borrow that repository's commit.
        for args in (["ls-files", "--error-unmatch", "__init__.py"], ["rev-parse", "HEAD"]):
            done = subprocess.run(["git", "-C", here, *args], capture_output=True, text=True, timeout=5, env=env)
            if done.returncode != 0:
                return None
        commit = done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit if len(commit) >= 12 and all(c in "0123456789abcdef" for c in commit) else None
