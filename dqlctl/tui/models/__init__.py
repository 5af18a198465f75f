"""What the TUI shows, computed from the core (``dqlctl.runs``); no Textual here.

One module per screen (``dashboard``, ``run_view``, ``launch``, ``offers`` for the launch form's
catalog choices and cost lines, ``cost``, ``check``) and ``common`` for what they share. Screens
render these records; workers compute them off the event loop. Keeping them free of Textual lets
the tests and the benchmark use them directly, and keeps "the core returns data, the TUI renders
it" (DESIGN.md, Style 1) honest: nothing here launches, stops or reconciles a run except through
``dqlctl.runs``.
"""
