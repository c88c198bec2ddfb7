"""The command line, one module per subcommand: ``python -m lpfast [demo|info|compress|plan]``.

``lpfast/__main__.py`` builds the parser and dispatches; ``demo`` (demo and info),
``plan`` and ``compress`` run a subcommand each; ``arrays`` loads matrices from files and
``plot`` draws and tabulates plans for both ``plan`` and ``compress``. They import the
NumPy API (and torch, lazily, for .pt files and ``compress``); nothing imports them back.
"""
