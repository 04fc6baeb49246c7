"""Sub-commands of ``pcamflow``, one module per part; each has ``register(subparsers)``.

These modules import no optional extra at import time: each command imports what it needs
when it runs, so ``pcamflow --help`` works with the core install alone.
"""
