"""Helpers every layer may use: command-line formatting, the device flag, atomic files, timers."""
