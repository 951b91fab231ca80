"""The ``kproc`` command: ``main`` parses and dispatches to one module
per subcommand (``ps``, ``bench``, ``hotplug``, ``trace``); ``output`` is how
they print.  It sits above the public face and uses it like any program."""
