"""The TUI's screens: dashboard, run view, launch form, and modals."""
